"""``expman gc``: remove ended runs, after a confirmation that names how many and how much."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

from ..errors import UsageError
from ..progress import Reporter
from ..rundir.layout import utc_now
from ..submit import gc
from .common import Commands, add_runs_root, runs_root, warn
from .runs import size


def add_parsers(commands: Commands) -> None:
    p = commands.add_parser(
        "gc", help="remove ended runs (their directories, queue jobs and unused code copies) after a confirmation"
    )
    add_runs_root(p)
    p.add_argument(
        "--status",
        metavar="S,S",
        help="remove runs with these final statuses (default: failed,cancelled,lost; also succeeded)",
    )
    p.add_argument("--older-than", metavar="AGE", help="only runs that ended longer ago than this (30d, 12h, 2w)")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    p.add_argument("--yes", action="store_true", help="remove without asking (needed when not on a terminal)")
    p.set_defaults(handler=cmd_gc)


def cmd_gc(args: argparse.Namespace, console: Console) -> int:
    root = runs_root(args)
    ended_before = utc_now() - gc.parse_age(args.older_than) if args.older_than else None
    criteria = gc.Criteria(gc.parse_statuses(args.status), ended_before)
    candidates = gc.select(root, criteria) if root.is_dir() else []
    what = f"{len(candidates)} run{'' if len(candidates) == 1 else 's'} ({size(gc.total_size(candidates))})"
    if not candidates:
        console.print(f"no runs to remove under {root}", markup=False, soft_wrap=True)
        return 0
    if args.dry_run:
        for c in candidates:
            console.print(f"{c.run.run_id}  {c.status:<9}  {c.ended_at or ''}  {size(c.size_bytes)}", markup=False)
        console.print(f"would remove {what} under {root}", markup=False, soft_wrap=True)
        return 0
    if not args.yes and not _confirmed(console, f"remove {what} under {root}"):
        console.print("nothing removed", markup=False)
        return 1
    with Reporter().bar("removing runs") as progress:
        outcome = gc.remove(root, candidates, criteria, progress)
    for run_id, why in outcome.kept:
        warn(f"kept run {run_id}: {why}")
    removed = [c for c in candidates if c.run.run_id in set(outcome.removed)]
    copies = f", and {outcome.code_copies} unused code cop{'y' if outcome.code_copies == 1 else 'ies'}"
    console.print(
        f"removed {len(removed)} run{'' if len(removed) == 1 else 's'} ({size(gc.total_size(removed))}){copies}",
        markup=False,
        soft_wrap=True,
    )
    return 0


def _confirmed(console: Console, what: str) -> bool:
    """Whether the user, asked on the terminal, agrees to ``what``."""
    if not sys.stdin.isatty():
        raise UsageError(
            f"gc would {what} and there is no terminal to confirm it: pass --yes to remove them, or --dry-run "
            "to list them"
        )
    console.print(f"{what[0].upper()}{what[1:]}? [y/N] ", markup=False, soft_wrap=True, end="")
    return input().strip().lower() in ("y", "yes")
