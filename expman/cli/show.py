"""``expman show``: one run as a reader wants it: where and how it ran (only what applies to
its backend), its tags and notes, its effective configuration and its results."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..errors import RecordError
from ..rundir.annotations import read_annotations
from ..rundir.layout import RunDir, find_run
from ..rundir.record import RunRecord
from .common import Commands, add_offline, add_runs_root, runs_root
from .runs import duration, records_of, size

# Titled sections of (key, value) rows: notes may share a key (two written in one second).
Sections = dict[str, list[tuple[str, Any]]]


def add_parsers(commands: Commands) -> None:
    p = commands.add_parser("show", help="show one run: its record, effective config and results")
    add_runs_root(p)
    add_offline(p)
    p.add_argument("run", nargs="?", help="run id or unique prefix (default: the newest run)")
    p.add_argument(
        "--format",
        choices=("table", "json", "path"),
        default="table",
        help="json prints run.json as it is; path prints the run directory, for scripts",
    )
    p.set_defaults(handler=cmd_show)


def cmd_show(args: argparse.Namespace, console: Console) -> int:
    run = find_run(runs_root(args), args.run)
    if args.format == "path":
        console.print(str(run.path), markup=False, soft_wrap=True)
        return 0
    (record,) = records_of(args, [run])
    if args.format == "json":
        sys.stdout.flush()
        sys.stdout.buffer.write(run.record.read_bytes())
        sys.stdout.buffer.flush()
        return 0
    from ..results.flatten import (
        flatten_config,  # numpy: only here, not for every command
        read_config,
    )

    config = read_config(run.config)
    results, problem = _results(run)
    sections = {
        "": list(_summary(record, run).items()),
        **_annotations(run),
        "config": list(flatten_config(config).items()),
        "results": list({**results, **({"problems": problem} if problem else {})}.items()),
    }
    if console.is_terminal:
        console.print(_sections(sections))
    else:  # plain lines for a pipe: a grid pads every row to its widest value
        console.print(_plain(sections), markup=False, soft_wrap=True, end="")
    return 0


def _annotations(run: RunDir) -> Sections:
    """The tags and notes sections, those the run has (notes keyed by when they were written)."""
    try:
        annotations = read_annotations(run)
    except RecordError as exc:
        return {"tags": [("problems", exc.message)]}
    sections: Sections = {}
    if annotations.tags:
        sections["tags"] = sorted(annotations.tags.items())
    if annotations.notes:
        sections["notes"] = [(str(note.get("at", "")), note.get("text")) for note in annotations.notes]
    return sections


def _plain(sections: Sections) -> str:
    width = max((len(key) for rows in sections.values() for key, _ in rows), default=0)
    lines = []
    for title, rows in sections.items():
        if title:
            lines += ["", title]
        lines += [f"{key:<{width}}  {'' if value is None else value}".rstrip() for key, value in rows]
    return "\n".join(lines) + "\n"


def _sections(sections: Sections) -> Table:
    """One two-column grid, so that the values of every section line up."""
    table = Table.grid(padding=(0, 2))
    for title, rows in sections.items():
        if title:
            table.add_row("")
            table.add_row(Text(title, style="bold underline"))
        for key, value in rows:
            table.add_row(Text(key, style="bold"), Text("" if value is None else str(value)))
    return table


def _results(run: RunDir) -> tuple[dict[str, Any], str | None]:
    """The run's row in the runs index (refreshed for this run): results.json flattened, the
    metrics its "parse" patterns find in stdout (results.json wins where both have a key),
    and the last value of each scalar, as ``expman table`` reads them."""
    from ..results.index import RunsIndex

    with RunsIndex(run.path.parent) as index:
        index.refresh(only=[run.run_id])
        columns, rows = index.select("run_id = ?", [run.run_id])
    row = dict(zip(columns, rows[0], strict=True)) if rows else {}
    results = {k[8:]: v for k, v in row.items() if k.startswith("results.")}
    results.update({k: v for k, v in row.items() if k.startswith("tb:") and k.endswith(":last")})
    return results, row.get("problems")


def _summary(record: RunRecord, run: RunDir) -> dict[str, Any]:
    return {
        "run": record.run_id,
        "status": f"{record.status}" + (f" ({record.reason})" if record.reason else ""),
        "commit": f"{record.git.commit} {record.git.subject}",
        "branch": record.git.branch,
        "author": f"{record.git.author} <{record.git.author_email}> {record.git.commit_date}",
        "remote": record.git.remote_url or "",
        "command": " ".join(record.command),
        **_where_it_ran(record),
        **(
            {"sweep": f"{record.sweep['index'] + 1}/{record.sweep['count']} {record.sweep['label']}"}
            if record.sweep
            else {}
        ),
        **({"attempts": len(record.attempts)} if len(record.attempts) > 1 else {}),
        **({"rerun of": record.rerun_of} if record.rerun_of else {}),
        **({"reproduction": (record.reproduction or {}).get("verdict", "")} if record.reproduction else {}),
        "queued": record.queued_at,
        "started": record.started_at or "",
        "ended": record.ended_at or "",
        "duration": duration(record.duration_s),
        "exit code": "" if record.exit_code is None else record.exit_code,
        **({"oom killed": record.oom_killed} if record.oom_killed is not None else {}),
        "peak memory": size(record.peak_memory_bytes),
        "directory": run.path,
        **({"warnings": "; ".join(record.warnings)} if record.warnings else {}),
    }


def _where_it_ran(record: RunRecord) -> dict[str, Any]:
    """Backend and host, and only the rows that apply: image and container where a container
    ran, pid where a process did, the Slurm job, the SSH host's copy."""
    rows: dict[str, Any] = {"backend": record.backend, "host": record.host or ""}
    if _in_container(record):
        rows["image"] = f"{record.image.image_id or ''} {record.image.image_tag or ''}".strip()
        rows["container"] = record.container_id or ""
    if record.pid is not None:
        rows["pid"] = record.pid
    if record.job_id:
        rows["slurm job"] = record.job_id
    if record.remote:
        rows["remote"] = f"{record.remote.get('name')}:{record.remote.get('path')}"
        rows["synced"] = record.remote.get("synced_at") or "not yet"
    return rows


def _in_container(record: RunRecord) -> bool:
    if record.backend == "slurm":
        return (record.slurm or {}).get("runtime", "docker") == "docker"
    return record.backend != "process"
