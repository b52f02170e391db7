"""Where a run can execute. Three or four backends need a dict, not a plugin system.

Each is imported when first made: a process-backend worker never loads the Docker SDK or
paramiko, which would cost a quarter of a second in every command.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..errors import UsageError

if TYPE_CHECKING:
    from .base import Backend

BACKENDS: dict[str, str] = {
    "local": "local:LocalBackend",
    "process": "process:ProcessBackend",
    "ssh": "ssh:SSHBackend",
    "slurm": "slurm:SlurmBackend",
}


def make_backend(name: str, environ: Mapping[str, str]) -> Backend:
    if name not in BACKENDS:
        raise UsageError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    module, cls = BACKENDS[name].split(":")
    backend: type[Backend] = getattr(importlib.import_module(f"{__name__}.{module}"), cls)
    return backend(environ)
