"""The queue's data: job states, jobs as scheduled and as stored, workers, sweep summaries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class JobState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class NewJob:
    key: str
    run_id: str
    run_dir: str
    label: str
    sweep_id: str | None
    priority: int
    max_attempts: int
    lease_s: float
    backoff_s: float


@dataclass(frozen=True)
class Job:
    id: int
    key: str
    sweep_id: str | None
    run_id: str
    run_dir: str
    label: str
    priority: int
    state: JobState
    attempt: int
    max_attempts: int
    lease_s: float
    backoff_s: float
    not_before: float | None
    created_at: float
    claimed_at: float | None
    ended_at: float | None
    lease_until: float | None
    worker: str | None
    cancel_requested: int
    error: str | None

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Job:
        job = cls(*row)
        object.__setattr__(job, "state", JobState(job.state))
        return job


@dataclass(frozen=True)
class SweepSummary:
    """The jobs of one sweep (``sweep_id`` None: runs scheduled on their own)."""

    sweep_id: str | None
    counts: dict[str, int]
    newest_job: int  # the id of its latest job: sweeps sort by it, newest first
    durations: list[float]  # seconds from claim to end of its latest successes

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def done(self) -> int:
        return sum(n for state, n in self.counts.items() if JobState(state).is_finished)

    @property
    def remaining(self) -> int:
        return self.total - self.done


@dataclass(frozen=True)
class WorkerInfo:
    id: str
    host: str
    pid: int
    started_at: float
    heartbeat_at: float
    job_id: int | None
    jobs_done: int
