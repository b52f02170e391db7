from __future__ import annotations

import json
from pathlib import Path

import pytest

from expman.errors import ConfigError
from expman.experiment import config as config_module
from expman.experiment.config import load_config, parse_duration, parse_memory


def load(section: dict, **rest) -> object:
    return load_config(json.dumps({"expman": section, **rest}), "config.json")


def test_defaults_are_filled_in():
    settings = load({"command": ["python", "train.py"]}).settings
    assert settings.branch == "experiments" and settings.backend == "local"
    assert settings.resources.gpus == 0 and settings.resources.timeout_s is None


def test_resources_are_parsed_with_units():
    res = load(
        {"command": ["x"], "resources": {"memory": "4g", "timeout": "1h30m", "cpus": 1.5, "gpus": 2}}
    ).settings.resources
    assert res.memory_bytes == 4 * 1024**3 and res.timeout_s == 5400 and res.cpus == 1.5 and res.gpus == 2


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("2d", 172800), ("6h", 21600), (30, 30)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"), [("512m", 512 * 2**20), ("2GiB", 2 * 2**30), (10**8, 10**8), ("1.5g", int(1.5 * 2**30))]
)
def test_memory_sizes(text, size):
    assert parse_memory(text) == size


def test_unknown_key_lists_every_valid_key_with_default():
    with pytest.raises(ConfigError) as exc:
        load({"command": ["x"], "brnach": "main"})
    assert "'brnach'" in exc.value.message and 'branch (default "experiments")' in exc.value.message


@pytest.mark.parametrize(
    ("section", "path"),
    [
        ({}, "'command' is a required property"),
        ({"command": "python train.py"}, "expman.command"),
        ({"command": ["x"], "resources": {"memory": "lots"}}, "expman.resources.memory"),
        ({"command": ["x"], "resources": {"gpus": -1}}, "expman.resources.gpus"),
        ({"command": ["x"], "backend": "cloud"}, "expman.backend"),
    ],
)
def test_errors_name_the_json_path(section, path):
    with pytest.raises(ConfigError) as exc:
        load(section)
    assert path in exc.value.message and "\n" not in exc.value.message


def test_invalid_json_says_where():
    with pytest.raises(ConfigError, match="config.json: invalid JSON .*line 1"):
        load_config('{"expman": ', "config.json")


def test_project_schema_validates_the_rest():
    schema = json.dumps({"type": "object", "properties": {"train": {"properties": {"lr": {"type": "number"}}}}})
    with pytest.raises(ConfigError, match=r"config.json.train.lr: 'fast' is not of type 'number'"):
        load_config(json.dumps({"expman": {"command": ["x"]}, "train": {"lr": "fast"}}), "config.json", schema.encode())


def test_config_hash_ignores_key_order():
    a = load({"command": ["x"]}, model={"a": 1, "b": 2})
    b = load_config('{"model": {"b": 2, "a": 1}, "expman": {"command": ["x"]}}', "config.json")
    assert a.config_hash == b.config_hash


def test_parse_patterns_are_checked_when_the_config_loads():
    good = load_config(json.dumps({"expman": {"command": ["x"], "parse": {"acc": "acc: (@float@)"}}}), "config.json")
    assert good.settings.parse == {"acc": "acc: (@float@)"}
    with pytest.raises(ConfigError, match=r"expman.parse.acc: '\(@float@' is not a regular expression"):
        load_config(json.dumps({"expman": {"command": ["x"], "parse": {"acc": "(@float@"}}}), "config.json")
    with pytest.raises(ConfigError, match="parse"):
        load_config(json.dumps({"expman": {"command": ["x"], "parse": {"acc": 3}}}), "config.json")


def test_an_unknown_key_gets_a_suggestion_and_still_the_valid_keys():
    with pytest.raises(ConfigError) as exc:
        load({"command": ["x"], "resources": {"timout": "1h"}})
    message = exc.value.message
    assert "unknown key 'timout' (did you mean 'timeout'?)" in message and "gpus (default 0)" in message


def _patterns(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["pattern"]] if isinstance(node.get("pattern"), str) else []
        return found + [p for value in node.values() for p in _patterns(value)]
    if isinstance(node, list):
        return [p for value in node for p in _patterns(value)]
    return []


def test_every_pattern_of_the_schema_has_a_human_message():
    schema = json.loads((Path(config_module.__file__).parents[1] / "schema" / "expman.schema.json").read_text())
    patterns = _patterns(schema)
    assert len(patterns) >= 10
    assert sorted(set(patterns) - set(config_module.PATTERN_MESSAGES)) == []


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"resources": {"timeout": "5 hours"}}, "expman.resources.timeout: '5 hours' is not a duration (examples: "),
        ({"resources": {"timeout": True}}, "expman.resources.timeout: True is not a duration"),
        ({"queue": {"lease": "2 minutes"}}, "expman.queue.lease: '2 minutes' is not a duration"),
        ({"resources": {"memory": "lots"}}, "expman.resources.memory: 'lots' is not a memory size"),
        ({"resources": {"memory": [4]}}, "expman.resources.memory: [4] is not a memory size"),
        ({"slurm": {"time": "2 days"}}, "expman.slurm.time: '2 days' is not a Slurm time"),
        ({"slurm": {"mem": "16GB"}}, "expman.slurm.mem: '16GB' is not a Slurm memory size"),
        ({"slurm": {"signal": "usr1"}}, "expman.slurm.signal: 'usr1' is not a signal"),
        ({"slurm": {"partition": "a b"}}, "expman.slurm.partition: 'a b' is not one word"),
        ({"slurm": {"extra": {"Constraint": "x"}}}, "expman.slurm.extra: 'Constraint' is not an sbatch option name"),
        ({"image": "My/Image"}, "expman.image: 'My/Image' is not a Docker image name"),
        ({"hosts": {"-gpu": {"ssh": "a@b"}}}, "expman.hosts: '-gpu' is not a host name"),
        ({"hosts": {"gpu": {"ssh": "a@b", "runs_root": "runs"}}}, "expman.hosts.gpu.runs_root: 'runs' is not an abs"),
        ({"hosts": {"gpu": {"ssh": "a@b", "docker": "http://x"}}}, "expman.hosts.gpu.docker: 'http://x' is not a Dock"),
        ({"sweep": {"a..b": [1]}}, "expman.sweep: 'a..b' is not a dotted config key"),
    ],
)
def test_config_errors_speak_the_users_language(section, expected):
    with pytest.raises(ConfigError) as exc:
        load({"command": ["x"], **section})
    message = exc.value.message
    assert expected in message and "does not match" not in message and "^" not in message, message
    assert "\n" not in message


def test_the_duration_message_in_full():
    with pytest.raises(ConfigError) as exc:
        load({"command": ["x"], "resources": {"timeout": "5 hours"}})
    assert exc.value.message.endswith(
        "expman.resources.timeout: '5 hours' is not a duration (examples: 90s, 30m, 6h, 2d)"
    )
