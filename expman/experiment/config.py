"""Load and validate config.json: the experiment's parameters plus its "expman" section.

The file is read from a commit (never the work tree), validated against the JSON Schema
shipped in the package, and turned into typed, frozen settings with defaults. Errors name
the JSON path of the bad value and what was expected.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import signal
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import ConfigError
from .patterns import compile_patterns
from .search import parse_search
from .sweep import expand_sweep

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
    "allow_export_attributes": False,
    "remote": "origin",
    "dockerfile": "Dockerfile",
    "image": None,
    "resources": {},
    "parse": {},
    "host": None,
    "hosts": {},
    "slurm": {},
    "sweep": {},
    "search": {},
    "queue": {},
    "checkpoint": None,
}
RESOURCE_DEFAULTS: dict[str, Any] = {
    "gpus": 0,
    "cpus": None,
    "memory": None,
    "timeout": None,
    "stop_signal": "TERM",
    "kill_grace": "30s",
}
HOST_DEFAULTS: dict[str, Any] = {
    "ssh": None,
    "runs_root": "~/expman-runs",
    "identity_file": None,
    "docker": None,
    "known_hosts": "~/.ssh/known_hosts",
}
SLURM_DEFAULTS: dict[str, Any] = {
    "partition": None,
    "time": None,
    "gres": None,
    "cpus_per_task": None,
    "mem": None,
    "account": None,
    "qos": None,
    "extra": {},
    "array_throttle": None,
    "signal": "USR1@60",
    "requeue": False,
    "runtime": "docker",
}

QUEUE_DEFAULTS: dict[str, Any] = {"max_attempts": 3, "backoff": "30s", "lease": "2m", "priority": 0}
CHECKPOINT_DEFAULTS: dict[str, Any] = {"paths": None, "interval": "5m", "max_mb": 100}

# Each "pattern" of schema/expman.schema.json as a user reads it: what the value should be,
# with examples, instead of the regular expression jsonschema would print.
DURATION_MESSAGE = "is not a duration (examples: 90s, 30m, 6h, 2d)"
MEMORY_MESSAGE = "is not a memory size (examples: 512m, 4g, 1.5g, 2gib, or a number of bytes)"
PATTERN_MESSAGES: dict[str, str] = {
    r"^([0-9]+(\.[0-9]+)?[dhms]\s*)+$": DURATION_MESSAGE,
    r"^[0-9]+(\.[0-9]+)?\s*([bkmgt]|[kmgt]i?b)?$": MEMORY_MESSAGE,
    r"^([0-9]+-)?[0-9]+(:[0-9]+){0,2}$": "is not a Slurm time (examples: 90 minutes as 90, 1:30:00, 2-00:00:00)",
    r"^[0-9]+[KMGT]?$": "is not a Slurm memory size (examples: 16G, 512M, 4096 for megabytes)",
    r"^(SIG)?[A-Z0-9]+(@[0-9]+)?$": "is not a signal (examples: USR1, SIGTERM, USR1@120 for 120 s before the limit)",
    r"^(SIG)?[A-Z][A-Z0-9]*$": "is not a signal name (examples: TERM, INT, USR1)",
    r"^[^\s]+$": "is not one word (sbatch values hold no spaces or newlines)",
    r"^[a-z][a-z0-9-]*$": "is not an sbatch option name (lowercase, without dashes in front: constraint, mail-type)",
    r"^[a-z0-9]+([._/-][a-z0-9]+)*$": "is not a Docker image name (lowercase, digits, . _ / -: expman/my-project)",
    r"^[A-Za-z0-9][A-Za-z0-9._-]*$": "is not a host name (letters, digits, . _ -, first a letter or digit: gpu1)",
    r"^(~/|/)[A-Za-z0-9._/+=,@~-]*$": (
        "is not an absolute path or one under ~/ (examples: /data/runs, ~/expman-runs; no spaces or quotes)"
    ),
    r"^(unix|tcp|fd)://[A-Za-z0-9._/:@+=-]+$": (
        "is not a Docker engine URL (examples: unix:///run/user/1000/docker.sock, tcp://127.0.0.1:2375)"
    ),
    r"^[^.\s]+(\.[^.\s]+)*$": "is not a dotted config key (examples: train.lr, model.layers; no spaces or empty parts)",
    r"^(?!/)(?!(.*/)?\.\.(/|$))(?![./]*$).+$": (
        "is not a path inside the output directory (examples: ckpt/, model.pt; not absolute, no '..')"
    ),
}

_MEMORY_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_DURATION_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


@dataclass(frozen=True)
class Resources:
    gpus: int = 0
    cpus: float | None = None
    memory_bytes: int | None = None
    timeout_s: float | None = None
    stop_signal: str = "TERM"  # asks the program to stop (timeout, cancel); SIGKILL follows after kill_grace_s
    kill_grace_s: float = 30.0


@dataclass(frozen=True)
class HostSettings:
    """One entry of "hosts": where the ssh backend runs, and how to reach it."""

    name: str
    user: str | None
    hostname: str
    port: int
    runs_root: str
    identity_file: str | None = None
    docker: str | None = None
    known_hosts: str = "~/.ssh/known_hosts"

    @property
    def target(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.hostname}:{self.port}"


@dataclass(frozen=True)
class SlurmSettings:
    """The "slurm" section: sbatch options and how the job runs on its node."""

    partition: str | None = None
    time: str | None = None
    gres: str | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    account: str | None = None
    qos: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    array_throttle: int | None = None
    signal: str = "USR1@60"
    requeue: bool = False
    runtime: str = "docker"

    @property
    def time_limit_s(self) -> float | None:
        return parse_slurm_time(self.time) if self.time else None


@dataclass(frozen=True)
class QueueSettings:
    """The "queue" section: how scheduled jobs are claimed and retried."""

    max_attempts: int = 3
    backoff_s: float = 30.0
    lease_s: float = 120.0
    priority: int = 0


@dataclass(frozen=True)
class CheckpointSettings:
    """The "checkpoint" section: which paths of the output are snapshotted, and how often."""

    paths: tuple[str, ...]
    interval_s: float = 300.0
    max_bytes: int = 100 * 2**20

    def record_fields(self) -> dict[str, Any]:
        """What every supervisor of the run needs, as the run record holds it."""
        return {"paths": list(self.paths), "interval_s": self.interval_s, "max_bytes": self.max_bytes}


@dataclass(frozen=True)
class ExpmanSettings:
    """The validated "expman" section, defaults filled in."""

    command: tuple[str, ...]
    branch: str = "experiments"
    backend: str = "local"
    runs_root: str | None = None
    allow_untracked: bool = False
    require_pushed: bool = False
    allow_export_attributes: bool = False
    remote: str = "origin"
    dockerfile: str = "Dockerfile"
    image: str | None = None
    resources: Resources = field(default_factory=Resources)
    parse: dict[str, str] = field(default_factory=dict)
    host: str | None = None
    hosts: dict[str, HostSettings] = field(default_factory=dict)
    slurm: SlurmSettings = field(default_factory=SlurmSettings)
    sweep: dict[str, Any] = field(default_factory=dict)
    search: dict[str, Any] = field(default_factory=dict)  # parsed by experiment.search when searched
    queue: QueueSettings = field(default_factory=QueueSettings)
    checkpoint: CheckpointSettings | None = None

    def host_settings(self, name: str | None) -> HostSettings:
        """The named host, else "host", else the only one defined."""
        chosen = name or self.host or (next(iter(self.hosts)) if len(self.hosts) == 1 else None)
        if chosen is None:
            hint = f"one of: {', '.join(self.hosts)}" if self.hosts else 'first add "hosts" to the expman section'
            raise ConfigError(f"the ssh backend needs a host; pass --host ({hint}) or set expman.host")
        if chosen not in self.hosts:
            known = ", ".join(self.hosts) or "none defined"
            raise ConfigError(f"no host {chosen!r} in expman.hosts (defined: {known}); add it to config.json")
        return self.hosts[chosen]


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole config.json: the raw document and its parsed "expman" section."""

    document: dict[str, Any]
    settings: ExpmanSettings

    @cached_property
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
        raise ConfigError(f"expman.resources.memory: {value!r} {MEMORY_MESSAGE}")
    number, unit = match.groups()
    return int(float(number) * _MEMORY_UNITS[unit])


