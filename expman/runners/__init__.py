"""Processes that run prepared runs: the queue worker, the detached supervisor and the Slurm
node task."""
