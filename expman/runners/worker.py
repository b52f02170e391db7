"""``expman worker``: claim jobs from the queue and run them, one at a time per process.

A claimed job is a run directory made by ``expman schedule``; the worker runs it with the
run's backend (or ``--backend``) under the same contract as ``expman submit``: prepare,
execute, record. Every attempt is appended to the record's ``attempts`` (numbered as the
queue counts claims); an earlier attempt's logs move to logs/attempt-N/.

While a job runs, a heartbeat thread extends its lease every lease/3 seconds. If the
heartbeat finds the lease lost (this worker was stopped or cut off for longer than the
lease and the job went to a newer attempt), the program is stopped and nothing more is
recorded: every write of the record checks the job still carries this worker's attempt
number, and the last write commits the outcome to the queue under the run's record lock,
so a newer attempt always starts from the final record of the one before.

Retries: a failed attempt goes back to the queue after ``backoff`` (doubled each time)
until ``max_attempts``; configuration errors (bad config, image build, a command that
cannot start) and timeouts are final at once. SIGTERM or Ctrl-C stops the program and returns the job
to the queue without using up an attempt.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from ..backends import make_backend
from ..backends.base import Backend
from ..backends.flow import execute
from ..errors import (
    BuildError,
    ConfigError,
    ExpmanError,
    LaunchError,
    RecordError,
    StaleAttemptError,
    UnsafeArchiveError,
    UsageError,
)
from ..hostinfo import hostname
from ..progress import Reporter
from ..queue import Job, JobState, open_queue
from ..redact import Redactor
from ..rundir import lifecycle
from ..rundir.layout import RunDir, utc_now
from ..rundir.lifecycle import Finisher, Recorder, record_lock
from ..rundir.record import EndState, RunRecord, RunStatus, load_record
from .heartbeat import Attempt, Heartbeat

IDLE_POLL_S = 1.0  # the longest wait between looks for claimable jobs
FIRST_IDLE_POLL_S = 0.05  # the first wait: doubled up to IDLE_POLL_S while nothing is claimable
PERMANENT_ERRORS = (ConfigError, BuildError, LaunchError, UnsafeArchiveError)
MAX_BACKOFF_S = 3600.0


class _Interrupted(Exception):
    """SIGTERM/SIGINT while no program runs (claiming, idle, preparing)."""


class Worker:
    def __init__(
        self,
        url: str,
        environ: Mapping[str, str],
        backend: str | None = None,
        forever: bool = False,
        out: TextIO | None = None,
        idle_poll_s: float = IDLE_POLL_S,
    ) -> None:
        self.id = f"{hostname()}:{os.getpid()}:{secrets.token_hex(2)}"
        self.url = url
        self.environ = environ
        self.backend_name = backend
        self.forever = forever
        self.out = out or sys.stdout  # looked up now: the module may be imported while stdout is redirected
        self.idle_poll_s = idle_poll_s
        self.queue = open_queue(url, application_name=f"expman-worker {self.id}")
        self._stopping = False
        self._interruptible = False
        self._attempt: Attempt | None = None
        self._done = 0
        self._heartbeat = Heartbeat(url, self.id, self._say)
        self._backends: dict[str, Backend] = {}
        self._reporter = Reporter(quiet=True)
        self._environment = Redactor(environ).environment(environ)  # recorded with each attempt

    def run(self) -> int:
        """Claim and run jobs until none is left (or forever); the number of jobs run."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        self.queue.register_worker(self.id, hostname(), os.getpid())
        self._say(f"worker {self.id} on {self.queue.shown}")
        self._heartbeat.start()
        self._finisher = Finisher()
        idle_s = FIRST_IDLE_POLL_S  # short at first: the last running jobs of a sweep may end any moment
        try:
            while not self._stopping:
                try:
                    with self._interruptions():
                        job = self.queue.claim(self.id)
                        if job is None:
                            if not self.forever and not self.queue.waiting():
                                break
                            self.queue.wait_for_work(min(idle_s, self.idle_poll_s))
                            idle_s *= 2
                            continue
                    idle_s = FIRST_IDLE_POLL_S
                    self.run_job(job)
                    self._done += 1
                    if self._finisher.error:
                        break
                except _Interrupted:
                    break
        finally:
            self._finisher.close()
            self._heartbeat.close()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            for backend in self._backends.values():
                backend.close()
            self.queue.unregister_worker(self.id)
            self.queue.close()
        if self._finisher.error:
            raise self._finisher.error
        self._say(f"worker {self.id} stopping after {self._done} jobs")
        return self._done

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """Stop after this job; interrupt now only while claiming, idle or preparing (never
        in the middle of writing a record). The heartbeat's own SIGTERM stops the job only."""
        attempt = self._attempt
        if not self._heartbeat.sent(attempt):
            self._stopping = True
        elif attempt is None:  # the heartbeat's, for an attempt that ended first: nothing to stop
            return
        if self._interruptible:
            self._interruptible = False
            raise _Interrupted(signal.Signals(signum).name)

    @contextmanager
    def _interruptions(self) -> Iterator[None]:
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False

    # --- one job -----------------------------------------------------------------

    def run_job(self, job: Job) -> None:
        run = RunDir(Path(job.run_dir))
        tag = f"job {job.id} (run {job.run_id}{' ' + job.label if job.label else ''}) attempt {job.attempt}"
        if not run.record.exists():
            error = f"run directory {run.path} is not on {hostname()}; workers need the scheduler's runs_root"
            self.queue.finish(job, JobState.FAILED, error)
            self._say(f"{tag}: {error}")
            return
        try:
            begun = self._begin(run, job)
        except (RecordError, UsageError) as exc:  # a damaged run directory fails its job, not the worker
            self.queue.finish(job, JobState.FAILED, exc.message)
            self._say(f"{tag}: failed: {exc.message}")
            return
        try:
            if begun is None:
                self._say(f"{tag}: failed; its worker went silent on the last of {job.max_attempts} attempts")
                return
            record, backend = begun
            self._say(f"{tag}/{job.max_attempts} started")
            record = self._execute(run, record, job, backend)
            self._say(f"{tag}: {record.status}" + (f" ({record.reason})" if record.reason else ""))
        except StaleAttemptError as exc:
            self._say(f"{tag}: {exc.message}")

    def _backend(self, name: str) -> Backend:
        if name not in self._backends:
            self._backends[name] = make_backend(name, self.environ)
        return self._backends[name]

    def _begin(self, run: RunDir, job: Job) -> tuple[RunRecord, Backend] | None:
        """Begin this attempt in the record (stopping what an earlier, silent attempt left
        running here); the record and the backend to run it on. None if the job has no
        attempts left (recorded failed)."""
        record = load_record(run)
        backend = self._backend(self.backend_name or record.backend)
        if record.status in (RunStatus.RUNNING, RunStatus.LOST) and backend.reaches(record):
            backend.stop_orphan(record)
        if job.attempt > job.max_attempts:
            self._fail_exhausted(run, job)
            return None
        record = lifecycle.begin_attempt(
            run,
            utc_now(),
            number=job.attempt,
            unfinished="its worker stopped heartbeating",
            worker=self.id,
            host=hostname(),
            environment=self._environment,  # the worker's own, e.g. SLURM_JOB_ID
        )
        return record, backend

    def _fail_exhausted(self, run: RunDir, job: Job) -> None:
        """The worker of the last allowed attempt went silent: the job and its run fail."""
        reason = f"lost: the worker of attempt {job.attempt - 1} stopped heartbeating; {job.max_attempts} attempts used"
        with record_lock(run):
            record = load_record(run)
            if record.attempts and "ended_at" not in record.attempts[-1]:
                record.attempts[-1].update(
                    ended_at=utc_now().isoformat(), status=str(RunStatus.LOST), reason="its worker stopped heartbeating"
                )
            record.mark_ended(RunStatus.FAILED, utc_now(), reason=reason)
            if self.queue.finish(job, JobState.FAILED, reason):
                lifecycle.write_locked(run, record)

    def _execute(self, run: RunDir, record: RunRecord, job: Job, backend: Backend) -> RunRecord:
        attempt = self._attempt = Attempt(job)
        self._heartbeat.attempt_started(attempt)
        recorder = _FencedRecorder(self, run, attempt)
        try:
            try:
                with self._interruptions():
                    backend.prepare(run, record, self._reporter)
                interpret = lambda current: self._interpret(attempt)  # noqa: E731
                return execute(backend, run, record, utc_now, echo=False, recorder=recorder, interpret=interpret)
            except _Interrupted:
                status, reason = self._interpret(attempt)
                recorder.end(record, status, utc_now(), reason=reason)
                return record
            except StaleAttemptError:
                raise
            except ExpmanError as exc:
                if not attempt.settled:  # failed before execute() recorded an end
                    recorder.permanent = isinstance(exc, PERMANENT_ERRORS)
                    recorder.end(record, RunStatus.FAILED, utc_now(), reason=exc.message)
                return record
        finally:
            self._attempt = self._heartbeat.attempt = None
            self._heartbeat.attempt_ended()

    def _interpret(self, attempt: Attempt) -> tuple[RunStatus, str]:
        """Why the program was stopped: the lease was lost, a cancel, or this worker stopping."""
        if attempt.lost:
            return RunStatus.FAILED, "lease lost: a newer attempt owns this run"
        if attempt.cancel:
            return RunStatus.CANCELLED, "cancelled by user"
        self._stopping = True  # SIGTERM or Ctrl-C to this worker
        return RunStatus.QUEUED, f"attempt {attempt.job.attempt} interrupted: its worker stopped; back in the queue"

    def _say(self, line: str) -> None:
        print(f"{datetime.now().strftime('%H:%M:%S')} {line}", file=self.out, flush=True)


