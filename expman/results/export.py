"""A TableModel as text: rich (terminal), Markdown, LaTeX (booktabs), HTML, CSV, JSON.

Each column gets its own number of decimals: enough to show its smallest spread with two
significant digits, or its values with four when there is no spread. A missing cell is
"—" ("---" in LaTeX). When every cell has the same n it goes in the caption, otherwise
each cell shows its own. CSV and JSON are tidy: a line per cell with plain numbers.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
from collections.abc import Callable

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..errors import UsageError
from .options import FORMATS
from .table import Cell, TableModel

MISSING = "—"
_MAX_DECIMALS = 8


def _label(key: str) -> str:
    return key.removeprefix("config.").removeprefix("results.")


def _text(value: object) -> str:
    return MISSING if value is None else str(value)


def column_decimals(cells: list[Cell]) -> int:
    spreads = [abs(c.spread) for c in cells if c.spread and math.isfinite(c.spread)]
    if spreads:
        return _clamp(1 - math.floor(math.log10(min(spreads))))
    centers = [abs(c.center) for c in cells if c.center and math.isfinite(c.center)]
    if not centers or all(c.center is None or not math.isfinite(c.center) or c.center.is_integer() for c in cells):
        return 0
    return _clamp(3 - math.floor(math.log10(max(centers))))


def _clamp(decimals: int) -> int:
    return max(0, min(_MAX_DECIMALS, decimals))


def best_rows(model: TableModel, best: str | None) -> dict[tuple, set[tuple]]:
    """For each column, the rows holding its best value (ties all count)."""
    if best is None:
        return {}
    chosen: dict[tuple, set[tuple]] = {}
    for col in model.cols:
        values = {row: model.cell(row, col).center for row in model.rows}
        present = [v for v in values.values() if v is not None and not math.isnan(v)]
        if present:
            target = max(present) if best == "max" else min(present)
            chosen[col] = {row for row, v in values.items() if v == target}
    return chosen


class _Renderer:
    """Cell texts of a model, shared by the text formats."""

    def __init__(self, model: TableModel, best: str | None, pm: str) -> None:
        self.model = model
        self.pm = pm
        self.decimals = {col: column_decimals([model.cell(r, col) for r in model.rows]) for col in model.cols}
        ns = {c.n for c in model.cells.values() if c.center is not None}
        self.common_n = ns.pop() if len(ns) == 1 else None
        self.best = best_rows(model, best)

    def cell(self, row: tuple, col: tuple) -> str:
        cell = self.model.cell(row, col)
        if cell.center is None:
            return ""
        d = self.decimals[col]
        text = f"{cell.center:.{d}f}"
        if cell.spread is not None:
            text += f"{self.pm}{cell.spread:.{d}f}"
        if self.common_n is None and self.model.agg != "count":
            text += f" (n={cell.n})"
        return text

    def is_best(self, row: tuple, col: tuple) -> bool:
        return row in self.best.get(col, ())

    def header(self) -> list[str]:
        rows = [_label(k) for k in self.model.row_keys] or [""]
        return rows + [self.col_title(col) for col in self.model.cols]

    def col_title(self, col: tuple) -> str:
        if not self.model.col_keys:
            return f"{_label(self.model.value)} ({self.model.agg})"
        return " / ".join(_text(v) for v in col)

    def row_labels(self, row: tuple) -> list[str]:
        return [_text(v) for v in row] or ["all runs"]

    def caption(self, caption: str | None) -> str:
        parts = [caption] if caption else []
        if self.model.col_keys:
            parts.append(f"{_label(self.model.value)}, {self.model.agg}")
        if self.common_n is not None:
            parts.append(f"n = {self.common_n} per cell")
        return "; ".join(parts)


def render(model: TableModel, fmt: str, best: str | None = None, caption: str | None = None) -> str:
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    return _FORMATTERS[fmt](model, best, caption)


def rich_table(model: TableModel, best: str | None = None, caption: str | None = None) -> Table:
    """The table as a rich renderable, for printing with styles (bold best cells)."""
    r = _Renderer(model, best, " ± ")
    table = Table(caption=escape(r.caption(caption)) or None, show_lines=False)
    for i, title in enumerate(r.header()):
        table.add_column(escape(title), justify="left" if i < max(1, len(model.row_keys)) else "right")
    for row in model.rows:
        texts = [escape(r.cell(row, col) or MISSING) for col in model.cols]
        styled = [f"[bold]{t}[/bold]" if r.is_best(row, col) else t for t, col in zip(texts, model.cols, strict=True)]
        table.add_row(*map(escape, r.row_labels(row)), *styled)
    return table


def _rich(model: TableModel, best: str | None, caption: str | None) -> str:
    console = Console(file=io.StringIO(), width=200, highlight=False, color_system=None)
    console.print(rich_table(model, best, caption))
    return console.file.getvalue()  # type: ignore[attr-defined]


def _markdown(model: TableModel, best: str | None, caption: str | None) -> str:
    r = _Renderer(model, best, " ± ")
    header = r.header()
    n_labels = len(header) - len(model.cols)
    lines = [_md_row(header), "|" + "|".join(":--" if i < n_labels else "--:" for i in range(len(header))) + "|"]
    for row in model.rows:
        texts = [_md_cell(r, row, col) for col in model.cols]
        lines.append(_md_row(r.row_labels(row) + texts))
    text = "\n".join(lines) + "\n"
    cap = r.caption(caption)
    return f"{text}\n{cap}\n" if cap else text


def _md_cell(r: _Renderer, row: tuple, col: tuple) -> str:
    text = r.cell(row, col)
    if not text:
        return MISSING
    return f"**{text}**" if r.is_best(row, col) else text


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


_LATEX_ESCAPES = {c: "\\" + c for c in "&%$#_{}"} | {"~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_LATEX_ESCAPES |= {"\\": r"\textbackslash{}", "±": r"$\pm$", "—": "---"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(c, c) for c in text)


def _latex(model: TableModel, best: str | None, caption: str | None) -> str:
    r = _Renderer(model, best, " $\\pm$ ")
    header = r.header()
    n_labels = len(header) - len(model.cols)
    lines = ["\\begin{table}[ht]", "\\centering"]
    cap = r.caption(caption)
    if cap:
        lines.append(f"\\caption{{{latex_escape(cap)}}}")
    lines += [f"\\begin{{tabular}}{{{'l' * n_labels}{'r' * len(model.cols)}}}", "\\toprule"]
    lines.append(" & ".join(latex_escape(h) for h in header) + " \\\\")
    lines.append("\\midrule")
    for row in model.rows:
        texts = []
        for col in model.cols:
            text = r.cell(row, col)
            text = "---" if not text else text.replace(" (n=", " ($n$=")
            texts.append(f"\\textbf{{{text}}}" if r.is_best(row, col) else text)
        labels = [latex_escape(label) for label in r.row_labels(row)]
        lines.append(" & ".join(labels + texts) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines) + "\n"


def _html(model: TableModel, best: str | None, caption: str | None) -> str:
    r = _Renderer(model, best, " ± ")
    out = ["<table>"]
    cap = r.caption(caption)
    if cap:
        out.append(f"  <caption>{html.escape(cap)}</caption>")
    out.append("  <thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in r.header()) + "</tr></thead>")
    out.append("  <tbody>")
    for row in model.rows:
        cells = [f"<th>{html.escape(label)}</th>" for label in r.row_labels(row)]
        for col in model.cols:
            text = html.escape(r.cell(row, col) or MISSING)
            cells.append(f"<td><b>{text}</b></td>" if r.is_best(row, col) else f"<td>{text}</td>")
        out.append("    <tr>" + "".join(cells) + "</tr>")
    out += ["  </tbody>", "</table>"]
    return "\n".join(out) + "\n"


def tidy_cells(model: TableModel) -> list[dict]:
    """A dict per cell: row and column keys, center, spread, n (missing cells included)."""
    cells = []
    for row in model.rows:
        for col in model.cols:
            cell = model.cell(row, col)
            entry = {_label(k): v for k, v in zip(model.row_keys + model.col_keys, row + col, strict=True)}
            entry.update({"value": model.value, "agg": model.agg, "center": cell.center})
            entry.update({"spread": cell.spread, "n": cell.n})
            cells.append(entry)
    return cells


def _csv(model: TableModel, best: str | None, caption: str | None) -> str:
    cells = tidy_cells(model)
    out = io.StringIO()
    fields = [_label(k) for k in model.row_keys + model.col_keys] + ["value", "agg", "center", "spread", "n"]
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(cells)
    return out.getvalue()


def _json(model: TableModel, best: str | None, caption: str | None) -> str:
    document: dict[str, object] = {"value": model.value, "agg": model.agg, "rows": [_label(k) for k in model.row_keys]}
    document.update({"cols": [_label(k) for k in model.col_keys], "caption": caption, "cells": tidy_cells(model)})
    return json.dumps(document, indent=2, ensure_ascii=False, default=str) + "\n"


_FORMATTERS: dict[str, Callable[[TableModel, str | None, str | None], str]] = {
    "rich": _rich,
    "markdown": _markdown,
    "latex": _latex,
    "csv": _csv,
    "json": _json,
    "html": _html,
}
