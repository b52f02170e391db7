"""Where a run's stdout and stderr go: its log files, redacted, and the terminal when following."""

from __future__ import annotations

import sys
import threading
from typing import BinaryIO

from ..redact import Redactor
from .layout import RunDir

STDOUT, STDERR = "stdout", "stderr"


class LogSink:
    """Thread-safe writer of the two streams; redaction works on whole lines so that a secret
    split across two chunks is still caught."""

    def __init__(self, run: RunDir, redactor: Redactor, echo: bool) -> None:
        self._redactor = redactor
        self._files = {STDOUT: open(run.stdout_log, "ab"), STDERR: open(run.stderr_log, "ab")}
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
                f.close()

    def _emit(self, stream: str, data: bytes) -> None:
        clean = self._redactor.text(data.decode("utf-8", errors="replace")).encode()
        self._files[stream].write(clean)
        self._files[stream].flush()
        if self._terminal is not None:
            self._terminal[stream].write(clean)
            self._terminal[stream].flush()
