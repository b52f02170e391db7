"""The compiled modules are optional: without a C compiler expman installs anyway and uses
their pure-Python twins (same results, much slower): the event-file reader, and the file
signatures the runs index compares."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("expman.results._tfevents", ["expman/results/_tfevents.c"], optional=True, extra_compile_args=["-O3"]),
        Extension("expman.results._signatures", ["expman/results/_signatures.c"], optional=True, extra_compile_args=["-O2"]),
    ]
)
