"""run.json's content: everything needed to run a run again, and what happened when it ran.

This module defines the record and how its state changes in memory; ``lifecycle`` is the
one writer of the file. Every string that could carry a secret has passed through redaction
before it reaches a record.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import orjson

from ..errors import RecordError
from .layout import RunDir

SCHEMA_VERSION = 1


class RunStatus(StrEnum):
    """queued -> running -> succeeded | failed | cancelled | lost. A run whose attempt ended
    but which a queue or Slurm will try again is queued again."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"

    @property
    def is_final(self) -> bool:
        return self not in (RunStatus.QUEUED, RunStatus.RUNNING)


@dataclass
class EndState:
    """How a program ended, as its backend saw it."""

    exit_code: int
    oom_killed: bool | None = None
    peak_memory_bytes: int | None = None
    duration_s: float | None = None  # the program's own, when the backend measured it


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
    # Paths git archive left out or rewrote ("export_ignore", "export_subst"), when the
    # configuration allowed such attributes; None when the commit has none.
    export_attributes: dict[str, list[str]] | None = None


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
    status: RunStatus
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
    # An ssh run: the expman.hosts entry chosen when it was created (whoever runs it later
    # needs it); ``remote`` once it is mirrored there.
    ssh_host: str | None = None
    remote: dict[str, Any] | None = None
    slurm: dict[str, Any] | None = None
    sweep: dict[str, Any] | None = None
    queue: dict[str, Any] | None = None
    search: dict[str, Any] | None = None  # a point of a search: study, trial, params (segment, generation, parent)
    # A rerun (``expman rerun``): the run it repeats, and how its outcome compared with that
    # run's (verdict, differences, notes), once compared.
    rerun_of: str | None = None
    reproduction: dict[str, Any] | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    # Checkpoints: the configured paths, interval and size limit; the snapshot this attempt
    # started from (None: a fresh start); the newest snapshot taken.
    checkpoint: dict[str, Any] | None = None
    restored: dict[str, Any] | None = None
    snapshot: dict[str, Any] | None = None
    cancel_requested_at: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    duration_s: float | None = None
    exit_code: int | None = None
    oom_killed: bool | None = None
    peak_memory_bytes: int | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def final(self) -> bool:
        return self.status.is_final

    @property
    def attempt(self) -> int:
        """The number of the newest attempt (0 before the first)."""
        return int(self.attempts[-1]["attempt"]) if self.attempts else 0

    @property
    def attempt_number(self) -> int:
        """The attempt the program runs as (a run outside a queue or Slurm has one, the first)."""
        return max(self.attempt, 1)

    def note_restored(self, summary: dict[str, Any]) -> None:
        """This attempt starts from the snapshot ``summary`` describes."""
        self.restored = summary
        if self.attempts:
            self.attempts[-1]["restored"] = summary

    def mark_running(self, now: datetime, host: str) -> None:
        self.status, self.started_at, self.host = RunStatus.RUNNING, now.isoformat(), host

    def mark_ended(
        self, status: RunStatus, now: datetime, reason: str | None = None, end: EndState | None = None
    ) -> None:
        """The newest attempt ended as ``status``, and with it the run; ``QUEUED`` means the
        run waits for another attempt (a retry, a requeue)."""
        if end is not None:
            self.exit_code, self.oom_killed, self.peak_memory_bytes = (
                end.exit_code,
                end.oom_killed,
                end.peak_memory_bytes,
            )
        if self.attempts and "ended_at" not in self.attempts[-1]:
            self.attempts[-1].update(
                ended_at=now.isoformat(), status=str(status), reason=reason, exit_code=self.exit_code
            )
        if status == RunStatus.QUEUED:
            self.requeue(reason)
            return
        self.status, self.reason, self.ended_at = status, reason, now.isoformat()
        if end is not None and end.duration_s is not None:
            self.duration_s = round(end.duration_s, 3)
        elif self.started_at is not None:
            self.duration_s = round((now - datetime.fromisoformat(self.started_at)).total_seconds(), 3)

    def begin_attempt(self, number: int, now: datetime, **facts: Any) -> None:
        """Attempt ``number`` begins: what belongs to an attempt is reset, and it is appended."""
        self.status, self.reason, self.host = RunStatus.QUEUED, None, None
        self.started_at = self.ended_at = self.duration_s = self.exit_code = None
        self.pid = self.container_id = self.restored = None
        self.oom_killed = self.peak_memory_bytes = None
        self.attempts.append({"attempt": number, "started_at": now.isoformat(), **facts})

    def requeue(self, reason: str | None) -> None:
        """The run waits for another attempt (a retry, a requeue): queued again, no end."""
        self.status, self.reason = RunStatus.QUEUED, reason
        self.ended_at = self.duration_s = self.exit_code = None

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON values; nested records become dicts (values are not copied)."""
        data = {f.name: getattr(self, f.name) for f in _FIELDS}
        for name in ("git", "image", "submitter"):
            data[name] = dict(vars(data[name]))
        data["status"] = str(self.status)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["status"] = RunStatus(values["status"])
        values["git"] = GitInfo(**values["git"])
        values["image"] = ImageInfo(**values.get("image") or {})
        values["submitter"] = Submitter(**values["submitter"])
        return cls(**values)


_FIELDS = dataclasses.fields(RunRecord)


def load_record(run: RunDir) -> RunRecord:
    try:
        return RunRecord.from_dict(orjson.loads(run.record.read_bytes()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RecordError(f"cannot read {run.record}: {exc}; the file is damaged or from another tool") from None
