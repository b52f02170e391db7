"""Load and validate config.json: the experiment's parameters plus its "expman" section.

The file is read from a commit (never the work tree), validated against the JSON Schema
shipped in the package, and turned into typed, frozen settings with defaults. Errors name
the JSON path of the bad value and what was expected.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from importlib import resources as importlib_resources
from typing import Any

import jsonschema

from .errors import ConfigError
from .results.stdout import compile_patterns

CONFIG_FILE = "config.json"
PROJECT_SCHEMA_FILE = "config.schema.json"
SECTION = "expman"

# Every key of the "expman" section with its default, shown when a key is unknown.
DEFAULTS: dict[str, Any] = {
    "command": None,
    "branch": "experiments",
    "backend": "local",
    "runs_root": None,
    "allow_untracked": False,
    "require_pushed": False,
    "remote": "origin",
    "dockerfile": "Dockerfile",
    "image": None,
    "resources": {},
    "parse": {},
}
RESOURCE_DEFAULTS: dict[str, Any] = {"gpus": 0, "cpus": None, "memory": None, "timeout": None}

_MEMORY_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_DURATION_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


@dataclass(frozen=True)
class Resources:
    gpus: int = 0
    cpus: float | None = None
    memory_bytes: int | None = None
    timeout_s: float | None = None


@dataclass(frozen=True)
class ExpmanSettings:
    """The validated "expman" section, defaults filled in."""

    command: tuple[str, ...]
    branch: str = "experiments"
    backend: str = "local"
    runs_root: str | None = None
    allow_untracked: bool = False
    require_pushed: bool = False
    remote: str = "origin"
    dockerfile: str = "Dockerfile"
    image: str | None = None
    resources: Resources = field(default_factory=Resources)
    parse: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole config.json: the raw document and its parsed "expman" section."""

    document: dict[str, Any]
    settings: ExpmanSettings

    @property
    def config_hash(self) -> str:
        return hash_config(self.document)


def hash_config(document: dict[str, Any]) -> str:
    """sha256 of the canonical JSON form (sorted keys, no whitespace)."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def parse_memory(value: int | str) -> int:
    """'4g', '512m', '2GiB', 1073741824 -> bytes (binary units, as Docker reads them)."""
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)\s*([bkmgt]?)i?b?", value.strip().lower())
    if not match:
        raise ConfigError(f'expman.resources.memory: {value!r} is not a size; write e.g. "4g" or "512m"')
    number, unit = match.groups()
    return int(float(number) * _MEMORY_UNITS[unit])


def parse_duration(value: float | str) -> float:
    """'6h', '1h30m', '90s', '2d', 3600 -> seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    parts = re.findall(r"([0-9]+(?:\.[0-9]+)?)([dhms])", value.replace(" ", ""))
    if not parts or "".join(n + u for n, u in parts) != value.replace(" ", ""):
        raise ConfigError(f'expman.resources.timeout: {value!r} is not a duration; write e.g. "6h" or "1h30m"')
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def load_config(text: bytes | str, origin: str, project_schema: bytes | None = None) -> ExperimentConfig:
    """Parse and validate config.json text; ``origin`` names where it came from in errors."""
    try:
        document = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{origin}: invalid JSON ({exc}); fix the file and commit it") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{origin}: the top level must be a JSON object")
    section = document.get(SECTION)
    if not isinstance(section, dict):
        raise ConfigError(f'{origin}: no "{SECTION}" object; add one with at least "command": [...]')
    _check_known_keys(section, DEFAULTS, f"{origin}: {SECTION}")
    _check_known_keys(section.get("resources") or {}, RESOURCE_DEFAULTS, f"{origin}: {SECTION}.resources")
    _validate(section, _expman_schema(), f"{origin}: {SECTION}")
    compile_patterns(section.get("parse", {}))
    if project_schema is not None:
        rest = {k: v for k, v in document.items() if k != SECTION}
        _validate(rest, _load_project_schema(project_schema), origin)
    return ExperimentConfig(document=document, settings=_settings_from(section))


def _settings_from(section: dict[str, Any]) -> ExpmanSettings:
    res = section.get("resources", {})
    resources = Resources(
        gpus=res.get("gpus", 0),
        cpus=res.get("cpus"),
        memory_bytes=parse_memory(res["memory"]) if "memory" in res else None,
        timeout_s=parse_duration(res["timeout"]) if "timeout" in res else None,
    )
    values = {k: section[k] for k in DEFAULTS if k in section and k not in ("command", "resources")}
    return ExpmanSettings(command=tuple(section["command"]), resources=resources, **values)


def _check_known_keys(section: dict[str, Any], known: dict[str, Any], where: str) -> None:
    unknown = sorted(set(section) - set(known))
    if unknown:
        valid = ", ".join(f"{k} (default {json.dumps(v)})" for k, v in sorted(known.items()))
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; valid keys: {valid}")


def _validate(instance: Any, schema: dict[str, Any], where: str) -> None:
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(instance))
    if error is not None:
        path = ".".join(str(p) for p in error.absolute_path)
        location = f"{where}.{path}" if path else where
        raise ConfigError(f"{location}: {error.message}")


def _expman_schema() -> dict[str, Any]:
    text = importlib_resources.files("expman").joinpath("schema/expman.schema.json").read_text()
    return json.loads(text)


def _load_project_schema(text: bytes) -> dict[str, Any]:
    try:
        schema = json.loads(text)
        jsonschema.Draft202012Validator.check_schema(schema)
    except (json.JSONDecodeError, jsonschema.exceptions.SchemaError) as exc:
        raise ConfigError(f"{PROJECT_SCHEMA_FILE}: not a valid JSON Schema ({exc}); fix and commit it") from None
    return schema
