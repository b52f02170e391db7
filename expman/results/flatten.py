"""results.json and config.json as flat rows of dotted keys.

results.json may hold any JSON, NaN and Infinity included. Nested objects become dotted
keys (``{"eval": {"mean": 1}}`` -> ``eval.mean``); a list of numbers (per-episode scores)
becomes ``key.mean``, ``key.std`` (sample, n-1) and ``key.n``, its raw values kept in
``lists``; other lists are indexed (``key.0.name``). In a config, every list is a value of
its own (``[64, 64]`` is one hyperparameter) and becomes its compact JSON text.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson


@dataclass
class Results:
    values: dict[str, Any] = field(default_factory=dict)
    lists: dict[str, np.ndarray] = field(default_factory=dict)
    problem: str | None = None


class NestingError(ValueError):
    """A document nested deeper than the JSON parsers go (orjson 1,024 levels, the stdlib's
    parser about as many as Python's recursion limit)."""


def read_json(path: Path | str) -> Any:
    """orjson for speed; the stdlib parser for NaN/Infinity, which orjson refuses. A document
    too deeply nested to parse raises NestingError (a ValueError), like any invalid JSON."""
    data = Path(path).read_bytes()
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(data)
    except RecursionError:
        raise NestingError("nested deeper than the JSON parsers go (about 1,000 levels)") from None


def read_config(path: Path) -> dict[str, Any]:
    """A run's effective config.json; an unreadable one is an empty config."""
    try:
        document = read_json(path)
    except (OSError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}


def read_results(path: Path | str) -> Results:
    """The flattened results.json at ``path``; a missing file is no results, a bad one a problem."""
    try:
        document = read_json(path)
    except FileNotFoundError:
        return Results()
    except (OSError, ValueError) as exc:
        return Results(problem=f"results.json: {_short(exc)}")
    return flatten_results(document)


def _short(exc: Exception) -> str:
    if isinstance(exc, NestingError):
        return str(exc)
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    if isinstance(exc, ValueError):
        return f"invalid JSON ({exc})"
    return f"unreadable ({exc})"


def flatten_results(document: Any) -> Results:
    """A parsed results.json as dotted keys (a top level that is not an object is ``value``)."""
    results = Results()
    _flatten(document if isinstance(document, dict) else {"value": document}, results.values, results.lists)
    return results


def flatten_config(node: dict[str, Any]) -> dict[str, Any]:
    """A config as dotted keys; a list or an empty object is one value, as compact JSON text."""
    flat: dict[str, Any] = {}
    _flatten(node, flat, None)
    return flat


def _flatten(root: dict[str, Any], values: dict[str, Any], lists: dict[str, np.ndarray] | None) -> None:
    """Every leaf under ``root`` into ``values`` as a dotted key, in document order: results
    when ``lists`` is given, else a config (see ``_nested``).

    Iterative, not recursive, so that no depth exceeds a recursion limit; a level's prefix is
    joined once a leaf needs it, so that a deep chain of objects costs its depth, not its
    depth squared."""
    path: list[str] = []
    stack: list[list[Any]] = [[iter(root.items()), ""]]
    while stack:
        frame = stack[-1]
        items, prefix = frame
        for key, value in items:
            if isinstance(value, (dict, list)):
                value = _nested(value, lists)
                if value is _NOTHING:
                    continue
                if isinstance(value, dict):
                    path.append(key)
                    stack.append([iter(value.items()), None])
                    break
            if prefix is None:
                prefix = frame[1] = ".".join(path) + "."
            if lists is not None and isinstance(value, np.ndarray):
                _summarize(prefix + key, value, values, lists)
            else:
                values[prefix + key] = value
        else:
            stack.pop()
            if path:
                path.pop()


_NOTHING = object()


def _nested(value: dict[str, Any] | list[Any], lists: dict[str, np.ndarray] | None) -> Any:
    """What a list or an object stands for: a non-empty object is descended into. In a config
    (no ``lists``) a list or an empty object is one value, its compact JSON text. In results
    a list of numbers is summarized, another list is an object of its indices, and an empty
    list or object is nothing."""
    if isinstance(value, dict) and value:
        return value
    if lists is None:
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    array = _numbers(value) if isinstance(value, list) else None
    if array is not None:
        return array
    return {str(i): v for i, v in enumerate(value)} or _NOTHING


def _summarize(name: str, array: np.ndarray, values: dict[str, Any], lists: dict[str, np.ndarray]) -> None:
    lists[name] = array
    values[f"{name}.mean"] = float(array.mean())
    values[f"{name}.std"] = float(array.std(ddof=1)) if len(array) > 1 else math.nan
    values[f"{name}.n"] = len(array)


def _numbers(items: list[Any]) -> np.ndarray | None:
    """A float64 array when ``items`` is a flat, non-empty list of numbers (numpy decides,
    far faster than checking each element in Python; a bool among numbers counts as 0/1)."""
    if not items:
        return None
    try:
        array = np.array(items)
    except (ValueError, OverflowError):
        return None
    if array.ndim != 1 or array.dtype.kind not in "iuf":
        return None
    return array.astype(np.float64, copy=False)
