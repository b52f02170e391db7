"""Paper tables from a ``load_runs`` frame: a row per value of the row keys, a column per
value of the column keys, each cell aggregating the runs that differ only in seed.

Runs are grouped by the row and column keys and by every other config key that varies
(added to the rows, so a cell never mixes configurations), except seed-like keys (last
name part ending in "seed") and keys the caller pools over. The expman section of the
config is never a grouping key. std is the sample standard deviation (n - 1).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from .filters import resolve_column
from .options import AGGREGATES, DEFAULT_SEED_KEYS
from .rowset import RowSet

if TYPE_CHECKING:  # a frame's type only: a RowSet makes a table without importing pandas
    import pandas as pd


_ALIASES = {"mean+-std": "mean±std", "mean+-sem": "mean±sem", "mean_std": "mean±std", "mean_sem": "mean±sem"}


@dataclass
class Cell:
    center: float | None
    spread: float | None = None
    n: int = 0


@dataclass
class TableModel:
    row_keys: list[str]
    col_keys: list[str]
    rows: list[tuple]
    cols: list[tuple]
    cells: dict[tuple[tuple, tuple], Cell]
    value: str
    agg: str
    pooled: list[str] = field(default_factory=list)

    def cell(self, row: tuple, col: tuple) -> Cell:
        return self.cells.get((row, col), Cell(None))


def normalize_agg(agg: str) -> str:
    agg = _ALIASES.get(agg, agg)
    if agg not in AGGREGATES:
        raise UsageError(f"--agg {agg!r}: use one of {', '.join(AGGREGATES)}")
    return agg


def column_values(frame: pd.DataFrame | RowSet, column: str) -> list[Any]:
    return frame.values(column) if isinstance(frame, RowSet) else frame[column].tolist()


def default_value(frame: pd.DataFrame | RowSet) -> str:
    """The first numeric results column (results.json order), else the first scalar summary."""
    for prefix in ("results.", "tb:"):
        for column in frame.columns:
            if column.startswith(prefix) and is_numeric(column_values(frame, column)):
                return column
    raise UsageError("the selected runs have no numeric results; name one with --value (see --list)")


def is_numeric(values: Any) -> bool:
    """Whether the values (a list, or a frame's column) hold a number and nothing but numbers,
    leaving out missing ones; bools are not numbers here."""
    dtype = getattr(values, "dtype", None)
    if dtype is not None and dtype.kind in "iuf":
        return bool(values.notna().any())
    present = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return bool(present) and all(_number_like(v) for v in present)


def _number_like(value: Any) -> bool:
    """int and float, numpy's numbers too (their module names them), never a bool."""
    if type(value).__name__ in ("bool", "bool_"):
        return False
    return isinstance(value, (int, float)) or type(value).__module__ == "numpy"


def grouping_keys(
    frame: pd.DataFrame | RowSet, named: Sequence[str], seed_keys: Sequence[str], pool: Sequence[str]
) -> list:
    """Config columns that vary among the runs, other than seeds, pooled and named keys."""
    keys = []
    for column in frame.columns:
        if not column.startswith("config.") or column.startswith("config.expman."):
            continue
        last = column.rsplit(".", 1)[-1]
        if any(fnmatch.fnmatchcase(last, p) or fnmatch.fnmatchcase(column[7:], p) for p in seed_keys):
            continue
        if column in named or column in pool:
            continue
        values = column_values(frame, column)
        if len(set(values)) > 1 and len({hashable(v) for v in values}) > 1:  # the first test is quick
            keys.append(column)
    return keys


def hashable(value: Any) -> Any:
    """NaN as None, so that missing values group together (NaN is the one value unequal to itself)."""
    return value if value == value else None


def build_table(
    frame: pd.DataFrame | RowSet,
    rows: Sequence[str] = (),
    cols: Sequence[str] = (),
    value: str | None = None,
    agg: str = "mean±std",
    seed_keys: Sequence[str] = DEFAULT_SEED_KEYS,
    pool: Sequence[str] = (),
) -> TableModel:
    agg = normalize_agg(agg)
    columns = list(frame.columns)
    row_keys = [resolve_column(columns, r) for r in rows]
    col_keys = [resolve_column(columns, c) for c in cols]
    pooled = [resolve_column(columns, p) for p in pool]
    value_column = resolve_column(columns, value) if value else default_value(frame)
    row_keys += grouping_keys(frame, row_keys + col_keys, seed_keys, pooled)
    groups: dict[tuple[tuple, tuple], list[float]] = {}
    # only the columns a cell needs: a frame of every column per record is slow at 10,000 runs
    rows_of = zip(*(column_values(frame, k) for k in row_keys), strict=True) if row_keys else None
    cols_of = zip(*(column_values(frame, k) for k in col_keys), strict=True) if col_keys else None
    for value_of in column_values(frame, value_column):
        row = tuple(map(hashable, next(rows_of))) if rows_of else ()
        col = tuple(map(hashable, next(cols_of))) if cols_of else ()
        groups.setdefault((row, col), []).append(as_number(value_of))
    cells = {key: aggregate(values, agg) for key, values in groups.items()}
    return TableModel(
        row_keys,
        col_keys,
        sorted({r for r, _ in groups}, key=order_key),
        sorted({c for _, c in groups}, key=order_key),
        cells,
        value_column,
        agg,
        pooled,
    )


def as_number(value: Any) -> float:
    if isinstance(value, bool) or value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def order_key(key: tuple) -> tuple:
    """Numbers numerically, then text, then missing values."""
    return tuple(_sort_key(v) for v in key)


def _sort_key(v: Any) -> tuple:
    number = isinstance(v, (int, float))
    return (v is None, not number, v if number else str(v))


def aggregate(values: list[float], agg: str) -> Cell:
    """One cell from the values of its runs (NaN, missing results, left out of n)."""
    import numpy as np  # here: a table of few cells need not wait for it

    present = np.array([v for v in values if not math.isnan(v)], dtype=np.float64)
    n = len(present)
    if agg == "count":
        return Cell(float(n), None, n)
    if not n:
        return Cell(None, None, 0)
    if agg == "last":
        return Cell(float(present[-1]), None, n)
    if agg in ("median", "min", "max"):
        return Cell(float(getattr(np, agg)(present)), None, n)
    std = float(present.std(ddof=1)) if n > 1 else None
    spread = std / math.sqrt(n) if std is not None and agg == "mean±sem" else std
    return Cell(float(present.mean()), spread, n)
