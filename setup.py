"""The compiled event-file reader is optional: without a C compiler expman installs anyway
and reads event files with its pure-Python reader (same results, much slower)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("expman.results._tfevents", ["expman/results/_tfevents.c"], optional=True, extra_compile_args=["-O3"])
    ]
)
