"""One attempt's checkpoints, as the execution flow keeps them: the newest snapshot restored
before the program starts, a snapshot every interval while it runs (a thread of its own,
never a signal handler), and a last one once it has ended, however it ended (by itself, a
timeout, a cancel, a worker or Slurm stopping it): a finished run's newest snapshot is its
final checkpoint. The files are ``rundir.checkpoint``'s business; a backend whose output
lives elsewhere (an SSH host) brings the paths here before a snapshot and puts them back
there after a restore."""

from __future__ import annotations

import threading

from ..errors import CheckpointError, ExpmanError
from ..rundir.checkpoint import restore, snapshot
from ..rundir.layout import RunDir
from ..rundir.lifecycle import Recorder
from ..rundir.record import RunRecord
from .base import Backend


class Checkpointing:
    def __init__(self, backend: Backend, run: RunDir, record: RunRecord, recorder: Recorder) -> None:
        settings = record.checkpoint or {}
        self._backend, self._run, self._record, self._recorder = backend, run, record, recorder
        self._paths: list[str] = list(settings.get("paths") or [])
        self._interval_s = float(settings.get("interval_s") or 300.0)
        self._max_bytes = int(settings.get("max_bytes") or 0)
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._warning: str | None = None  # the first trouble of the attempt; later ones repeat it

    @classmethod
    def of(cls, backend: Backend, run: RunDir, record: RunRecord, recorder: Recorder) -> Checkpointing | None:
        """The run's checkpoints, when its config has a "checkpoint" section."""
        return cls(backend, run, record, recorder) if record.checkpoint else None

    def restore(self) -> None:
        """Before the program starts: the newest verified snapshot replaces the checkpoint
        paths of the output; the record says which (a CheckpointError when it cannot)."""
        found = restore(self._run, self._paths)
        if found is not None:
            self._backend.push_checkpoint(self._run, self._record, self._paths)
            self._record.note_restored(found.summary())
            self._record.snapshot = found.summary()

    def start(self) -> None:
        """Snapshots every interval from now on, until ``finish`` or ``close``."""
        self._thread = threading.Thread(target=self._every_interval, name="expman-checkpoints", daemon=True)
        self._thread.start()

    def finish(self, reason: str) -> None:
        """The program has ended: a last snapshot, and the record notes the newest and any
        trouble (a snapshot over max_mb, an unreadable file) as a warning."""
        self.close()
        self._take(reason)
        if self._warning is not None and self._warning not in self._record.warnings:
            self._record.warnings.append(self._warning)

    def close(self) -> None:
        """No more snapshots (an attempt that is no longer this process's to record)."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _every_interval(self) -> None:
        # An attempt that lost its lease stops at once: the next attempt may be restoring the
        # newest snapshot, which a snapshot of this one would replace and remove.
        while not self._stopped.wait(self._interval_s) and self._recorder.holds_run:
            self._take("interval")

    def _take(self, reason: str) -> None:
        try:
            self._backend.pull_checkpoint(self._run, self._record, self._paths)
            taken = snapshot(self._run, self._paths, reason, self._max_bytes, self._record.attempt_number)
        except CheckpointError as exc:
            self._warning = self._warning or exc.message
            return
        except ExpmanError as exc:  # the output's host out of reach: the previous snapshot stands
            self._warning = self._warning or f"checkpoint not taken: {exc.message}"
            return
        if taken is not None:
            self._record.snapshot = taken.summary()  # one assignment: a record write sees the old or the new
