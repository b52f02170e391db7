"""The shared job queue: ``expman schedule`` adds runs, ``expman worker`` claims and runs them."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from .dialects import dialect_for
from .model import Job, JobState, NewJob, SweepSummary, WorkerInfo
from .store import Queue

QUEUE_VARIABLE = "EXPMAN_QUEUE"
DEFAULT_FILE = "queue.sqlite"

__all__ = [
    "Job",
    "JobState",
    "NewJob",
    "Queue",
    "SweepSummary",
    "WorkerInfo",
    "open_queue",
    "queue_url",
]


def queue_url(explicit: str | None, runs_root: Path, environ: Mapping[str, str]) -> str:
    """--queue, else EXPMAN_QUEUE, else a SQLite file under runs_root."""
    return explicit or environ.get(QUEUE_VARIABLE) or f"sqlite://{runs_root.absolute() / DEFAULT_FILE}"


def open_queue(url: str, application_name: str = "expman", create: bool = True) -> Queue:
    """The queue at ``url``, made there (file and tables) if it is not there yet; with
    ``create`` false, only to look at: nothing is made (``Queue.exists`` tells)."""
    return Queue(dialect_for(url), application_name, create=create)
