"""``expman report``: one self-contained HTML page of a runs root, with no network source
(inline CSS and JS, plots as data: URIs, a Content-Security-Policy that forbids anything
else): the runs table (one JSON blob the page's script draws, filters and sorts), the paper
tables, plots and learning curves, and the search studies with their lineage trees.

Without options it shows what matters by default: config keys that vary among the runs,
results that are numeric. The same runs give the same page (no time of day in it).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..rundir.record import RunStatus
from .filters import resolve_column
from .loader import Progress, load_runs
from .options import DEFAULT_SEED_KEYS
from .report_sections import numeric_results, paper_tables, plots, studies
from .table import is_numeric

RECORD_COLUMNS = ("run_id", "status", "commit", "branch", "backend", "host", "started_at", "duration_s", "sweep")
SEARCH_COLUMNS = ("search.study", "search.trial", "search.member", "search.generation", "search.parent")
MAX_RESULT_COLUMNS = 30
MAX_SCALAR_COLUMNS = 10
COMMIT_CHARS = 10
SIGNIFICANT_DIGITS = 6
_RUNS_SECTION = (
    '<p><input id="filter" type="search" placeholder="filter: words every shown row contains" '
    'aria-label="filter runs"><span id="count"></span></p>\n'
    '<div class="scroll"><table id="runs-table"><thead></thead><tbody></tbody></table></div>\n'
    '<p class="note">Click a column to sort by it; click again to reverse.</p>'
)
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


@dataclass
class ReportOptions:
    title: str = "expman report"
    seed_keys: Sequence[str] = DEFAULT_SEED_KEYS
    best: str | None = None
    values: Sequence[str] = field(default_factory=tuple)
    epoch: int | None = None


def build_report(root: Path | str, options: ReportOptions, progress: Progress | None = None) -> str:
    """The report of every run under ``root``, as the text of one HTML file."""
    frame = load_runs(root, scalar_stats=("last",), progress=progress)
    # reruns are listed, but are no samples of the tables and plots: they would count twice
    samples = frame["status"].eq(RunStatus.SUCCEEDED) & frame["rerun_of"].isna()
    succeeded = frame[samples].reset_index(drop=True)
    numeric = numeric_results(frame)
    values = [resolve_column(list(frame.columns), v) for v in options.values] or [
        c for c in numeric if is_numeric(succeeded[c])
    ]
    sections = [
        ("runs", "Runs", _RUNS_SECTION),
        ("tables", "Paper tables", paper_tables(succeeded, values, options.seed_keys, options.best)),
        ("plots", "Plots", plots(Path(root).expanduser(), succeeded, values, options.seed_keys, options.epoch)),
        ("studies", "Search studies", studies(frame, values)),
    ]
    return _page(options.title, _summary(root, frame), sections, runs_table_data(frame, numeric))


def runs_table_columns(frame: pd.DataFrame, numeric: list[str]) -> list[str]:
    """Record fields, tags, every config key that varies (seeds too), numeric results and the
    last value of scalars; columns with no value in any run are left out."""
    config = [
        c
        for c in frame.columns
        if c.startswith("config.") and not c.startswith("config.expman.") and frame[c].astype(str).nunique() > 1
    ]
    scalars = [c for c in frame.columns if c.startswith("tb:") and c.endswith(":last")][:MAX_SCALAR_COLUMNS]
    named = [
        *RECORD_COLUMNS,
        *(c for c in frame.columns if c.startswith("tag.")),
        *config,
        *numeric[:MAX_RESULT_COLUMNS],
        *scalars,
        *SEARCH_COLUMNS,
        "notes",
    ]
    return [c for c in named if c in frame.columns and frame[c].notna().any()]


def runs_table_data(frame: pd.DataFrame, numeric: list[str]) -> dict[str, Any]:
    """The runs table as {"columns": [...], "rows": [[...], ...]}, newest run first; ``numeric``
    names the numeric results columns."""
    columns = runs_table_columns(frame, numeric)
    cells = frame[columns].iloc[::-1].astype(object).to_numpy().tolist()
    short = columns.index("commit") if "commit" in columns else -1
    rows = []
    for row in cells:
        values = [json_value(v) for v in row]
        if short >= 0 and isinstance(values[short], str):
            values[short] = values[short][:COMMIT_CHARS]
        rows.append(values)
    return {"columns": columns, "rows": rows}


def json_value(value: Any) -> Any:
    """A cell as JSON: numbers rounded to what a table shows, NaN and missing as null."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(value) else float(f"{value:.{SIGNIFICANT_DIGITS}g}")
    return str(value)


def _summary(root: Path | str, frame: pd.DataFrame) -> str:
    counts = frame["status"].value_counts()
    statuses = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    return f"{len(frame)} runs under <code>{html.escape(str(root))}</code> ({html.escape(statuses or 'none')})."


def _page(title: str, summary: str, sections: list[tuple[str, str, str]], data: dict[str, Any]) -> str:
    assets = resources.files(__package__).joinpath("report_assets")
    css = assets.joinpath("report.css").read_text(encoding="utf-8")
    script = assets.joinpath("report.js").read_text(encoding="utf-8")
    nav = "".join(f'<a href="#{key}">{html.escape(name)}</a>' for key, name, _ in sections)
    body = "\n".join(
        f'<section id="{key}">\n<h2>{html.escape(name)}</h2>\n{content}\n</section>' for key, name, content in sections
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>\n{css}</style>\n</head>\n<body>\n"
        f"<header>\n<h1>{html.escape(title)}</h1>\n<p>{summary}</p>\n<nav>{nav}</nav>\n</header>\n"
        f"{body}\n"
        f'<script type="application/json" id="runs-data">{_script_json(data)}</script>\n'
        f"<script>\n{script}</script>\n</body>\n</html>\n"
    )


def _script_json(data: dict[str, Any]) -> str:
    """JSON that cannot end its <script> element early."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c")
