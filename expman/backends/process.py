"""Runs as a plain subprocess in the extracted archive, for machines without Docker.

Same run directory and record; ``container_id`` stays empty. The program gets this
environment minus anything secret-named, plus the EXPMAN_* variables pointing into the
run directory. Memory and GPU limits are not enforced here (recorded as a warning).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, BinaryIO

from ..archive import extract_archive
from ..errors import LaunchError
from ..gitguard import git_environment
from ..logsink import STDERR, STDOUT, LogSink
from ..record import RunRecord
from ..redact import is_secret_name
from ..rundir import RunDir
from .base import Backend, EndState, Execution

if TYPE_CHECKING:
    from ..progress import Reporter
    from ..submission import Plan

_POLL_S = 0.05


def process_environment(environ: Mapping[str, str], record: RunRecord, run: RunDir) -> dict[str, str]:
    env = {k: v for k, v in git_environment(environ).items() if not is_secret_name(k)}
    env.pop("LC_ALL", None)
    env.update(
        EXPMAN_RUN_ID=record.run_id,
        EXPMAN_OUTPUT_DIR=str(run.output),
        EXPMAN_CONFIG=str(run.config),
        PYTHONUNBUFFERED="1",
    )
    return env


class ProcessBackend(Backend):
    name = "process"

    def describe(self, plan: Plan) -> dict[str, Any]:
        return {**super().describe(plan), "working_directory": "<run>/code (extracted archive)"}

    def prepare(self, run: RunDir, record: RunRecord, reporter: Reporter) -> None:
        extract_archive(run.code_tar, run.path / "code")
        unenforced = [k for k in ("memory_bytes", "cpus", "gpus") if record.resources.get(k)]
        if unenforced:
            record.warnings.append(f"the process backend does not enforce {', '.join(unenforced)}")

    def start(self, run: RunDir, record: RunRecord, sink: LogSink) -> Execution:
        try:
            proc = subprocess.Popen(
                list(record.command),
                cwd=run.path / "code",
                env=process_environment(self.environ, record, run),
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
    def __init__(self, proc: subprocess.Popen[bytes], sink: LogSink) -> None:
        self._proc = proc
        self._pumps = [
            threading.Thread(target=_pump, args=(stream, name, sink), daemon=True)
            for stream, name in ((proc.stdout, STDOUT), (proc.stderr, STDERR))
        ]
        for pump in self._pumps:
            pump.start()
        self._status: tuple[int, Any] | None = None

    def wait(self, timeout_s: float | None) -> int | None:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self._status is None:
            pid, status, rusage = os.wait4(self._proc.pid, os.WNOHANG)
            if pid:
                self._status = (status, rusage)
                self._proc.returncode = os.waitstatus_to_exitcode(status)
                break
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(_POLL_S)
        for pump in self._pumps:
            pump.join()
        return _shell_exit_code(self._status[0])

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

    def signal(self, signum: int) -> None:
        try:
            os.killpg(self._proc.pid, signum)
        except ProcessLookupError:
            pass


def _pump(stream: BinaryIO, name: str, sink: LogSink) -> None:
    for chunk in iter(lambda: stream.read1(65536), b""):  # type: ignore[attr-defined]
        sink.write(name, chunk)
    stream.close()


def _shell_exit_code(status: int) -> int:
    """Exit code as a shell reports it: 128 + signal number for a killed process."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code
