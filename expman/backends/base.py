"""What every backend is: narrow hooks that return data, and the side effects they share.

``check`` runs before anything is written; ``prepare`` makes what the run needs (an image,
an extracted archive) and fills fields of the record; ``start`` returns an ``Execution``
that pumps output into a LogSink and can be waited on, signalled, stopped and killed.
``flow.execute`` drives an execution and records it.

A backend that hands runs to a scheduler (Slurm) sets ``hands_off`` and is driven by
``submit.run`` through its own hooks. ``reconcile`` brings the records of runs that are not
final up to date with where they really run; ``cancel`` stops one.
"""

from __future__ import annotations

import abc
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from signal import SIGKILL, SIGTERM
from typing import TYPE_CHECKING, Any

from ..errors import ExpmanError, LaunchError, UsageError
from ..hostinfo import hostname
from ..redact import Redactor
from ..rundir import lifecycle
from ..rundir.files import write_bytes_atomic
from ..rundir.layout import RunDir, utc_now
from ..rundir.lifecycle import Recorder
from ..rundir.logs import LogSink
from ..rundir.record import EndState, RunRecord, RunStatus, load_record

if TYPE_CHECKING:
    from ..experiment.plan import Plan
    from ..progress import Reporter

DEFAULT_KILL_GRACE_S = 30.0  # resources.kill_grace of records made before it existed
CANCEL_MARGIN_S = 30.0  # beyond the program's kill grace, for the follower to record the end
DETACH_START_TIMEOUT_S = 120.0


def attempt_variables(record: RunRecord) -> dict[str, str]:
    """The program's environment: which attempt it is, and whether it starts from a restored
    checkpoint."""
    return {"EXPMAN_ATTEMPT": str(record.attempt_number), "EXPMAN_RESUMED": "1" if record.restored else "0"}


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
    release: list[str] | None = None  # lets the held submission run
    withdraw: list[str] | None = None  # takes it back, when recording it failed


class Backend(abc.ABC):
    name: str = ""
    hands_off = False

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.redactor = Redactor(environ)

    def check(self, plan: Plan) -> None:  # noqa: B027 - an optional hook
        """Validate that this backend can run ``plan``; must not write anything."""

    def check_record(self, record: RunRecord) -> None:  # noqa: B027 - an optional hook
        """Validate that this backend can run again what ``record`` ran (``expman rerun``, which
        has no plan); must not write anything."""

    def describe(self, plan: Plan) -> dict[str, Any]:
        """What would run, for --dry-run."""
        return {"command": list(plan.config.settings.command)}

    def prepare(self, run: RunDir, record: RunRecord, reporter: Reporter) -> None:  # noqa: B027
        """Make what the run needs from its directory and record; may fill fields of ``record``
        (saved by the caller). Runs where the run executes: here, or on a Slurm node."""

    @abc.abstractmethod
    def start(self, run: RunDir, record: RunRecord, sink: LogSink) -> Execution:
        """Start the run; set ``record.container_id`` or ``record.pid``."""

    def pull_checkpoint(self, run: RunDir, record: RunRecord, paths: Sequence[str]) -> None:  # noqa: B027
        """Bring the checkpoint ``paths`` of the run's output into ``run.output`` here, when the
        output lives elsewhere (before a snapshot)."""

    def push_checkpoint(self, run: RunDir, record: RunRecord, paths: Sequence[str]) -> None:  # noqa: B027
        """Make the checkpoint ``paths`` of the output where the program runs what ``run.output``
        holds here (after a restore, before the program starts)."""

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
        accepted: Accepted | None = None
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
            if accepted is not None and accepted.withdraw:  # never leave a held job behind
                with contextlib.suppress(ExpmanError):
                    self.command(accepted.withdraw)
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
        """Stop the run and record it as cancelled: through the process that follows it, when
        that runs here; a run followed on another host is cancelled there."""
        supervisor = record.supervisor or {}
        if supervisor.get("pid") and supervisor.get("host") != hostname():
            raise UsageError(
                f"run {record.run_id} is followed by a process on {supervisor.get('host')}; "
                f"run 'expman cancel {record.run_id}' there"
            )
        if _supervisor_alive(record) and _signal(supervisor["pid"], signal.SIGTERM):
            # its execute() stops the program (asking first, then killing after the grace) and records it
            deadline = (
                time.monotonic() + float(record.resources.get("kill_grace_s", DEFAULT_KILL_GRACE_S)) + CANCEL_MARGIN_S
            )
            while time.monotonic() < deadline:
                record = load_record(run)
                if record.final:
                    return record
                time.sleep(0.2)
        self.stop_orphan(record)
        return lifecycle.end_if_not_final(run, utc_now(), lambda current: (RunStatus.CANCELLED, "cancelled by user"))

    def stop_orphan(self, record: RunRecord) -> None:  # noqa: B027 - an optional hook
        """Stop what a run left running when nothing follows it any more."""

    def reaches(self, record: RunRecord) -> bool:
        """Whether ``stop_orphan`` can stop what the run's last attempt left running: a
        process or container of this host."""
        return record.host == hostname()

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
    return supervisor.get("host") == hostname() and bool(supervisor.get("pid")) and not _supervisor_alive(record)


def _supervisor_alive(record: RunRecord) -> bool:
    """True when the run's following process is on this host and still an expman process
    (not another process that was given its pid since)."""
    supervisor = record.supervisor or {}
    if supervisor.get("host") != hostname() or not supervisor.get("pid"):
        return False
    try:
        return b"expman" in Path(f"/proc/{supervisor['pid']}/cmdline").read_bytes()
    except OSError:
        return False


def _signal(pid: int, signum: int) -> bool:
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True


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
