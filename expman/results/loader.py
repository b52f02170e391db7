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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import UsageError
from ..experiment.config import SECTION
from ..experiment.patterns import compile_patterns
from ..rundir.layout import RunDir, list_runs
from .cache import Cache, CachedScalars
from .filters import Condition, parse_conditions, resolve_column
from .flatten import flatten_config, read_config, read_json, read_results
from .options import DEFAULT_STATS, KEEP_MODES
from .scalars import RunScalars, event_files, file_signature, match_keys, read_run_scalars, summarize
from .stdout import extract

Progress = Callable[[int, int], None]
RECORD_FIELDS = (
    *("status", "reason", "backend", "host", "queued_at", "started_at", "ended_at", "duration_s"),
    *("exit_code", "oom_killed", "peak_memory_bytes", "config_hash"),
)
GIT_FIELDS = {"commit": "commit", "branch": "branch", "subject": "subject"}
SEARCH_FIELDS = ("study", "trial", "segment", "member", "generation", "parent")
# A run with no event files and less results.json and stdout than this is parsed afresh each
# time: that is as quick as reading a cache entry, and writing one per run would cost more.
UNCACHED_BYTES = 64 * 1024


@dataclass
class RunInfo:
    run: RunDir
    record: dict[str, Any]
    config: dict[str, Any]

    @property
    def run_id(self) -> str:
        return self.run.run_id


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
    **equals: Any,
) -> pd.DataFrame:
    """A row per run. ``where`` takes "key=value" (also !=, <, >, <=, >=); keyword arguments
    are equality conditions (``load_runs(root, **{"train.env_name": "Pong"})``). ``parse``
    overrides the runs' own stdout patterns; ``scalar_stats=()`` skips event files."""
    _check_keep(keep)
    conditions = parse_conditions(where) + parse_conditions(f"{k}={v}" for k, v in equals.items())
    runs = select_runs(root, status, commit, branch)
    store = Cache(Path(root).expanduser(), cache)
    patterns = compile_patterns(parse) if parse is not None else None
    rows = []
    for done, info in enumerate(runs, 1):
        rows.append(_row(info, store, patterns, tuple(scalar_stats), keep, check_crc))
        if progress:
            progress(done, len(runs))
    frame = pd.DataFrame(rows, columns=_columns(rows))
    for condition in conditions:
        frame = frame[condition.mask(frame)]
    return frame.reset_index(drop=True)


def run_value(run: RunDir, name: str) -> Any:
    """One value of one run, named as ``expman table --value`` names it (a results key, a
    stdout pattern, ``tb:TAG:STAT``); a UsageError when the run has no such value."""
    info = RunInfo(run, read_json(run.record), read_config(run.config))
    stats = tuple(sorted({name.rpartition(":")[2]})) if name.startswith("tb:") else ()
    row = _row(info, Cache(run.path.parent, True), None, stats, "last", True)
    return row[resolve_column(list(row), name)]


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen) or ["run_id", *RECORD_FIELDS]


def _row(info: RunInfo, store: Cache, patterns: Any, stats: tuple[str, ...], keep: str, check: bool) -> dict:
    row: dict[str, Any] = {"run_id": info.run_id}
    row.update({name: info.record.get(name) for name in RECORD_FIELDS})
    git = info.record.get("git") or {}
    row.update({column: git.get(name) for column, name in GIT_FIELDS.items()})
    sweep = info.record.get("sweep") or {}
    row["sweep"] = sweep.get("id")
    search = info.record.get("search") or {}
    row.update({f"search.{name}": search.get(name) for name in SEARCH_FIELDS})
    row.update(_annotations(info.run))
    row.update({f"config.{k}": v for k, v in flatten_config(info.config).items()})
    row.update(_derived(info, store, patterns, stats, keep, check))
    return row


def _annotations(run: RunDir) -> dict[str, Any]:
    """``tag.<key>`` per tag and ``notes`` (every note, one per line) from annotations.json."""
    try:
        data = read_json(run.annotations)
    except (OSError, ValueError):
        return {"notes": None}
    tags = data.get("tags") if isinstance(data, dict) else None
    notes = data.get("notes") if isinstance(data, dict) else None
    row: dict[str, Any] = {f"tag.{k}": v for k, v in tags.items()} if isinstance(tags, dict) else {}
    texts = [str(n.get("text", "")) for n in notes if isinstance(n, dict)] if isinstance(notes, list) else []
    row["notes"] = "\n".join(texts) or None
    return row


