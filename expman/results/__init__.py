"""The results side of expman: run directories into pandas frames and paper tables.

``load_runs(root, ...)`` gives a row per run, ``load_scalars(root, tags=...)`` every
scalar point; both are imported on first use, so that submitting never loads pandas.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_runs", "load_scalars", "read_results", "read_run_scalars"]


def __getattr__(name: str) -> Any:
    if name in ("load_runs", "load_scalars"):
        from . import loader

        return getattr(loader, name)
    if name == "read_results":
        from .flatten import read_results

        return read_results
    if name == "read_run_scalars":
        from .scalars import read_run_scalars

        return read_run_scalars
    raise AttributeError(name)
