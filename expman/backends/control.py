"""Runs after submission, on any backend: live status (reconcile), cancel, sync.

Each backend knows how to look at its own runs; this module groups runs by backend so that
one call serves many runs (one SSH connection per host, one squeue for all Slurm jobs).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..errors import UsageError
from ..rundir.layout import RunDir
from ..rundir.record import RunRecord, load_record
from . import make_backend

if TYPE_CHECKING:
    from .ssh import SyncResult


def refresh(runs: list[RunDir], environ: Mapping[str, str]) -> tuple[list[RunRecord], list[str]]:
    """The records of ``runs``, those not final brought up to date; plus warnings."""
    records = [load_record(run) for run in runs]
    pending: dict[str, list[tuple[RunDir, RunRecord]]] = defaultdict(list)
    for run, record in zip(runs, records, strict=True):
        if not record.final:
            pending[record.backend].append((run, record))
    warnings: list[str] = []
    for name, group in pending.items():
        backend = make_backend(name, environ)
        try:
            warnings.extend(backend.reconcile(group))
        finally:
            backend.close()
    return records, warnings


def cancel(run: RunDir, environ: Mapping[str, str]) -> RunRecord:
    record = load_record(run)
    if record.final:
        return record
    backend = make_backend(record.backend, environ)
    try:
        return backend.cancel(run, record)
    finally:
        backend.close()


def sync(run: RunDir, environ: Mapping[str, str]) -> tuple[RunRecord, SyncResult]:
    record = load_record(run)
    if record.remote is None:
        raise UsageError(f"run {run.run_id} ran on the {record.backend} backend; only ssh runs need syncing")
    from .ssh import SSHBackend

    backend = make_backend("ssh", environ)
    assert isinstance(backend, SSHBackend)
    try:
        result = backend.sync(run, record)
    finally:
        backend.close()
    return record, result


def follow(run: RunDir, environ: Mapping[str, str]) -> bool:
    """Stream a remote run's output until it ends, then sync it; False if it had ended."""
    record = load_record(run)
    from .ssh import SSHBackend

    backend = make_backend("ssh", environ)
    assert isinstance(backend, SSHBackend)
    try:
        return backend.follow_logs(run, record)
    finally:
        backend.close()