def parse_duration(value: float | str, where: str = "expman.resources.timeout") -> float:
    """'6h', '1h30m', '90s', '2d', 3600 -> seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    parts = re.findall(r"([0-9]+(?:\.[0-9]+)?)([dhms])", value.replace(" ", ""))
    if not parts or "".join(n + u for n, u in parts) != value.replace(" ", ""):
        raise ConfigError(f"{where}: {value!r} {DURATION_MESSAGE}")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def signal_number(name: str, where: str = "expman.resources.stop_signal") -> signal.Signals:
    """'TERM', 'SIGTERM' -> signal.SIGTERM."""
    full = "SIG" + name.removeprefix("SIG")
    if full not in signal.Signals.__members__:
        raise ConfigError(f"{where}: {name!r} is not a signal; write e.g. TERM, INT or USR1")
    return signal.Signals[full]


def parse_slurm_time(value: str) -> float:
    """Slurm's --time forms: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S -> seconds."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", value.strip())
    if not match:
        raise ConfigError(f'expman.slurm.time: {value!r} is not a Slurm time; write e.g. "2-00:00:00" or "90"')
    days, first, second, third = match.groups()
    if days is not None:  # D-H[:M[:S]]
        h, m, sec = int(first), int(second or 0), int(third or 0)
        return float(int(days) * 86400 + h * 3600 + m * 60 + sec)
    if third is not None:  # H:M:S
        return float(int(first) * 3600 + int(second) * 60 + int(third))
    return float(int(first) * 60 + int(second or 0))  # M[:S]


