"""The execution flow every backend shares: start -> wait under the timeout -> stop when
asked -> record the end -> clean up. A backend supplies the ``Execution``; this module owns
timeouts, cancellation, stopping (``Stopping``) and every change of the record, written
through a ``lifecycle.Recorder``."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

from ..errors import ConnectionLostError, ExpmanError, RecordError, StaleAttemptError
from ..hostinfo import hostname
from ..rundir.files import reserve_space
from ..rundir.layout import Clock, RunDir
from ..rundir.lifecycle import Recorder
from ..rundir.logs import LogSink
from ..rundir.record import RunRecord, RunStatus
from .base import DEFAULT_KILL_GRACE_S, Backend, Execution
from .checkpointing import Checkpointing

RUNNING_RECORD_AFTER_S = 1.0
WATCH_S = 1.0  # how often a wait looks whether the run's logs and record can still be written
_BY_USER = "cancelled by user"
# What a SIGTERM/SIGINT means, as (status, reason); a Slurm node tells timeouts and requeues apart.
Interpretation = Callable[[RunRecord], tuple[RunStatus, str]]


class Cancelled(Exception):
    """Raised in the waiting thread on SIGINT/SIGTERM."""


@dataclass(frozen=True)
class Stopping:
    """How a program is asked to stop (a timeout, a cancel, a worker or node going away): its
    stop signal, then SIGKILL after the grace; a run that will be tried again is first sent
    the checkpoint signal, if there is one, sharing the grace."""

    grace_s: float
    signal: int = signal.SIGTERM
    checkpoint: int | None = None

    @classmethod
    def of(cls, record: RunRecord, max_grace_s: float | None = None, checkpoint: int | None = None) -> Stopping:
        grace_s = float(record.resources.get("kill_grace_s", DEFAULT_KILL_GRACE_S))
        if max_grace_s is not None:
            grace_s = min(grace_s, max_grace_s)
        name = str(record.resources.get("stop_signal") or "TERM")
        return cls(grace_s, signal.Signals["SIG" + name.removeprefix("SIG")], checkpoint)

    def signals(self, status: RunStatus) -> tuple[int, ...]:
        if status == RunStatus.QUEUED and self.checkpoint is not None:
            return (self.checkpoint, self.signal)
        return (self.signal,)


def execute(
    backend: Backend,
    run: RunDir,
    record: RunRecord,
    clock: Clock,
    echo: bool,
    recorder: Recorder | None = None,
    forward: Sequence[int] = (),
    interpret: Interpretation | None = None,
    max_grace_s: float | None = None,
    checkpoint_signal: int | None = None,
) -> RunRecord:
    """Start the run, wait for it under its timeout, and record how it ended.

    SIGINT (Ctrl-C) and SIGTERM stop the run and record it as cancelled (or as ``interpret``
    says: a requeue, a lost lease); signals in ``forward`` are passed on to the program. A
    stop asks first and kills after the grace (``Stopping``). If a write of the record raises,
    the program is stopped and the error passed on.
    """
    recorder = recorder or Recorder(run)
    why = interpret or _cancelled_by_user
    reserve_space(run.path.parent)
    sink = LogSink(run, backend.redactor, echo)
    switch = _CancelSwitch()
    previous: dict[int, Any] = {s: signal.signal(s, switch.handle) for s in (signal.SIGINT, signal.SIGTERM)}
    execution = None
    record.supervisor = {"pid": os.getpid(), "host": hostname()}
    checkpoints = Checkpointing.of(backend, run, record, recorder)
    try:
        execution = _start(backend, run, record, sink, switch, recorder, clock, why, checkpoints)
        if execution is None:
            return record
        previous.update(_install_forwarders(forward, execution))
        stopping = Stopping.of(record, max_grace_s, checkpoint_signal)
        status, reason, exit_code = _follow(execution, record, switch, recorder, stopping, why, sink)
        if checkpoints is not None and recorder.holds_run:
            checkpoints.finish("end" if status == RunStatus.SUCCEEDED or reason is None else "stop")
        end = execution.end_state(exit_code)
        if status == RunStatus.FAILED and reason is None:
            reason = "out of memory" if end.oom_killed else f"exit code {end.exit_code}"
        sink.close()  # logs complete before the record says the run ended (logs --follow stops then)
        recorder.end(record, status, clock(), reason=reason, end=end)
    finally:
        if checkpoints is not None:
            checkpoints.close()
        sink.close()
        _restore_handlers(previous)
        if execution is not None:
            execution.cleanup()
    return record


def _start(
    backend: Backend,
    run: RunDir,
    record: RunRecord,
    sink: LogSink,
    switch: _CancelSwitch,
    recorder: Recorder,
    clock: Clock,
    why: Interpretation,
    checkpoints: Checkpointing | None,
) -> Execution | None:
    """The started execution (from the newest checkpoint restored, if any), now recorded
    running, its checkpoints taken from now on; None when stopped before it started (as
    ``why`` says: cancelled, or back to the queue when a worker or node goes away)."""
    try:
        if checkpoints is not None:
            checkpoints.restore()
        with switch.armed():
            execution = backend.start(run, record, sink)
    except ExpmanError as exc:
        recorder.end(record, RunStatus.FAILED, clock(), reason=f"start failed: {exc.message}")
        raise
    except Cancelled:
        status, reason = why(record)
        recorder.end(record, status, clock(), reason=f"{reason} before start" if reason == _BY_USER else reason)
        return None
    record.mark_running(clock(), backend.execution_host)
    if checkpoints is not None:
        checkpoints.start()
    return execution


def _follow(
    execution: Execution,
    record: RunRecord,
    switch: _CancelSwitch,
    recorder: Recorder,
    stopping: Stopping,
    why: Interpretation,
    sink: LogSink,
) -> tuple[RunStatus, str | None, int]:
    """Wait for the end; the record says "running" once the program has run a while. A run
    whose record or logs cannot be written (a full disk) is stopped and ends failed."""
    trouble: list[str] = []

    def announce() -> None:
        try:
            recorder.save(record)
        except StaleAttemptError:
            execution.kill()  # not ours to run any more (a queue lease was lost)
            raise
        except RecordError as exc:
            trouble.append(exc.message)

    def failure() -> str | None:
        return trouble[0] if trouble else sink.failure

    try:
        return _wait(execution, record, switch, announce, failure, stopping, why)
    except ConnectionLostError:
        recorder.save(record)  # still running over there; reconnecting tells how it ends
        raise


def _wait(
    execution: Execution,
    record: RunRecord,
    switch: _CancelSwitch,
    announce: Callable[[], None],
    failure: Callable[[], str | None],
    stopping: Stopping,
    why: Interpretation,
) -> tuple[RunStatus, str | None, int]:
    """Wait for the end under the timeout; ``announce`` (record "running") once the program
    has run for RUNNING_RECORD_AFTER_S: a program that ends sooner gets only its final record,
    which halves the writes of a sweep of short tasks. A timeout, a ``failure`` or a stop
    request asks the program to stop and waits for it (``Stopping``)."""
    started = time.monotonic()
    timeout_s = record.resources.get("timeout_s")
    try:
        first = RUNNING_RECORD_AFTER_S if timeout_s is None else min(RUNNING_RECORD_AFTER_S, timeout_s)
        with switch.armed():
            exit_code = _wait_watching(execution, first, failure)
        if exit_code is None and failure() is None:
            announce()
            left = None if timeout_s is None else max(0.0, timeout_s - (time.monotonic() - started))
            with switch.armed():
                exit_code = _wait_watching(execution, left, failure)
        if exit_code is None:
            execution.stop(stopping.grace_s, (stopping.signal,))
            return RunStatus.FAILED, failure() or "timeout", _wait_uninterrupted(execution)
    except Cancelled:
        status, reason = why(record)
        execution.stop(stopping.grace_s, stopping.signals(status))
        return status, reason, _wait_uninterrupted(execution)
    if failure() is not None:  # ended by itself, but its logs or record are incomplete
        return RunStatus.FAILED, failure(), exit_code
    return (RunStatus.SUCCEEDED if exit_code == 0 else RunStatus.FAILED), None, exit_code


def _wait_watching(execution: Execution, timeout_s: float | None, failure: Callable[[], str | None]) -> int | None:
    """``execution.wait`` in slices of WATCH_S; None early once ``failure()`` says the run must stop."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        exit_code = execution.wait(WATCH_S if left is None else min(WATCH_S, left))
        if exit_code is not None or failure() is not None:
            return exit_code
        if deadline is not None and time.monotonic() >= deadline:
            return None


def _cancelled_by_user(record: RunRecord) -> tuple[RunStatus, str]:
    return RunStatus.CANCELLED, _BY_USER


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
