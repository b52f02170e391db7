"""The flow every backend shares: check -> prepare -> start -> wait -> record -> clean up.

A backend fills narrow hooks that return data. ``check`` runs before anything is written;
``prepare`` makes what the run needs (an image, an extracted archive) and fills fields of
the record; ``start`` returns an ``Execution`` that pumps output into a LogSink and can be
waited on, signalled, stopped and killed. ``execute`` here owns timeouts, cancellation and
every change of the record, written through a ``lifecycle.Recorder``.

A backend that hands runs to a scheduler (Slurm) sets ``hands_off`` and is driven by
``submit.run`` through its own hooks. ``reconcile`` brings the records of runs that are not
final up to date with where they really run; ``cancel`` stops one.
"""

from __future__ import annotations

import abc
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from signal import SIGKILL, SIGTERM
from types import FrameType
from typing import TYPE_CHECKING, Any

from ..errors import ConnectionLostError, ExpmanError, LaunchError, RecordError, StaleAttemptError
from ..hostinfo import hostname
from ..redact import Redactor
from ..rundir import lifecycle
from ..rundir.files import reserve_space, write_bytes_atomic
from ..rundir.layout import Clock, RunDir, utc_now
from ..rundir.lifecycle import Recorder
from ..rundir.logs import LogSink
from ..rundir.record import EndState, RunRecord, RunStatus, load_record

if TYPE_CHECKING:
    from ..experiment.plan import Plan
    from ..progress import Reporter

DEFAULT_KILL_GRACE_S = 30.0
RUNNING_RECORD_AFTER_S = 1.0
WATCH_S = 1.0  # how often a wait looks whether the run's logs and record can still be written
CANCEL_WAIT_S = 60.0
DETACH_START_TIMEOUT_S = 120.0
# What a SIGTERM/SIGINT means, as (status, reason); a Slurm node tells timeouts and requeues apart.
Interpretation = Callable[[RunRecord], tuple[RunStatus, str]]


class Execution(abc.ABC):
    """A started run: one container or one process tree."""

    @abc.abstractmethod
    def wait(self, timeout_s: float | None) -> int | None:
        """The exit code once ended (output fully pumped), or None if ``timeout_s`` passed."""

    @abc.abstractmethod
    def signal(self, signum: int) -> None:
        """Deliver ``signum`` to every process of the program (e.g. SIGUSR1: checkpoint now)."""

    def kill(self) -> None:
        self.signal(SIGKILL)

    def stop(self, grace_s: float, signals: Sequence[int] = (SIGTERM,)) -> None:
        """Ask the program to end with each of ``signals`` in turn, sharing ``grace_s`` between
        them; kill it if it has not ended by then."""
        for signum in signals:
            self.signal(signum)
            if self.wait(grace_s / len(signals)) is not None:
                return
        self.kill()

    @abc.abstractmethod
    def end_state(self, exit_code: int) -> EndState:
        """Exit code, OOM flag and peak memory, once ended."""

    @abc.abstractmethod
    def cleanup(self) -> None:
        """Remove what the run left behind (the container); called after the record is saved."""


class Cancelled(Exception):
    """Raised in the waiting thread on SIGINT/SIGTERM."""


@dataclass(frozen=True)
class Submission:
    """Runs handed to a scheduler, as data: the files to write and the command that submits them."""

    files: dict[Path, bytes]
    argv: list[str]
    summary: str


