"""Runs as a plain subprocess in the extracted archive, for machines without Docker.

The archive is extracted once per commit under <runs_root>/.expman-code/, read-only; each
run's ``code`` is a symlink to that copy, so a sweep of thousands of runs holds one copy.
Programs write to $EXPMAN_OUTPUT_DIR, never into their working directory, which other runs
share: the copy is checked against its manifest just before each run starts, and replaced
by a fresh one when a run changed it (see expman.experiment.shared_code).

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
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import LaunchError
from ..experiment.archive import CODE_DIR
from ..experiment.git import git_environment
from ..experiment.shared_code import SharedCode
from ..redact import is_secret_name
from ..rundir.layout import RunDir
from ..rundir.logs import STDERR, STDOUT, LogSink
from ..rundir.record import EndState, RunRecord
from . import proctree
from .base import Backend, Execution, attempt_variables

if TYPE_CHECKING:
    from ..experiment.plan import Plan
    from ..progress import Reporter

_POLL_S = 0.05
DRAIN_S = 2.0


def _expman_variables(record: RunRecord, run: RunDir) -> dict[str, str]:
    return {
        "EXPMAN_RUN_ID": record.run_id,
        "EXPMAN_OUTPUT_DIR": str(run.output),
        "EXPMAN_CONFIG": str(run.config),
        **attempt_variables(record),
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
        self._shared_code = SharedCode()

    def describe(self, plan: Plan) -> dict[str, Any]:
        where = "<run>/code -> <runs_root>/.expman-code/<commit>.<id> (the archive, read-only, one copy per commit)"
        return {**super().describe(plan), "working_directory": where}

    def prepare(self, run: RunDir, record: RunRecord, reporter: Reporter) -> None:
        self._shared_code.ensure(run.code_tar, record.git.commit, run.path.parent)
        unenforced = [k for k in ("memory_bytes", "cpus", "gpus") if record.resources.get(k)]
        if unenforced:
            record.warnings.append(f"the process backend does not enforce {', '.join(unenforced)}")

    def start(self, run: RunDir, record: RunRecord, sink: LogSink) -> Execution:
        # Checked here, not in prepare: a sweep's runs are all prepared before the first starts.
        changed = self._shared_code.checkout(run.code_tar, record.git.commit, run.path / CODE_DIR)
        if changed is not None:
            record.warnings.append(f"the shared copy of the code had changed ({changed}); this run got a fresh copy")
        proctree.become_subreaper()  # the program's orphans stay ours to find and stop
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
        return ProcessExecution(proc, sink, record.run_id)

    def stop_orphan(self, record: RunRecord) -> None:
        """What an earlier attempt of the run left running on this host (its follower died),
        found by the run id in its environment: its pid may belong to another process by now."""
        proctree.signal_all(proctree.find_by_run(record.run_id), signal.SIGKILL)


class ProcessExecution(Execution):
    """The program's two pipes and its end are waited on together by whoever waits (no
    threads): output reaches the sink as it comes, and the end is seen at once (pidfd).

    The run ends when its first process ends: whatever of the program is still running
    then (a daemon, a child in a session of its own) is killed, and its output is read for
    at most DRAIN_S more, so nothing holds the run open and nothing outlives it. During a
    stop, the rest of the program has the stop's grace to end by itself (a wrapper script
    may end at the signal while its child still saves a checkpoint)."""

    def __init__(self, proc: subprocess.Popen[bytes], sink: LogSink, run_id: str) -> None:
        self._proc, self._sink, self._run_id = proc, sink, run_id
        self._status: tuple[int, Any] | None = None  # wait status, and resource usage once reaped
        self._seen: set[int] = set()  # processes of the program seen after its first process ended
        self._started, self._ended = time.monotonic(), 0.0
        self._drain_until: float | None = None
        self._grace_until: float | None = None
        self._selector = selectors.DefaultSelector()
        self._selector.register(proc.stdout, selectors.EVENT_READ, STDOUT)  # type: ignore[arg-type]
        self._selector.register(proc.stderr, selectors.EVENT_READ, STDERR)  # type: ignore[arg-type]
        try:  # readable once the process ends
            self._pidfd: int | None = os.pidfd_open(proc.pid)
            self._selector.register(self._pidfd, selectors.EVENT_READ, None)
        except (AttributeError, OSError):
            self._pidfd = None

    def wait(self, timeout_s: float | None) -> int | None:
        """The exit code once the program has ended and its output is read."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            if self._status is None:
                self._reap()
            if self._status is not None and self._output_done():
                return _shell_exit_code(self._status[0])
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            if self._status is not None or self._pidfd is None:  # draining, or no pidfd: look again soon
                remaining = _POLL_S if remaining is None else min(_POLL_S, remaining)
            self._pump(remaining)

    def _pump(self, timeout_s: float | None) -> None:
        for key, _ in self._selector.select(timeout_s):
            if key.data is None:
                self._reap()
                continue
            chunk = os.read(key.fd, 65536)
            if chunk:
                self._sink.write(key.data, chunk)
            else:
                self._selector.unregister(key.fileobj)
                key.fileobj.close()  # type: ignore[union-attr]

    def _output_done(self) -> bool:
        """After the first process ended: the rest of the program is stopped, and its output
        read to the end (or for DRAIN_S, if something unkillable keeps a pipe open); then the
        first process is reaped (kept until now, so that its pid and group cannot be given to
        another process while the rest of the program is looked for)."""
        if self._grace_until is not None and time.monotonic() < self._grace_until:
            if self._leftovers():
                return False
        if self._drain_until is None:
            self._drain_until = time.monotonic() + DRAIN_S
            self._end_leftovers()
        if not self._pipes_closed():
            if time.monotonic() < self._drain_until:
                return False
            self._close_pipes()
        self._collect()
        return True

    def _leftovers(self) -> set[int]:
        found = proctree.run_processes(self._proc.pid, self._run_id) - {self._proc.pid}
        self._seen |= found
        return found

    def _end_leftovers(self) -> None:
        """Kill what is left of the program and reap those of it that are this process's
        children by now (orphans it adopted as their subreaper)."""
        deadline = time.monotonic() + DRAIN_S
        while (left := self._leftovers()) and time.monotonic() < deadline:
            proctree.signal_all(left, signal.SIGKILL)
            time.sleep(_POLL_S / 5)
            proctree.reap(self._seen)
        proctree.reap(self._seen)

    def _reap(self) -> None:
        """Note the first process's end without reaping it (WNOWAIT): how the program ended is
        kept even when a cancel arrives just then, and its pid stays taken until ``_collect``."""
        if self._status is not None:
            return
        try:
            peeked = os.waitid(os.P_PID, self._proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if peeked is not None:
            self._ended = time.monotonic()
            self._status = (_wait_status(peeked), None)
            self._proc.returncode = os.waitstatus_to_exitcode(self._status[0])
            self._close_pidfd()

    def _collect(self) -> None:
        """Reap the first process, for its resource usage (peak memory)."""
        if self._status is None or self._status[1] is not None:
            return
        try:
            pid, status, rusage = os.wait4(self._proc.pid, os.WNOHANG)
        except ChildProcessError:  # reaped already
            return
        if pid:
            self._status = (status, rusage)

    def _pipes_closed(self) -> bool:
        return all(key.data is None for key in self._selector.get_map().values())

    def _close_pipes(self) -> None:
        for key in list(self._selector.get_map().values()):
            if key.data is not None:
                self._selector.unregister(key.fileobj)
                key.fileobj.close()  # type: ignore[union-attr]

    def stop(self, grace_s: float, signals: Sequence[int] = (signal.SIGTERM,)) -> None:
        self._grace_until = time.monotonic() + grace_s
        super().stop(grace_s, signals)

    def signal(self, signum: int) -> None:
        """The program's process group, and every process of the run that left it."""
        try:
            os.killpg(self._proc.pid, signum)
        except ProcessLookupError:
            pass
        run = proctree.run_processes(self._proc.pid, self._run_id)
        proctree.signal_all(proctree.outside_group(run, self._proc.pid), signum)

    def end_state(self, exit_code: int) -> EndState:
        rusage = self._status[1] if self._status else None
        peak = rusage.ru_maxrss * 1024 if rusage is not None else None
        duration = self._ended - self._started if self._status else None
        return EndState(exit_code=exit_code, oom_killed=None, peak_memory_bytes=peak, duration_s=duration)

    def cleanup(self) -> None:
        if self._status is None:
            self.kill()
            self.wait(DRAIN_S)
        self._collect()
        self._close_pidfd()
        for key in list(self._selector.get_map().values()):
            self._selector.unregister(key.fileobj)
            key.fileobj.close()  # type: ignore[union-attr]
        self._selector.close()

    def _close_pidfd(self) -> None:
        pidfd, self._pidfd = self._pidfd, None  # first: a signal may cut this short and come back
        if pidfd is not None:
            self._selector.unregister(pidfd)
            os.close(pidfd)


def _wait_status(info: os.waitid_result) -> int:
    """A wait status (as wait4 gives it) from waitid's answer."""
    if info.si_code == os.CLD_EXITED:
        return (info.si_status & 0xFF) << 8
    return info.si_status | (0x80 if info.si_code == os.CLD_DUMPED else 0)


def _shell_exit_code(status: int) -> int:
    """Exit code as a shell reports it: 128 + signal number for a killed process."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code
