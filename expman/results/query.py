"""SQL over the runs index: ``expman query "SELECT ..."`` reads the table ``runs`` (a row
per run, a column per record field, config key, result, scalar summary and tag) through a
read-only connection, so that a query can look but never change the index.

SQLite has no standard deviation; ``stddev`` (also ``stdev``, ``stddev_samp``: the sample
standard deviation, n - 1), ``stddev_pop``, ``variance`` (sample) and ``var_pop`` are added,
usable as aggregates and as window functions.
"""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .index import RunsIndex


class _Moments:
    """Welford's running mean and sum of squared deviations, with removal for windows."""

    ddof = 1
    root = True

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def step(self, value: Any) -> None:
        if isinstance(value, (int, float)) and not math.isnan(value):
            self.n += 1
            delta = value - self.mean
            self.mean += delta / self.n
            self.m2 += delta * (value - self.mean)

    def inverse(self, value: Any) -> None:
        if isinstance(value, (int, float)) and not math.isnan(value):
            if self.n == 1:
                self.n, self.mean, self.m2 = 0, 0.0, 0.0
                return
            delta = value - self.mean
            self.n -= 1
            self.mean -= delta / self.n
            self.m2 -= delta * (value - self.mean)

    def value(self) -> float | None:
        if self.n <= self.ddof:
            return None
        variance = max(self.m2, 0.0) / (self.n - self.ddof)
        return math.sqrt(variance) if self.root else variance

    def finalize(self) -> float | None:
        return self.value()


class _SamplePopulation(_Moments):
    ddof = 0


class _Variance(_Moments):
    root = False


class _PopulationVariance(_Moments):
    ddof, root = 0, False


FUNCTIONS = {
    "stddev": _Moments,
    "stdev": _Moments,
    "stddev_samp": _Moments,
    "stddev_pop": _SamplePopulation,
    "variance": _Variance,
    "var_samp": _Variance,
    "var_pop": _PopulationVariance,
}


def run_query(root: Path, sql: str, progress: Any = None) -> tuple[list[str], list[tuple]]:
    """Column names and rows of ``sql`` over the runs under ``root`` (the index refreshed
    first). A bad query is a UsageError carrying SQLite's own message."""
    with RunsIndex(root) as index:
        index.refresh(progress=progress)
        path = index.path
    db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        for name, aggregate in FUNCTIONS.items():
            db.create_window_function(name, 1, aggregate)
        cursor = db.execute(sql)
        columns = [d[0] for d in cursor.description or ()]
        return columns, cursor.fetchall()
    except sqlite3.Error as exc:
        message = " ".join(str(exc).split())
        raise UsageError(f"query: {message} (the table is runs; 'expman query --columns' lists columns)") from None
    except OverflowError as exc:
        raise UsageError(f"query: {exc}") from None
    finally:
        db.close()