def parse_ssh_target(value: str, where: str) -> tuple[str | None, str, int]:
    """'alice@gpu1:2222' -> ('alice', 'gpu1', 2222); user and port are optional."""
    match = re.fullmatch(r"(?:([A-Za-z0-9._][A-Za-z0-9._-]*)@)?([A-Za-z0-9._-]+|\[[0-9a-fA-F:]+\])(?::(\d+))?", value)
    if not match:
        raise ConfigError(f'{where}: {value!r} is not an SSH target; write "user@host" or "user@host:port"')
    user, host, port = match.groups()
    return user, host.strip("[]"), int(port or 22)


def load_config(text: bytes | str, origin: str, project_schema: bytes | None = None) -> ExperimentConfig:
    """Parse and validate config.json text; ``origin`` names where it came from in errors."""
    try:
        document = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{origin}: invalid JSON ({exc}); fix the file and commit it") from None
    return config_from(document, origin, project_schema)


def config_from(document: Any, origin: str, project_schema: bytes | None = None) -> ExperimentConfig:
    """Validate a parsed config.json (a run's effective config, say)."""
    if not isinstance(document, dict):
        raise ConfigError(f"{origin}: the top level must be a JSON object")
    section = document.get(SECTION)
    if not isinstance(section, dict):
        raise ConfigError(f'{origin}: no "{SECTION}" object; add one with at least "command": [...]')
    _check_known_keys(section, DEFAULTS, f"{origin}: {SECTION}")
    _check_known_keys(section.get("resources") or {}, RESOURCE_DEFAULTS, f"{origin}: {SECTION}.resources")
    _check_known_keys(section.get("slurm") or {}, SLURM_DEFAULTS, f"{origin}: {SECTION}.slurm")
    _check_known_keys(section.get("queue") or {}, QUEUE_DEFAULTS, f"{origin}: {SECTION}.queue")
    if isinstance(section.get("checkpoint"), dict):
        _check_known_keys(section["checkpoint"], CHECKPOINT_DEFAULTS, f"{origin}: {SECTION}.checkpoint")
    hosts = section.get("hosts")
    for name, host in hosts.items() if isinstance(hosts, dict) else ():
        if isinstance(host, dict):
            _check_known_keys(host, HOST_DEFAULTS, f"{origin}: {SECTION}.hosts.{name}")
    _validate(section, _expman_schema(), f"{origin}: {SECTION}")
    compile_patterns(section.get("parse", {}))
    signal_number(section.get("resources", {}).get("stop_signal", "TERM"))
    if section.get("slurm", {}).get("time"):
        parse_slurm_time(section["slurm"]["time"])
    if section.get("sweep"):
        expand_sweep(document)
    if section.get("search"):
        parse_search(document)  # a space in a file of the commit is checked when the search starts
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
        stop_signal=res.get("stop_signal", RESOURCE_DEFAULTS["stop_signal"]).removeprefix("SIG"),
        kill_grace_s=parse_duration(
            res.get("kill_grace", RESOURCE_DEFAULTS["kill_grace"]), "expman.resources.kill_grace"
        ),
    )
    hosts = {name: _host_from(name, host, f"{SECTION}.hosts.{name}") for name, host in section.get("hosts", {}).items()}
    queue = {**QUEUE_DEFAULTS, **section.get("queue", {})}
    structured = ("command", "resources", "hosts", "slurm", "queue", "checkpoint")
    values = {k: section[k] for k in DEFAULTS if k in section and k not in structured}
    return ExpmanSettings(
        command=tuple(section["command"]),
        resources=resources,
        hosts=hosts,
        slurm=SlurmSettings(**section.get("slurm", {})),
        queue=QueueSettings(
            max_attempts=queue["max_attempts"],
            backoff_s=parse_duration(queue["backoff"], "expman.queue.backoff"),
            lease_s=parse_duration(queue["lease"], "expman.queue.lease"),
            priority=queue["priority"],
        ),
        checkpoint=_checkpoint_from(section["checkpoint"]) if "checkpoint" in section else None,
        **values,
    )


