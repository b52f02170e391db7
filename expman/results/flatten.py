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


def read_json(path: Path) -> Any:
    """orjson for speed; the stdlib parser for NaN/Infinity, which orjson refuses."""
    data = path.read_bytes()
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def read_results(path: Path) -> Results:
    """The flattened results.json at ``path``; a missing file is no results, a bad one a problem."""
    try:
        document = read_json(path)
    except FileNotFoundError:
        return Results()
    except (OSError, ValueError) as exc:
        return Results(problem=f"results.json: {_short(exc)}")
    results = Results()
    _flatten_results(document if isinstance(document, dict) else {"value": document}, "", results)
    return results


def _short(exc: Exception) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    if isinstance(exc, ValueError):
        return f"invalid JSON ({exc})"
    return f"unreadable ({exc})"


def _flatten_results(node: dict[str, Any], prefix: str, out: Results) -> None:
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            _flatten_results(value, name + ".", out)
        elif isinstance(value, list):
            _flatten_list(value, name, out)
        else:
            out.values[name] = value


def _flatten_list(items: list[Any], name: str, out: Results) -> None:
    array = _numbers(items)
    if array is not None:
        out.lists[name] = array
        out.values[f"{name}.mean"] = float(array.mean())
        out.values[f"{name}.std"] = float(array.std(ddof=1)) if len(array) > 1 else math.nan
        out.values[f"{name}.n"] = len(array)
    else:
        _flatten_results({str(i): v for i, v in enumerate(items)}, name + ".", out)


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


def flatten_config(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten_config(value, name + "."))
        elif isinstance(value, (list, dict)):
            flat[name] = json.dumps(value, separators=(",", ":"), sort_keys=True)
        else:
            flat[name] = value
    return flat
