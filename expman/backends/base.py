"""The flow every backend shares: check -> prepare -> start -> wait -> record -> clean up.

A backend fills narrow hooks. ``check`` runs before anything is written; ``prepare`` makes
what the run needs (an image, an extracted archive); ``start`` returns an ``Execution``
that pumps output into a LogSink and can be waited on, stopped and killed. This module
owns timeouts, cancellation and the status written to run.json.
"""

from __future__ import annotations

import abc
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

from ..errors import ExpmanError
from ..hostinfo import hostname
from ..logsink import LogSink
from ..record import CANCELLED, FAILED, SUCCEEDED, RunRecord, save_record
from ..redact import Redactor
from ..rundir import Clock, RunDir

if TYPE_CHECKING:
    from ..progress import Reporter
    from ..submission import Plan

STOP_GRACE_S = 10.0


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
    def end_state(self, exit_code: int) -> EndState:
        """Exit code, OOM flag and peak memory, once ended."""

    @abc.abstractmethod
    def cleanup(self) -> None:
        """Remove what the run left behind (the container); called after the record is saved."""


class Cancelled(Exception):
    """Raised in the waiting thread on SIGINT/SIGTERM."""


class Backend(abc.ABC):
    name: str = ""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.redactor = Redactor(environ)

    def check(self, plan: Plan) -> None:  # noqa: B027 - an optional hook
        """Validate that this backend can run ``plan``; must not write anything."""

    def describe(self, plan: Plan) -> dict[str, Any]:
        """What would run, for --dry-run."""
        return {"command": list(plan.config.settings.command)}

    def prepare(self, plan: Plan, run: RunDir, record: RunRecord, reporter: Reporter) -> None:  # noqa: B027
        """Make what the run needs; may fill fields of ``record`` (saved by the caller)."""

    @abc.abstractmethod
    def start(self, run: RunDir, record: RunRecord, sink: LogSink) -> Execution:
        """Start the run; set ``record.container_id`` or ``record.pid``."""

    @property
    def execution_host(self) -> str:
        return hostname()


def execute(backend: Backend, run: RunDir, record: RunRecord, clock: Clock, echo: bool) -> RunRecord:
    """Start the run, wait for it under its timeout, and record how it ended.

    SIGINT (Ctrl-C) and SIGTERM stop the run and record it as cancelled.
    """
    sink = LogSink(run, backend.redactor, echo)
    previous = _install_cancel_handlers()
    execution = None
    try:
        try:
            execution = backend.start(run, record, sink)
        except ExpmanError as exc:
            record.mark_ended(FAILED, clock(), reason=f"start failed: {exc.message}")
            save_record(run, record)
            raise
        except Cancelled:
            record.mark_ended(CANCELLED, clock(), reason="cancelled by user before start")
            save_record(run, record)
            return record
        record.mark_running(clock(), backend.execution_host)
        save_record(run, record)
        status, reason, exit_code = _wait(execution, record.resources.get("timeout_s"))
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
        save_record(run, record)
    finally:
        sink.close()
        _restore_handlers(previous)
        if execution is not None:
            execution.cleanup()
    return record


def _wait(execution: Execution, timeout_s: float | None) -> tuple[str, str | None, int]:
    try:
        exit_code = execution.wait(timeout_s)
        if exit_code is None:
            execution.kill()
            return FAILED, "timeout", _wait_uninterrupted(execution)
    except Cancelled:
        execution.stop(STOP_GRACE_S)
        return CANCELLED, "cancelled by user", _wait_uninterrupted(execution)
    return (SUCCEEDED if exit_code == 0 else FAILED), None, exit_code


def _wait_uninterrupted(execution: Execution) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exit_code = execution.wait(None)
    assert exit_code is not None
    return exit_code


def _raise_cancelled(signum: int, frame: FrameType | None) -> None:
    raise Cancelled(signal.Signals(signum).name)


def _install_cancel_handlers() -> dict[int, Any]:
    return {s: signal.signal(s, _raise_cancelled) for s in (signal.SIGINT, signal.SIGTERM)}


def _restore_handlers(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)
