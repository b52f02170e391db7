"""Sweeps: "sweep" in the expman section says which experiment parameters vary; every
combination is one run with its own effective configuration.

    "sweep": {
      "model.neurons": {"start": 1, "stop": 51, "step": 2},        range: stop excluded, as Python's range
      "train.lr": {"start": 1e-4, "stop": 1e-1, "num": 4, "log": true},   num values, both ends included
      "model.activation": ["relu", "tanh"],                         a list of values
      "zip": [{"train.seed": [1, 2, 3], "eval.seed": [11, 12, 13]}],      vary together, one axis
      "repeat": 10                                                  every combination 10 times
    }

Expansion is deterministic: the axes (keys and zip groups) vary in the order config.json
lists them, the last fastest, values in their listed order; the repeat index varies
slowest, so a partly finished sweep has covered the whole grid before any repeat.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson

from ..errors import ConfigError

SECTION = "expman"
ZIP, REPEAT = "zip", "repeat"
MAX_COMBINATIONS = 1_000_000


@dataclass(frozen=True)
class Combination:
    index: int
    values: dict[str, Any]
    repeat: int = 0
    repeats: int = 1

    @property
    def label(self) -> str:
        text = " ".join(f"{k}={v!r}" for k, v in self.values.items())
        return f"{text} #{self.repeat}".strip() if self.repeats > 1 else text


@dataclass(frozen=True)
class Sweep:
    """The expansion of a config's "sweep": its combinations, whether there is a sweep at all
    (one of a single value is still a sweep: that value runs), and the duplicate
    combinations collapsed into the first of their kind (as "key=value ..." labels)."""

    combinations: list[Combination]
    swept: bool
    duplicates: list[str]
    collapsed: int  # combinations dropped, repeats included


def expand_sweep(document: dict[str, Any]) -> list[Combination]:
    """Every combination of ``document["expman"]["sweep"]``; one empty combination when there is none."""
    return expand(document).combinations


def expand(document: dict[str, Any]) -> Sweep:
    """The sweep of ``document``; equal combinations (0.1 and 1e-1, objects in another key
    order) are one, while 1, 1.0 and true stay three (they differ to the program)."""
    sweep = dict(document.get(SECTION, {}).get("sweep") or {})
    repeats = sweep.pop(REPEAT, 1)
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ConfigError(f'expman.sweep: repeat: {repeats!r} is not a positive integer; write e.g. "repeat": 10')
    axes = _axes(document, sweep)
    size = math.prod(len(axis) for axis in axes) * repeats
    if size > MAX_COMBINATIONS:
        raise ConfigError(f"expman.sweep: {size:,} combinations (more than {MAX_COMBINATIONS:,}); sweep fewer values")
    grid, duplicates = _distinct(_merge(parts) for parts in itertools.product(*axes))
    combinations = [
        Combination(index, values, repeat, repeats)
        for index, (repeat, values) in enumerate((r, v) for r in range(repeats) for v in grid)
    ]
    swept = bool(axes) or repeats > 1
    return Sweep(combinations, swept, duplicates=duplicates, collapsed=len(duplicates) * repeats)


def _axes(document: dict[str, Any], sweep: dict[str, Any]) -> list[list[dict[str, Any]]]:
    axes: list[list[dict[str, Any]]] = []
    for key, spec in sweep.items():
        if key == ZIP:
            axes.extend(_zip_groups(document, spec))
        else:
            check_key(document, key)
            axes.append([{key: value} for value in values_of(f"expman.sweep.{key}", spec)])
    keys = [key for axis in axes for key in axis[0]]
    twice = sorted({key for key in keys if keys.count(key) > 1})
    if twice:
        raise ConfigError(f"expman.sweep: {', '.join(twice)} varied twice (in the grid and a zip group); keep one")
    return axes


def _distinct(grid: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """The grid without repeated combinations (compared as canonical JSON), and the labels
    of those dropped."""
    seen: set[bytes] = set()
    kept, dropped = [], []
    for values in grid:
        key = _canonical(values)
        if key in seen:
            dropped.append(Combination(0, values).label)
        else:
            seen.add(key)
            kept.append(values)
    return kept, dropped


def _canonical(values: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(values, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # integers beyond 64 bits
        return json.dumps(values, sort_keys=True).encode()


def values_of(where: str, spec: Any) -> list[Any]:
    """The values a list or range spec stands for."""
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"{where}: the list is empty; give at least one value")
        return spec
    if not isinstance(spec, dict):
        raise ConfigError(f'{where}: {spec!r} is neither a list nor a range like {{"start": 1, "stop": 51, "step": 2}}')
    numbers = {k: v for k, v in spec.items() if k in ("start", "stop", "step", "num")}
    unknown = sorted(set(spec) - {"start", "stop", "step", "num", "log"})
    if unknown or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in numbers.values()):
        raise ConfigError(
            f'{where}: a range has numeric "start", "stop" and either "step" or "num" (with "log": true for '
            f"log-spaced values); got {spec!r}"
        )
    if "start" not in spec or "stop" not in spec or ("step" in spec) == ("num" in spec):
        raise ConfigError(f'{where}: a range needs "start", "stop" and one of "step" or "num"; got {spec!r}')
    values = _stepped(where, spec) if "step" in spec else _spaced(where, spec)
    if not values:
        raise ConfigError(f"{where}: the range {spec!r} holds no values; check start, stop and the step's sign")
    if len(values) > MAX_COMBINATIONS:
        raise ConfigError(f"{where}: the range {spec!r} holds {len(values):,} values; use a larger step")
    return values


def _stepped(where: str, spec: dict[str, Any]) -> list[Any]:
    """start, start + step, ... up to stop, excluded; decimal steps stay exact (0.1 + 0.2 is 0.3)."""
    if spec.get("log"):
        raise ConfigError(f'{where}: "log" goes with "num", not "step"; write {{"start", "stop", "num", "log": true}}')
    start, stop, step = spec["start"], spec["stop"], spec["step"]
    if step == 0:
        raise ConfigError(f"{where}: step is 0; give a non-zero step")
    if all(isinstance(v, int) for v in (start, stop, step)):
        return list(range(start, stop, step))
    first, last, delta = (Decimal(repr(float(v))) for v in (start, stop, step))
    count = max(0, math.ceil((last - first) / delta))  # in decimals too: 1 to 2.2 by 0.2 stops at 2.0
    return [float(first + delta * i) for i in range(count)]


def _spaced(where: str, spec: dict[str, Any]) -> list[Any]:
    """num values from start to stop, both included; evenly spaced, or on a log scale."""
    start, stop, num = spec["start"], spec["stop"], spec["num"]
    if not isinstance(num, int) or num < 1:
        raise ConfigError(f"{where}: num is {num!r}; give a positive integer")
    if num == 1:
        return [start]
    if spec.get("log"):
        if start <= 0 or stop <= 0:
            raise ConfigError(f"{where}: a log-spaced range needs positive start and stop; got {start!r}, {stop!r}")
        low, high = math.log10(start), math.log10(stop)
        return [_clean(10 ** (low + (high - low) * i / (num - 1))) for i in range(num)]
    return [_clean(start + (stop - start) * i / (num - 1)) for i in range(num)]


def _clean(value: float) -> float:
    """12 significant digits: 10 ** -4 is 1e-4, not 0.00010000000000000009."""
    return float(f"{value:.12g}")


def _zip_groups(document: dict[str, Any], spec: Any) -> list[list[dict[str, Any]]]:
    groups = spec if isinstance(spec, list) else [spec]
    axes = []
    for number, group in enumerate(groups):
        where = f"expman.sweep.zip[{number}]"
        if not isinstance(group, dict) or not group:
            example = '{"a.b": [1, 2], "c": [3, 4]}'
            raise ConfigError(f"{where}: a zip group maps keys to equally long lists, e.g. {example}")
        columns = {}
        for key, values in group.items():
            check_key(document, key)
            columns[key] = values_of(f"{where}.{key}", values)
        lengths = {key: len(values) for key, values in columns.items()}
        if len(set(lengths.values())) > 1:
            raise ConfigError(f"{where}: the keys of a zip group need lists of one length; got {lengths}")
        axes.append([dict(zip(columns, row, strict=True)) for row in zip(*columns.values(), strict=True)])
    return axes


def _merge(parts: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for part in parts:
        merged.update(part)
    return merged


def effective_config(document: dict[str, Any], combination: Combination) -> dict[str, Any]:
    """The document with this combination's values set and "sweep" and "search" dropped. Only the
    objects on the way to a swept key are copied; the rest is shared with ``document`` (a
    sweep of thousands need not copy it thousands of times), so treat the result as read-only."""
    result = dict(document)
    if isinstance(result.get(SECTION), dict):
        result[SECTION] = {k: v for k, v in result[SECTION].items() if k not in ("sweep", "search")}
    copied = {id(result)}
    for key, value in combination.values.items():
        *parents, leaf = key.split(".")
        node = result
        for part in parents:
            if id(node[part]) not in copied:
                node[part] = dict(node[part])
                copied.add(id(node[part]))
            node = node[part]
        node[leaf] = value
    return result


def check_key(document: dict[str, Any], key: str, section: str = "expman.sweep") -> None:
    """``key`` names a value of config.json outside the expman section; ``section`` is where
    the key was given, for the error."""
    parts = key.split(".")
    where = f"{section}: {key!r}"
    if parts[0] == SECTION:
        raise ConfigError(f"{where} varies expman's own settings; vary the experiment's parameters only")
    node: Any = document
    for depth, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            known = ", ".join(sorted(node)) if isinstance(node, dict) else "none: it is not an object"
            prefix = ".".join(parts[:depth]) or "the top level"
            raise ConfigError(f"{where} is not in config.json ({prefix} has keys: {known}); fix the key")
        node = node[part]
