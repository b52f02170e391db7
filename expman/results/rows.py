"""One run as one row: record fields, flattened config, results (results.json and metrics
parsed from stdout), scalar summaries, tags and notes. The runs index stores these rows;
``load_runs`` reads them from it, or makes them directly for options the index does not keep.
A damaged file never raises: what could be read is kept and the row is flagged ``partial``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ..errors import ConfigError
from ..experiment.config import SECTION
from ..experiment.patterns import compile_patterns
from ..rundir.layout import RunDir
from .cache import Cache, CachedScalars
from .filters import resolve_column
from .flatten import flatten_config, read_config, read_json, read_results
from .options import DEFAULT_STATS
from .scalars import RunScalars, event_files, file_signature, order_event_files, read_run_scalars, summaries
from .stdout import extract

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


def run_value(run: RunDir, name: str) -> Any:
    """One value of one run, named as ``expman table --value`` names it (a results key, a
    stdout pattern, ``tb:TAG:STAT``); a UsageError when the run has no such value."""
    info = RunInfo(run, read_json(run.record), read_config(run.config))
    stats = tuple(sorted({name.rpartition(":")[2]})) if name.startswith("tb:") else ()
    row = run_row(info, Cache(run.path.parent, True), None, stats, "last", True)
    return row[resolve_column(list(row), name)]


def columns_of(rows: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen) or ["run_id", *RECORD_FIELDS]


def run_row(
    info: RunInfo,
    store: Cache,
    patterns: Any,
    stats: tuple[str, ...],
    keep: str,
    check: bool,
    files: list[Path] | None = None,
) -> dict:
    """The run's row; ``files``: its event files when the caller has just listed them."""
    row: dict[str, Any] = {"run_id": info.run_id}
    row.update({name: info.record.get(name) for name in RECORD_FIELDS})
    git = info.record.get("git") or {}
    row.update({column: git.get(name) for column, name in GIT_FIELDS.items()})
    sweep = info.record.get("sweep") or {}
    row["sweep"] = sweep.get("id")
    reproduction = info.record.get("reproduction") or {}
    row["rerun_of"], row["reproduction"] = info.record.get("rerun_of"), reproduction.get("verdict")
    search = info.record.get("search") or {}
    row.update({f"search.{name}": search.get(name) for name in SEARCH_FIELDS})
    row.update(_annotations(info.run))
    row.update({f"config.{k}": v for k, v in flatten_config(info.config).items()})
    problem = None
    if patterns is None:
        try:
            patterns = compile_patterns(run_patterns(info.config))
        except ConfigError as exc:  # a run made by hand, say: the others still load
            patterns, problem = {}, f"config.json: {exc.message}"
    row.update(_derived(info, store, patterns, stats, keep, check, files))
    if problem:
        row["partial"], row["problems"] = True, "; ".join(filter(None, [problem, row.get("problems")]))
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


def _derived(
    info: RunInfo, store: Cache, patterns: Any, stats: tuple[str, ...], keep: str, check: bool, listed: Any = None
) -> dict:
    """Results, parsed stdout and scalar summaries: the expensive part, cached per run."""
    run = info.run
    files = (event_files(run.output) if listed is None else listed) if stats else []
    if not store.enabled:
        return _compute_derived(info, store, patterns, files, stats, keep, check)
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
            values.update(zip((f"tb:{key}:{stat}" for stat in stats), summaries(column, stats), strict=True))
    values["partial"] = bool(problems)
    values["problems"] = "; ".join(problems) if problems else None
    return values


def run_patterns(config: dict[str, Any]) -> dict[str, str]:
    section = config.get(SECTION)
    parse = section.get("parse") if isinstance(section, dict) else None
    return parse if isinstance(parse, dict) else {}


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


def read_run(path: Path, events: list[str] | None = None) -> tuple[bytes | None, dict[str, Any] | None, bool]:
    """What the runs index keeps of one run: run.json (compact), its row with the default
    scalar statistics, and whether the row depends on stdout.log (the run parses metrics
    from it); (None, None, False) when run.json cannot be read as a record. The results
    cache is left alone: the index is this row's cache. ``events``: the run's event files,
    relative to it, when the caller has just listed them."""
    run = RunDir(path)
    try:
        record = read_json(run.record)
    except (OSError, ValueError):
        return None, None, False
    if not isinstance(record, dict):
        return None, None, False
    info = RunInfo(run, record, read_config(run.config))
    files = None if events is None else order_event_files([path / e for e in events])
    row = run_row(info, Cache(path.parent, False), None, DEFAULT_STATS, "last", True, files)
    return orjson.dumps(record, option=orjson.OPT_NON_STR_KEYS), row, bool(run_patterns(info.config))
