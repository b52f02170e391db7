"""What a plot shows, computed without drawing: the mean and sample standard deviation
(n - 1) of a value over the runs that differ only in seed, per x and per hue.

As in a table, a cell never mixes configurations: every other config key that varies
among the runs (other than seed-like keys and the keys pooled over) joins the hue. The
drawing in plot.py takes these frames as they are, so what is tested here is what is drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import UsageError
from .filters import resolve_column
from .options import DEFAULT_SEED_KEYS
from .table import aggregate, as_number, grouping_keys, hashable, order_key

POINT_COLUMNS = ["hue", "x", "mean", "sd", "n"]


@dataclass
class Points:
    """Aggregated points: a row per (hue, x) with mean, sd (NaN for a single run) and n."""

    frame: pd.DataFrame
    x: str
    y: str
    hue_keys: list[str]

    @property
    def numeric_x(self) -> bool:
        values = self.frame["x"].dropna()
        return bool(len(values)) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)

    @property
    def hues(self) -> list[str]:
        return list(dict.fromkeys(self.frame["hue"]))


def aggregate_points(
    frame: pd.DataFrame,
    x: str,
    y: str,
    hue: str | None = None,
    seed_keys: Sequence[str] = DEFAULT_SEED_KEYS,
    pool: Sequence[str] = (),
) -> Points:
    """``y`` over ``x`` (and ``hue``), each point aggregating the runs that differ only in seed."""
    columns = list(frame.columns)
    x_column, y_column = resolve_column(columns, x), resolve_column(columns, y)
    named = [x_column] + ([resolve_column(columns, hue)] if hue else [])
    pooled = [resolve_column(columns, p) for p in pool]
    hue_keys = named[1:] + grouping_keys(frame, named, seed_keys, pooled)
    groups: dict[tuple[tuple, object], list[float]] = {}
    for record in frame[list(dict.fromkeys([*hue_keys, x_column, y_column]))].to_dict("records"):
        key = (tuple(hashable(record[k]) for k in hue_keys), hashable(record[x_column]))
        groups.setdefault(key, []).append(as_number(record[y_column]))
    rows = []
    for hue_values, x_value in sorted(groups, key=lambda k: (order_key(k[0]), order_key((k[1],)))):
        cell = aggregate(groups[(hue_values, x_value)], "mean±std")
        if cell.center is not None:
            spread = _nan_if_none(cell.spread)
            rows.append((hue_label(hue_keys, hue_values), x_value, cell.center, spread, cell.n))
    if not rows:
        raise UsageError(f"no run has a numeric {y_column}; 'expman table --list' shows the columns and their values")
    return Points(pd.DataFrame(rows, columns=POINT_COLUMNS), x_column, y_column, hue_keys)


def _nan_if_none(value: float | None) -> float:
    return float("nan") if value is None else value


def hue_label(keys: Sequence[str], values: tuple) -> str:
    """One named hue: its value alone, or key=value pairs when several keys make it."""
    if len(keys) == 1:
        return str(values[0])
    return ", ".join(f"{_short(k)}={v}" for k, v in zip(keys, values, strict=True))


def _short(column: str) -> str:
    return column.removeprefix("config.").removeprefix("results.")


def aggregate_curve(
    runs: pd.DataFrame,
    scalars: pd.DataFrame,
    tag: str,
    hue: str | None = None,
    seed_keys: Sequence[str] = DEFAULT_SEED_KEYS,
    pool: Sequence[str] = (),
) -> Points:
    """A learning curve: ``scalars`` (load_scalars' long frame, one tag) over steps, per hue of
    ``runs`` (load_runs' frame), mean and sd over the runs at each step."""
    columns = list(runs.columns)
    named = [resolve_column(columns, hue)] if hue else []
    pooled = [resolve_column(columns, p) for p in pool]
    hue_keys = named + grouping_keys(runs, named, seed_keys, pooled)
    labels = {
        record["run_id"]: (order_key(values), hue_label(hue_keys, values))
        for record in runs[["run_id", *hue_keys]].to_dict("records")
        for values in [tuple(hashable(record[k]) for k in hue_keys)]
    }
    points = scalars[scalars["run_id"].astype(object).isin(labels.keys())]
    if points.empty:
        raise UsageError(f"no selected run has the scalar {tag!r}; 'expman table --list' names the tb: columns")
    keyed = pd.DataFrame(
        {
            "hue": points["run_id"].astype(object).map(lambda r: labels[r][1]),
            "order": points["run_id"].astype(object).map(lambda r: labels[r][0]),
            "x": points["step"].to_numpy(),
            "value": points["value"].to_numpy(np.float64),
        }
    )
    grouped = keyed.groupby(["hue", "x"], sort=False)["value"].agg(["mean", "std", "count"]).reset_index()
    order = {hue: key for hue, key in zip(keyed["hue"], keyed["order"], strict=True)}
    grouped["rank"] = grouped["hue"].map(order)
    grouped = grouped.sort_values(["rank", "x"], key=_sortable, kind="stable").reset_index(drop=True)
    frame = pd.DataFrame(
        {"hue": grouped["hue"], "x": grouped["x"], "mean": grouped["mean"], "sd": grouped["std"], "n": grouped["count"]}
    )
    return Points(frame, "step", f"tb:{tag}", hue_keys)


def _sortable(column: pd.Series) -> pd.Series:
    if column.name != "rank":
        return column
    ranks = {key: i for i, key in enumerate(sorted(set(column)))}
    return column.map(ranks)
