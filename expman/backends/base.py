"""The flow every backend shares: check -> prepare -> start -> wait -> record -> clean up.

A backend fills narrow hooks. ``check`` runs before anything is written; ``prepare`` makes
what the run needs (an image, an extracted archive); ``start`` returns an ``Execution``
that pumps output into a LogSink and can be waited on, signalled, stopped and killed. This
module owns timeouts, cancellation and the status written to run.json.

A backend that hands runs to a scheduler (Slurm) sets ``hands_off`` and implements
``hand_off`` instead of being followed here. ``reconcile`` brings the records of runs that
are not final up to date with where they really run; ``cancel`` stops one.
"""

from __future__ import annotations

import abc
import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from ..errors import ConnectionLostError, ExpmanError
from ..hostinfo import hostname
from ..logsink import LogSink
from ..record import CANCELLED, FAILED, LOST, RUNNING, SUCCEEDED, RunRecord, load_record, save_record
from ..redact import Redactor
from ..rundir import Clock, RunDir

if TYPE_CHECKING:
    from ..progress import Reporter
    from ..submission import Plan

STOP_GRACE_S = 10.0
RUNNING_RECORD_AFTER_S = 1.0
CANCEL_WAIT_S = 60.0
# What a SIGTERM/SIGINT means, as (status, reason); a Slurm node tells timeouts and requeues apart.
Interpretation = Callable[[RunRecord], tuple[str, str]]
# How a record is written; a queue worker's saver first checks it still holds the job.
Saver = Callable[[RunDir, RunRecord], None]


@dataclass
class EndState:
    exit_code: int
    oom_killed: bool | None = None
    peak_memory_bytes: int | None = None


class Execution(abc.ABC):
    """A started run: one container or one process."""

    @abc.abstractmethod
    def wait(self, timeout_s: float | None) -> int | None:
        """The exit code once ended (output fully pumped), or None if ``timeout_s`` passed."""

    @abc.abstractmethod
    def stop(self, grace_s: float) -> None:
        """Ask the program to end (SIGTERM), kill it after ``grace_s``."""

    @abc.abstractmethod
    def kill(self) -> None: ...

    @abc.abstractmethod
    def signal(self, signum: int) -> None:
        """Deliver ``signum`` to the program (e.g. SIGUSR1: checkpoint now)."""

    @abc.abstractmethod
    def end_state(self, exit_code: int) -> EndState:
        """Exit code, OOM flag and peak memory, once ended."""

    @abc.abstractmethod
    def cleanup(self) -> None:
        """Remove what the run left behind (the container); called after the record is saved."""


class Cancelled(Exception):
    """Raised in the waiting thread on SIGINT/SIGTERM."""


class Backend(abc.ABC):
    name: str = ""
    hands_off = False

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.redactor = Redactor(environ)

    def check(self, plan: Plan) -> None:  # noqa: B027 - an optional hook
        """Validate that this backend can run ``plan``; must not write anything."""

    def describe(self, plan: Plan) -> dict[str, Any]:
        """What would run, for --dry-run."""
        return {"command": list(plan.config.settings.command)}

    def prepare(self, run: RunDir, record: RunRecord, reporter: Reporter) -> None:  # noqa: B027
        """Make what the run needs from its directory and record; may fill fields of ``record``
        (saved by the caller). Runs where the run executes: here, or on a Slurm node."""

    @abc.abstractmethod
    def start(self, run: RunDir, record: RunRecord, sink: LogSink) -> Execution:
        """Start the run; set ``record.container_id`` or ``record.pid``."""

    def detach(self, run: RunDir, record: RunRecord) -> RunRecord:
        """Start the run and return at once: here a supervisor process follows it."""
        from ..submission import start_detached

        return start_detached(run, self.environ)

    def hand_off(self, runs: list[tuple[RunDir, RunRecord]], reporter: Reporter) -> list[RunRecord]:
        """Give prepared runs to a scheduler (backends with ``hands_off``)."""
        raise NotImplementedError

    def reconcile(self, runs: list[tuple[RunDir, RunRecord]]) -> list[str]:
        """Update the records of runs that are not final from their real state; returns warnings.

        Here: a run whose following process (on this host) is gone is lost, unless a job
        queue owns the run (its lease expires and another worker runs it again).
        """
        for run, record in runs:
            if record.status == RUNNING and record.queue is None and _supervisor_gone(record):
                pid = (record.supervisor or {}).get("pid")
                record.mark_ended(LOST, datetime.now(UTC), reason=f"the process following the run (pid {pid}) is gone")
                save_record(run, record)
        return []

    def cancel(self, run: RunDir, record: RunRecord) -> RunRecord:
        """Stop the run and record it as cancelled."""
        pid = (record.supervisor or {}).get("pid")
        if pid and not _supervisor_gone(record):
            os.kill(pid, signal.SIGTERM)  # its execute() stops the run and records it
            deadline = time.monotonic() + CANCEL_WAIT_S
            while time.monotonic() < deadline:
                record = load_record(run)
                if record.final:
                    return record
                time.sleep(0.2)
        self.stop_orphan(record)
        record.mark_ended(CANCELLED, datetime.now(UTC), reason="cancelled by user")
        save_record(run, record)
        return record

    def stop_orphan(self, record: RunRecord) -> None:  # noqa: B027 - an optional hook
        """Stop what a run left running when nothing follows it any more."""

    def close(self) -> None:  # noqa: B027 - an optional hook
        """Release connections."""

    @property
    def execution_host(self) -> str:
        return hostname()


