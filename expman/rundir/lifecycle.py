"""The one writer of run.json: every change of a run's record is written here.

A record is created (queued) when its run directory is made; each attempt begins (what
belongs to an attempt is reset and the previous attempt's logs move to logs/attempt-N/),
runs, and ends; a cancel may be requested at any time by another process. Writers of one
record serialize on a lock held on the run directory, and every write is atomic (a
temporary file renamed over run.json). Only a final record is synced to disk before it
replaces the old one: a crash may lose the latest passing state (queued, running), never
how a run ended. A cancel request written by ``expman cancel`` is kept by every later write.

``Recorder`` is what the execution flow writes through; a queue worker's recorder first
checks, under the lock, that its attempt still holds the job.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from queue import SimpleQueue
from typing import Any, TypeVar

import orjson

from ..errors import DiskFullError, RecordError
from .files import disk_full, json_bytes, put_in_place, release_space, stage_bytes, write_bytes_atomic
from .layout import RunDir
from .record import EndState, RunRecord, RunStatus, load_record

LOG_NAMES = ("stdout.log", "stderr.log", "build.log")
T = TypeVar("T")
_FINAL = {str(s) for s in RunStatus if s.is_final}
# How a run found unfinished should end, given its current record: (status, reason), or None.
Decision = Callable[[RunRecord], tuple[RunStatus, str | None] | None]


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
    try:
        return RecordLock(run)
    except OSError as exc:
        raise RecordError(f"cannot open {run.path}: {exc.strerror}; is the run directory still there?") from None


# --- writing ----------------------------------------------------------------------------


def create(run: RunDir, record: RunRecord) -> None:
    """The first record of a new run directory (queued). No lock and no cancel request to
    keep: nobody knows of the run yet."""
    try:
        write_bytes_atomic(run.record, json_bytes(record.to_dict()), durable=False)
    except OSError as exc:
        raise unwritable(run.record, exc) from None


def save(run: RunDir, record: RunRecord) -> None:
    """Write ``record`` as it stands (under the lock)."""
    with record_lock(run):
        write_locked(run, record)


def write_locked(run: RunDir, record: RunRecord, reopen: bool = False) -> None:
    """``save`` for a caller that holds ``record_lock(run)``; ``reopen`` for a new attempt or a
    retry of a run that had ended."""
    _with_space(run, lambda: write_bytes_atomic(run.record, record_bytes(run, record, reopen), durable=record.final))


def _with_space(run: RunDir, write: Callable[[], T]) -> T:
    """``write()``; on a full disk, again once this process's reserve in the runs root is given
    up. An atomic write that fails leaves the previous record in place."""
    try:
        return write()
    except OSError as exc:
        if not (disk_full(exc) and release_space(run.path.parent)):
            raise unwritable(run.record, exc) from None
    try:
        return write()
    except OSError as exc:
        raise unwritable(run.record, exc) from None


def record_bytes(run: RunDir, record: RunRecord, reopen: bool = False) -> bytes:
    """The record as run.json holds it, keeping a cancel request ``expman cancel`` wrote there.
    How a run ended is never changed by a later write (a follower that did not see a cancel
    in time, say); only ``reopen`` (a new attempt, a retry) puts an ended run back in play."""
    current = _on_disk(run)
    ended = current.get("status")
    if ended in _FINAL and ended != record.status and not reopen:
        raise RecordError(f"run {record.run_id} has already ended ({ended}); it is not recorded {record.status} now")
    if record.cancel_requested_at is None and not reopen:
        record.cancel_requested_at = current.get("cancel_requested_at")
    return json_bytes(record.to_dict())


def mirror_bytes(record: RunRecord) -> bytes:
    """The record's bytes for a copy of run.json kept elsewhere (an SSH host's run directory)."""
    return json_bytes(record.to_dict())


def unwritable(path: Path, exc: OSError) -> RecordError:
    """The one-line error for a file of a run directory that cannot be written."""
    if disk_full(exc):
        return DiskFullError(f"disk full at {path}: {exc.strerror}; free space under the runs root")
    return RecordError(f"cannot write {path}: {exc.strerror}; check the runs_root permissions and free space")


def _on_disk(run: RunDir) -> dict[str, Any]:
    try:
        current = orjson.loads(run.record.read_bytes())
    except (FileNotFoundError, ValueError):
        return {}
    return current if isinstance(current, dict) else {}


# --- changes of state ---------------------------------------------------------------------


def begin_attempt(
    run: RunDir, now: datetime, number: int | None = None, unfinished: str = "", **facts: Any
) -> RunRecord:
    """Attempt ``number`` (default: the next) of the run begins; returns its record.

    An earlier attempt that never recorded its end is closed as lost with the reason
    ``unfinished``; its logs, like any earlier attempt's, move to logs/attempt-N/. The
    record is written at once (queued)."""
    with record_lock(run):
        record = load_record(run)
        previous = record.attempts[-1] if record.attempts else None
        if previous is not None:
            if "ended_at" not in previous:
                previous.update(ended_at=now.isoformat(), status=str(RunStatus.LOST), reason=unfinished or None)
            move_logs(run, int(previous["attempt"]))
        record.begin_attempt(number if number is not None else record.attempt + 1, now, **facts)
        write_locked(run, record, reopen=True)
    return record


def move_logs(run: RunDir, attempt: int) -> None:
    """The logs directly under logs/ belong to ``attempt``: move them to logs/attempt-N/."""
    target = run.attempt_logs(attempt)
    for name in LOG_NAMES:
        source = run.logs / name
        try:
            if source.exists():
                target.mkdir(exist_ok=True)
                source.rename(target / name)
        except OSError as exc:
            raise unwritable(target / name, exc) from None


def request_cancel(run: RunDir, now: datetime) -> RunRecord:
    """Note that the user asked to stop the run; whoever follows it acts on it."""
    with record_lock(run):
        record = load_record(run)
        record.cancel_requested_at = now.isoformat()
        write_locked(run, record)
    return record


def end_if_not_final(run: RunDir, now: datetime, decide: Decision) -> RunRecord:
    """End the run as ``decide`` says, given its current record: (status, reason), or None to
    leave it. A run that ended meanwhile is left as it is."""
    with record_lock(run):
        record = load_record(run)
        decided = None if record.final else decide(record)
        if decided is not None:
            record.mark_ended(decided[0], now, reason=decided[1])
            write_locked(run, record)
    return record


def requeue(run: RunDir, reason: str) -> RunRecord:
    """Queued again for another attempt (``expman retry``): a new intent, so an old cancel
    request no longer stands."""
    with record_lock(run):
        record = load_record(run)
        record.requeue(reason)
        record.cancel_requested_at = None
        write_locked(run, record, reopen=True)
    return record


def note_reproduction(run: RunDir, reproduction: dict[str, Any]) -> RunRecord:
    """How a rerun compared with the run it repeats (``expman rerun``), once it has ended."""
    with record_lock(run):
        record = load_record(run)
        record.reproduction = reproduction
        write_locked(run, record)
    return record


class Recorder:
    """Writes one run's record as the execution flow changes it."""

    def __init__(self, run: RunDir) -> None:
        self.run = run

    def save(self, record: RunRecord) -> None:
        save(self.run, record)

    @property
    def holds_run(self) -> bool:
        """Whether the run is still this recorder's to change (a queue worker's may lose it)."""
        return True

    def running(self, record: RunRecord, now: datetime, host: str) -> None:
        record.mark_running(now, host)
        self.save(record)

    def end(
        self,
        record: RunRecord,
        status: RunStatus,
        now: datetime,
        reason: str | None = None,
        end: EndState | None = None,
    ) -> None:
        record.mark_ended(status, now, reason=reason, end=end)
        self.save(record)


