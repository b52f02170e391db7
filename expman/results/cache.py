"""A cache of parsed results under ``<runs_root>/.expman-cache``, so that reloading
thousands of unchanged runs parses nothing. Runs small enough to parse faster than an entry
is read get no entry (``loader.UNCACHED_BYTES``).

Every entry stores the signature it was made from (paths, sizes and mtimes of the files
it read, and the options that shaped it) and is used only while that still matches.
Entries are written to a temporary file and renamed into place, so concurrent readers see
a whole old entry or a whole new one; two writers of one entry write the same content. An
unwritable runs root (a read-only copy, say) just means no cache.

Scalars are stored as one binary file per run: a magic, a JSON header (signature, keys,
counts, problems), then the steps, wall times and values as little-endian arrays, which
callers can read straight into their own arrays.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .scalars import RunScalars

CACHE_DIR = ".expman-cache"
FORMAT = 1
_MAGIC = b"EXPMANS\x01"
_HEAD = struct.Struct("<8sI")


class Cache:
    def __init__(self, runs_root: Path, enabled: bool = True) -> None:
        self.directory = runs_root / CACHE_DIR / f"v{FORMAT}"
        self.enabled = enabled

    def _path(self, run_id: str, kind: str) -> Path:
        return self.directory / f"{run_id}.{kind}"

    def _write(self, path: Path, chunks: list[bytes | memoryview]) -> bool:
        if not self.enabled:
            return False
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{path.name}.", suffix=".tmp")
        except OSError:
            self.enabled = False
            return False
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
            os.replace(tmp, path)
            return True
        except OSError:
            Path(tmp).unlink(missing_ok=True)
            return False

    def get_json(self, run_id: str, kind: str, signature: Any) -> Any | None:
        if not self.enabled:
            return None
        try:
            entry = json.loads(self._path(run_id, kind).read_bytes())
        except (OSError, ValueError):
            return None
        return entry.get("data") if entry.get("signature") == signature else None

    def put_json(self, run_id: str, kind: str, signature: Any, data: Any) -> None:
        body = json.dumps({"signature": signature, "data": data}, separators=(",", ":")).encode()
        self._write(self._path(run_id, kind), [body])

    def get_scalars(self, run_id: str, kind: str, signature: Any) -> CachedScalars | None:
        if not self.enabled:
            return None
        path = self._path(run_id, kind)
        try:
            with open(path, "rb") as f:
                magic, size = _HEAD.unpack(f.read(_HEAD.size))
                header = json.loads(f.read(size)) if magic == _MAGIC else None
        except (OSError, ValueError, struct.error):
            return None
        if not header or header.get("signature") != signature:
            return None
        return CachedScalars(path, header["keys"], np.array(header["counts"], np.int64), header["problems"], size)

    def put_scalars(self, run_id: str, kind: str, signature: Any, scalars: RunScalars) -> CachedScalars | None:
        """Stores the entry and returns it as read back from the cache; None if not stored."""
        header = {"signature": signature, "keys": scalars.keys, "counts": scalars.counts.tolist()}
        header["problems"] = scalars.problems
        body = json.dumps(header, separators=(",", ":")).encode()
        body += b" " * (-(len(body) + _HEAD.size) % 8)
        arrays = [np.ascontiguousarray(a, dtype=d) for a, d in _layout(scalars)]
        path = self._path(run_id, kind)
        if not self._write(path, [_HEAD.pack(_MAGIC, len(body)), body, *(a.data for a in arrays)]):
            return None
        return CachedScalars(path, scalars.keys, scalars.counts, scalars.problems, len(body))


def _layout(s: RunScalars) -> list[tuple[np.ndarray, str]]:
    return [(s.steps, "<i8"), (s.wall_times, "<f8"), (s.values, "<f8")]


class CachedScalars:
    """A run's scalars in the cache, read only when asked for."""

    def __init__(self, path: Path, keys: list[str], counts: np.ndarray, problems: list[str], header: int) -> None:
        self.path, self.keys, self.counts, self.problems = path, keys, counts, problems
        self._data = _HEAD.size + header

    def read_into(self, ranges: list[tuple[int, int]], outputs: list[np.ndarray], at: int) -> None:
        """Copy points [start, stop) of each range into steps/walls/values ``outputs`` from ``at``."""
        total = int(self.counts.sum())
        with open(self.path, "rb", buffering=0) as f:
            for block, out in enumerate(outputs):
                pos = at
                for start, stop in ranges:
                    f.seek(self._data + (block * total + start) * 8)
                    _read_exactly(f, out[pos : pos + stop - start].data.cast("B"))
                    pos += stop - start

    def load(self) -> RunScalars:
        total = int(self.counts.sum())
        outputs = [np.empty(total, np.int64), np.empty(total, np.float64), np.empty(total, np.float64)]
        self.read_into([(0, total)], outputs, 0)
        return RunScalars(self.keys, self.counts, outputs[0], outputs[1], outputs[2], self.problems)


def _read_exactly(f: Any, view: memoryview) -> None:
    while len(view):
        n = f.readinto(view)
        if not n:
            raise OSError(f"cache entry {f.name} is shorter than its header says")
        view = view[n:]