def _supervisor_gone(record: RunRecord) -> bool:
    """True when the run's following process was on this host and no longer exists."""
    supervisor = record.supervisor or {}
    if supervisor.get("host") != hostname() or not supervisor.get("pid"):
        return False
    try:
        cmdline = Path(f"/proc/{supervisor['pid']}/cmdline").read_bytes()
    except OSError:
        return True
    return b"expman" not in cmdline


def execute(
    backend: Backend,
    run: RunDir,
    record: RunRecord,
    clock: Clock,
    echo: bool,
    forward: Sequence[int] = (),
    interpret: Interpretation | None = None,
    stop_grace_s: float = STOP_GRACE_S,
    save: Saver = save_record,
) -> RunRecord:
    """Start the run, wait for it under its timeout, and record how it ended.

    SIGINT (Ctrl-C) and SIGTERM stop the run and record it as cancelled (or as ``interpret``
    says); signals in ``forward`` are passed on to the program. If ``save`` raises, the
    program is stopped and the error passed on.
    """
    sink = LogSink(run, backend.redactor, echo)
    switch = _CancelSwitch()
    previous: dict[int, Any] = {s: signal.signal(s, switch.handle) for s in (signal.SIGINT, signal.SIGTERM)}
    execution = None
    record.supervisor = {"pid": os.getpid(), "host": hostname()}
    try:
        try:
            with switch.armed():
                execution = backend.start(run, record, sink)
        except ExpmanError as exc:
            record.mark_ended(FAILED, clock(), reason=f"start failed: {exc.message}")
            save(run, record)
            raise
        except Cancelled:
            record.mark_ended(CANCELLED, clock(), reason="cancelled by user before start")
            save(run, record)
            return record
        record.mark_running(clock(), backend.execution_host)

        def announce() -> None:
            try:
                save(run, record)
            except ExpmanError:
                execution.kill()  # not ours to run any more (a queue lease was lost)
                raise

        previous.update(_install_forwarders(forward, execution))
        try:
            timeout_s = record.resources.get("timeout_s")
            status, reason, exit_code = _wait(execution, timeout_s, stop_grace_s, switch, announce)
        except ConnectionLostError:
            save(run, record)  # still running over there; reconnecting tells how it ends
            raise
        if status == CANCELLED and interpret is not None:
            status, reason = interpret(record)
        end = execution.end_state(exit_code)
        record.exit_code, record.oom_killed, record.peak_memory_bytes = (
            end.exit_code,
            end.oom_killed,
            end.peak_memory_bytes,
        )
        if status == FAILED and reason is None:
            reason = "out of memory" if end.oom_killed else f"exit code {end.exit_code}"
        sink.close()  # logs complete before the record says the run ended (logs --follow stops then)
        record.mark_ended(status, clock(), reason=reason)
        save(run, record)
    finally:
        sink.close()
        _restore_handlers(previous)
        if execution is not None:
            execution.cleanup()
    return record


def _wait(
    execution: Execution,
    timeout_s: float | None,
    stop_grace_s: float,
    switch: _CancelSwitch,
    announce: Callable[[], None],
) -> tuple[str, str | None, int]:
    """Wait for the end under the timeout; ``announce`` (record "running") once the program
    has run for RUNNING_RECORD_AFTER_S: a program that ends sooner gets only its final record,
    which halves the writes of a sweep of short tasks."""
    started = time.monotonic()
    try:
        first = RUNNING_RECORD_AFTER_S if timeout_s is None else min(RUNNING_RECORD_AFTER_S, timeout_s)
        with switch.armed():
            exit_code = execution.wait(first)
        if exit_code is None:
            announce()
            left = None if timeout_s is None else max(0.0, timeout_s - (time.monotonic() - started))
            with switch.armed():
                exit_code = execution.wait(left)
        if exit_code is None:
            execution.kill()
            return FAILED, "timeout", _wait_uninterrupted(execution)
    except Cancelled:
        execution.stop(stop_grace_s)
        return CANCELLED, "cancelled by user", _wait_uninterrupted(execution)
    return (SUCCEEDED if exit_code == 0 else FAILED), None, exit_code


def _wait_uninterrupted(execution: Execution) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exit_code = execution.wait(None)
    assert exit_code is not None
    return exit_code


class _CancelSwitch:
    """SIGINT/SIGTERM raise ``Cancelled`` only while the run starts or is waited on; one that
    arrives while the record is written is kept and acted on at the next wait, so a record
    write is never cut in half."""

    def __init__(self) -> None:
        self._armed = False
        self._requested: str | None = None

    def handle(self, signum: int, frame: FrameType | None) -> None:
        self._requested = signal.Signals(signum).name
        if self._armed:
            self._armed = False
            raise Cancelled(self._requested)

    @contextmanager
    def armed(self) -> Iterator[None]:
        if self._requested:
            raise Cancelled(self._requested)
        self._armed = True
        try:
            yield
        finally:
            self._armed = False


def _install_forwarders(signums: Sequence[int], execution: Execution) -> dict[int, Any]:
    return {s: signal.signal(s, lambda signum, frame: execution.signal(signum)) for s in signums}


def _restore_handlers(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)
