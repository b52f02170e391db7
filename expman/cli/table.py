"""``expman table``: runs of a runs root aggregated into a paper table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from ..errors import UsageError
from ..progress import Reporter
from ..results.options import AGGREGATES, DEFAULT_SEED_KEYS, DEFAULT_STATS, FORMATS
from ..rundir.record import RunStatus
from .common import (
    Commands,
    add_runs_root,
    add_seed_keys,
    add_selection,
    add_where,
    error_console,
    runs_root,
    scalar_stats_named,
)


def add_parsers(commands: Commands) -> None:
    p = commands.add_parser("table", help="aggregate runs into a table (mean ± std over seeds)")
    add_runs_root(p)
    p.add_argument("--rows", action="append", default=[], metavar="KEY", help="row key(s), comma-separated or repeated")
    p.add_argument("--cols", action="append", default=[], metavar="KEY", help="column key(s)")
    p.add_argument(
        "--value",
        help="a result (eval.mean) or a scalar (tb:TAG:last|max|min|mean_last_N); default: the first numeric result",
    )
    p.add_argument("--agg", default="mean±std", help=f"one of {', '.join(AGGREGATES)} (default mean±std)")
    add_where(p)
    add_selection(p)
    p.add_argument("--format", choices=FORMATS, default="rich")
    p.add_argument("--best", choices=("max", "min"), help="bold the best cell of each column")
    p.add_argument("--caption", help="table caption (LaTeX, HTML, rich)")
    add_seed_keys(p)
    p.add_argument(
        "--parse",
        action="append",
        default=[],
        metavar="NAME=REGEX",
        help="metric from stdout, overriding the runs' own 'parse'",
    )
    p.add_argument("--keep-all-writes", action="store_true", help="scalars: keep every write of a step, not the latest")
    p.add_argument("--no-crc", action="store_true", help="skip CRC checks of event files")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the results cache")
    p.add_argument("--list", action="store_true", help="list the columns a table can use, with example values")
    p.add_argument("-o", "--output", type=Path, help="write the table to this file instead of stdout")
    p.set_defaults(handler=cmd_table)


def _split(values: list[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def cmd_table(args: argparse.Namespace, console: Console) -> int:
    # numpy and pandas are loaded only when a table is made, not for every command
    from ..results.export import render, rich_table
    from ..results.table import build_table, column_values

    root = runs_root(args)
    frame = _load(args, root)
    if frame.empty:
        raise UsageError(
            f"no runs under {root} match; check --status/--commit/--branch/--where ('expman runs' lists runs)"
        )
    if args.list:
        return _list_columns(frame, console)
    model = build_table(
        frame,
        _split(args.rows),
        _split(args.cols),
        args.value,
        args.agg,
        args.seed_keys or DEFAULT_SEED_KEYS,
        _split(args.pool),
    )
    if args.format == "rich" and not args.output and console.is_terminal:
        console.print(rich_table(model, args.best, args.caption))
    elif args.output:
        args.output.write_text(render(model, args.format, args.best, args.caption))
    else:
        sys.stdout.write(render(model, args.format, args.best, args.caption))
    partial = sum(1 for p in column_values(frame, "partial") if p is True) if "partial" in frame.columns else 0
    if partial:
        Reporter(error_console()).info(
            f"note: {partial} run(s) had damaged files and were read in part; 'expman table --list' names them"
        )
    return 0


def _load(args: argparse.Namespace, root: Path) -> Any:
    """The runs the table is made of: from the runs index as plain rows when the options
    are the index's own (no pandas needed), else as a ``load_runs`` frame."""
    from ..results.filters import where_names
    from ..results.rowset import indexed, load_rowset

    named = [args.value or "", *args.where]
    stats = DEFAULT_STATS if args.list or not args.value else scalar_stats_named(named)
    parse = _parse_patterns(args.parse) or None
    keep = "all" if args.keep_all_writes else "last"
    status = args.status or [RunStatus.SUCCEEDED]
    with Reporter(error_console()).bar("loading runs") as progress:
        if not args.list and indexed(parse, keep, not args.no_crc, not args.no_cache, stats):
            # with --value named, only the columns named and the config's are read
            named = [*_split(args.rows), *_split(args.cols), *_split(args.pool), *where_names(args.where)]
            only = [args.value, *named] if args.value else None
            return load_rowset(
                root, set(status), args.commit, args.branch, args.where, stats, progress, reruns=False, only=only
            )
        from ..results.loader import load_runs

        return load_runs(
            root,
            status=status,
            commit=args.commit,
            branch=args.branch,
            where=args.where,
            scalar_stats=stats,
            parse=parse,
            keep=keep,
            check_crc=not args.no_crc,
            cache=not args.no_cache,
            progress=progress,
            reruns=False,
        )


def _parse_patterns(items: list[str]) -> dict[str, str]:
    parse = {}
    for item in items:
        name, sep, pattern = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--parse {item!r}: write NAME=REGEX, e.g. 'acc=Test accuracy: (@float@)'")
        parse[name] = pattern
    return parse


def _list_columns(frame, console: Console) -> int:
    from rich.table import Table

    table = Table("column", "runs with a value", "example")
    for column in frame.columns:
        values = frame[column].dropna()
        table.add_row(column, str(len(values)), repr(values.iloc[0])[:60] if len(values) else "")
    console.print(table)
    damaged = frame[frame["partial"].fillna(False).astype(bool)] if "partial" in frame else frame.iloc[0:0]
    for run_id, problems in zip(damaged["run_id"], damaged["problems"], strict=True):
        console.print(f"partial: {run_id}: {problems}", markup=False)
    return 0
