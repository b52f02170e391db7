"""Naming columns and selecting rows of ``load_runs`` frames from the command line.

A name is looked up as given, then as ``config.<name>`` and ``results.<name>``, then as
the unique key ending in ``.<name>`` (``env`` for ``config.train.env``); a name that fits
more than one column must be written out. ``tb:<key>:<stat>`` names a scalar summary, where <key>
may leave out leading directories (``tb:loss:last`` finds ``tb/train/loss``) as long as
one key matches.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ..errors import UsageError
from .scalars import match_keys
from .stdout import to_number

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
        column = frame[resolve_column(list(frame.columns), self.name)]
        value = to_number(self.text)
        if self.op in ("=", "!="):
            equal = column.map(lambda cell: _equal(cell, value, self.text))
            return equal if self.op == "=" else ~equal
        if isinstance(value, str):
            raise UsageError(f"{self.name}{self.op}{self.text}: {self.op} needs a number")
        numbers = pd.to_numeric(column, errors="coerce")
        return {"<": numbers < value, ">": numbers > value, "<=": numbers <= value, ">=": numbers >= value}[self.op]


def _equal(cell: Any, value: Any, text: str) -> bool:
    if isinstance(cell, bool) or cell is None:
        return str(cell).lower() == text.lower()
    if isinstance(cell, (int, float)) and not isinstance(value, str):
        return bool(cell == value)
    return str(cell) == text


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
