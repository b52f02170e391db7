"""Rows of the runs index as plain lists, for the commands that need neither pandas nor
numpy to answer (``expman table`` with the default options): importing pandas alone takes
longer than reading 10,000 runs from the index.

``load_rowset`` selects as ``load_runs`` does, and ``RowSet`` offers what ``table.py``
reads of a frame: its columns and one column's values.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .filters import Condition, parse_conditions, resolve_column
from .index import RunsIndex, runs_condition
from .options import DEFAULT_STATS


class RowSet:
    def __init__(self, columns: list[str], rows: list[list[Any]]) -> None:
        self.columns = columns
        self.rows = rows
        self._position = {name: i for i, name in enumerate(columns)}

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def empty(self) -> bool:
        return not self.rows

    def values(self, column: str) -> list[Any]:
        i = self._position[column]
        return [row[i] for row in self.rows]


def indexed(parse: Any, keep: str, check_crc: bool, cache: bool, stats: Sequence[str]) -> bool:
    """Whether the runs index keeps rows made with these options."""
    return parse is None and keep == "last" and check_crc and cache and set(stats) <= set(DEFAULT_STATS)


def load_rowset(
    root: Path,
    statuses: set[str],
    commit: str | None,
    branch: str | None,
    where: Sequence[str],
    stats: Sequence[str],
    progress: Any = None,
    reruns: bool = True,
    only: Sequence[str] | None = None,
) -> RowSet:
    """The rows ``load_runs`` would give with the default options, as plain lists. With
    ``only`` (names as a table names columns), just those columns and the config's (the
    keys a table groups by) are read."""
    if not root.is_dir():
        raise UsageError(f"no runs root at {root}: not a directory; check the path (or --runs-root)")
    condition, params = runs_condition(statuses, commit, branch, reruns)
    suffixes = tuple(f":{stat}" for stat in stats)
    with RunsIndex(root) as index:
        index.refresh(progress=progress)
        named = {resolve_column(index.keys(), name) for name in only} if only is not None else None

        def wanted(key: str) -> bool:
            if named is not None:
                return key in named or key.startswith("config.")
            return not key.startswith("tb:") or key.endswith(suffixes)

        columns, rows = index.select(condition, params, wanted)
    for item in parse_conditions(where):
        rows = _matching(columns, rows, item)
    return RowSet(columns, rows)


def _matching(columns: list[str], rows: list[list[Any]], condition: Condition) -> list[list[Any]]:
    i = columns.index(resolve_column(columns, condition.name))
    test = condition.test()
    return [row for row in rows if test(row[i])]
