"""run.json: everything needed to run a run again, and what happened when it ran.

Written atomically at submit (queued), start (running) and end (succeeded, failed,
cancelled). Every string that could carry a secret has passed through redaction before it
reaches a record.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from .errors import RecordError
from .rundir import RunDir, json_bytes, stage_bytes, write_bytes_atomic

SCHEMA_VERSION = 1
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, LOST = "queued", "running", "succeeded", "failed", "cancelled", "lost"
STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, LOST)
FINAL_STATUSES = frozenset({SUCCEEDED, FAILED, CANCELLED, LOST})


@dataclass
class GitInfo:
    commit: str
    branch: str
    subject: str
    author: str
    author_email: str
    commit_date: str
    remote_url: str | None
    repository: str


@dataclass
class ImageInfo:
    dockerfile: str | None = None
    dockerfile_hash: str | None = None
    image_id: str | None = None
    image_tag: str | None = None
    engine_version: str | None = None


@dataclass
class Submitter:
    user: str
    uid: int
    gid: int
    expman_version: str
    python_version: str
    argv: list[str]


@dataclass
class RunRecord:
    run_id: str
    status: str
    git: GitInfo
    config_hash: str
    command: list[str]
    resources: dict[str, Any]
    backend: str
    submitter: Submitter
    host_facts: dict[str, Any]
    environment: dict[str, str]
    queued_at: str
    schema_version: int = SCHEMA_VERSION
    reason: str | None = None
    image: ImageInfo = field(default_factory=ImageInfo)
    host: str | None = None
    container_id: str | None = None
    pid: int | None = None
    job_id: str | None = None
    supervisor: dict[str, Any] | None = None
    remote: dict[str, Any] | None = None
    slurm: dict[str, Any] | None = None
    sweep: dict[str, Any] | None = None
    queue: dict[str, Any] | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    cancel_requested_at: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    duration_s: float | None = None
    exit_code: int | None = None
    oom_killed: bool | None = None
    peak_memory_bytes: int | None = None
    warnings: list[str] = field(default_factory=list)

    def mark_running(self, now: datetime, host: str) -> None:
        self.status, self.started_at, self.host = RUNNING, now.isoformat(), host

    def mark_ended(self, status: str, now: datetime, reason: str | None = None) -> None:
        self.status, self.reason, self.ended_at = status, reason, now.isoformat()
        if self.started_at is not None:
            self.duration_s = round((now - datetime.fromisoformat(self.started_at)).total_seconds(), 3)

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON values; nested records become dicts (values are not copied)."""
        data = {f.name: getattr(self, f.name) for f in _FIELDS}
        for name in ("git", "image", "submitter"):
            data[name] = dict(vars(data[name]))
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["git"] = GitInfo(**values["git"])
        values["image"] = ImageInfo(**values.get("image") or {})
        values["submitter"] = Submitter(**values["submitter"])
        return cls(**values)


_FIELDS = dataclasses.fields(RunRecord)


class RecordLock:
    """Serializes writers of one run.json: the submitter, a Slurm node, ``expman cancel``, a
    worker. The lock is taken on the run directory itself, so the directory holds no lock
    file. A ``with`` block releases it; so does ``release()``, for a lock handed on to the
    thread that puts a final record in place."""

    def __init__(self, run: RunDir) -> None:
        self._fd: int | None = os.open(run.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self.release()
            raise

    def __enter__(self) -> RecordLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def hand_over(self) -> RecordLock:
        """A new owner of this lock: leaving the ``with`` block no longer releases it."""
        successor = RecordLock.__new__(RecordLock)
        successor._fd, self._fd = self._fd, None
        return successor

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def record_lock(run: RunDir) -> RecordLock:
    return RecordLock(run)


def save_record(run: RunDir, record: RunRecord) -> None:
    """Write run.json atomically; a cancel request written meanwhile by another process is kept."""
    try:
        with record_lock(run):
            write_record_locked(run, record)
    except OSError as exc:
        raise unwritable(run.record, exc) from None


def write_record_locked(run: RunDir, record: RunRecord) -> None:
    """``save_record`` for a caller that holds ``record_lock(run)``. Only a final record is
    synced to disk before it replaces the old one: a crash may lose the latest passing state
    (queued, running), never how a run ended."""
    try:
        write_bytes_atomic(run.record, _record_bytes(run, record), durable=record.final)
    except OSError as exc:
        raise unwritable(run.record, exc) from None


def stage_record_locked(run: RunDir, record: RunRecord) -> Path:
    """``write_record_locked`` up to the rename: the record in a temporary file next to
    run.json, for ``rundir.put_in_place`` to sync and rename while the lock is still held."""
    try:
        return stage_bytes(run.record, _record_bytes(run, record))
    except OSError as exc:
        raise unwritable(run.record, exc) from None


def unwritable(path: Path, exc: OSError) -> RecordError:
    """The one-line error for a file of a run directory that cannot be written."""
    return RecordError(f"cannot write {path}: {exc.strerror}; check the runs_root permissions and free space")


def _record_bytes(run: RunDir, record: RunRecord) -> bytes:
    """The record as run.json holds it, keeping a cancel request ``expman cancel`` wrote there."""
    if record.cancel_requested_at is None:
        record.cancel_requested_at = _cancel_requested_at(run)
    return json_bytes(record.to_dict())


def _cancel_requested_at(run: RunDir) -> str | None:
    """A cancel request that ``expman cancel`` wrote into the current run.json, if any."""
    try:
        return orjson.loads(run.record.read_bytes()).get("cancel_requested_at")
    except (FileNotFoundError, ValueError):
        return None


def load_record(run: RunDir) -> RunRecord:
    try:
        return RunRecord.from_dict(orjson.loads(run.record.read_bytes()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RecordError(f"cannot read {run.record}: {exc}; the file is damaged or from another tool") from None
