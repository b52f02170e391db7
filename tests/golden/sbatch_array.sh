#!/bin/sh
# Written by expman: each task runs one prepared run directory (see expman.runners.node).
#SBATCH --job-name=expman-demo
#SBATCH --partition=gpu
#SBATCH --time=2-00:00:00
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=4
#SBATCH --mem=16G
#SBATCH --account=lab
#SBATCH --qos=normal
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --array=0-4%2
#SBATCH --constraint=a100
#SBATCH --exclusive
exec '/opt/py 3/bin/python' -m expman.runners.node "$1"
