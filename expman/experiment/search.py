"""The "search" section: a search space over the experiment's parameters, searched point by
point instead of enumerated (phpo's vocabulary; Optuna samples it, ``runners.search`` steers).

    "search": {
      "space": {
        "train.lr": {"method": "loguniform", "dimension": {"low": 1e-4, "high": 1e-1}},
        "model.n_units": {"method": "uniformint", "dimension": {"low": 16, "high": 256}},
        "model.activation": {"method": "categorical", "dimension": {"categories": ["relu", "tanh"]}}
      },
      "objective": "valid_err", "direction": "minimize",
      "algorithm": "tpe", "max_points": 50, "parallel": 4, "seed": 0, "failed_value": 1e9
    }

``"space": "search_space.json"`` names a file of the commit holding the space instead.
``"segments": {"key": "data.segment", "values": [...]}`` searches once per value.
Population-based training (``"algorithm": "pbt"``) adds ``population``, ``fidelity``,
``exploit`` and ``explore``. Every check happens here, before anything is queued; errors
name the JSON path of the bad value.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from .sweep import SECTION, check_key

METHODS = ("categorical", "uniformint", "uniform", "loguniform")
ALGORITHMS = ("tpe", "random", "grid", "cmaes", "pbt")
DIRECTIONS = ("minimize", "maximize")
MAX_GRID_POINTS = 100_000
MAX_GENERATIONS = 10_000
WHERE = f"{SECTION}.search"


@dataclass(frozen=True)
class Dimension:
    """One searched config key: categorical (categories), uniformint (low..high, both
    included), uniform or loguniform (low..high; ``num`` values on a grid)."""

    key: str
    method: str
    low: float = 0.0
    high: float = 0.0
    categories: tuple[Any, ...] = ()
    num: int | None = None

    def grid(self) -> list[Any]:
        """The values a grid search tries."""
        if self.method == "categorical":
            return list(self.categories)
        if self.method == "uniformint":
            return list(range(int(self.low), int(self.high) + 1))
        assert self.num is not None
        if self.num == 1:
            return [self.low]
        if self.method == "loguniform":
            a, b = math.log(self.low), math.log(self.high)
            return [math.exp(a + (b - a) * i / (self.num - 1)) for i in range(self.num)]
        return [self.low + (self.high - self.low) * i / (self.num - 1) for i in range(self.num)]

    def clip(self, value: float) -> float | int:
        """``value`` within the bounds (an integer for uniformint)."""
        bounded = min(max(value, self.low), self.high)
        return int(round(bounded)) if self.method == "uniformint" else float(bounded)


@dataclass(frozen=True)
class Fidelity:
    """PBT: each generation sets ``key`` to ``step`` more than its parent's, up to ``max``."""

    key: str
    step: float
    max: float

    @property
    def generations(self) -> int:
        return max(1, math.ceil(self.max / self.step - 1e-9))

    def at(self, generation: int) -> float | int:
        value = min(self.step * (generation + 1), self.max)
        return int(value) if float(value).is_integer() and isinstance(self.step, int) else value


@dataclass(frozen=True)
class Pbt:
    population: int
    fidelity: Fidelity
    quantile: float = 0.25  # the bottom quantile exploits a member of the top one
    factors: tuple[float, ...] = (0.8, 1.2)  # explore: multiply a numeric value by one of these
    resample: float = 0.25  # ... or draw it afresh with this probability


@dataclass(frozen=True)
class SearchSpec:
    space: tuple[Dimension, ...]
    objective: str
    direction: str = "minimize"
    algorithm: str = "tpe"
    max_points: int = 50
    parallel: int = 4
    seed: int | None = None
    failed_value: float | None = None
    segment_key: str | None = None
    segment_values: tuple[Any, ...] = ()
    pbt: Pbt | None = None
    canonical: str = ""  # the section as canonical JSON (with the space a file held): names the study

    @property
    def points(self) -> int:
        """How many points the search evaluates (per segment)."""
        if self.pbt is not None:
            return self.pbt.population * self.pbt.fidelity.generations
        if self.algorithm == "grid":
            return min(self.max_points, math.prod(len(d.grid()) for d in self.space))
        return self.max_points

    @property
    def segments(self) -> list[Any]:
        """The segment values, or [None]: one study each."""
        return list(self.segment_values) if self.segment_key else [None]

    def digest(self, commit: str) -> str:
        return hashlib.sha256(f"{commit}\n{self.canonical}".encode()).hexdigest()[:8]


def search_section(document: dict[str, Any]) -> dict[str, Any] | None:
    section = document.get(SECTION, {}).get("search")
    return section if section else None


