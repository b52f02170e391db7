"""Removing ended runs (``expman gc``): their directories, their queue jobs, and the shared
code copies nobody uses any longer.

A run is chosen from its record (final, of the statuses asked for, ended before a time) and
decided on again under its record lock, the lock every writer of run.json takes: a run that
was queued again meanwhile (a retry, a requeue) is kept, and so is one whose queue job is
pending or running again. A chosen run's directory is renamed into <runs_root>/.expman-trash/
while the lock is held, and deleted from there: a listing sees the whole run or none of it,
and a trash left by an interrupted gc is emptied by the next one.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import orjson

from ..errors import ExpmanError, UsageError
from ..experiment.archive import CODE_DIR, remove_tree
from ..experiment.shared_code import remove_unused
from ..queue import Queue, open_queue
from ..rundir.layout import RunDir, list_runs
from ..rundir.lifecycle import record_lock
from ..rundir.record import RunRecord, RunStatus, load_record

TRASH_DIR = ".expman-trash"
DEFAULT_STATUSES = (RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.LOST)
_AGE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Criteria:
    """Which runs go: final ones of ``statuses`` that ended before ``ended_before`` (any time
    when None)."""

    statuses: frozenset[RunStatus]
    ended_before: datetime | None = None

    def matches(self, record: RunRecord) -> bool:
        if not record.final or record.status not in self.statuses:
            return False
        if self.ended_before is None:
            return True
        try:
            return datetime.fromisoformat(record.ended_at or record.queued_at) < self.ended_before
        except ValueError:  # no time recorded: its age is unknown, so it is not old enough
            return False


@dataclass(frozen=True)
class Candidate:
    run: RunDir
    status: str
    ended_at: str | None
    size_bytes: int


@dataclass
class Outcome:
    removed: list[str] = field(default_factory=list)
    kept: list[tuple[str, str]] = field(default_factory=list)  # run id, why
    code_copies: int = 0


def parse_statuses(text: str | None) -> frozenset[RunStatus]:
    """Statuses from "failed,cancelled"; only final ones may be named."""
    if not text:
        return frozenset(DEFAULT_STATUSES)
    statuses = set()
    for name in (part.strip() for part in text.split(",")):
        try:
            status = RunStatus(name)
        except ValueError:
            known = ", ".join(s for s in RunStatus if s.is_final)
            raise UsageError(f"--status {name!r}: not a run status; use some of {known}") from None
        if not status.is_final:
            raise UsageError(f"gc never removes {status} runs; cancel them first ('expman cancel RUN')")
        statuses.add(status)
    return frozenset(statuses)


def parse_age(text: str) -> timedelta:
    """A duration from "30d", "12h", "2w", "90m" or "45s"."""
    match = _AGE.fullmatch(text.strip())
    if match is None:
        raise UsageError(f"--older-than {text!r}: write a number and a unit (s, m, h, d, w), e.g. 30d")
    return timedelta(seconds=float(match.group(1)) * _UNIT_S[match.group(2)])


def select(runs_root: Path, criteria: Criteria) -> list[Candidate]:
    """The runs under ``runs_root`` that ``criteria`` picks, oldest first, with their sizes."""
    chosen = []
    seen: set[tuple[int, int]] = set()  # each file once, even when shared between runs
    for run in reversed(list_runs(runs_root)):
        try:
            record = load_record(run)
        except ExpmanError:  # a record being replaced or damaged: not decided on blindly
            continue
        if criteria.matches(record):
            chosen.append(Candidate(run, str(record.status), record.ended_at, tree_size(run.path, seen)))
    return chosen


def tree_size(path: Path, seen: set[tuple[int, int]] | None = None) -> int:
    """Bytes of the files under ``path``, links not followed, each file once (a sweep's runs
    share their archive through hard links)."""
    seen = set() if seen is None else seen
    total = 0
    try:
        entries = list(os.scandir(path))
    except OSError:
        return 0
    for entry in entries:
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if entry.is_dir(follow_symlinks=False):
            total += tree_size(Path(entry.path), seen)
        elif (info.st_dev, info.st_ino) not in seen:
            seen.add((info.st_dev, info.st_ino))
            total += info.st_size
    return total


def remove(runs_root: Path, candidates: list[Candidate], criteria: Criteria, progress: Progress) -> Outcome:
    """Remove ``candidates`` that ``criteria`` still picks under their lock, their queue jobs,
    then the code copies no remaining run uses."""
    outcome = Outcome()
    trash = runs_root / TRASH_DIR
    empty_trash(trash)
    queues = _Queues()
    try:
        for done, candidate in enumerate(candidates, 1):
            trashed = _trash_one(candidate.run, criteria, queues, trash)
            if isinstance(trashed, Path):
                remove_tree(trashed)  # out of sight already: no lock needed while it is deleted
                outcome.removed.append(candidate.run.run_id)
            else:
                outcome.kept.append((candidate.run.run_id, trashed))
            progress(done, len(candidates))
    finally:
        queues.close()
    linked, pending = _code_users(runs_root)
    outcome.code_copies = remove_unused(runs_root, linked, pending)
    return outcome


def _trash_one(run: RunDir, criteria: Criteria, queues: _Queues, trash: Path) -> Path | str:
    """Move ``run`` into the trash if it is still to go (where it went); else why it stays."""
    try:
        with record_lock(run):
            record = load_record(run)
            if not criteria.matches(record):
                return f"it is {record.status} now"
            if record.queue and not queues.remove_jobs(record.queue.get("url"), run.run_id):
                return "its queue job is pending or running again"
            trash.mkdir(exist_ok=True)
            trashed = trash / f"{run.run_id}.{secrets.token_hex(4)}"
            os.rename(run.path, trashed)
    except ExpmanError as exc:
        return exc.message
    except OSError as exc:
        return f"cannot move it to {trash}: {exc.strerror}"
    return trashed


def empty_trash(trash: Path) -> None:
    """Delete what the trash holds (this gc's runs, or those an interrupted one left)."""
    try:
        entries = list(trash.iterdir())
    except FileNotFoundError:
        return
    for entry in entries:
        remove_tree(entry)


def _code_users(runs_root: Path) -> tuple[set[str], set[str]]:
    """The code copies the remaining runs link to, and the commits of remaining runs not yet
    started that may check one out."""
    linked, pending = set(), set()
    for run in list_runs(runs_root):
        try:
            linked.add(Path(os.readlink(run.path / CODE_DIR)).name)
            continue
        except OSError:
            pass
        try:
            record = orjson.loads(run.record.read_bytes())
        except (OSError, ValueError):
            continue
        if record.get("status") not in {str(s) for s in RunStatus if s.is_final}:
            pending.add(str((record.get("git") or {}).get("commit")))
    return linked, pending


class _Queues:
    """The queues the removed runs were scheduled in, each opened once."""

    def __init__(self) -> None:
        self._open: dict[str, Queue | ExpmanError | None] = {}

    def remove_jobs(self, url: str | None, run_id: str) -> bool:
        """The run's finished jobs deleted; whether it has none left (no queue: none)."""
        queue = self._queue(url) if url else None
        return queue is None or queue.remove_jobs_of(run_id)

    def _queue(self, url: str) -> Queue | None:
        """The queue at ``url``; None when there is none; one that failed fails each run at
        once (its runs stay), not after another wait for the database."""
        if url not in self._open:
            try:
                queue = open_queue(url, create=False)
                self._open[url] = queue if queue.exists() else None
            except ExpmanError as exc:
                self._open[url] = exc
        opened = self._open[url]
        if isinstance(opened, ExpmanError):
            raise opened
        return opened

    def close(self) -> None:
        for queue in self._open.values():
            if isinstance(queue, Queue):
                queue.close()


def total_size(candidates: Iterable[Candidate]) -> int:
    return sum(c.size_bytes for c in candidates)