class _FencedRecorder(Recorder):
    """Writes the record only while this worker's attempt holds the job; at the end of the
    attempt, commits the outcome to the queue first, under the record's lock, so a newer
    attempt always starts from the final record of the one before."""

    def __init__(self, worker: Worker, run: RunDir, attempt: Attempt) -> None:
        super().__init__(run)
        self.worker, self.attempt = worker, attempt
        self.permanent = False  # a failure that would fail the same way again

    @property
    def holds_run(self) -> bool:
        return not self.attempt.lost

    def save(self, record: RunRecord) -> None:
        job = self.attempt.job
        with record_lock(self.run):
            if self.attempt.lost or (not self.attempt.fresh() and self.worker.queue.heartbeat(job) == "lost"):
                raise StaleAttemptError(f"attempt {job.attempt} lost its lease; stopped, nothing recorded")
            lifecycle.write_locked(self.run, record)

    def end(
        self,
        record: RunRecord,
        status: RunStatus,
        now: datetime,
        reason: str | None = None,
        end: EndState | None = None,
    ) -> None:
        record.mark_ended(status, now, reason=reason, end=end)
        job = self.attempt.job
        with record_lock(self.run) as lock:
            state, error, retry_in_s, extra = _outcome(job, record, self.permanent)
            if state == JobState.PENDING and record.final:
                record.requeue(error)
            # A final record is staged before the queue hears the outcome: if the disk is full
            # the job stays this attempt's, and returns to the queue when its lease runs out.
            staged = self.worker._finisher.stage(self.run, record) if record.final else None
            if not self.worker.queue.finish(job, state, error, retry_in_s, extra):
                if staged is not None:
                    staged.unlink(missing_ok=True)
                raise StaleAttemptError(f"result of attempt {job.attempt} rejected: a newer attempt owns the job")
            self.attempt.settled = True
            if staged is not None:  # synced and renamed by the finisher, which releases the lock then
                self.worker._finisher.finish_locked(self.run, staged, lock)
            else:
                lifecycle.write_locked(self.run, record)


