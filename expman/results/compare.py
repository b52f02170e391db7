"""How two runs differ, entry by entry: shared by ``expman rerun`` (is the rerun a
reproduction?) and ``expman diff`` (what changed between two runs?).

Sections: ``run`` (status, exit code), ``config`` (flattened keys), ``environment``
(backend, image, host, GPUs, Python, ...), ``results`` (results.json flattened; numbers
equal exactly, or within a relative tolerance ``rtol``), ``scalars`` (TensorBoard event
files compared by tag, step and value: their file names and wall times differ on every
run) and ``outputs`` (every other file under output/ by sha256; logs only when asked). The
code of the two commits is ``codediff``'s.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..rundir.layout import RunDir
from ..rundir.record import RunRecord
from .flatten import flatten_config, read_config, read_results
from .scalars import read_run_scalars
from .tfevents import EVENT_FILE_MARKER

SAME, CHANGED, ADDED, REMOVED = "same", "changed", "added", "removed"
SECTIONS = ("run", "config", "environment", "results", "scalars", "outputs")
# What decides whether a rerun reproduced its original; environment differences are notes.
VERDICT_SECTIONS = ("run", "config", "results", "scalars", "outputs")
LOG_SUFFIX = ".log"
RUN_LOGS = ("stdout.log", "stderr.log")


@dataclass(frozen=True)
class Entry:
    """One key of one section in both runs: ``a`` and ``b`` are None where a run lacks it;
    ``delta`` is b - a for two numbers; ``detail`` says more where a value cannot."""

    section: str
    key: str
    state: str
    a: Any = None
    b: Any = None
    delta: float | None = None
    detail: str | None = None

    @property
    def differs(self) -> bool:
        return self.state != SAME


def compare_runs(
    a: RunDir, record_a: RunRecord, b: RunDir, record_b: RunRecord, rtol: float = 0.0, logs: bool = False
) -> list[Entry]:
    """Every entry of every section (``SECTIONS`` order), same ones included."""
    return [
        *compare_values("run", _run_facts(record_a), _run_facts(record_b)),
        *compare_values("config", flatten_config(read_config(a.config)), flatten_config(read_config(b.config))),
        *compare_values("environment", environment_of(record_a), environment_of(record_b)),
        *compare_results(a, b, rtol),
        *compare_scalars(a.output, b.output, rtol),
        *compare_values("outputs", output_digests(a, logs), output_digests(b, logs), numeric=False),
    ]


def _run_facts(record: RunRecord) -> dict[str, Any]:
    return _known({"status": str(record.status), "exit_code": record.exit_code})


def _known(facts: dict[str, Any]) -> dict[str, Any]:
    """The facts a record holds: one it lacks (None) is absent, not a value."""
    return {k: v for k, v in facts.items() if v is not None}


def environment_of(record: RunRecord) -> dict[str, Any]:
    """Where and on what a run ran, as its record says (packages are not recorded)."""
    facts = record.host_facts
    return _known(
        {
            "backend": record.backend,
            "image": record.image.image_id,
            "engine": record.image.engine_version,
            "host": record.host,
            "os": facts.get("os"),
            "kernel": facts.get("kernel"),
            "cpu": facts.get("cpu_model"),
            "gpus": ", ".join(facts.get("gpus") or []) or None,
            "expman_python": record.submitter.python_version,
            "expman_version": record.submitter.expman_version,
        }
    )


def compare_values(
    section: str, a: Mapping[str, Any], b: Mapping[str, Any], rtol: float = 0.0, numeric: bool = True
) -> list[Entry]:
    """Keys of ``a`` in its order, then those only ``b`` has."""
    entries = []
    for key in [*a, *(k for k in b if k not in a)]:
        if key not in a:
            entries.append(Entry(section, key, ADDED, None, b[key]))
        elif key not in b:
            entries.append(Entry(section, key, REMOVED, a[key], None))
        elif same_value(a[key], b[key], rtol):
            entries.append(Entry(section, key, SAME, a[key], b[key]))
        else:
            va, vb = a[key], b[key]
            delta = vb - va if numeric and _number(va) and _number(vb) else None
            entries.append(Entry(section, key, CHANGED, va, vb, delta))
    return entries


def same_value(a: Any, b: Any, rtol: float) -> bool:
    """Equal, both NaN, or two numbers within ``rtol`` of each other (relative to the larger)."""
    if _number(a) and _number(b):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return bool(a == b or (rtol > 0 and math.isclose(a, b, rel_tol=rtol, abs_tol=0.0)))
    return bool(type(a) is type(b) and a == b)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def compare_results(a: RunDir, b: RunDir, rtol: float) -> list[Entry]:
    """results.json of both runs, flattened; a list of numbers is compared value by value
    (its mean, std and n are keys of their own)."""
    ra, rb = read_results(a.output / "results.json"), read_results(b.output / "results.json")
    entries = compare_values("results", ra.values, rb.values, rtol)
    for key in [*ra.lists, *(k for k in rb.lists if k not in ra.lists)]:
        la, lb = ra.lists.get(key), rb.lists.get(key)
        if la is None or lb is None:
            continue  # its .n entry already says that one run lacks it
        if not _arrays_close(la, lb, rtol):
            entries.append(Entry("results", key, CHANGED, la.tolist(), lb.tolist(), detail=_first_change(la, lb)))
    return entries + _problems("results", [ra.problem] if ra.problem else [], [rb.problem] if rb.problem else [])


def _arrays_close(a: np.ndarray, b: np.ndarray, rtol: float) -> bool:
    if a.shape != b.shape:
        return False
    return bool(np.allclose(a, b, rtol=rtol, atol=0.0, equal_nan=True))


def _first_change(a: np.ndarray, b: np.ndarray) -> str:
    if a.shape != b.shape:
        return f"{len(a)} values -> {len(b)} values"
    differs = ~((a == b) | (np.isnan(a) & np.isnan(b)))
    index = int(np.flatnonzero(differs)[0])
    return (
        f"{int(np.count_nonzero(differs))} of {len(a)} values differ; "
        f"first at index {index}: {float(a[index])!r} -> {float(b[index])!r}"
    )


def compare_scalars(a: Path, b: Path, rtol: float) -> list[Entry]:
    """Each scalar's (step, value) points; the entry's values are the last points' values."""
    sa, sb = read_run_scalars(a), read_run_scalars(b)
    entries = []
    for key in [*sa.keys, *(k for k in sb.keys if k not in sa.keys)]:
        if key not in sb.keys:
            entries.append(Entry("scalars", key, REMOVED, _last(*sa.column(key)), None))
            continue
        if key not in sa.keys:
            entries.append(Entry("scalars", key, ADDED, None, _last(*sb.column(key))))
            continue
        (steps_a, values_a), (steps_b, values_b) = sa.column(key), sb.column(key)
        last_a, last_b = _last(steps_a, values_a), _last(steps_b, values_b)
        detail = _points_change(steps_a, values_a, steps_b, values_b, rtol)
        state = SAME if detail is None else CHANGED
        delta = last_b - last_a if state == CHANGED and last_a is not None and last_b is not None else None
        delta = delta or None  # the same last value: what differs is in the detail
        entries.append(Entry("scalars", key, state, last_a, last_b, delta, detail))
    return entries + _problems("scalars", sa.problems, sb.problems)


