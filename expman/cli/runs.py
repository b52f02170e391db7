"""Listing and controlling runs: ``runs``, ``sync`` and ``cancel``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..backends import control
from ..errors import UsageError
from ..rundir.layout import RunDir, find_run, list_runs
from ..rundir.record import RunRecord, RunStatus, load_record
from .common import (
    Commands,
    add_offline,
    add_queue,
    add_runs_root,
    add_where,
    emit_json,
    existing_queue,
    runs_root,
    scalar_stats_named,
    warn,
)

_STATUS_STYLE = {
    RunStatus.QUEUED: "cyan",
    RunStatus.RUNNING: "yellow",
    RunStatus.SUCCEEDED: "green",
    RunStatus.FAILED: "red",
    RunStatus.CANCELLED: "magenta",
    RunStatus.LOST: "red",
}
_COLUMNS = ("id", "status", "commit", "subject", "tags", "backend", "host", "started", "duration")
_GIVE_WAY = ("tags", "host", "backend", "duration")
_SUBJECT_MIN_WIDTH = 24
_TABLE_LINES = 6  # header (3 lines), bottom, the note on more runs, the shell's prompt


def add_parsers(commands: Commands) -> None:
    p = commands.add_parser("runs", help="list runs, newest first (live status from remote hosts and Slurm)")
    add_runs_root(p)
    add_offline(p)
    p.add_argument("--status", choices=list(RunStatus), action="append", help="only runs with this status (repeatable)")
    p.add_argument("--commit", help="only runs of commits starting with this")
    add_where(p)
    p.add_argument(
        "--limit",
        type=int,
        metavar="N",
        help="the newest N runs (0: all; default: a screenful on a terminal, all when piped or with --format json)",
    )
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(handler=cmd_runs)

    p = commands.add_parser("sync", help="copy ssh runs (record, logs, outputs) into the local runs_root")
    add_runs_root(p)
    p.add_argument("runs", nargs="*", metavar="RUN", help="run ids or prefixes (default: every ssh run not synced)")
    p.set_defaults(handler=cmd_sync)

    p = commands.add_parser("cancel", help="stop runs and record them as cancelled (any backend, queued too)")
    add_runs_root(p)
    p.add_argument("runs", nargs="*", metavar="RUN", help="run ids or unique prefixes")
    p.add_argument("--sweep", metavar="ID", help="every job of this sweep in the queue")
    add_queue(p)
    p.set_defaults(handler=cmd_cancel)


def records_of(args: argparse.Namespace, runs: list[RunDir]) -> list[RunRecord]:
    """Records of ``runs``; unless --offline, those not final are refreshed from where they run."""
    if args.offline:
        return [load_record(r) for r in runs]
    records, warnings = control.refresh(runs, os.environ)
    for warning in warnings:
        warn(warning)
    return records


def cmd_runs(args: argparse.Namespace, console: Console) -> int:
    import orjson

    from ..results.index import RunsIndex, runs_condition

    if args.limit is not None and args.limit < 0:
        raise UsageError(f"--limit {args.limit}: give a number of runs, or 0 for all")
    root = runs_root(args)
    limit = args.limit if args.limit is not None else 0 if args.format == "json" else _screenful(console)
    where, params = runs_condition(set(args.status or ()), args.commit, None)
    if args.where:
        ids = sorted(_matching(root, args.where))
        where = " AND ".join(filter(None, [where, f"run_id IN ({', '.join('?' * len(ids))})"]))
        params += ids
    with RunsIndex(root) as index:
        index.refresh(full=False)
        found, total = index.records(where, params, limit or None)
    records = _live([RunRecord.from_dict(orjson.loads(text)) for text, _ in found], root, args.offline)
    tags = [t for _, t in found]
    if args.format == "json":
        emit_json([{**r.to_dict(), **({"tags": t} if t else {})} for r, t in zip(records, tags, strict=True)])
        return 0
    console.print(_runs_table(records, tags, console.width))
    if len(records) < total:
        console.print(f"… and {total - len(records)} more; --limit N shows N, --limit 0 all", markup=False)
    return 0


def _live(records: list[RunRecord], root: Path, offline: bool) -> list[RunRecord]:
    """``records``, those not final brought up to date from where they run (unless offline)."""
    pending = [i for i, r in enumerate(records) if not r.final]
    if offline or not pending:
        return records
    fresh, warnings = control.refresh([RunDir(root / records[i].run_id) for i in pending], os.environ)
    for warning in warnings:
        warn(warning)
    for i, record in zip(pending, fresh, strict=True):
        records[i] = record
    return records


def _matching(root: Path, where: list[str]) -> set[str]:
    """Ids of the runs whose config, results or record meet every condition, as in ``table``
    (from the runs index's rows; a statistic it does not keep needs load_runs, and pandas)."""
    from ..results.rowset import indexed, load_rowset

    stats = scalar_stats_named(where)
    if indexed(None, "last", True, True, stats):
        return set(load_rowset(root, set(), None, None, where, stats).values("run_id"))
    from ..results.loader import load_runs

    return set(load_runs(root, where=where, scalar_stats=stats)["run_id"])


def _screenful(console: Console) -> int:
    """On a terminal, as many rows as fit with the header and the note below; all when piped."""
    return max(console.height - _TABLE_LINES, 5) if console.is_terminal else 0


def _runs_table(records: list[RunRecord], tags: list[dict[str, Any]], width: int) -> Table:
    """The runs, one per line. Where the console is narrow, tags, host, backend and duration
    give way, in that order, so that the subject keeps room to be read."""
    rows = [
        {**_run_row(r), "tags": " ".join(f"{k}={v}" for k, v in t.items())} for r, t in zip(records, tags, strict=True)
    ]
    names = [n for n in _COLUMNS if n != "tags" or any(tags)]
    widths = {name: max([len(name), *(len(row[name]) for row in rows)]) for name in names}
    for name in [n for n in _GIVE_WAY if n in names]:
        if width - _taken(names, widths) >= _SUBJECT_MIN_WIDTH:
            break
        names.remove(name)
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    for name in names:
        room = max(width - _taken(names, widths), _SUBJECT_MIN_WIDTH) if name == "subject" else None
        table.add_column(name, no_wrap=True, overflow="ellipsis", max_width=room)
    for record, row in zip(records, rows, strict=True):
        style = _STATUS_STYLE.get(record.status, "")
        table.add_row(*(Text(row[n], style=style if n == "status" else "") for n in names))
    return table


def _tags(tags: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in tags.items())


def _taken(names: list[str], widths: dict[str, int]) -> int:
    """Columns' width besides the subject's, with two spaces between columns and one after."""
    return sum(widths[n] for n in names if n != "subject") + 2 * len(names) - 1


def _run_row(r: RunRecord) -> dict[str, str]:
    return {
        "id": r.run_id,
        "status": str(r.status),
        "commit": r.git.commit[:7],
        "subject": r.git.subject,
        "backend": r.backend,
        "host": r.host or "",
        "started": (r.started_at or "")[:16].replace("T", " "),
        "duration": duration(r.duration_s),
    }


def cmd_sync(args: argparse.Namespace, console: Console) -> int:
    root = runs_root(args)
    if args.runs:
        runs = [find_run(root, ref) for ref in args.runs]
    else:
        runs = [r for r in list_runs(root) if _needs_sync(load_record(r))]
        if not runs:
            console.print("every ssh run is synced", markup=False)
            return 0
    for run in runs:
        record, result = control.sync(run, os.environ)
        state = record.status + ("" if record.final else " (still running; sync again later)")
        console.print(
            f"{run.run_id} {state}: {result.files} files ({size(result.bytes)}) copied, {result.skipped} unchanged",
            markup=False,
        )
    return 0


def _needs_sync(record: RunRecord) -> bool:
    return record.remote is not None and not record.remote.get("synced_at")


def cmd_cancel(args: argparse.Namespace, console: Console) -> int:
    from ..submit.schedule import cancel_jobs

    root = runs_root(args)
    if not args.runs and not args.sweep:
        raise UsageError("name the runs to cancel, or --sweep ID; 'expman runs' and 'expman status' list them")
    if args.sweep:
        from ..queue import queue_url

        queue = existing_queue(queue_url(args.queue, root, os.environ))
        try:
            cancelled, asked = cancel_jobs(queue, sweep_id=args.sweep)
        finally:
            queue.close()
        console.print(
            f"sweep {args.sweep}: {cancelled} pending jobs cancelled, {asked} running jobs asked to stop "
            "(their workers stop them at the next heartbeat)",
            markup=False,
            soft_wrap=True,
        )
    for run in [find_run(root, ref) for ref in args.runs]:
        before = load_record(run)
        if before.queue is not None and not before.final:
            queue = existing_queue(args.queue or before.queue["url"])
            try:
                cancelled, asked = cancel_jobs(queue, run_id=run.run_id)
            finally:
                queue.close()
            state = "cancelled" if cancelled else "asked to stop (its worker stops it)" if asked else before.status
            console.print(f"{run.run_id} {state}", markup=False)
            continue
        record = control.cancel(run, os.environ)
        if before.final:
            console.print(f"{run.run_id} had already ended: {record.status}", markup=False)
        else:
            console.print(
                f"{run.run_id} {record.status}" + (f" ({record.reason})" if record.reason else ""), markup=False
            )
    return 0


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes, s = divmod(int(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m{s:02d}s" if hours else f"{m}m{s:02d}s" if m else f"{seconds:.1f}s"


def size(n: float | None) -> str:
    if n is None:
        return ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
