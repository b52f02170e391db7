"""``expman report``: one self-contained HTML page of the runs (table, paper tables, plots,
search lineages) that opens in any browser without a network."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rich.console import Console

from ..errors import UsageError
from ..progress import Reporter
from ..results.options import DEFAULT_SEED_KEYS
from .common import Commands, add_runs_root, add_seed_keys, error_console, runs_root


def add_parsers(commands: Commands) -> None:
    p = commands.add_parser("report", help="write one self-contained HTML report of the runs")
    add_runs_root(p)
    p.add_argument("-o", "--output", type=Path, default=Path("report.html"), help="default: report.html")
    p.add_argument("--title", default="expman report", help="the page's title")
    p.add_argument(
        "--value",
        action="append",
        default=[],
        metavar="COL",
        help="results in the paper tables and plots (repeatable; default: the numeric results)",
    )
    p.add_argument("--best", choices=("max", "min"), help="bold the highest or lowest cell (default: by the name)")
    add_seed_keys(p, pool=False)
    p.set_defaults(handler=cmd_report)


def cmd_report(args: argparse.Namespace, console: Console) -> int:
    # pandas and matplotlib are loaded only when a report is made
    from ..results.plot import source_date_epoch
    from ..results.report import ReportOptions, build_report

    options = ReportOptions(
        title=args.title,
        seed_keys=args.seed_keys or DEFAULT_SEED_KEYS,
        best=args.best,
        values=tuple(args.value),
        epoch=source_date_epoch(os.environ),
    )
    with Reporter(error_console()).bar("loading runs") as progress:
        text = build_report(runs_root(args), options, progress)
    try:
        args.output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"-o {args.output}: cannot write it ({exc.strerror}); name a writable file") from None
    console.print(f"wrote {args.output}", markup=False)
    return 0
