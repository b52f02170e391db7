"""Aggregated points (plotdata.py) drawn as a heatmap, lines, bars or a learning curve, and
returned as the bytes of a PNG, SVG or PDF file.

The same points give the same bytes: matplotlib's own defaults (never the user's
matplotlibrc), a fixed ``svg.hashsalt`` for the SVG ids, and fixed file metadata, whose
date is SOURCE_DATE_EPOCH when given and left out otherwise. matplotlib is imported here
only, and this module only when a plot is drawn.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import numpy as np

from ..errors import UsageError
from .options import ERROR_STYLES, PLOT_FORMATS, PLOT_KINDS
from .plotdata import Points
from .table import order_key

CREATOR = "expman"
FIGURE_SIZE_IN = (6.4, 4.0)
PNG_DPI = 100
# Legends past this many entries would hide the plot; the hues are then only told apart by colour.
MAX_LEGEND = 20


def source_date_epoch(environ: Mapping[str, str]) -> int | None:
    """SOURCE_DATE_EPOCH (seconds since 1970, as reproducible builds set it), or None."""
    text = environ.get("SOURCE_DATE_EPOCH")
    if text is None or not text.strip():
        return None
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"SOURCE_DATE_EPOCH={text!r}: give whole seconds since 1970, or unset it") from None


def file_metadata(fmt: str, epoch: int | None) -> dict[str, Any]:
    """savefig's metadata for ``fmt``: the creator, and the date only when SOURCE_DATE_EPOCH
    fixes it (None removes the keys matplotlib would fill with the time of day)."""
    when = datetime.fromtimestamp(epoch, UTC) if epoch is not None else None
    if fmt == "png":
        return {"Software": CREATOR} | ({"Creation Time": format_datetime(when)} if when else {})
    if fmt == "svg":
        return {"Creator": CREATOR, "Date": when.isoformat() if when else None}
    return {"Creator": CREATOR, "Producer": CREATOR, "CreationDate": when, "ModDate": None}


def render_plot(
    points: Points,
    kind: str,
    fmt: str,
    *,
    err_style: str = "band",
    title: str | None = None,
    epoch: int | None = None,
) -> bytes:
    """The plot file's bytes."""
    if kind not in PLOT_KINDS:
        raise UsageError(f"plot kind {kind!r}: use one of {', '.join(PLOT_KINDS)}")
    if fmt not in PLOT_FORMATS:
        raise UsageError(f"plot format {fmt!r}: use one of {', '.join(PLOT_FORMATS)}")
    if err_style not in ERROR_STYLES:
        raise UsageError(f"--err-style {err_style!r}: use one of {', '.join(ERROR_STYLES)}")
    import matplotlib
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # A fixed salt makes the SVG's ids the same on every run; fonts as paths need no font files.
    fixed = matplotlib.rc_context({"svg.hashsalt": "expman", "svg.fonttype": "path", "pdf.fonttype": 42})
    with matplotlib.style.context("default"), fixed:
        figure = Figure(figsize=FIGURE_SIZE_IN, layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        _DRAW[kind](figure, axes, points, err_style)
        if title:
            axes.set_title(title)
        out = io.BytesIO()
        figure.savefig(out, format=fmt, dpi=PNG_DPI, metadata=file_metadata(fmt, epoch))
    return out.getvalue()


def _label(column: str) -> str:
    return column.removeprefix("config.").removeprefix("results.")


def _positions(points: Points) -> tuple[list, Any]:
    """x values in order, and a function from an x value to its place on the axis."""
    values = sorted(set(points.frame["x"]), key=lambda v: order_key((v,)))
    if points.numeric_x:
        return values, float
    places = {v: i for i, v in enumerate(values)}
    return values, places.__getitem__


def _draw_lines(figure: Any, axes: Any, points: Points, err_style: str, marker: str | None = "o") -> None:
    values, place = _positions(points)
    for hue in points.hues:
        part = points.frame[points.frame["hue"] == hue]
        xs = np.array([place(v) for v in part["x"]], dtype=np.float64)
        mean, sd = part["mean"].to_numpy(np.float64), np.nan_to_num(part["sd"].to_numpy(np.float64))
        if err_style == "bars":
            axes.errorbar(xs, mean, yerr=sd, marker=marker, capsize=3, label=hue or None)
        else:
            (line,) = axes.plot(xs, mean, marker=marker, label=hue or None)
            axes.fill_between(xs, mean - sd, mean + sd, color=line.get_color(), alpha=0.2, linewidth=0)
    _categorical_ticks(axes, points, values)
    _finish(axes, points)


def _draw_curve(figure: Any, axes: Any, points: Points, err_style: str) -> None:
    _draw_lines(figure, axes, points, err_style, marker=None)


def _draw_bars(figure: Any, axes: Any, points: Points, err_style: str) -> None:
    values, _ = _positions(points)
    places = {v: i for i, v in enumerate(values)}
    hues = points.hues
    width = 0.8 / len(hues)
    for i, hue in enumerate(hues):
        part = points.frame[points.frame["hue"] == hue]
        xs = np.array([places[v] for v in part["x"]], dtype=np.float64) - 0.4 + width * (i + 0.5)
        sd = np.nan_to_num(part["sd"].to_numpy(np.float64))
        axes.bar(xs, part["mean"].to_numpy(np.float64), width, yerr=sd, capsize=3, label=hue or None)
    axes.set_xticks(range(len(values)), [str(v) for v in values])
    _finish(axes, points)


def _draw_heatmap(figure: Any, axes: Any, points: Points, err_style: str) -> None:
    values, _ = _positions(points)
    columns = {v: i for i, v in enumerate(values)}
    rows = {h: i for i, h in enumerate(points.hues)}
    means = np.full((len(rows), len(columns)), np.nan)
    for hue, x, mean, sd, _n in points.frame.itertuples(index=False):
        means[rows[hue], columns[x]] = mean
        text = f"{mean:.3g}" if math.isnan(sd) else f"{mean:.3g}\n±{sd:.2g}"
        axes.text(columns[x], rows[hue], text, ha="center", va="center", fontsize=8, color="w")
    image = axes.imshow(np.ma.masked_invalid(means), aspect="auto", cmap="viridis")
    figure.colorbar(image, ax=axes, label=_label(points.y))
    axes.set_xticks(range(len(values)), [str(v) for v in values])
    axes.set_yticks(range(len(rows)), list(rows))
    axes.set_xlabel(_label(points.x))
    axes.set_ylabel(", ".join(_label(k) for k in points.hue_keys))


def _categorical_ticks(axes: Any, points: Points, values: list) -> None:
    if not points.numeric_x:
        axes.set_xticks(range(len(values)), [str(v) for v in values])


def _finish(axes: Any, points: Points) -> None:
    axes.set_xlabel(_label(points.x))
    axes.set_ylabel(f"{_label(points.y)} (mean ± sd)")
    hues = points.hues
    if points.hue_keys and len(hues) <= MAX_LEGEND:
        axes.legend(title=", ".join(_label(k) for k in points.hue_keys), fontsize="small")


_DRAW = {"lines": _draw_lines, "curve": _draw_curve, "bars": _draw_bars, "heatmap": _draw_heatmap}
