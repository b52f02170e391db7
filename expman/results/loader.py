"""Run directories into pandas: ``load_runs`` (a row per run) and ``load_scalars`` (a
long table of every scalar point).

Columns of ``load_runs``: ``run_id`` and record fields (``status``, ``commit``, ...);
``config.<dotted key>`` for the run's effective config; ``results.<dotted key>`` for
results.json and for metrics parsed from stdout; ``tb:<scalar key>:<stat>`` for scalar
summaries; ``partial`` and ``problems`` for runs whose files were damaged. A damaged file
never raises: what could be read is kept and the run is flagged.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import UsageError
from ..experiment.patterns import compile_patterns
from ..rundir.layout import RunDir, list_runs
from .cache import Cache, CachedScalars
from .filters import Condition, match_keys, parse_conditions
from .flatten import read_config, read_json
from .index import RunsIndex, runs_condition
from .options import DEFAULT_STATS, KEEP_MODES
from .rows import RunInfo, columns_of, run_row, scalar_source
from .rowset import indexed
from .scalars import event_files, order_event_files, read_run_scalars

Progress = Callable[[int, int], None]


def select_runs(
    root: Path | str,
    status: str | Sequence[str] | None = None,
    commit: str | None = None,
    branch: str | None = None,
) -> list[RunInfo]:
    """Runs under ``root`` (oldest first) whose record matches; unreadable records are skipped.
    A ``root`` that is not a directory is a UsageError (an empty one holds no runs)."""
    statuses = {status} if isinstance(status, str) else set(status or ())
    path = Path(root).expanduser()
    if not path.is_dir():
        raise UsageError(f"no runs root at {path}: not a directory; check the path (or --runs-root)")
    selected = []
    for run in reversed(list_runs(path)):
        try:
            record = read_json(run.record)
        except (OSError, ValueError):
            continue
        git = record.get("git") or {}
        if statuses and record.get("status") not in statuses:
            continue
        if commit and not str(git.get("commit", "")).startswith(commit):
            continue
        if branch and git.get("branch") != branch:
            continue
        selected.append(RunInfo(run, record, read_config(run.config)))
    return selected


def load_runs(
    root: Path | str,
    *,
    status: str | Sequence[str] | None = None,
    commit: str | None = None,
    branch: str | None = None,
    where: Sequence[str] | Sequence[Condition] = (),
    scalar_stats: Sequence[str] = DEFAULT_STATS,
    parse: Mapping[str, str] | None = None,
    keep: str = "last",
    check_crc: bool = True,
    cache: bool = True,
    progress: Progress | None = None,
    reruns: bool = True,
    **equals: Any,
) -> pd.DataFrame:
    """A row per run. ``where`` takes "key=value" (also !=, <, >, <=, >=); keyword arguments
    are equality conditions (``load_runs(root, **{"train.env_name": "Pong"})``). ``parse``
    overrides the runs' own stdout patterns; ``scalar_stats=()`` skips event files.
    ``reruns=False`` leaves out the runs ``expman rerun`` made (they check a result; as
    samples they would count a configuration twice)."""
    _check_keep(keep)
    conditions = parse_conditions(where) + parse_conditions(f"{k}={v}" for k, v in equals.items())
    stats = tuple(scalar_stats)
    if indexed(parse, keep, check_crc, cache, stats):
        frame = _indexed_frame(Path(root).expanduser(), _statuses(status), commit, branch, reruns, stats, progress)
    else:
        runs = [r for r in select_runs(root, status, commit, branch) if reruns or not r.record.get("rerun_of")]
        store = Cache(Path(root).expanduser(), cache)
        patterns = compile_patterns(parse) if parse is not None else None
        rows = []
        for done, info in enumerate(runs, 1):
            rows.append(run_row(info, store, patterns, stats, keep, check_crc))
            if progress:
                progress(done, len(runs))
        frame = pd.DataFrame(rows, columns=columns_of(rows))
    for condition in conditions:
        frame = frame[condition.mask(frame)]
    return frame.reset_index(drop=True)


def _statuses(status: str | Sequence[str] | None) -> set[str]:
    return {status} if isinstance(status, str) else set(status or ())


def _indexed_frame(
    root: Path,
    statuses: set[str],
    commit: str | None,
    branch: str | None,
    reruns: bool,
    stats: tuple[str, ...],
    progress: Any,
) -> pd.DataFrame:
    """The rows kept by the runs index, refreshed first: what ``run_row`` would make, read
    from one file."""
    if not root.is_dir():
        raise UsageError(f"no runs root at {root}: not a directory; check the path (or --runs-root)")
    where, params = runs_condition(statuses, commit, branch, reruns)
    with RunsIndex(root) as index:
        index.refresh(progress=progress)
        suffixes = tuple(f":{stat}" for stat in stats)
        columns, rows = index.select(where, params, lambda key: not key.startswith("tb:") or key.endswith(suffixes))
    return pd.DataFrame(rows, columns=columns or columns_of([]))


def _runs_with_event_files(
    root: Path, statuses: set[str], commit: str | None, branch: str | None, refresh: bool
) -> list[tuple[RunInfo, list[Path]]]:
    """The selected runs (oldest first) and their event files, from the runs index: no run
    directory is read or walked to find them."""
    if not root.is_dir():
        raise UsageError(f"no runs root at {root}: not a directory; check the path (or --runs-root)")
    with RunsIndex(root) as index:
        if refresh:
            index.refresh()
        found = index.event_files(*runs_condition(statuses, commit, branch))
    runs = []
    for run_id, relative in found:
        run = RunDir(root / run_id)
        runs.append((RunInfo(run, {}, {}), order_event_files([run.path / p for p in relative])))
    return runs


def _check_keep(keep: str) -> None:
    if keep not in KEEP_MODES:
        raise UsageError(f"keep={keep!r}: use 'last' (latest write per step) or 'all' (every write)")


def load_scalars(
    root: Path | str,
    tags: str | Sequence[str] = "*",
    *,
    status: str | Sequence[str] | None = None,
    commit: str | None = None,
    branch: str | None = None,
    run_ids: Iterable[str] | None = None,
    keep: str = "last",
    check_crc: bool = True,
    cache: bool = True,
    progress: Progress | None = None,
    refresh: bool = True,
) -> pd.DataFrame:
    """Every point of the scalars whose key matches the glob ``tags`` (or any of several),
    as a long frame with columns run_id, tag (categorical), step, wall_time, value. With
    ``cache=False`` the runs root's cache is neither read nor written; parsed runs wait in a
    private temporary directory instead of memory, so peak memory stays near the result's
    size. ``refresh=False`` trusts the runs index as the caller's last load left it."""
    _check_keep(keep)
    runs = _runs_with_event_files(Path(root).expanduser(), _statuses(status), commit, branch, refresh)
    if run_ids is not None:
        wanted = set(run_ids)
        runs = [(info, files) for info, files in runs if info.run_id in wanted]
    with contextlib.ExitStack() as stack:
        if cache:
            store = Cache(Path(root).expanduser())
        else:  # parsed runs go to a private scratch cache, not memory, until the total is known
            store = Cache(Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="expman-scalars-"))))
        sources = []
        for done, (info, files) in enumerate(runs, 1):
            sources.append((info, scalar_source(info, store, keep, check_crc, files, in_memory=False)))
            if progress:
                progress(done, len(runs))
        return _long_frame(sources, tags, keep, check_crc)


