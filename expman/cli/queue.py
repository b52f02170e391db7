"""Commands of sweeps and the job queue: ``sweep --show``, ``schedule``, ``worker``, ``status``
and ``retry``. What only sweep and schedule need (the plan, the config's schema) is imported
there, so that workers and status start quickly."""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..backends import BACKENDS
from ..errors import ConfigError, UsageError
from ..experiment.git import find_repository
from ..experiment.sweep import expand_sweep
from ..progress import Reporter
from ..rundir.layout import utc_now
from .common import (
    Commands,
    add_queue,
    add_repo,
    add_runs_root,
    emit_json,
    error_console,
    existing_queue,
    open_queue_of,
    runs_root,
)

if TYPE_CHECKING:
    from ..experiment.config import ExperimentConfig
    from ..queue import SweepSummary, WorkerInfo

_SWEEP_ROWS = 20


def add_parsers(commands: Commands) -> None:
    p = commands.add_parser("sweep", help="show the combinations of the sweep in config.json")
    p.add_argument(
        "--show",
        action="store_true",
        help=f"print the count and the first {_SWEEP_ROWS} combinations (the default; --format json for all)",
    )
    p.add_argument("--commit-hash", metavar="REF", help="read config.json at this commit (default: the work tree)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    add_repo(p)
    p.set_defaults(handler=cmd_sweep)

    p = commands.add_parser("schedule", help="put the runs of a submit into the job queue for workers")
    p.add_argument("--commit-hash", metavar="REF", help="commit to run (hash, short hash, tag); default HEAD")
    p.add_argument("--backend", choices=sorted(b for b in BACKENDS if b != "slurm"), help="how workers run it")
    p.add_argument("--host", help="ssh backend: a host named in expman.hosts")
    add_queue(p)
    add_repo(p)
    p.set_defaults(handler=cmd_schedule)

    p = commands.add_parser("worker", help="claim jobs from the queue and run them until it is empty")
    add_queue(p)
    add_runs_root(p)
    p.add_argument("-j", "--jobs", type=int, default=1, metavar="N", help="run N jobs at once (N worker processes)")
    p.add_argument("--backend", choices=sorted(b for b in BACKENDS if b != "slurm"), help="override the runs' backend")
    p.add_argument("--forever", action="store_true", help="wait for new jobs instead of exiting when none is left")
    p.set_defaults(handler=cmd_worker)

    p = commands.add_parser("status", help="jobs per state, progress, ETA and live workers of the queue")
    add_queue(p)
    add_runs_root(p)
    p.add_argument("--sweep", metavar="ID", help="only this sweep's jobs (its id or a unique prefix)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(handler=cmd_status)

    p = commands.add_parser("retry", help="put failed jobs back into the queue")
    add_queue(p)
    add_runs_root(p)
    p.add_argument("--failed", action="store_true", required=True, help="every failed job (of --sweep)")
    p.add_argument("--sweep", metavar="ID", help="only this sweep's jobs")
    p.add_argument("--attempts", type=int, default=1, metavar="N", help="more attempts for each job (default 1)")
    p.set_defaults(handler=cmd_retry)


def cmd_sweep(args: argparse.Namespace, console: Console) -> int:
    config, source = _sweep_config(args.repo, args.commit_hash)
    combinations = expand_sweep(config.document)
    if args.format == "json":
        emit_json([{"index": c.index, "repeat": c.repeat, "values": c.values} for c in combinations])
        return 0
    console.print(f"{len(combinations):,} combinations ({source})", markup=False, soft_wrap=True)
    keys = list(combinations[0].values)
    table = Table()
    for name in ("#", *keys, *(["repeat"] if combinations[0].repeats > 1 else [])):
        table.add_column(name, justify="right" if name in ("#", "repeat") else "left")
    for c in combinations[:_SWEEP_ROWS]:
        repeat = [str(c.repeat)] if c.repeats > 1 else []
        table.add_row(str(c.index), *(escape(json.dumps(c.values[k])) for k in keys), *repeat)
    console.print(table)
    if len(combinations) > _SWEEP_ROWS:
        console.print(f"… and {len(combinations) - _SWEEP_ROWS:,} more; --format json for all", markup=False)
    return 0


def _sweep_config(path: Path, ref: str | None) -> tuple[ExperimentConfig, str]:
    """config.json at ``ref``, else the work tree's (a sweep can be looked at before its commit)."""
    from ..experiment.config import load_config
    from ..experiment.plan import config_at

    repo = find_repository(path)
    if ref:
        return config_at(repo, ref), f"config.json at {ref}"
    try:
        text = (repo / "config.json").read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {repo / 'config.json'}: {exc.strerror}") from None
    config = load_config(text, "config.json (work tree)", _read_optional(repo / "config.schema.json"))
    return config, "config.json in the work tree"


def _read_optional(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def cmd_schedule(args: argparse.Namespace, console: Console) -> int:
    from ..experiment.plan import plan_submission
    from ..submit.schedule import schedule

    environ = dict(os.environ)
    plan = plan_submission(args.repo, args.commit_hash, args.backend, environ, args.host)
    queue = open_queue_of(args, plan.runs_root)
    try:
        result = schedule(plan, queue, environ, Reporter(error_console()), ["expman", *args.argv])
    finally:
        queue.close()
    what = f"sweep {result.sweep_id}: " if result.sweep_id else ""
    console.print(
        f"{what}{len(result.added)} runs scheduled in {queue.shown}"
        + (f"; {result.skipped} already queued, running or succeeded" if result.skipped else ""),
        markup=False,
        soft_wrap=True,
    )
    if result.added:
        hint = f" --queue {queue.shown}" if args.queue else ""
        console.print(f"start workers with: expman worker{hint} -j N", markup=False, soft_wrap=True)
    return 0


def cmd_worker(args: argparse.Namespace, console: Console) -> int:
    from ..queue import queue_url
    from ..runners.worker import run_workers

    if args.jobs < 1:
        raise UsageError(f"-j {args.jobs}: give at least 1 worker")
    url = queue_url(args.queue, runs_root(args), os.environ)
    return run_workers(args.jobs, url, os.environ, args.backend, args.forever)


def cmd_status(args: argparse.Namespace, console: Console) -> int:
    from ..queue import open_queue, queue_url

    queue = open_queue(queue_url(args.queue, runs_root(args), os.environ), create=False)
    try:  # a look makes nothing: no queue file on a new runs root
        exists = queue.exists()
        sweeps, workers = (queue.sweeps(), queue.live_workers()) if exists else ([], [])
    finally:
        queue.close()
    if exists and args.sweep:
        sweeps = [_named_sweep(sweeps, args.sweep, queue.shown)]
    if args.format == "json":
        emit_json(_status_payload(queue.shown, exists, sweeps, workers))
    elif not exists:
        console.print(f"{queue.shown}: no queue yet ('expman schedule' makes it)", markup=False, soft_wrap=True)
    elif not sweeps:
        console.print(f"{queue.shown}: no jobs", markup=False, soft_wrap=True)
    else:
        _print_status(console, queue.shown, sweeps, workers, fold=not args.sweep)
    return 0


def _named_sweep(sweeps: list[SweepSummary], prefix: str, shown: str) -> SweepSummary:
    """The sweep whose id is ``prefix``, or the only one that starts with it."""
    matches = [s for s in sweeps if s.sweep_id == prefix] or [
        s for s in sweeps if s.sweep_id and s.sweep_id.startswith(prefix)
    ]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UsageError(f"--sweep {prefix}: no sweep in {shown} starts with it; 'expman status' lists them")
    ids = ", ".join(str(s.sweep_id) for s in matches[:10]) + (", ..." if len(matches) > 10 else "")
    raise UsageError(f"--sweep {prefix}: {len(matches)} sweeps start with it ({ids}); give more of the id")


def _status_payload(
    shown: str, exists: bool, sweeps: list[SweepSummary], workers: list[WorkerInfo]
) -> dict[str, object]:
    rows = [
        {"sweep": s.sweep_id, "counts": s.counts, "total": s.total, "done": s.done, "eta_s": _eta(s, len(workers))}
        for s in sweeps
    ]
    return {
        "queue": shown,
        "exists": exists,
        "counts": _counts_of(sweeps),
        "total": sum(s.total for s in sweeps),
        "done": sum(s.done for s in sweeps),
        "eta_s": _total_eta(sweeps, len(workers)),
        "sweeps": rows,
        "workers": [
            {"id": w.id, "host": w.host, "pid": w.pid, "job": w.job_id, "jobs_done": w.jobs_done} for w in workers
        ],
    }


def _print_status(
    console: Console, shown: str, sweeps: list[SweepSummary], workers: list[WorkerInfo], fold: bool
) -> None:
    """A line per sweep, newest first, each with its own ETA (with ``fold``, finished sweeps
    other than the newest share one line); then the total and the workers."""
    folded = [s for s in sweeps[1:] if not s.remaining] if fold else []
    grid = Table.grid(padding=(0, 1))
    for s in sweeps:
        if s not in folded:
            name = f"sweep {s.sweep_id}" if s.sweep_id else "single runs"
            grid.add_row(name, *_progress(s.counts, _eta(s, len(workers))))
    if folded:
        plural = "s" if len(folded) > 1 else ""
        grid.add_row(f"{len(folded)} older finished sweep{plural}", *_progress(_counts_of(folded), 0.0))
    if len(sweeps) > 1:
        grid.add_row("total", *_progress(_counts_of(sweeps), _total_eta(sweeps, len(workers))))
    console.print(shown, markup=False, soft_wrap=True)
    console.print(grid)
    now = utc_now().timestamp()
    for w in workers:
        doing = f"job {w.job_id}" if w.job_id is not None else "idle"
        console.print(
            f"worker {w.id}: {doing}, {w.jobs_done} done, up {_clock(now - w.started_at)}, "
            f"heartbeat {max(0.0, now - w.heartbeat_at):.0f}s ago",
            markup=False,
        )
    if not workers and any(s.remaining for s in sweeps):
        console.print("no live workers; start some with: expman worker -j N", markup=False)


def _counts_of(sweeps: list[SweepSummary]) -> dict[str, int]:
    return dict(sum((Counter(s.counts) for s in sweeps), Counter()))


def _progress(counts: Mapping[str, int], eta: float | None) -> tuple[Any, str, str, str]:
    """A bar, "done/total done", the non-zero counts per state, and the ETA."""
    from rich.progress_bar import ProgressBar

    from ..queue import JobState

    total = sum(counts.values())
    done = sum(counts.get(s, 0) for s in JobState if s.is_finished)
    states = ", ".join(f"{counts[s]} {s}" for s in JobState if counts.get(s))
    until = "" if done == total else f"ETA {_clock(eta)}" if eta is not None else "ETA ? (no success or no worker yet)"
    return ProgressBar(total=total, completed=done, width=30), f"{done}/{total} done", states, until


def _eta(sweep: SweepSummary, workers: int) -> float | None:
    """The median duration of the sweep's own latest successes, times its jobs left, over
    the live workers."""
    import statistics

    if not sweep.remaining:
        return 0.0
    if not sweep.durations or not workers:
        return None
    return statistics.median(sweep.durations) * sweep.remaining / workers


def _total_eta(sweeps: list[SweepSummary], workers: int) -> float | None:
    etas = [_eta(s, workers) for s in sweeps]
    return None if None in etas else sum(e for e in etas if e is not None)


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, s = divmod(int(seconds), 60)
    hours, m = divmod(minutes, 60)
    days, h = divmod(hours, 24)
    return f"{days}d{h:02d}h{m:02d}m" if days else f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def cmd_retry(args: argparse.Namespace, console: Console) -> int:
    from ..queue import queue_url
    from ..submit.schedule import retry_failed

    if args.attempts < 1:
        raise UsageError(f"--attempts {args.attempts}: give at least 1")
    queue = existing_queue(queue_url(args.queue, runs_root(args), os.environ))
    try:
        jobs = retry_failed(queue, args.sweep, args.attempts)
    finally:
        queue.close()
    console.print(f"{len(jobs)} failed jobs back in the queue, {args.attempts} more attempts each", markup=False)
    return 0
