"""The report's sections past the runs table, as HTML fragments: paper tables (export.py's
HTML, best bold), plots (plot.py's SVG as data: URIs) and search studies' lineage trees."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import UsageError
from .export import render
from .plot import MAX_LEGEND, render_plot
from .plotdata import Points, aggregate_curve, aggregate_points
from .table import build_table, grouping_keys, is_numeric

MAX_TABLES = 6
MAX_TABLE_ROWS = 100
MAX_PLOTS = 3
MAX_CURVES = 2
MAX_POINTS = 2000
# A result whose last name part holds one of these is better when lower.
LOWER_IS_BETTER = ("loss", "err", "mse", "mae", "regret", "perplexity", "time", "duration", "latency")


def numeric_results(frame: pd.DataFrame) -> list[str]:
    """results.* columns with numbers, in results.json order, less the spread and count that a
    list of values adds beside its mean."""
    derived = (".std", ".n", ".sem")
    return [c for c in frame.columns if c.startswith("results.") and not c.endswith(derived) and is_numeric(frame[c])]


def varying_keys(frame: pd.DataFrame, seed_keys: Sequence[str]) -> list[str]:
    """Config keys that vary among the runs, seeds left out."""
    return grouping_keys(frame, [], seed_keys, [])


def best_direction(value: str) -> str:
    last = value.rsplit(".", 1)[-1].lower()
    return "min" if any(word in last for word in LOWER_IS_BETTER) else "max"


def paper_tables(frame: pd.DataFrame, values: Sequence[str], seed_keys: Sequence[str], best: str | None) -> str:
    """A mean ± std table per value: rows by the varying config keys, the last of them as
    columns when there are two or more, the best cell of each column bold."""
    if frame.empty or not values:
        return '<p class="note">No succeeded run with numeric results.</p>'
    varying = varying_keys(frame, seed_keys)
    cols = varying[-1:] if len(varying) > 1 else []
    parts = []
    for value in values[:MAX_TABLES]:
        model = build_table(frame, (), cols, value, "mean±std", seed_keys)
        if len(model.rows) > MAX_TABLE_ROWS:
            parts.append(
                f'<p class="note">{html.escape(value)}: {len(model.rows)} configurations, too many for a table here; '
                f"<code>expman table --value {html.escape(value)}</code> makes it.</p>"
            )
            continue
        parts.append(f'<div class="paper">{render(model, "html", best or best_direction(value))}</div>')
    return "\n".join(parts)


def plots(root: Path, frame: pd.DataFrame, values: Sequence[str], seed_keys: Sequence[str], epoch: int | None) -> str:
    """A value over the first varying key (lines when it is numeric, bars otherwise), hue by
    the next, for the first values; and learning curves of the first scalars."""
    if frame.empty:
        return '<p class="note">No succeeded run to plot.</p>'
    figures = []
    varying = varying_keys(frame, seed_keys)
    if varying:
        x = next((k for k in varying if is_numeric(frame[k])), varying[0])
        hue = next((k for k in varying if k != x), None)
        kind = "lines" if is_numeric(frame[x]) else "bars"
        for value in values[:MAX_PLOTS]:
            points = aggregate_points(frame, x, value, hue, seed_keys)
            figures.append(_figure(points, kind, f"{_short(value)} over {_short(x)}", epoch))
    tags = _scalar_tags(frame)[:MAX_CURVES]
    if tags:
        from .loader import load_scalars

        # every curve's points in one pass over the runs; the frame's load refreshed the index
        scalars = load_scalars(root, tags, run_ids=list(frame["run_id"]), refresh=False)
        for tag in tags:
            figures.append(_curve(frame, scalars, tag, varying[0] if varying else None, seed_keys, epoch))
    return "\n".join(figures) or '<p class="note">Nothing to plot: no config key varies and no run has scalars.</p>'


def _curve(
    frame: pd.DataFrame, scalars: pd.DataFrame, tag: str, hue: str | None, seeds: Sequence[str], epoch: int | None
) -> str:
    points = aggregate_curve(frame, scalars[scalars["tag"] == tag], tag, hue, seeds)
    return _figure(points, "curve", f"{tag} over steps", epoch)


def _figure(points: Points, kind: str, caption: str, epoch: int | None) -> str:
    """The plot as an <img> with an SVG data: URI (its ids cannot clash with another plot's),
    or a note when it has too many hues or points to read."""
    if len(points.hues) > MAX_LEGEND or len(points.frame) > MAX_POINTS:
        keys = ", ".join(_short(k) for k in points.hue_keys)
        return (
            f'<p class="note">{html.escape(caption)}: {len(points.hues)} lines ({html.escape(keys)}), too many to '
            "read; <code>expman plot</code> draws it with --hue, --pool or --where.</p>"
        )
    svg = render_plot(points, kind, "svg", epoch=epoch)
    uri = "data:image/svg+xml;base64," + base64.b64encode(svg).decode("ascii")
    note = "mean ± sd over seeds"
    return (
        f'<figure><img alt="{html.escape(caption)}" src="{uri}">'
        f"<figcaption>{html.escape(caption)} ({note})</figcaption></figure>"
    )


def _scalar_tags(frame: pd.DataFrame) -> list[str]:
    return [c[3 : -len(":last")] for c in frame.columns if c.startswith("tb:") and c.endswith(":last")]


def _short(column: str) -> str:
    return column.removeprefix("config.").removeprefix("results.")


def studies(frame: pd.DataFrame, values: Sequence[str]) -> str:
    """Each search study's runs as a tree: a run under the run it started from (search.parent),
    with member, generation, status and the objective (or the first numeric result)."""
    if "search.study" not in frame or not frame["search.study"].notna().any():
        return '<p class="note">No run belongs to a search study.</p>'
    parts = []
    for study, runs in frame[frame["search.study"].notna()].groupby("search.study", sort=True):
        objective = _objective(runs, values)
        records = runs.to_dict("records")
        caption = f"{study}: {len(records)} runs" + (f", objective {_short(objective)}" if objective else "")
        parts.append(f"<details open><summary>{html.escape(caption)}</summary>\n{_tree(records, objective)}</details>")
    return "\n".join(parts)


def _objective(runs: pd.DataFrame, values: Sequence[str]) -> str | None:
    from .filters import resolve_column

    named = runs.get("config.expman.search.objective")
    names = [str(v) for v in named.dropna()] if named is not None else []
    for name in names[:1]:
        try:
            return resolve_column(list(runs.columns), name)
        except UsageError:
            break
    return next((v for v in values if v in runs and is_numeric(runs[v])), None)


def _tree(records: list[dict[str, Any]], objective: str | None) -> str:
    by_id = {r["run_id"]: r for r in records}
    children: dict[Any, list[dict[str, Any]]] = {}
    for record in sorted(records, key=lambda r: (_number(r.get("search.trial")), r["run_id"])):
        parent = record.get("search.parent")
        children.setdefault(parent if parent in by_id else None, []).append(record)
    lines: list[str] = []
    seen: set[str] = set()
    stack: list[tuple[str, Any]] = [("item", r) for r in reversed(children.get(None, []))]
    lines.append('<ul class="lineage">')
    while stack:
        what, record = stack.pop()
        if what == "close":
            lines.append("</ul></li>")
            continue
        if record["run_id"] in seen:
            continue
        seen.add(record["run_id"])
        kids = children.get(record["run_id"], [])
        lines.append(f"<li>{_node(record, objective)}" + ('<ul class="lineage">' if kids else "</li>"))
        if kids:
            stack.append(("close", None))
            stack.extend(("item", kid) for kid in reversed(kids))
    lines.append("</ul>")
    return "\n".join(lines)


def _node(record: dict[str, Any], objective: str | None) -> str:
    parts = [f"<code>{html.escape(str(record['run_id']))}</code>"]
    for name in ("trial", "member", "generation"):
        value = record.get(f"search.{name}")
        if value is not None and not (isinstance(value, float) and value != value):
            parts.append(f"{name} {html.escape(str(value))}")
    parts.append(html.escape(str(record.get("status"))))
    if objective and record.get(objective) is not None:
        parts.append(f"{html.escape(_short(objective))} = {html.escape(str(record[objective]))}")
    return " · ".join(parts)


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.inf
    return math.inf if math.isnan(number) else number