def parse_search(document: dict[str, Any], read_file: Callable[[str], bytes | None] | None = None) -> SearchSpec:
    """The validated search of ``document``. A space named by file is read with ``read_file``
    (from the commit); without one, only its name is checked."""
    section = search_section(document)
    if section is None:
        raise ConfigError(f'{WHERE}: config.json has no "search" section; add one (see README "Search")')
    if section.get("sweep") or document[SECTION].get("sweep"):
        raise ConfigError(f"{WHERE}: a config has a sweep or a search, not both; remove expman.sweep")
    space_document = _space_document(section.get("space"), read_file)
    space = tuple(_dimension(document, key, spec) for key, spec in space_document.items()) if space_document else ()
    if not space and (read_file is not None or not isinstance(section.get("space"), str)):
        raise ConfigError(f'{WHERE}.space: no dimension; give e.g. {{"train.lr": {{"method": "uniform", ...}}}}')
    segment_key, segment_values = _segments(document, section.get("segments"))
    if segment_key in {d.key for d in space}:
        raise ConfigError(f"{WHERE}.segments.key: {segment_key!r} is also searched; segment by another key")
    resolved = {**section, "space": space_document}
    spec = SearchSpec(
        space=space,
        objective=_text(section.get("objective"), f"{WHERE}.objective", 'e.g. "valid_err" or "tb:loss:min"'),
        direction=_choice(section.get("direction", "minimize"), DIRECTIONS, f"{WHERE}.direction"),
        algorithm=_choice(section.get("algorithm", "tpe"), ALGORITHMS, f"{WHERE}.algorithm"),
        max_points=_positive_int(section.get("max_points", 50), f"{WHERE}.max_points"),
        parallel=_positive_int(section.get("parallel", 4), f"{WHERE}.parallel"),
        seed=_optional_int(section.get("seed"), f"{WHERE}.seed"),
        failed_value=_optional_number(section.get("failed_value"), f"{WHERE}.failed_value"),
        segment_key=segment_key,
        segment_values=segment_values,
        canonical=json.dumps(resolved, sort_keys=True, separators=(",", ":")),
    )
    _check_algorithm(spec)
    if spec.algorithm == "pbt":
        return _with_pbt(document, spec, section)
    _no_pbt_keys(section)
    return spec


def _space_document(space: Any, read_file: Callable[[str], bytes | None] | None) -> dict[str, Any]:
    if isinstance(space, dict):
        return space
    if not isinstance(space, str) or not space:
        raise ConfigError(f'{WHERE}.space: give an object of dimensions or a file name like "search_space.json"')
    if read_file is None:
        return {}
    text = read_file(space)
    if text is None:
        raise ConfigError(f"{WHERE}.space: no file {space!r} in the commit; commit it or write the space inline")
    try:
        document = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{WHERE}.space: {space} is not valid JSON ({exc}); fix the file and commit it") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{WHERE}.space: {space} must hold a JSON object of dimensions")
    return document


def _dimension(document: dict[str, Any], key: str, spec: Any) -> Dimension:
    where = f"{WHERE}.space.{key}"
    check_key(document, key, WHERE)
    if not isinstance(spec, dict) or set(spec) - {"method", "dimension"}:
        raise ConfigError(f'{where}: give {{"method": ..., "dimension": {{...}}}}; got {spec!r}')
    method = _choice(spec.get("method"), METHODS, f"{where}.method")
    dimension = spec.get("dimension")
    if not isinstance(dimension, dict):
        raise ConfigError(f"{where}.dimension: give an object (low/high, or categories)")
    if method == "categorical":
        categories = dimension.get("categories")
        if set(dimension) != {"categories"} or not isinstance(categories, list) or not categories:
            raise ConfigError(f'{where}.dimension: a categorical gives {{"categories": [a non-empty list]}}')
        if any(isinstance(c, (list, dict)) for c in categories):
            raise ConfigError(f"{where}.dimension.categories: give strings, numbers, booleans or null")
        return Dimension(key, method, categories=tuple(categories))
    return _numeric(key, method, dimension, where)


def _numeric(key: str, method: str, dimension: dict[str, Any], where: str) -> Dimension:
    unknown = sorted(set(dimension) - {"low", "high", "num"})
    if unknown or "low" not in dimension or "high" not in dimension:
        raise ConfigError(f'{where}.dimension: {method} gives {{"low": ..., "high": ...}} (and "num" for a grid)')
    low, high = dimension["low"], dimension["high"]
    for name, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{where}.dimension.{name}: {value!r} is not a finite number")
        if method == "uniformint" and not isinstance(value, int):
            raise ConfigError(f"{where}.dimension.{name}: {value!r} is not an integer (uniformint)")
    if not low < high:
        raise ConfigError(f"{where}.dimension: low {low!r} is not below high {high!r}")
    if method == "loguniform" and low <= 0:
        raise ConfigError(f"{where}.dimension.low: {low!r}; a loguniform range needs low > 0")
    num = dimension.get("num")
    if num is not None:
        num = _positive_int(num, f"{where}.dimension.num")
    return Dimension(key, method, low=low, high=high, num=num)