def _outcome(job: Job, record: RunRecord, permanent: bool) -> tuple[JobState, str | None, float, int]:
    """(queue state, error, retry delay, extra tries) for how this attempt ended."""
    if record.status == RunStatus.SUCCEEDED:
        return JobState.SUCCEEDED, None, 0.0, 0
    if record.status == RunStatus.CANCELLED:
        return JobState.CANCELLED, record.reason, 0.0, 0
    if record.status == RunStatus.QUEUED:  # interrupted by this worker stopping: not the job's fault
        return JobState.PENDING, record.reason, 0.0, 1
    # A program that cannot start (execute() records "start failed: ...") fails the same way again.
    permanent = permanent or (record.reason or "").startswith("start failed") or record.reason == "timeout"
    if permanent or job.attempt >= job.max_attempts:
        return JobState.FAILED, record.reason, 0.0, 0
    delay = min(job.backoff_s * 2 ** (job.attempt - 1), MAX_BACKOFF_S)
    return (
        JobState.PENDING,
        f"attempt {job.attempt} of {job.max_attempts} failed ({record.reason}); retry in {delay:.0f}s",
        delay,
        0,
    )


def run_workers(count: int, url: str, environ: Mapping[str, str], backend: str | None, forever: bool) -> int:
    """``-j 1`` works here; ``-j N`` starts N worker processes and waits for them, passing
    SIGTERM/SIGINT on."""
    if count == 1:
        Worker(url, environ, backend, forever).run()
        return 0
    child_argv = [sys.executable, "-m", "expman", "worker", "-j", "1", "--queue", url]
    child_argv += [*(["--backend", backend] if backend else []), *(["--forever"] if forever else [])]
    children = [subprocess.Popen(child_argv, env=dict(environ)) for _ in range(count)]

    def forward(signum: int, frame: Any) -> None:
        for child in children:
            child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        codes = [child.wait() for child in children]
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return max(codes)
