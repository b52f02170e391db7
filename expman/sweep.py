"""Sweeps: "sweep" in the expman section names dotted config keys and their values; every
combination of the grid is one run with its own effective configuration.

Expansion is deterministic: keys vary in the order config.json lists them, the last key
fastest, values in their listed order.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

SECTION = "expman"


@dataclass(frozen=True)
class Combination:
    index: int
    values: dict[str, Any]

    @property
    def label(self) -> str:
        return " ".join(f"{k}={v!r}" for k, v in self.values.items())


def expand_sweep(document: dict[str, Any]) -> list[Combination]:
    """The grid of ``document["expman"]["sweep"]``; one empty combination when there is none."""
    sweep = document.get(SECTION, {}).get("sweep") or {}
    for key in sweep:
        _check_key(document, key)
    keys = list(sweep)
    grid = itertools.product(*(sweep[k] for k in keys))
    return [Combination(i, dict(zip(keys, values, strict=True))) for i, values in enumerate(grid)]


def effective_config(document: dict[str, Any], combination: Combination) -> dict[str, Any]:
    """The document with this combination's values set and the "sweep" key dropped."""
    result = copy.deepcopy(document)
    result.get(SECTION, {}).pop("sweep", None)
    for key, value in combination.values.items():
        *parents, leaf = key.split(".")
        node = result
        for part in parents:
            node = node[part]
        node[leaf] = value
    return result


def _check_key(document: dict[str, Any], key: str) -> None:
    parts = key.split(".")
    where = f"expman.sweep: {key!r}"
    if parts[0] == SECTION:
        raise ConfigError(f"{where} sweeps expman's own settings; sweep the experiment's parameters only")
    node: Any = document
    for depth, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            known = ", ".join(sorted(node)) if isinstance(node, dict) else "none: it is not an object"
            prefix = ".".join(parts[:depth]) or "the top level"
            raise ConfigError(f"{where} is not in config.json ({prefix} has keys: {known}); fix the key")
        node = node[part]