def _derived(info: RunInfo, store: Cache, patterns: Any, stats: tuple[str, ...], keep: str, check: bool) -> dict:
    """Results, parsed stdout and scalar summaries: the expensive part, cached per run."""
    run = info.run
    if patterns is None:
        patterns = compile_patterns(_run_patterns(info.config))
    files = event_files(run.output) if stats else []
    inputs = file_signature([p for p in (run.output / "results.json", run.stdout_log) if p.exists()], run.path)
    if not files and sum(size for _, size, _ in inputs) < UNCACHED_BYTES:
        return _compute_derived(info, store, patterns, files, stats, keep, check)
    signature = [
        inputs,
        file_signature(files, run.output),
        {name: regex.pattern for name, regex in patterns.items()},
        list(stats),
        keep,
        check,
    ]
    cached = store.get_json(info.run_id, "row", signature)
    if cached is not None:
        return cached
    derived = _compute_derived(info, store, patterns, files, stats, keep, check)
    store.put_json(info.run_id, "row", signature, derived)
    return derived


def _compute_derived(info: RunInfo, store: Cache, patterns: Any, files: list[Path], stats: Any, keep: str, check: bool):
    results = read_results(info.run.output / "results.json")
    values = {f"results.{k}": v for k, v in results.values.items()}
    problems = [results.problem] if results.problem else []
    if patterns:
        text = info.run.stdout_log.read_text(errors="replace") if info.run.stdout_log.exists() else ""
        for key, value in extract(text, patterns).items():
            values.setdefault(f"results.{key}", value)
    if stats:
        scalars = run_scalars(info, store, keep, check, files)
        problems.extend(scalars.problems)
        offsets = scalars.offsets
        for i, key in enumerate(scalars.keys):
            column = scalars.values[offsets[i] : offsets[i + 1]]
            values.update({f"tb:{key}:{stat}": summarize(column, stat) for stat in stats})
    values["partial"] = bool(problems)
    values["problems"] = "; ".join(problems) if problems else None
    return values


def _run_patterns(config: dict[str, Any]) -> dict[str, str]:
    section = config.get(SECTION)
    parse = section.get("parse") if isinstance(section, dict) else None
    return parse if isinstance(parse, dict) else {}


def _check_keep(keep: str) -> None:
    if keep not in KEEP_MODES:
        raise UsageError(f"keep={keep!r}: use 'last' (latest write per step) or 'all' (every write)")


def scalar_source(
    info: RunInfo, store: Cache, keep: str, check: bool, files: list[Path] | None = None, in_memory: bool = True
) -> RunScalars | CachedScalars:
    """The run's scalars: from the cache when fresh, else parsed and cached (a run without
    event files gets no entry). With ``in_memory=False`` a freshly parsed run is handed back
    as its cache entry, so that the parsed arrays need not stay in memory."""
    files = event_files(info.run.output) if files is None else files
    if not files:
        return read_run_scalars(info.run.output, files, keep, check)
    signature = [file_signature(files, info.run.output), check]
    kind = f"scalars-{keep}"
    cached = store.get_scalars(info.run_id, kind, signature)
    if cached is not None:
        return cached
    scalars = read_run_scalars(info.run.output, files, keep, check)
    entry = store.put_scalars(info.run_id, kind, signature, scalars)
    return scalars if in_memory or entry is None else entry


def run_scalars(info: RunInfo, store: Cache, keep: str, check: bool, files: list[Path] | None = None) -> RunScalars:
    source = scalar_source(info, store, keep, check, files)
    if isinstance(source, RunScalars):
        return source
    try:
        return source.load()
    except OSError:
        return read_run_scalars(info.run.output, event_files(info.run.output), keep, check)


def load_scalars(
    root: Path | str,
    tags: str = "*",
    *,
    status: str | Sequence[str] | None = None,
    commit: str | None = None,
    branch: str | None = None,
    run_ids: Iterable[str] | None = None,
    keep: str = "last",
    check_crc: bool = True,
    cache: bool = True,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """Every point of the scalars whose key matches the glob ``tags``, as a long frame with
    columns run_id, tag (categorical), step, wall_time, value. With ``cache=False`` the
    runs root's cache is neither read nor written; parsed runs wait in a private temporary
    directory instead of memory, so peak memory stays near the result's size."""
    _check_keep(keep)
    runs = select_runs(root, status, commit, branch)
    if run_ids is not None:
        wanted = set(run_ids)
        runs = [info for info in runs if info.run_id in wanted]
    with contextlib.ExitStack() as stack:
        if cache:
            store = Cache(Path(root).expanduser())
        else:  # parsed runs go to a private scratch cache, not memory, until the total is known
            store = Cache(Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="expman-scalars-"))))
        sources = []
        for done, info in enumerate(runs, 1):
            sources.append((info, scalar_source(info, store, keep, check_crc, in_memory=False)))
            if progress:
                progress(done, len(runs))
        return _long_frame(sources, tags, keep, check_crc)


def _long_frame(sources: list, pattern: str, keep: str, check: bool) -> pd.DataFrame:
    """One preallocated array per column, filled run by run, so peak memory stays near the
    size of the result: parsed runs are dropped (or were never held) once copied."""
    tag_names: dict[str, int] = {}
    plan = []
    for info, source in sources:
        offsets = np.concatenate(([0], np.cumsum(source.counts)))
        matching = set(match_keys(source.keys, pattern))
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
