"""Where a run can execute. Three or four backends need a dict, not a plugin system."""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import UsageError
from .base import Backend
from .local import LocalBackend
from .process import ProcessBackend
from .slurm import SlurmBackend
from .ssh import SSHBackend

BACKENDS: dict[str, type[Backend]] = {
    "local": LocalBackend,
    "process": ProcessBackend,
    "ssh": SSHBackend,
    "slurm": SlurmBackend,
}


def make_backend(name: str, environ: Mapping[str, str]) -> Backend:
    try:
        return BACKENDS[name](environ)
    except KeyError:
        raise UsageError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}") from None