def _problems(section: str, in_a: list[str], in_b: list[str]) -> list[Entry]:
    """A damaged file of either run: what could be read is compared, the damage is a difference."""
    return [
        Entry(section, f"problem in {side}", CHANGED, detail=problem)
        for side, problems in (("A", in_a), ("B", in_b))
        for problem in problems
    ]


def _last(steps: np.ndarray, values: np.ndarray) -> float | None:
    return float(values[-1]) if len(values) else None


def _points_change(
    steps_a: np.ndarray, values_a: np.ndarray, steps_b: np.ndarray, values_b: np.ndarray, rtol: float
) -> str | None:
    """None when both have the same steps and values; else what differs first."""
    if not np.array_equal(steps_a, steps_b):
        return f"steps differ: {len(steps_a)} points -> {len(steps_b)} points"
    if _arrays_close(values_a, values_b, rtol):
        return None
    close = np.isclose(values_a, values_b, rtol=rtol, atol=0.0, equal_nan=True)
    first = int(np.flatnonzero(~close)[0])
    return (
        f"{int(np.count_nonzero(~close))} of {len(close)} points differ; first at step {int(steps_a[first])}: "
        f"{float(values_a[first])!r} -> {float(values_b[first])!r}"
    )


def output_digests(run: RunDir, logs: bool = False) -> dict[str, str]:
    """sha256 of each regular file under output/ by its path there (a symlink: its target),
    sorted by path; results.json (compared by value) and event files (by their scalars) are
    left out, and so are logs (``*.log``) unless ``logs``, which adds the run's own
    logs/stdout.log and logs/stderr.log."""
    digests = {}
    for directory, dirs, files in os.walk(run.output):
        dirs.sort()
        for name in sorted(files):
            path = Path(directory, name)
            relative = str(path.relative_to(run.output))
            if relative == "results.json" or EVENT_FILE_MARKER in name or (name.endswith(LOG_SUFFIX) and not logs):
                continue
            digests[relative] = _digest(path)
    if logs:
        for name in RUN_LOGS:
            if (run.logs / name).is_file():
                digests[f"logs/{name}"] = _digest(run.logs / name)
    return digests


def _digest(path: Path) -> str:
    if path.is_symlink():
        return f"symlink to {os.readlink(path)}"
    try:
        with open(path, "rb") as f:
            return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as exc:
        return f"unreadable ({exc.strerror})"


def verdict(entries: list[Entry]) -> tuple[list[Entry], list[Entry]]:
    """(differences that say a rerun did not reproduce its original, environment notes)."""
    differences = [e for e in entries if e.differs and e.section in VERDICT_SECTIONS]
    notes = [e for e in entries if e.differs and e.section not in VERDICT_SECTIONS]
    return differences, notes
