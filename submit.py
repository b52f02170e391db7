"""`python submit.py ARGS` is `expman submit ARGS`."""

import sys

from expman.cli import main

if __name__ == "__main__":
    sys.exit(main(["submit", *sys.argv[1:]]))
