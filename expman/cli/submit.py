"""``expman submit``: run a commit of the experiments branch."""

from __future__ import annotations

import argparse
import os
from collections import Counter
from pathlib import Path

from rich.console import Console

from ..backends import BACKENDS, make_backend
from ..errors import RunCancelledError, RunFailedError, UsageError
from ..experiment.config_set import commit_assignments, commit_message, parse_assignment
from ..experiment.plan import plan_submission
from ..progress import Reporter
from ..rundir.record import RunRecord, RunStatus
from .common import Commands, add_repo, emit_json, error_console


def add_parsers(commands: Commands) -> None:
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
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="commit config.json with KEY set to VALUE (JSON, else a string) as 'Set KEY = VALUE', then run that "
        "commit (repeatable; KEY must exist)",
    )
    p.add_argument(
        "--set-new", action="append", default=[], metavar="KEY=VALUE", help="as --set, for a key config.json lacks"
    )
    p.add_argument("--detach", action="store_true", help="return once the run has started")
    p.add_argument("--dry-run", action="store_true", help="run every check, print what would run, write nothing")
    add_repo(p)
    p.set_defaults(handler=cmd_submit)


def cmd_submit(args: argparse.Namespace, console: Console) -> int:
    from ..submit.run import describe_plan, submit  # only here: other commands start faster

    environ = dict(os.environ)
    overrides = {k: v for k, v in (("signal", args.signal), ("requeue", args.requeue)) if v is not None}
    reporter = Reporter(error_console())
    commit = _commit_sets(args, reporter) if args.set or args.set_new else args.commit_hash
    plan = plan_submission(args.repo, commit, args.backend, environ, args.host, overrides)
    if args.dry_run:
        backend = make_backend(plan.backend, environ)
        backend.check(plan)
        emit_json(describe_plan(plan, backend))
        return 0
    records = submit(plan, environ, reporter, ["expman", *args.argv], detach=args.detach)
    for record in records:
        _report(console, record, plan.runs_root / record.run_id, followed=not args.detach and not record.job_id)
    if len(records) > 1:
        counts = Counter(r.status for r in records)
        console.print(", ".join(f"{n} {status}" for status, n in counts.items()) + f" of {len(records)} runs")
    if any(r.status == RunStatus.CANCELLED for r in records):
        raise RunCancelledError(f"cancelled; records in {plan.runs_root}")
    failed = [r for r in records if r.status in (RunStatus.FAILED, RunStatus.LOST)]
    if failed:
        first = failed[0]
        where = plan.runs_root / first.run_id / "logs"
        raise RunFailedError(
            f"{len(failed)} of {len(records)} runs failed; first: {first.run_id} ({first.reason}), logs in {where}"
        )
    return 0


def _commit_sets(args: argparse.Namespace, reporter: Reporter) -> str:
    """Commit the --set values and return the new commit, which is what runs."""
    if args.commit_hash or args.dry_run:
        option = "--commit-hash" if args.commit_hash else "--dry-run"
        raise UsageError(
            f"--set makes a new commit of config.json and runs it, so it cannot go with {option}; drop one of them"
        )
    assignments = [parse_assignment(a) for a in args.set] + [parse_assignment(a, may_add=True) for a in args.set_new]
    commit = commit_assignments(args.repo, assignments)
    reporter.info(f"committed {commit[:12]} {commit_message(assignments)}")
    return commit


def _report(console: Console, record: RunRecord, where: Path, followed: bool) -> None:
    if record.status == RunStatus.SUCCEEDED:
        line = f"run {record.run_id} succeeded in {record.duration_s:.1f}s; outputs in {where / 'output'}"
    elif not followed and not record.final:
        job = f" (Slurm job {record.job_id})" if record.job_id else ""
        line = f"run {record.run_id} {record.status}{job}; follow it with: expman logs {record.run_id} --follow"
    else:
        line = f"run {record.run_id} {record.status}" + (f" ({record.reason})" if record.reason else "")
    console.print(line, markup=False, soft_wrap=True)
