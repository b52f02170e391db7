"""``expman rerun`` (run a recorded run again and say whether it reproduced) and ``expman
diff`` (how two runs differ: code, config, environment, results, outputs)."""

from __future__ import annotations

import argparse
import os
import sys

from rich.console import Console

from ..errors import UsageError
from ..progress import Reporter
from ..rundir.layout import find_run
from .common import Commands, add_runs_root, emit_json, error_console, runs_root

FORMATS = ("text", "markdown", "json")


def add_parsers(commands: Commands) -> None:
    p = commands.add_parser("rerun", help="run a recorded run again from its directory and compare the two")
    add_runs_root(p)
    p.add_argument("run", help="run id or unique prefix")
    p.add_argument("--backend", choices=("local", "process"), help="where to run it (default: where it ran)")
    _add_comparison(p)
    p.set_defaults(handler=cmd_rerun)

    p = commands.add_parser("diff", help="how two runs differ: code, config, environment, results, outputs")
    add_runs_root(p)
    p.add_argument("run_a", metavar="RUN_A", help="run id or unique prefix")
    p.add_argument("run_b", metavar="RUN_B", help="run id or unique prefix")
    p.add_argument("--all", action="store_true", help="every key, not only those that differ")
    p.add_argument("--format", choices=FORMATS, default="text")
    _add_comparison(p)
    p.set_defaults(handler=cmd_diff)


def _add_comparison(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--rtol",
        type=float,
        default=0.0,
        metavar="X",
        help="numbers within this relative tolerance are equal (default 0: exactly)",
    )
    p.add_argument("--logs", action="store_true", help="compare log files too (stdout, stderr, *.log in output)")


def _rtol(args: argparse.Namespace) -> float:
    if not args.rtol >= 0:  # NaN included
        raise UsageError(f"--rtol {args.rtol}: give a relative tolerance of 0 or more (e.g. 1e-6)")
    return float(args.rtol)


def cmd_rerun(args: argparse.Namespace, console: Console) -> int:
    from ..submit.rerun import rerun  # only here: other commands start faster

    rtol = _rtol(args)
    original = find_run(runs_root(args), args.run)
    argv = ["expman", *args.argv]
    result = rerun(original, args.backend, dict(os.environ), Reporter(error_console()), argv, rtol, args.logs)
    verdict = result.record.reproduction or {}
    differences = verdict.get("differences", [])
    lines = [f"not reproduced: {len(differences)} differences" if differences else "reproduced", *differences]
    lines += [f"note: {line}" for line in verdict.get("notes", [])]
    console.print("\n".join(lines), markup=False, soft_wrap=True)
    return 0 if result.reproduced else 1


def cmd_diff(args: argparse.Namespace, console: Console) -> int:
    from ..results.rundiff import as_data, diff_runs, render_markdown, render_text

    rtol = _rtol(args)
    root = runs_root(args)
    diff = diff_runs(find_run(root, args.run_a), find_run(root, args.run_b), rtol, args.logs)
    if args.format == "json":
        emit_json(as_data(diff, args.all))
        return 0
    text = render_markdown(diff, args.all) if args.format == "markdown" else render_text(diff, args.all)
    sys.stdout.flush()
    sys.stdout.write(text)
    sys.stdout.flush()
    return 0
