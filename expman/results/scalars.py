"""The TensorBoard scalars of one run: every event file under its output directory.

A scalar's key is its tag, prefixed with the event file's directory relative to the run's
output directory (``tb/train/loss`` for tag ``loss`` in ``output/tb/train``; just ``loss``
for a file in ``output`` itself). Files of one directory are read in the order their
names' timestamps give, so a restarted run's new file comes after the old one. With
``keep="last"`` (the default) a step written more than once keeps its latest value and
the points are ordered by step; ``keep="all"`` keeps every write in file order.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UsageError
from .tfevents import EVENT_FILE_MARKER, read_event_file

_STAT = re.compile(r"(last|max|min|mean_last_(\d+))")


@dataclass
class RunScalars:
    keys: list[str]
    counts: np.ndarray
    steps: np.ndarray
    wall_times: np.ndarray
    values: np.ndarray
    problems: list[str] = field(default_factory=list)

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate(([0], np.cumsum(self.counts)))

    def column(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of one key."""
        i = self.keys.index(key)
        start, stop = self.offsets[i], self.offsets[i + 1]
        return self.steps[start:stop], self.values[start:stop]


def event_files(output: Path) -> list[Path]:
    """Event files anywhere under ``output``, by directory, then by the time in their name."""
    found: list[Path] = []
    for directory, dirs, files in os.walk(output):
        dirs.sort()
        found.extend(Path(directory, name) for name in files if EVENT_FILE_MARKER in name)
    return order_event_files(found)


def order_event_files(files: list[Path]) -> list[Path]:
    """By directory, then by the time in their name: the order their points are read in."""
    return sorted(files, key=lambda p: (str(p.parent), _name_time(p.name), p.name))


def _name_time(name: str) -> float:
    parts = name.split(EVENT_FILE_MARKER, 1)[1].split(".")
    try:
        return float(parts[1])
    except (IndexError, ValueError):
        return float("inf")


def file_signature(files: list[Path], root: Path) -> list[list]:
    """What the cache is keyed on: each file's relative path, size and mtime."""
    signature = []
    for path in files:
        st = path.stat()
        signature.append([str(path.relative_to(root)), st.st_size, st.st_mtime_ns])
    return signature


def scalar_key(reldir: str, tag: str) -> str:
    return tag if reldir in ("", ".") else f"{reldir}/{tag}"


def read_run_scalars(
    output: Path | str, files: list[Path] | None = None, keep: str = "last", check_crc: bool = True
) -> RunScalars:
    """Every scalar of ``files`` (event files under ``output``; default: all of them), keyed and merged."""
    output = Path(output)
    parts: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray, bool]]] = {}
    problems = []
    for path in event_files(output) if files is None else map(Path, files):
        try:
            scalars = read_event_file(path, check_crc)
        except OSError as exc:
            problems.append(f"{path.relative_to(output)}: unreadable ({exc.strerror})")
            continue
        if scalars.problem:
            problems.append(f"{path.relative_to(output)}: {scalars.problem}")
        reldir = str(path.parent.relative_to(output))
        offsets = np.concatenate(([0], np.cumsum(scalars.counts, dtype=np.int64)))
        for i, tag in enumerate(scalars.tags):
            cut = slice(offsets[i], offsets[i + 1])
            part = (scalars.steps[cut], scalars.wall_times[cut], scalars.values[cut], scalars.monotonic[i])
            parts.setdefault(scalar_key(reldir, tag), []).append(part)
    columns = {key: _merge(pieces, keep) for key, pieces in parts.items()}
    return _assemble(columns, problems)


def _merge(pieces: list, keep: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if len(pieces) == 1:
        steps, walls, values, monotonic = pieces[0]
    else:
        steps, walls, values = (np.concatenate([p[i] for p in pieces]) for i in range(3))
        monotonic = bool(np.all(steps[1:] > steps[:-1]))
    if keep == "last" and not monotonic:
        return latest_per_step(steps, walls, values)
    return steps, walls, values


def latest_per_step(steps: np.ndarray, walls: np.ndarray, values: np.ndarray) -> tuple:
    """The last write of each step, ordered by step."""
    reversed_steps = steps[::-1]
    unique, first_in_reversed = np.unique(reversed_steps, return_index=True)
    keep = len(steps) - 1 - first_in_reversed
    return unique.astype(np.int64), walls[keep], values[keep]


def _assemble(columns: dict[str, tuple], problems: list[str]) -> RunScalars:
    keys = list(columns)
    counts = np.array([len(columns[k][0]) for k in keys], dtype=np.int64)
    if len(keys) == 1:
        steps, walls, values = columns[keys[0]]
    else:
        steps, walls, values = (
            np.concatenate([columns[k][i] for k in keys]) if keys else np.empty(0, dtype) for i, dtype in _DTYPES
        )
    return RunScalars(keys, counts, steps, walls, values, problems)


_DTYPES = ((0, np.int64), (1, np.float64), (2, np.float64))


@functools.lru_cache(maxsize=64)
def parse_stat(text: str) -> tuple[str, int]:
    """'last' -> ('last', 0); 'mean_last_10' -> ('mean_last', 10)."""
    match = _STAT.fullmatch(text)
    if not match:
        raise UsageError(f"unknown scalar statistic {text!r}; use last, max, min or mean_last_N (e.g. mean_last_10)")
    if match.group(2):
        return "mean_last", int(match.group(2))
    return text, 0


def summarize(values: np.ndarray, stat: str) -> float:
    """One number from a scalar's values (by step): last, max, min or mean_last_N."""
    return summaries(values, (stat,))[0]


def summaries(values: np.ndarray, stats: tuple[str, ...]) -> list[float]:
    """``summarize`` for several statistics of one scalar, looking for NaN once (a run's
    index row has four statistics of every scalar: numpy's calls cost more than their work)."""
    if not len(values):
        return [float("nan")] * len(stats)
    missing = np.isnan(values)
    every, some = bool(missing.all()), bool(missing.any())
    out = []
    for stat in stats:
        name, n = parse_stat(stat)
        if name == "last":
            out.append(float(values[-1]))
        elif name in ("max", "min"):
            if every:
                out.append(float("nan"))
            elif some:
                out.append(float(np.nanmax(values) if name == "max" else np.nanmin(values)))
            else:
                out.append(float(values.max() if name == "max" else values.min()))
        else:
            out.append(float(np.mean(values[-n:])) if n else float("nan"))
    return out