# --- final records put in place from a thread ----------------------------------------------


class Finisher:
    """Puts final records in place from a thread (fsync, rename, then release the run's
    lock), so that a worker claims and starts its next job while the disk syncs the last
    record; the lock keeps everyone else from the record until it is in place."""

    def __init__(self) -> None:
        self.error: RecordError | None = None
        self._work: SimpleQueue[tuple[RecordLock, Path, Path] | None] = SimpleQueue()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stage(self, run: RunDir, record: RunRecord) -> Path:
        """The final ``record`` in a temporary file next to run.json (a full disk raises here,
        before anything is committed elsewhere); ``finish_locked`` puts it in place."""
        return _with_space(run, lambda: stage_bytes(run.record, record_bytes(run, record)))

    def finish_locked(self, run: RunDir, staged: Path, lock: RecordLock) -> None:
        """Put a staged record in place; the caller holds ``lock``, which this now owns."""
        self._work.put((lock.hand_over(), staged, run.record))

    def close(self) -> None:
        """Wait until every record handed over is in place."""
        self._work.put(None)
        self._thread.join()

    def _loop(self) -> None:
        while (item := self._work.get()) is not None:
            lock, staged, path = item
            try:
                put_in_place(staged, path)
            except OSError as exc:
                self.error = self.error or unwritable(path, exc)
            finally:
                lock.release()
