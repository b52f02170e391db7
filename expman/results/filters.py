"""Naming columns and selecting rows of ``load_runs`` frames from the command line.

A name is looked up as given, then as ``config.<name>`` and ``results.<name>``, then as
the unique key ending in ``.<name>`` (``env`` for ``config.train.env``); a name that fits
more than one column must be written out. ``tb:<key>:<stat>`` names a scalar summary, where <key>
may leave out leading directories (``tb:loss:last`` finds ``tb/train/loss``) as long as
one key matches.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from .stdout import to_number

if TYPE_CHECKING:  # pandas only for the type: tables from the runs index are made without it
    import pandas as pd

_CONDITION = re.compile(r"(.+?)\s*(!=|<=|>=|=|<|>)\s*(.*)", re.S)
NAMESPACES = ("config.", "results.")


def resolve_column(columns: Sequence[str], name: str) -> str:
    """The frame column ``name`` refers to; a UsageError names near misses."""
    if name in columns:
        return name
    if name.startswith("tb:"):
        return _resolve_scalar(columns, name)
    found = [f"{ns}{name}" for ns in NAMESPACES if f"{ns}{name}" in columns]
    if not found:
        found = [c for c in columns if c.startswith(NAMESPACES) and c.endswith(f".{name}")]
    if len(found) == 1:
        return found[0]
    if found:
        raise UsageError(f"{name!r} could be {' or '.join(map(repr, found[:4]))}; write the one you mean")
    close = difflib.get_close_matches(name, [_short(c) for c in columns], n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; 'expman table --list' shows every column"
    raise UsageError(f"no column {name!r} in the selected runs{hint}")


def _short(column: str) -> str:
    for ns in NAMESPACES:
        if column.startswith(ns):
            return column[len(ns) :]
    return column


def _resolve_scalar(columns: Sequence[str], name: str) -> str:
    _, _, rest = name.partition(":")
    key, sep, stat = rest.rpartition(":")
    if not sep or not key:
        raise UsageError(f"{name!r}: write a scalar as tb:<tag>:<stat>, e.g. tb:eprewmean:last")
    suffix = f":{stat}"
    keys = [c[3 : -len(suffix)] for c in columns if c.startswith("tb:") and c.endswith(suffix)]
    matches = match_keys(keys, key)
    if len(matches) == 1:
        return f"tb:{matches[0]}{suffix}"
    if matches:
        raise UsageError(f"{name!r} matches {', '.join(matches[:4])}; give more of the tag")
    known = sorted({c[3:].rpartition(":")[0] for c in columns if c.startswith("tb:")})
    shown = ", ".join(known[:8]) if known else "none in the selected runs"
    raise UsageError(f"no scalar {key!r} with statistic {stat!r}; scalars: {shown}")


@dataclass(frozen=True)
class Condition:
    name: str
    op: str
    text: str

    def mask(self, frame: pd.DataFrame) -> pd.Series:
        return frame[resolve_column(list(frame.columns), self.name)].map(self.test()).astype(bool)

    def test(self) -> Callable[[Any], bool]:
        """Whether a cell meets the condition. A comparison needs a number: a cell that is
        not one (nor text of one) does not meet it."""
        value = to_number(self.text)
        if self.op in ("=", "!="):
            wanted = self.op == "="
            return lambda cell: _equal(cell, value, self.text) == wanted
        if isinstance(value, str):
            raise UsageError(f"{self.name}{self.op}{self.text}: {self.op} needs a number")
        compare = _COMPARE[self.op]
        return lambda cell: (number := _as_number(cell)) is not None and compare(number, value)


_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<": lambda a, b: a < b,
    ">": lambda a, b: a > b,
    "<=": lambda a, b: a <= b,
    ">=": lambda a, b: a >= b,
}


def _as_number(cell: Any) -> float | None:
    if isinstance(cell, (int, float)):
        return None if isinstance(cell, float) and math.isnan(cell) else float(cell)
    if isinstance(cell, str):
        try:
            return float(cell)
        except ValueError:
            return None
    return None


def _equal(cell: Any, value: Any, text: str) -> bool:
    """A missing value (None, NaN) equals nothing; a bool equals true or false in any case."""
    if cell is None or isinstance(cell, float) and math.isnan(cell):
        return False
    if isinstance(cell, bool):
        return str(cell).lower() == text.lower()
    if isinstance(cell, (int, float)) and not isinstance(value, str):
        return bool(cell == value)
    return str(cell) == text


def match_keys(keys: list[str], pattern: str) -> list[str]:
    """Keys selected by a glob; a pattern without '/' also matches the tag after any directory."""
    return [k for k in keys if fnmatch.fnmatchcase(k, pattern) or fnmatch.fnmatchcase(k, f"*/{pattern}")]


def where_names(items: Iterable[str]) -> list[str]:
    """The column names "key=value" conditions name."""
    return [condition.name for condition in parse_conditions(items)]


def parse_conditions(items: Iterable[str] | Iterable[Condition]) -> list[Condition]:
    conditions = []
    for item in items:
        if isinstance(item, Condition):
            conditions.append(item)
            continue
        match = _CONDITION.fullmatch(item)
        if not match:
            raise UsageError(f"--where {item!r}: write key=value, key!=value, key<value or key>value")
        conditions.append(Condition(*match.groups()))
    return conditions