def _segments(document: dict[str, Any], segments: Any) -> tuple[str | None, tuple[Any, ...]]:
    if segments is None:
        return None, ()
    where = f"{WHERE}.segments"
    if not isinstance(segments, dict) or set(segments) != {"key", "values"}:
        raise ConfigError(f'{where}: give {{"key": "data.segment", "values": ["arms", "body"]}}')
    values = segments["values"]
    if not isinstance(values, list) or not values or len({json.dumps(v) for v in values}) != len(values):
        raise ConfigError(f"{where}.values: give a non-empty list of distinct values")
    key = _text(segments["key"], f"{where}.key", 'a dotted config key, e.g. "data.segment"')
    check_key(document, key, where)
    return key, tuple(values)


def _check_algorithm(spec: SearchSpec) -> None:
    if spec.algorithm == "grid":
        coarse = [d.key for d in spec.space if d.method in ("uniform", "loguniform") and d.num is None]
        if coarse:
            raise ConfigError(f'{WHERE}.space.{coarse[0]}.dimension: a grid needs "num" values of a continuous range')
        if math.prod(len(d.grid()) for d in spec.space) > MAX_GRID_POINTS:
            raise ConfigError(f"{WHERE}.space: the grid holds more than {MAX_GRID_POINTS:,} points; use fewer values")
    if spec.algorithm == "cmaes" and all(d.method == "categorical" for d in spec.space):
        raise ConfigError(f"{WHERE}.algorithm: cmaes searches numbers; this space has only categoricals (use tpe)")


PBT_KEYS = ("population", "fidelity", "exploit", "explore")


def _no_pbt_keys(section: dict[str, Any]) -> None:
    extra = [k for k in PBT_KEYS if k in section]
    if extra:
        raise ConfigError(f'{WHERE}.{extra[0]}: only population-based training uses it; set "algorithm": "pbt"')


def _with_pbt(document: dict[str, Any], spec: SearchSpec, section: dict[str, Any]) -> SearchSpec:
    fidelity = section.get("fidelity")
    where = f"{WHERE}.fidelity"
    if not isinstance(fidelity, dict) or set(fidelity) != {"key", "step", "max"}:
        raise ConfigError(f'{where}: pbt needs {{"key": "train.epochs", "step": 5, "max": 50}}')
    key = _text(fidelity["key"], f"{where}.key", 'a dotted config key, e.g. "train.epochs"')
    check_key(document, key, where)
    step, top = (_positive_number(fidelity[n], f"{where}.{n}") for n in ("step", "max"))
    if step > top:
        raise ConfigError(f"{where}: step {step!r} exceeds max {top!r}")
    if key in {d.key for d in spec.space}:
        raise ConfigError(f"{where}.key: {key!r} is also searched; the fidelity grows by itself")
    if top / step > MAX_GENERATIONS:
        raise ConfigError(f"{where}: max / step is more than {MAX_GENERATIONS:,} generations; take larger steps")
    if not document[SECTION].get("checkpoint"):
        raise ConfigError(
            f'{WHERE}.algorithm: pbt starts each generation from its parent\'s snapshot; add "checkpoint": '
            '{"paths": [...]} to the expman section (README: Checkpoints)'
        )
    exploit = _object(section.get("exploit", {}), f"{WHERE}.exploit", {"quantile"})
    explore = _object(section.get("explore", {}), f"{WHERE}.explore", {"factors", "resample"})
    quantile = _fraction(exploit.get("quantile", 0.25), f"{WHERE}.exploit.quantile")
    factors = explore.get("factors", [0.8, 1.2])
    if not isinstance(factors, list) or not factors or any(not _is_positive(f) for f in factors):
        raise ConfigError(f"{WHERE}.explore.factors: give a list of positive numbers, e.g. [0.8, 1.2]")
    population = _positive_int(section.get("population", 4), f"{WHERE}.population")
    if population < 2:
        raise ConfigError(f"{WHERE}.population: {population}; a population needs at least 2 members")
    pbt = Pbt(
        population=population,
        fidelity=Fidelity(key, step, top),
        quantile=quantile,
        factors=tuple(float(f) for f in factors),
        resample=_fraction(explore.get("resample", 0.25), f"{WHERE}.explore.resample"),
    )
    return SearchSpec(**{**spec.__dict__, "pbt": pbt})


def _object(value: Any, where: str, keys: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict) or set(value) - keys:
        raise ConfigError(f"{where}: give an object with {', '.join(sorted(keys))}")
    return value


def _choice(value: Any, choices: tuple[str, ...], where: str) -> str:
    if value not in choices:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(choices)}")
    return str(value)


def _text(value: Any, where: str, example: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: give a non-empty string, {example}")
    return value


def _is_positive(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _positive_number(value: Any, where: str) -> float:
    if not _is_positive(value):
        raise ConfigError(f"{where}: {value!r} is not a positive number")
    return value  # type: ignore[no-any-return]


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: {value!r} is not a positive integer")
    return value


def _optional_int(value: Any, where: str) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{where}: {value!r} is not an integer")
    return value


def _optional_number(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: {value!r} is not a finite number")
    return float(value)


def _fraction(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigError(f"{where}: {value!r} is not a number between 0 and 1")
    return float(value)
