"""Command line: argument parsing and output only. ``main`` is the only place that turns
errors into messages and exit codes (``--debug`` shows the traceback)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import __version__, control, queue_cli
from .backends import BACKENDS, make_backend
from .errors import ExpmanError, RunCancelledError, RunFailedError, UsageError
from .gitguard import find_repository
from .progress import Reporter
from .record import CANCELLED, FAILED, FINAL_STATUSES, LOST, STATUSES, SUCCEEDED, RunRecord, load_record
from .rundir import RunDir, find_run, list_runs, resolve_runs_root
from .table_cli import add_arguments as add_table_arguments
from .table_cli import run as run_table

_STATUS_STYLE = {
    "queued": "cyan",
    "running": "yellow",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "magenta",
    "lost": "red",
}
_FOLLOW_POLL_S = 0.25
_PIPE_WIDTH = 200


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would exit; we raise like every other error
        raise UsageError(f"{message}; see '{self.prog} --help'")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="expman", description="Reproducible ML experiments from committed code.")
    parser.add_argument("--version", action="version", version=f"expman {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = commands.add_parser("submit", help="run a commit of the experiments branch")
    p.add_argument("--commit-hash", metavar="REF", help="commit to run (hash, short hash, tag); default HEAD")
    p.add_argument("--backend", choices=sorted(BACKENDS), help="where to run (default from config: local)")
    p.add_argument("--host", help="ssh backend: a host named in expman.hosts (default: expman.host)")
    p.add_argument(
        "--signal",
        metavar="SIG[@SECONDS]",
        help="slurm backend: signal for the experiment SECONDS before the time limit (default USR1@60)",
    )
    p.add_argument(
        "--requeue",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="slurm backend: requeue the job when it is preempted or the node fails",
    )
    p.add_argument("--detach", action="store_true", help="return once the run has started")
    p.add_argument("--dry-run", action="store_true", help="run every check, print what would run, write nothing")
    p.add_argument("-C", "--repo", type=Path, default=Path("."), help="the experiment repository (default: .)")

    p = commands.add_parser("runs", help="list runs, newest first (live status from remote hosts and Slurm)")
    _add_runs_root(p)
    _add_offline(p)
    p.add_argument("--status", choices=STATUSES, action="append", help="only runs with this status (repeatable)")
    p.add_argument("--commit", help="only runs of commits starting with this")
    p.add_argument("--format", choices=("table", "json"), default="table")

    p = commands.add_parser("show", help="show one run's record")
    _add_runs_root(p)
    _add_offline(p)
    p.add_argument("run", nargs="?", help="run id or unique prefix (default: the newest run)")
    p.add_argument(
        "--format",
        choices=("table", "json", "path"),
        default="table",
        help="path prints the run directory, for scripts",
    )

    p = commands.add_parser("logs", help="print a run's logs")
    _add_runs_root(p)
    p.add_argument("run", help="run id or unique prefix")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing until the run ends")
    p.add_argument("--stream", choices=("all", "stdout", "stderr", "build"), default="all")

    p = commands.add_parser("sync", help="copy ssh runs (record, logs, outputs) into the local runs_root")
    _add_runs_root(p)
    p.add_argument("runs", nargs="*", metavar="RUN", help="run ids or prefixes (default: every ssh run not synced)")

    p = commands.add_parser("cancel", help="stop runs and record them as cancelled (any backend, queued too)")
    _add_runs_root(p)
    p.add_argument("runs", nargs="*", metavar="RUN", help="run ids or unique prefixes")
    p.add_argument("--sweep", metavar="ID", help="every job of this sweep in the queue")
    p.add_argument(
        "--queue", metavar="URL", help="the queue of --sweep (default: EXPMAN_QUEUE); a scheduled run's is recorded"
    )

    p = commands.add_parser("table", help="aggregate runs into a table (mean ± std over seeds)")
    _add_runs_root(p)
    add_table_arguments(p)
    queue_cli.add_commands(commands, _add_runs_root)
    return parser


def _add_runs_root(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--runs-root",
        type=Path,
        help="default: EXPMAN_RUNS_ROOT, config.json's runs_root, or ~/.local/share/expman/runs",
    )
    parser.add_argument("-C", "--repo", type=Path, default=Path("."), help=argparse.SUPPRESS)


def _add_offline(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--offline", action="store_true", help="show the status as last recorded; do not ask hosts or Slurm"
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Piped output keeps whole lines (run ids, hashes) instead of rich's 80-column default.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else _PIPE_WIDTH)
    errors = Console(stderr=True, highlight=False)
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        return _COMMANDS[args.command](args, argv, console)
    except ExpmanError as exc:
        if debug:
            traceback.print_exc()
        errors.print(f"expman: error: {exc.message}", markup=False, soft_wrap=True, style="red")
        return exc.exit_code
    except KeyboardInterrupt:
        errors.print("expman: interrupted", style="red")
        return RunCancelledError.exit_code


def cmd_submit(args: argparse.Namespace, argv: list[str], console: Console) -> int:
    from .submission import describe_plan, plan_submission, submit  # only here: other commands start faster

    environ = dict(os.environ)
    overrides = {k: v for k, v in (("signal", args.signal), ("requeue", args.requeue)) if v is not None}
    plan = plan_submission(args.repo, args.commit_hash, args.backend, environ, args.host, overrides)
    if args.dry_run:
        backend = make_backend(plan.backend, environ)
        backend.check(plan)
        console.print_json(json.dumps(describe_plan(plan, backend)))
        return 0
    records = submit(plan, environ, Reporter(), ["expman", *argv], detach=args.detach)
    for record in records:
        _report(console, record, plan.runs_root / record.run_id, followed=not args.detach and not record.job_id)
    if len(records) > 1:
        counts = Counter(r.status for r in records)
        console.print(", ".join(f"{n} {status}" for status, n in counts.items()) + f" of {len(records)} runs")
    if any(r.status == CANCELLED for r in records):
        raise RunCancelledError(f"cancelled; records in {plan.runs_root}")
    failed = [r for r in records if r.status in (FAILED, LOST)]
    if failed:
        first = failed[0]
        where = plan.runs_root / first.run_id / "logs"
        raise RunFailedError(
            f"{len(failed)} of {len(records)} runs failed; first: {first.run_id} ({first.reason}), logs in {where}"
        )
    return 0


def _report(console: Console, record: RunRecord, where: Path, followed: bool) -> None:
    if record.status == SUCCEEDED:
        line = f"run {record.run_id} succeeded in {record.duration_s:.1f}s; outputs in {where / 'output'}"
    elif not followed and not record.final:
        job = f" (Slurm job {record.job_id})" if record.job_id else ""
        line = f"run {record.run_id} {record.status}{job}; follow it with: expman logs {record.run_id} --follow"
    else:
        line = f"run {record.run_id} {record.status}" + (f" ({record.reason})" if record.reason else "")
    console.print(line, markup=False, soft_wrap=True)


def _records(args: argparse.Namespace, runs: list[RunDir]) -> list[RunRecord]:
    """Records of ``runs``; unless --offline, those not final are refreshed from where they run."""
    if args.offline:
        return [load_record(r) for r in runs]
    records, warnings = control.refresh(runs, os.environ)
    for warning in warnings:
        Console(stderr=True, highlight=False).print(f"expman: warning: {warning}", markup=False, style="yellow")
    return records


def cmd_runs(args: argparse.Namespace, argv: list[str], console: Console) -> int:
    records = _records(args, list_runs(_runs_root(args)))
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
            _duration(r.duration_s),
        )
    console.print(table)
    return 0


def cmd_show(args: argparse.Namespace, argv: list[str], console: Console) -> int:
    run = find_run(_runs_root(args), args.run)
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


def cmd_logs(args: argparse.Namespace, argv: list[str], console: Console) -> int:
    run = find_run(_runs_root(args), args.run)
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
        final = load_record(run).status in FINAL_STATUSES
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


def _runs_root(args: argparse.Namespace) -> Path:
    """--runs-root, else EXPMAN_RUNS_ROOT, else runs_root from the repository's config.json."""
    if args.runs_root:
        return args.runs_root
    configured, repo = None, None
    try:
        repo = find_repository(args.repo)
        section = json.loads((repo / "config.json").read_text()).get("expman", {})
        configured = section.get("runs_root") if isinstance(section, dict) else None
    except (ExpmanError, OSError, ValueError):
        pass
    return resolve_runs_root(configured, repo, os.environ)


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
        "duration": _duration(record.duration_s),
        "exit code": "" if record.exit_code is None else record.exit_code,
        "oom killed": "" if record.oom_killed is None else record.oom_killed,
        "peak memory": _bytes(record.peak_memory_bytes),
        "directory": run.path,
        **({"warnings": "; ".join(record.warnings)} if record.warnings else {}),
    }


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes, s = divmod(int(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m{s:02d}s" if hours else f"{m}m{s:02d}s" if m else f"{seconds:.1f}s"


def _bytes(n: int | None) -> str:
    if n is None:
        return ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def cmd_sync(args: argparse.Namespace, argv: list[str], console: Console) -> int:
    root = _runs_root(args)
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
            f"{run.run_id} {state}: {result.files} files ({_bytes(result.bytes)}) copied, {result.skipped} unchanged",
            markup=False,
        )
    return 0


def _needs_sync(record: RunRecord) -> bool:
    return record.remote is not None and not record.remote.get("synced_at")


def cmd_cancel(args: argparse.Namespace, argv: list[str], console: Console) -> int:
    root = _runs_root(args)
    if not args.runs and not args.sweep:
        raise UsageError("name the runs to cancel, or --sweep ID; 'expman runs' and 'expman status' list them")
    if args.sweep:
        queue_cli.cancel_sweep(args, console, root)
    for run in [find_run(root, ref) for ref in args.runs]:
        before = load_record(run)
        if before.queue is not None and not before.final:
            cancelled, asked = queue_cli.cancel_queued_run(run, args.queue or before.queue["url"])
            state = "cancelled" if cancelled else "asked to stop (its worker stops it)" if asked else before.status
            console.print(f"{run.run_id} {state}", markup=False)
            continue
        record = control.cancel(run, os.environ)
        if before.status in FINAL_STATUSES:
            console.print(f"{run.run_id} had already ended: {record.status}", markup=False)
        else:
            console.print(
                f"{run.run_id} {record.status}" + (f" ({record.reason})" if record.reason else ""), markup=False
            )
    return 0


def cmd_table(args: argparse.Namespace, argv: list[str], console: Console) -> int:
    return run_table(args, console, _runs_root(args))


def cmd_worker(args: argparse.Namespace, argv: list[str], console: Console) -> int:
    return queue_cli.cmd_worker(args, argv, console, _runs_root)


def cmd_status(args: argparse.Namespace, argv: list[str], console: Console) -> int:
    return queue_cli.cmd_status(args, argv, console, _runs_root)


def cmd_retry(args: argparse.Namespace, argv: list[str], console: Console) -> int:
    return queue_cli.cmd_retry(args, argv, console, _runs_root)


_COMMANDS = {
    "submit": cmd_submit,
    "sweep": queue_cli.cmd_sweep,
    "schedule": queue_cli.cmd_schedule,
    "worker": cmd_worker,
    "status": cmd_status,
    "retry": cmd_retry,
    "runs": cmd_runs,
    "show": cmd_show,
    "logs": cmd_logs,
    "sync": cmd_sync,
    "cancel": cmd_cancel,
    "table": cmd_table,
}