def _long_frame(sources: list, patterns: str | Sequence[str], keep: str, check: bool) -> pd.DataFrame:
    """One preallocated array per column, filled run by run, so peak memory stays near the
    size of the result: parsed runs are dropped (or were never held) once copied."""
    tag_names: dict[str, int] = {}
    plan = []
    for info, source in sources:
        offsets = np.concatenate(([0], np.cumsum(source.counts)))
        matching = {
            k for p in ([patterns] if isinstance(patterns, str) else patterns) for k in match_keys(source.keys, p)
        }
        selected = [i for i, k in enumerate(source.keys) if k in matching]
        ranges = [(int(offsets[i]), int(offsets[i + 1])) for i in selected]
        codes = [tag_names.setdefault(source.keys[i], len(tag_names)) for i in selected]
        plan.append((info, ranges, codes))
    total = sum(stop - start for _, ranges, _ in plan for start, stop in ranges)
    outputs = [np.empty(total, np.int64), np.empty(total, np.float64), np.empty(total, np.float64)]
    run_codes = np.empty(total, np.int32)
    tag_codes = np.empty(total, np.int32)
    at = 0
    for n, ((info, ranges, codes), (_, source)) in enumerate(zip(plan, sources, strict=True)):
        _fill(info, source, ranges, outputs, at, keep, check)
        run_codes[at : at + sum(b - a for a, b in ranges)] = n
        for (start, stop), code in zip(ranges, codes, strict=True):
            tag_codes[at : at + stop - start] = code
            at += stop - start
        sources[n] = (info, None)
    run_ids = [info.run_id for info, _, _ in plan]
    return pd.DataFrame(
        {
            "run_id": pd.Categorical.from_codes(run_codes, categories=pd.Index(run_ids, dtype=object)),
            "tag": pd.Categorical.from_codes(tag_codes, categories=pd.Index(list(tag_names), dtype=object)),
            "step": outputs[0],
            "wall_time": outputs[1],
            "value": outputs[2],
        },
        copy=False,
    )


def _fill(info: RunInfo, source: Any, ranges: list, outputs: list[np.ndarray], at: int, keep: str, check: bool) -> None:
    if isinstance(source, CachedScalars):
        try:
            source.read_into(ranges, outputs, at)
            return
        except OSError:
            source = read_run_scalars(info.run.output, event_files(info.run.output), keep, check)
    arrays = (source.steps, source.wall_times, source.values)
    for out, array in zip(outputs, arrays, strict=True):
        pos = at
        for start, stop in ranges:
            out[pos : pos + stop - start] = array[start:stop]
            pos += stop - start


__all__ = ["load_runs", "load_scalars", "select_runs", "RunInfo"]
