"""Looking at and controlling runs: ``runs``, ``show``, ``logs``, ``sync`` and ``cancel``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..backends import control
from ..errors import UsageError
from ..queue import open_queue
from ..rundir.layout import RunDir, find_run, list_runs
from ..rundir.record import RunRecord, RunStatus, load_record
from .common import Commands, add_offline, add_queue, add_runs_root, open_queue_of, runs_root, warn

_STATUS_STYLE = {
    RunStatus.QUEUED: "cyan",
    RunStatus.RUNNING: "yellow",
    RunStatus.SUCCEEDED: "green",
    RunStatus.FAILED: "red",
    RunStatus.CANCELLED: "magenta",
    RunStatus.LOST: "red",
}
_FOLLOW_POLL_S = 0.25


def add_parsers(commands: Commands) -> None:
    p = commands.add_parser("runs", help="list runs, newest first (live status from remote hosts and Slurm)")
    add_runs_root(p)
    add_offline(p)
    p.add_argument("--status", choices=list(RunStatus), action="append", help="only runs with this status (repeatable)")
    p.add_argument("--commit", help="only runs of commits starting with this")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(handler=cmd_runs)

    p = commands.add_parser("show", help="show one run's record")
    add_runs_root(p)
    add_offline(p)
    p.add_argument("run", nargs="?", help="run id or unique prefix (default: the newest run)")
    p.add_argument(
        "--format",
        choices=("table", "json", "path"),
        default="table",
        help="path prints the run directory, for scripts",
    )
    p.set_defaults(handler=cmd_show)

    p = commands.add_parser("logs", help="print a run's logs")
    add_runs_root(p)
    p.add_argument("run", help="run id or unique prefix")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing until the run ends")
    p.add_argument("--stream", choices=("all", "stdout", "stderr", "build"), default="all")
    p.set_defaults(handler=cmd_logs)

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


def _records(args: argparse.Namespace, runs: list[RunDir]) -> list[RunRecord]:
    """Records of ``runs``; unless --offline, those not final are refreshed from where they run."""
    if args.offline:
        return [load_record(r) for r in runs]
    records, warnings = control.refresh(runs, os.environ)
    for warning in warnings:
        warn(warning)
    return records


def cmd_runs(args: argparse.Namespace, console: Console) -> int:
    records = _records(args, list_runs(runs_root(args)))
    if args.status:
        records = [r for r in records if r.status in args.status]
    if args.commit:
        records = [r for r in records if r.git.commit.startswith(args.commit)]
    if args.format == "json":
        console.print_json(json.dumps([r.to_dict() for r in records]))
        return 0
    table = Table()
    for name in ("id", "status", "commit", "subject", "backend", "host", "started", "duration"):
        table.add_column(name, no_wrap=name != "subject", overflow="ellipsis")
    for r in records:
        table.add_row(
            r.run_id,
            f"[{_STATUS_STYLE.get(r.status, '')}]{r.status}[/]",
            r.git.commit[:10],
            escape(r.git.subject[:50]),
            r.backend,
            r.host or "",
            (r.started_at or "")[:19].replace("T", " "),
            duration(r.duration_s),
        )
    console.print(table)
    return 0


def cmd_show(args: argparse.Namespace, console: Console) -> int:
    run = find_run(runs_root(args), args.run)
    if args.format == "path":
        console.print(str(run.path), markup=False, soft_wrap=True)
        return 0
    (record,) = _records(args, [run])
    if args.format == "json":
        console.print_json(run.record.read_text())
        return 0
    table = Table(show_header=False, box=None)
    for key, value in _summary(record, run).items():
        table.add_row(f"[bold]{key}[/]", escape(str(value)))
    console.print(table)
    return 0


def cmd_logs(args: argparse.Namespace, console: Console) -> int:
    run = find_run(runs_root(args), args.run)
    record = load_record(run)
    if record.remote is not None and not record.remote.get("synced_at"):  # ended or not, fetch it first
        if args.follow and control.follow(run, os.environ):  # streams as it arrives, then syncs
            return 0
        control.sync(run, os.environ)  # the logs so far (all of them, if it has ended)
    streams = {"stdout": [run.stdout_log], "stderr": [run.stderr_log], "build": [run.build_log]}
    paths = streams.get(args.stream) or [run.stdout_log, run.stderr_log]
    targets = {run.stdout_log: sys.stdout.buffer, run.build_log: sys.stdout.buffer, run.stderr_log: sys.stderr.buffer}
    offsets = {p: 0 for p in paths}
    while True:
        final = load_record(run).final
        for path in paths:
            offsets[path] = _copy_new_bytes(path, offsets[path], targets[path])
        if not args.follow or final:
            return 0
        time.sleep(_FOLLOW_POLL_S)


def _copy_new_bytes(path: Path, offset: int, target: Any) -> int:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return offset
    target.write(data)
    target.flush()
    return offset + len(data)


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
        queue = open_queue_of(args, root)
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
            queue = open_queue(args.queue or before.queue["url"])
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


def _summary(record: RunRecord, run: RunDir) -> dict[str, Any]:
    return {
        "run": record.run_id,
        "status": f"{record.status}" + (f" ({record.reason})" if record.reason else ""),
        "commit": f"{record.git.commit} {record.git.subject}",
        "branch": record.git.branch,
        "author": f"{record.git.author} <{record.git.author_email}> {record.git.commit_date}",
        "remote": record.git.remote_url or "",
        "command": " ".join(record.command),
        "backend": record.backend,
        "host": record.host or "",
        "image": f"{record.image.image_id or ''} {record.image.image_tag or ''}".strip(),
        "container": record.container_id or "",
        **({"slurm job": record.job_id} if record.job_id else {}),
        **({"remote": f"{record.remote.get('name')}:{record.remote.get('path')}"} if record.remote else {}),
        **({"synced": record.remote.get("synced_at") or "not yet"} if record.remote else {}),
        **(
            {"sweep": f"{record.sweep['index'] + 1}/{record.sweep['count']} {record.sweep['label']}"}
            if record.sweep
            else {}
        ),
        **({"attempts": len(record.attempts)} if len(record.attempts) > 1 else {}),
        "queued": record.queued_at,
        "started": record.started_at or "",
        "ended": record.ended_at or "",
        "duration": duration(record.duration_s),
        "exit code": "" if record.exit_code is None else record.exit_code,
        "oom killed": "" if record.oom_killed is None else record.oom_killed,
        "peak memory": size(record.peak_memory_bytes),
        "directory": run.path,
        **({"warnings": "; ".join(record.warnings)} if record.warnings else {}),
    }


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
