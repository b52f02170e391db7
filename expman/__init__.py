"""expman: only committed code runs, and every run records what is needed to run it again."""

__version__ = "0.1.0"
