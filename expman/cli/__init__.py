"""Argument parsing and output only: one module per command group (submit, queue, runs,
table), the options they share in ``common``, and ``main``."""

from __future__ import annotations

from .main import main

__all__ = ["main"]
