"""``expman query "SQL"``: SQL over the runs index, as Jobman's sqlview and patas query did."""

from __future__ import annotations

import argparse
import csv
import sys
from typing import Any

from rich.console import Console

from ..progress import Reporter
from .common import Commands, add_runs_root, emit_json, error_console, runs_root

FORMATS = ("table", "markdown", "csv", "json")


def add_parsers(commands: Commands) -> None:
    p = commands.add_parser(
        "query",
        help="SQL over every run: SELECT ... FROM runs (a column per record field, config key, result, scalar, tag)",
        description="Columns are quoted names as 'expman table --list' shows them: "
        '"config.train.lr", "results.eval.mean", "tb:loss:last", "tag.paper", and run_id, status, commit, '
        "branch, backend, host, queued_at, started_at, ended_at, duration_s, sweep, search.study, search.trial, "
        "search.parent, search.generation. stddev(x) (sample), stddev_pop, variance, var_pop are added.",
    )
    add_runs_root(p)
    p.add_argument("sql", nargs="?", help='e.g. \'SELECT "config.lr", avg("results.acc") FROM runs GROUP BY 1\'')
    p.add_argument("--format", choices=FORMATS, default="table")
    p.add_argument("--columns", action="store_true", help="list the columns of the runs table")
    p.set_defaults(handler=cmd_query)


def cmd_query(args: argparse.Namespace, console: Console) -> int:
    from ..errors import UsageError
    from ..results.query import run_query

    sql = "SELECT name AS \"column\" FROM pragma_table_info('runs') ORDER BY cid" if args.columns else args.sql
    if not sql:
        raise UsageError("give a query, e.g. expman query 'SELECT status, count(*) FROM runs GROUP BY status'")
    with Reporter(error_console()).bar("indexing runs") as progress:
        columns, found = run_query(runs_root(args), sql, progress)
    rows = [tuple(_text(v) for v in row) for row in found]
    if args.format == "json":
        emit_json([dict(zip(columns, row, strict=True)) for row in rows])
    elif args.format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([["" if v is None else v for v in row] for row in rows])
    elif args.format == "markdown":
        sys.stdout.write(_markdown(columns, rows))
    else:
        _table(console, columns, rows)
    return 0


def _text(value: Any) -> Any:
    """A BLOB (SQLite's bytes, as of x'00ff' or the index's own columns) as text."""
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def _markdown(columns: list[str], rows: list[tuple]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    numeric = [all(isinstance(r[i], (int, float)) or r[i] is None for r in rows) for i in range(len(columns))]
    rule = "|" + "|".join("---:" if n else "---" for n in numeric) + "|"
    return "\n".join([line(columns), rule, *(line([_cell(v) for v in row]) for row in rows)]) + "\n"


def _table(console: Console, columns: list[str], rows: list[tuple]) -> None:
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for i, name in enumerate(columns):
        numeric = all(isinstance(r[i], (int, float)) or r[i] is None for r in rows)
        table.add_column(name, justify="right" if numeric else "left", overflow="fold")
    for row in rows:
        table.add_row(*(_cell(v) for v in row))
    console.print(table)
    console.print(f"{len(rows)} row{'s' if len(rows) != 1 else ''}", markup=False, style="dim")