@dataclass(frozen=True)
class Accepted:
    """What the scheduler answered: its job id and, per run, the record fields to set."""

    job_id: str
    fields: list[dict[str, Any]]
    release: list[str] | None = None


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
        return start_supervisor(run, self.environ)

    # --- backends that hand runs to a scheduler (``hands_off``) -----------------------------

    def submission(self, runs: Sequence[tuple[RunDir, RunRecord]]) -> Submission:
        """The files and command that hand ``runs`` to the scheduler."""
        raise NotImplementedError

    def accepted(self, submission: Submission, output: str, count: int) -> Accepted:
        """Parse the submitting command's ``output``."""
        raise NotImplementedError

    def command(self, argv: Sequence[str]) -> str:
        """Run one of the scheduler's commands; its stdout, or a typed error."""
        raise NotImplementedError

    def hand_off(self, runs: list[tuple[RunDir, RunRecord]], reporter: Reporter) -> list[RunRecord]:
        """Give prepared runs to the scheduler and record its job ids; if that fails, every
        run is recorded failed with the reason."""
        submission = self.submission(runs)
        try:
            for path, data in submission.files.items():
                path.parent.mkdir(parents=True, exist_ok=True)
                write_bytes_atomic(path, data)
            accepted = self.accepted(submission, self.command(submission.argv), len(runs))
            for (run, record), fields in zip(runs, accepted.fields, strict=True):
                for name, value in fields.items():
                    setattr(record, name, value)
                lifecycle.save(run, record)
            if accepted.release:
                self.command(accepted.release)
        except ExpmanError as exc:
            for run, record in runs:
                Recorder(run).end(record, RunStatus.FAILED, utc_now(), reason=exc.message)
            raise
        reporter.info(submission.summary.format(job_id=accepted.job_id))
        return [record for _, record in runs]

    def reconcile(self, runs: list[tuple[RunDir, RunRecord]]) -> list[str]:
        """Update the records of runs that are not final from their real state; returns warnings.

        Here: a run whose following process (on this host) is gone is lost, unless a job
        queue owns the run (its lease expires and another worker runs it again).
        """
        for run, record in runs:
            if record.status == RunStatus.RUNNING and record.queue is None and _supervisor_gone(record):
                lifecycle.end_if_not_final(run, utc_now(), _lost_if_running)
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
        return lifecycle.end_if_not_final(run, utc_now(), lambda current: (RunStatus.CANCELLED, "cancelled by user"))

    def stop_orphan(self, record: RunRecord) -> None:  # noqa: B027 - an optional hook
        """Stop what a run left running when nothing follows it any more."""

    def close(self) -> None:  # noqa: B027 - an optional hook
        """Release connections."""

    @property
    def execution_host(self) -> str:
        return hostname()


def _lost_if_running(record: RunRecord) -> tuple[RunStatus, str] | None:
    if record.status != RunStatus.RUNNING:
        return None
    pid = (record.supervisor or {}).get("pid")
    return RunStatus.LOST, f"the process following the run (pid {pid}) is gone"


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


def start_supervisor(run: RunDir, environ: Mapping[str, str]) -> RunRecord:
    """Hand the run to ``python -m expman.runners.supervise`` and return once it runs (or ended)."""
    with open(run.logs / "supervisor.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "expman.runners.supervise", str(run.path)],
            env=dict(environ),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    deadline = time.monotonic() + DETACH_START_TIMEOUT_S
    while time.monotonic() < deadline:
        record = load_record(run)
        if record.status != RunStatus.QUEUED:
            return record
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise LaunchError(f"run {run.run_id} did not start; see {run.logs / 'supervisor.log'}")


# --- the execution flow ---------------------------------------------------------------------


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
    reserve_space(run.path.parent)
    sink = LogSink(run, backend.redactor, echo)
    switch = _CancelSwitch()
    previous: dict[int, Any] = {s: signal.signal(s, switch.handle) for s in (signal.SIGINT, signal.SIGTERM)}
    execution = None
    record.supervisor = {"pid": os.getpid(), "host": hostname()}
    try:
        execution = _start(backend, run, record, sink, switch, recorder, clock)
        if execution is None:
            return record
        previous.update(_install_forwarders(forward, execution))
        stopping = Stopping.of(record, max_grace_s, checkpoint_signal)
        status, reason, exit_code = _follow(execution, record, switch, recorder, stopping, interpret, sink)
        end = execution.end_state(exit_code)
        if status == RunStatus.FAILED and reason is None:
            reason = "out of memory" if end.oom_killed else f"exit code {end.exit_code}"
        sink.close()  # logs complete before the record says the run ended (logs --follow stops then)
        recorder.end(record, status, clock(), reason=reason, end=end)
    finally:
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
) -> Execution | None:
    """The started execution, now recorded running; None when cancelled before it started."""
    try:
        with switch.armed():
            execution = backend.start(run, record, sink)
    except ExpmanError as exc:
        recorder.end(record, RunStatus.FAILED, clock(), reason=f"start failed: {exc.message}")
        raise
    except Cancelled:
        recorder.end(record, RunStatus.CANCELLED, clock(), reason="cancelled by user before start")
        return None
    record.mark_running(clock(), backend.execution_host)
    return execution


def _follow(
    execution: Execution,
    record: RunRecord,
    switch: _CancelSwitch,
    recorder: Recorder,
    stopping: Stopping,
    interpret: Interpretation | None,
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

    def why(current: RunRecord) -> tuple[RunStatus, str]:
        return interpret(current) if interpret is not None else (RunStatus.CANCELLED, "cancelled by user")

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
