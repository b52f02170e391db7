"""Where a run's stdout and stderr go: its log files, redacted, and the terminal when following."""

from __future__ import annotations

import sys
import threading
from typing import BinaryIO

from ..redact import Redactor
from .files import disk_full
from .layout import RunDir

STDOUT, STDERR = "stdout", "stderr"


class LogSink:
    """Thread-safe writer of the two streams; redaction works on whole lines so that a secret
    split across two chunks is still caught."""

    def __init__(self, run: RunDir, redactor: Redactor, echo: bool) -> None:
        self._redactor = redactor
        self._paths = {STDOUT: run.stdout_log, STDERR: run.stderr_log}
        self._files = {STDOUT: open(run.stdout_log, "ab"), STDERR: open(run.stderr_log, "ab")}
        self.failure: str | None = None  # why the logs cannot be written any more (the disk is full)
        self._terminal: dict[str, BinaryIO] | None = (
            {STDOUT: sys.stdout.buffer, STDERR: sys.stderr.buffer} if echo else None
        )
        self._pending = {STDOUT: b"", STDERR: b""}
        self._lock = threading.Lock()
        self._closed = False

    def write(self, stream: str, data: bytes) -> None:
        with self._lock:
            if self._closed:  # output after close (a detached follower) stays in the engine's logs
                return
            buffered = self._pending[stream] + data
            complete, newline, rest = buffered.rpartition(b"\n")
            self._pending[stream] = rest
            if newline:
                self._emit(stream, complete + newline)

    def close(self) -> None:
        """Flush partial lines and close the files; calling it again does nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for stream, rest in self._pending.items():
                if rest:
                    self._emit(stream, rest)
                self._pending[stream] = b""
            for f in self._files.values():
                try:
                    f.close()
                except OSError:  # what a full disk kept in the buffer; ``failure`` says so
                    pass

    def _emit(self, stream: str, data: bytes) -> None:
        """To the log file, unless it failed (the run is then stopped, see ``failure``), and to
        the terminal when following."""
        clean = self._redactor.text(data.decode("utf-8", errors="replace")).encode()
        if self.failure is None:
            try:
                self._files[stream].write(clean)
                self._files[stream].flush()
            except OSError as exc:
                where = self._paths[stream]
                self.failure = f"disk full at {where}" if disk_full(exc) else f"cannot write {where}: {exc.strerror}"
        if self._terminal is not None:
            self._terminal[stream].write(clean)
            self._terminal[stream].flush()
