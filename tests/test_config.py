from __future__ import annotations

import json

import pytest

from expman.errors import ConfigError
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