def _checkpoint_from(entry: dict[str, Any]) -> CheckpointSettings:
    given = {**CHECKPOINT_DEFAULTS, **entry}
    return CheckpointSettings(
        paths=tuple(given["paths"]),
        interval_s=parse_duration(given["interval"], "expman.checkpoint.interval"),
        max_bytes=int(given["max_mb"] * 2**20),
    )


def _host_from(name: str, entry: dict[str, Any], where: str) -> HostSettings:
    user, hostname, port = parse_ssh_target(entry["ssh"], f"{where}.ssh")
    options = {k: entry.get(k, default) for k, default in HOST_DEFAULTS.items() if k != "ssh"}
    return HostSettings(name=name, user=user, hostname=hostname, port=port, **options)


def _check_known_keys(section: dict[str, Any], known: dict[str, Any], where: str) -> None:
    unknown = sorted(set(section) - set(known))
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(known), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        valid = ", ".join(f"{k} (default {json.dumps(v)})" for k, v in sorted(known.items()))
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}{hint}; valid keys: {valid}")


def _validate(instance: Any, schema: dict[str, Any], where: str) -> None:
    """Raise a ConfigError naming the first place ``instance`` breaks ``schema``. A document
    found valid is remembered by the hash of both (and expman's version) under the user's
    cache directory: importing the validator alone costs every submit about 0.08 s."""
    known = _validity_mark(instance, schema)
    if known is not None and known.exists():
        return
    import jsonschema  # here, not at the top: commands that only read records start faster

    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(instance))
    if error is not None:
        path = ".".join(str(p) for p in error.absolute_path)
        location = f"{where}.{path}" if path else where
        raise ConfigError(f"{location}: {_in_words(error)}")
    if known is not None:
        try:
            known.parent.mkdir(parents=True, exist_ok=True)
            known.touch()
        except OSError:
            pass  # no cache: the next submit validates again


def _validity_mark(instance: Any, schema: dict[str, Any]) -> Path | None:
    """Where the validity of ``instance`` against ``schema`` is remembered (None: nowhere)."""
    try:
        both = json.dumps([__version__, schema, instance], sort_keys=True, allow_nan=True).encode()
    except (TypeError, ValueError):
        return None
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "expman" / "valid-configs" / hashlib.sha256(both).hexdigest()


def _in_words(error: Any) -> str:
    """jsonschema's message, unless the value broke a pattern (or matched none of the forms
    of a value with a pattern among them): then what the value should be, in words."""
    schema = error.schema if isinstance(error.schema, dict) else {}
    if error.validator not in ("pattern", "oneOf", "anyOf"):
        return str(error.message)
    for form in [schema, *schema.get("oneOf", []), *schema.get("anyOf", [])]:
        message = PATTERN_MESSAGES.get(form.get("pattern", "")) if isinstance(form, dict) else None
        if message:
            return f"{error.instance!r} {message}"
    return str(error.message)


def _expman_schema() -> dict[str, Any]:
    text = importlib_resources.files("expman").joinpath("schema/expman.schema.json").read_text()
    return json.loads(text)


def _load_project_schema(text: bytes) -> dict[str, Any]:
    import jsonschema

    try:
        schema = json.loads(text)
        jsonschema.Draft202012Validator.check_schema(schema)
    except (json.JSONDecodeError, jsonschema.exceptions.SchemaError) as exc:
        raise ConfigError(f"{PROJECT_SCHEMA_FILE}: not a valid JSON Schema ({exc}); fix and commit it") from None
    return schema
