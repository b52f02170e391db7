"""``expman plot``: a value of the runs over a config key (heatmap, lines, bars) or a
TensorBoard scalar over steps (curve), mean ± sd over seeds, as PNG, SVG or PDF."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from rich.console import Console

from ..errors import UsageError
from ..progress import Reporter
from ..results.options import DEFAULT_SEED_KEYS, ERROR_STYLES, PLOT_FORMATS, PLOT_KINDS
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
    p = commands.add_parser("plot", help="plot runs: heatmap, lines, bars (mean ± sd over seeds) or a learning curve")
    add_runs_root(p)
    p.add_argument("kind", choices=PLOT_KINDS, help="curve: a tb:TAG over steps; the others: --y over --x")
    p.add_argument("--x", metavar="COL", help="the key on the x axis (heatmap, lines, bars)")
    p.add_argument("--y", metavar="COL", help="the value (lines, bars, curve: tb:TAG), the row key (heatmap)")
    p.add_argument("--z", metavar="COL", help="heatmap: the value in the cells")
    p.add_argument("--hue", metavar="COL", help="a line, bar or band per value of this key")
    add_where(p)
    add_selection(p)
    add_seed_keys(p)
    p.add_argument("--err-style", choices=ERROR_STYLES, default="band", help="lines and curves: sd as a band or bars")
    p.add_argument("--title", help="the plot's title")
    p.add_argument(
        "-o", "--output", type=Path, help="the file, .png, .svg or .pdf (default: <kind>.png in the current directory)"
    )
    p.set_defaults(handler=cmd_plot)


def cmd_plot(args: argparse.Namespace, console: Console) -> int:
    # matplotlib, numpy and pandas are loaded only when a plot is made
    from ..results.plot import render_plot, source_date_epoch

    output = args.output or Path(f"{args.kind}.png")
    fmt = output.suffix.lower().lstrip(".")
    if fmt not in PLOT_FORMATS:
        raise UsageError(f"-o {output}: name a .png, .svg or .pdf file")
    _check_axes(args)
    epoch = source_date_epoch(os.environ)
    points = _points(args, runs_root(args))
    data = render_plot(points, args.kind, fmt, err_style=args.err_style, title=args.title, epoch=epoch)
    try:
        output.write_bytes(data)
    except OSError as exc:
        raise UsageError(f"-o {output}: cannot write it ({exc.strerror}); name a writable file") from None
    console.print(f"wrote {output}", markup=False)
    return 0


def _check_axes(args: argparse.Namespace) -> None:
    """Each kind's axes: heatmap --x --y --z; lines and bars --x --y; curve --y tb:TAG."""
    needed = {"heatmap": ("x", "y", "z"), "lines": ("x", "y"), "bars": ("x", "y"), "curve": ("y",)}[args.kind]
    missing = [f"--{name}" for name in needed if not getattr(args, name)]
    if missing:
        raise UsageError(f"plot {args.kind} needs {' and '.join(missing)}; see 'expman plot --help'")
    extra = [f"--{name}" for name in ("x", "z") if name not in needed and getattr(args, name)]
    if extra:
        raise UsageError(f"plot {args.kind} takes no {' or '.join(extra)}; see 'expman plot --help'")
    if args.kind == "heatmap" and args.hue:
        raise UsageError("plot heatmap takes no --hue: its rows are --y; see 'expman plot --help'")
    if args.kind == "curve" and not args.y.startswith("tb:"):
        raise UsageError(f"plot curve --y {args.y}: name a TensorBoard scalar as tb:TAG, e.g. tb:loss")


def _points(args: argparse.Namespace, root: Path) -> Any:
    from ..results.plotdata import aggregate_curve, aggregate_points

    seed_keys = args.seed_keys or DEFAULT_SEED_KEYS
    if args.kind != "curve":
        named = [args.x, args.y, args.z or "", args.hue or "", *args.where]
        frame = _load(args, root, scalar_stats_named(named))
        value, hue = (args.z, args.y) if args.kind == "heatmap" else (args.y, args.hue)
        return aggregate_points(frame, args.x, value, hue, seed_keys, args.pool)
    tag = args.y.removeprefix("tb:")
    frame = _load(args, root, scalar_stats_named([f"{args.y}:last", args.hue or "", *args.where]))
    from ..results.filters import resolve_column
    from ..results.loader import load_scalars

    key = resolve_column(list(frame.columns), f"tb:{tag}:last")[3 : -len(":last")]
    scalars = load_scalars(root, key, run_ids=list(frame["run_id"]), status=None)
    return aggregate_curve(frame, scalars[scalars["tag"] == key], key, args.hue, seed_keys, args.pool)


def _load(args: argparse.Namespace, root: Path, stats: tuple[str, ...]) -> Any:
    from ..results.loader import load_runs

    with Reporter(error_console()).bar("loading runs") as progress:
        frame = load_runs(
            root,
            status=args.status or RunStatus.SUCCEEDED,
            commit=args.commit,
            branch=args.branch,
            where=args.where,
            scalar_stats=stats,
            progress=progress,
            reruns=False,
        )
    if frame.empty:
        raise UsageError(
            f"no runs under {root} match; check --status/--commit/--branch/--where ('expman runs' lists runs)"
        )
    return frame
