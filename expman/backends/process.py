"""Runs as a plain subprocess in the extracted archive, for machines without Docker.

The archive is extracted once per commit under <runs_root>/.expman-code/<commit>; each
run's ``code`` is a symlink to it, so a sweep of thousands of runs holds one copy. Programs
write to $EXPMAN_OUTPUT_DIR, never into their working directory, which other runs share.

Same run directory and record; ``container_id`` stays empty. The program gets this
environment minus anything secret-named, plus the EXPMAN_* variables pointing into the
run directory. Memory and GPU limits are not enforced here (recorded as a warning).
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import LaunchError
from ..experiment.archive import CODE_DIR, extract_shared
from ..experiment.git import git_environment
from ..redact import is_secret_name
from ..rundir.layout import RunDir
from ..rundir.logs import STDERR, STDOUT, LogSink
from ..rundir.record import EndState, RunRecord
from .base import Backend, Execution

if TYPE_CHECKING:
    from ..experiment.plan import Plan
    from ..progress import Reporter

_POLL_S = 0.05


def _expman_variables(record: RunRecord, run: RunDir) -> dict[str, str]:
    return {
        "EXPMAN_RUN_ID": record.run_id,
        "EXPMAN_OUTPUT_DIR": str(run.output),
        "EXPMAN_CONFIG": str(run.config),
        "PYTHONUNBUFFERED": "1",
    }


def base_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """This environment without secret-named variables, git's redirections and LC_ALL."""
    env = {k: v for k, v in git_environment(environ).items() if not is_secret_name(k)}
    env.pop("LC_ALL", None)
    return env


class ProcessBackend(Backend):
    name = "process"

    def __init__(self, environ: Mapping[str, str]) -> None:
        super().__init__(environ)
        self._base_environment = base_environment(environ)  # once: a worker starts thousands of runs

    def describe(self, plan: Plan) -> dict[str, Any]:
        where = "<run>/code -> <runs_root>/.expman-code/<commit> (the archive, extracted once per commit)"
        return {**super().describe(plan), "working_directory": where}

    def prepare(self, run: RunDir, record: RunRecord, reporter: Reporter) -> None:
        extract_shared(run.code_tar, record.git.commit, run.path / CODE_DIR)
        unenforced = [k for k in ("memory_bytes", "cpus", "gpus") if record.resources.get(k)]
        if unenforced:
            record.warnings.append(f"the process backend does not enforce {', '.join(unenforced)}")

    def start(self, run: RunDir, record: RunRecord, sink: LogSink) -> Execution:
        try:
            proc = subprocess.Popen(
                list(record.command),
                cwd=run.path / CODE_DIR,
                env={**self._base_environment, **_expman_variables(record, run)},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            raise LaunchError(
                f'cannot start {record.command[0]!r}: {exc.strerror}; check "command" in config.json'
            ) from None
        record.pid = proc.pid
        return ProcessExecution(proc, sink)

    def stop_orphan(self, record: RunRecord) -> None:
        if record.pid:
            try:
                os.killpg(record.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


class ProcessExecution(Execution):
    """The program's two pipes and its end are waited on together by whoever waits (no
    threads): output reaches the sink as it comes, and the end is seen at once (pidfd)."""

    def __init__(self, proc: subprocess.Popen[bytes], sink: LogSink) -> None:
        self._proc = proc
        self._sink = sink
        self._status: tuple[int, Any] | None = None
        self._selector = selectors.DefaultSelector()
        self._selector.register(proc.stdout, selectors.EVENT_READ, STDOUT)  # type: ignore[arg-type]
        self._selector.register(proc.stderr, selectors.EVENT_READ, STDERR)  # type: ignore[arg-type]
        try:  # readable once the process ends
            self._pidfd: int | None = os.pidfd_open(proc.pid)
            self._selector.register(self._pidfd, selectors.EVENT_READ, None)
        except (AttributeError, OSError):
            self._pidfd = None

    def wait(self, timeout_s: float | None) -> int | None:
        """The exit code once the program has ended and both pipes are closed."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            if self._status is None:
                self._reap()
            if self._status is not None and self._pipes_closed():
                return _shell_exit_code(self._status[0])
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            if self._pidfd is None and self._status is None:  # no pidfd: look again soon
                remaining = _POLL_S if remaining is None else min(_POLL_S, remaining)
            for key, _ in self._selector.select(remaining):
                if key.data is None:
                    self._reap()
                    continue
                chunk = os.read(key.fd, 65536)
                if chunk:
                    self._sink.write(key.data, chunk)
                else:
                    self._selector.unregister(key.fileobj)
                    key.fileobj.close()  # type: ignore[union-attr]

    def _reap(self) -> None:
        # A cancel arriving as wait4 returns must not lose the status of the reaped child:
        # the signal waits until the status is kept.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            pid, status, rusage = os.wait4(self._proc.pid, os.WNOHANG)
            if pid:
                self._status = (status, rusage)
                self._proc.returncode = os.waitstatus_to_exitcode(status)
                self._close_pidfd()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def _pipes_closed(self) -> bool:
        return all(key.data is None for key in self._selector.get_map().values())

    def stop(self, grace_s: float) -> None:
        self.signal(signal.SIGTERM)
        if self.wait(grace_s) is None:
            self.kill()

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def end_state(self, exit_code: int) -> EndState:
        rusage = self._status[1] if self._status else None
        peak = rusage.ru_maxrss * 1024 if rusage is not None else None
        return EndState(exit_code=exit_code, oom_killed=None, peak_memory_bytes=peak)

    def cleanup(self) -> None:
        if self._status is None:
            self.kill()
        self._close_pidfd()
        for key in list(self._selector.get_map().values()):
            self._selector.unregister(key.fileobj)
            key.fileobj.close()  # type: ignore[union-attr]
        self._selector.close()

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            self._selector.unregister(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    def signal(self, signum: int) -> None:
        try:
            os.killpg(self._proc.pid, signum)
        except ProcessLookupError:
            pass


def _shell_exit_code(status: int) -> int:
    """Exit code as a shell reports it: 128 + signal number for a killed process."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code
