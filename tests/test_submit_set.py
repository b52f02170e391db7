"""``expman submit --set KEY=VALUE``: the change is a commit of its own ("Set KEY = VALUE") on
the experiments branch, and that commit runs; a refusal leaves the branch, the work tree and
the runs root as they were."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from expman import errors
from expman.cli import main
from expman.experiment.jsonedit import set_value

from .conftest import Repo, clean_git_env, read_record, run_dirs

# Hand-formatted as people write config files: 4 spaces, small objects kept on one line.
CONFIG = """{
    "expman": {"command": ["python3", "job.py"], "branch": "experiments"},
    "job": {"mode": "ok"},
    "model": {"network": "cnn", "layers": [32, 64]},
    "train": {
        "lr": 0.1,
        "train_seed": 1,
        "env_name": "Pong"
    }
}
"""
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def submit(repo: Repo, *args: str) -> int:
    return main(["submit", "--backend", "process", "-C", str(repo.path), *args])


def committed_config(repo: Repo, ref: str = "HEAD") -> dict[str, Any]:
    return json.loads(repo.git("show", f"{ref}:config.json"))


def changed_lines(repo: Repo) -> list[str]:
    """The lines the last commit removed and added."""
    diff = repo.git("diff", "--unified=0", "HEAD~1", "HEAD").splitlines()
    return [line for line in diff if line[:1] in "+-" and not line.startswith(("+++", "---"))]


@pytest.fixture
def repo(make_repo: Any) -> Repo:
    made: Repo = make_repo()
    made.commit({"config.json": CONFIG}, "hand-written config")
    return made


def test_set_commits_the_change_and_runs_that_commit(repo, runs_root, capsys):
    before = repo.git("rev-parse", "HEAD")
    assert submit(repo, "--set", "train.lr=0.01") == 0
    head = repo.git("rev-parse", "HEAD")
    assert repo.git("rev-parse", "HEAD~1") == before
    assert repo.git("log", "-1", "--format=%s|%an|%ae|%cn") == (
        "Set train.lr = 0.01|Test Researcher|researcher@example.org|Test Researcher"
    )
    assert repo.git("show", "--format=", "--name-only", "HEAD") == "config.json"
    assert changed_lines(repo) == ['-        "lr": 0.1,', '+        "lr": 0.01,']
    assert repo.git("status", "--porcelain") == ""
    assert f"committed {head[:12]} Set train.lr = 0.01" in capsys.readouterr().err
    (run,) = run_dirs(runs_root)
    record = read_record(run)
    assert record["status"] == "succeeded"
    assert (record["git"]["commit"], record["git"]["subject"]) == (head, "Set train.lr = 0.01")
    assert json.loads((run / "config.json").read_text())["train"]["lr"] == 0.01


def test_values_are_json_when_they_parse_and_strings_otherwise(repo, runs_root):
    sets = {
        "train.lr": ("1e-3", 0.001),
        "train.train_seed": ("7", 7),
        "train.env_name": ("Breakout", "Breakout"),
        "model.network": ('"nature_cnn"', "nature_cnn"),
        "model.layers": ("[64, 64]", [64, 64]),
        "job.mode": ("ok", "ok"),
    }
    new = {"job.verbose": ("true", True), "job.note": ("null", None), "job.digits": ('"123"', "123")}
    args = [a for key, (text, _) in sets.items() for a in ("--set", f"{key}={text}")]
    args += [a for key, (text, _) in new.items() for a in ("--set-new", f"{key}={text}")]
    assert submit(repo, *args) == 0
    labels = [f"{key} = {text}" for key, (text, _) in sets.items()] + [f"{k} = {t}" for k, (t, _) in new.items()]
    assert repo.git("log", "-1", "--format=%s") == "Set " + ", ".join(labels)
    config = committed_config(repo)
    for key, (_, value) in {**sets, **new}.items():
        section, leaf = key.split(".")
        assert config[section][leaf] == value and type(config[section][leaf]) is type(value), key
    effective = json.loads((run_dirs(runs_root)[0] / "config.json").read_text())
    assert effective["job"]["verbose"] is True and effective["train"]["lr"] == 0.001


def test_nested_new_keys_go_in_with_the_file_s_own_indentation(repo, runs_root):
    assert submit(repo, "--set-new", "train.schedule.warmup=100", "--set-new", "model.dropout=0.5") == 0
    config = committed_config(repo)
    assert config["train"]["schedule"] == {"warmup": 100} and config["model"]["dropout"] == 0.5
    assert changed_lines(repo) == [
        '-    "model": {"network": "cnn", "layers": [32, 64]},',
        '+    "model": {"network": "cnn", "layers": [32, 64], "dropout": 0.5},',
        '-        "env_name": "Pong"',
        '+        "env_name": "Pong",',
        '+        "schedule": {"warmup": 100}',
    ]
    subject = read_record(run_dirs(runs_root)[0])["git"]["subject"]
    assert subject == "Set train.schedule.warmup = 100, model.dropout = 0.5"


def test_a_sweep_is_set_through_its_own_key(make_repo, runs_root):
    repo = make_repo(expman={"sweep": {"train.train_seed": [1, 2]}})
    assert submit(repo, "--set", "expman.sweep.train.train_seed=[3, 4, 5]") == 0
    assert committed_config(repo)["expman"]["sweep"] == {"train.train_seed": [3, 4, 5]}
    seeds = sorted(json.loads((run / "config.json").read_text())["train"]["train_seed"] for run in run_dirs(runs_root))
    assert seeds == [3, 4, 5]


def test_a_sweep_over_a_key_without_one_is_added_by_naming_it(repo, runs_root):
    """Every setting of the expman section exists with its default, so no --set-new is needed."""
    assert submit(repo, "--set", 'expman.sweep={"train.train_seed": [1, 2, 3]}') == 0
    assert repo.git("log", "-1", "--format=%s") == 'Set expman.sweep = {"train.train_seed": [1, 2, 3]}'
    assert len(run_dirs(runs_root)) == 3


def test_submit_py_passes_set_through(repo, runs_root):
    shutil.copy(PROJECT_ROOT / "submit.py", repo.path / "submit.py")
    repo.commit(message="add submit.py")
    env = {**clean_git_env(), "PYTHONPATH": str(PROJECT_ROOT), "EXPMAN_RUNS_ROOT": str(runs_root)}
    proc = subprocess.run(
        [sys.executable, "submit.py", "--backend", "process", "--set", "model.network=nature_cnn"],
        cwd=repo.path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert repo.git("log", "-1", "--format=%s") == "Set model.network = nature_cnn"
    assert read_record(run_dirs(runs_root)[0])["git"]["commit"] == repo.git("rev-parse", "HEAD")


def assert_nothing_changed(repo: Repo, runs_root: Path, head: str, capsys: Any, code: int, kind: type, *needles: str):
    err = capsys.readouterr().err.strip()
    assert code == kind.exit_code, err
    assert "\n" not in err and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    assert repo.git("rev-parse", "HEAD") == head
    assert (repo.path / "config.json").read_text() == CONFIG
    assert not runs_root.exists()


@pytest.mark.parametrize(
    ("args", "kind", "needles"),
    [
        (["--set", "train.lrr=0.01"], errors.UsageError, ["no such key", "did you mean 'train.lr'?", "--set-new"]),
        (["--set", "optimizer.lr=0.01"], errors.UsageError, ["no such key", "--set-new"]),
        (["--set", "train.lr.x=1"], errors.UsageError, ["train.lr is the value 0.1, not an object"]),
        (["--set", "train.lr"], errors.UsageError, ["KEY=VALUE"]),
        (["--set", "train..lr=1"], errors.UsageError, ["KEY=VALUE"]),
        (["--set", "train.lr=1", "--set", "train.lr=2"], errors.UsageError, ["train.lr twice"]),
        (["--set", "train.lr=1", "--commit-hash", "HEAD"], errors.UsageError, ["--commit-hash"]),
        (["--set", "train.lr=1", "--dry-run"], errors.UsageError, ["--dry-run"]),
        (["--set", "expman.resources.memory=lots"], errors.ConfigError, ["expman.resources.memory", "'lots'"]),
        (["--set", "expman.sweeps={}"], errors.ConfigError, ["unknown key 'sweeps'", "did you mean 'sweep'?"]),
        (["--set", 'expman.sweep={"train.seed": [1, 2]}'], errors.ConfigError, ["'train.seed' is not in config"]),
        (["--set", "expman.require_pushed=true"], errors.ConfigError, ["require_pushed"]),
    ],
)
def test_refusals_change_nothing(repo, runs_root, capsys, args, kind, needles):
    head = repo.git("rev-parse", "HEAD")
    assert_nothing_changed(repo, runs_root, head, capsys, submit(repo, *args), kind, *needles)


def test_a_swept_key_is_refused_naming_the_sweep(repo, runs_root, capsys):
    swept = CONFIG.replace('"branch": "experiments"', '"branch": "experiments", "sweep": {"train.train_seed": [1, 2]}')
    head = repo.commit({"config.json": swept}, "sweep seeds")
    code = submit(repo, "--set", "train.train_seed=5")
    err = capsys.readouterr().err
    assert code == errors.UsageError.exit_code and "expman.sweep varies this key" in err
    assert repo.git("rev-parse", "HEAD") == head and repo.git("status", "--porcelain") == ""
    assert not runs_root.exists()


def test_dirty_tree_and_wrong_branch_are_refused(repo, runs_root, capsys):
    head = repo.git("rev-parse", "HEAD")
    repo.write({"job.py": "print('edited')\n"})
    code = submit(repo, "--set", "train.lr=0.01")
    assert_nothing_changed(repo, runs_root, head, capsys, code, errors.DirtyTreeError, "job.py")
    repo.git("checkout", "--", "job.py")
    repo.git("checkout", "-q", "-b", "scratch")
    code = submit(repo, "--set", "train.lr=0.01")
    assert_nothing_changed(repo, runs_root, head, capsys, code, errors.WrongBranchError, "'scratch'")


def test_no_git_identity_is_refused_before_the_file_changes(repo, runs_root, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "empty home"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for name in ("EMAIL", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"):
        monkeypatch.delenv(name, raising=False)
    repo.git("config", "--unset", "user.email")
    repo.git("config", "user.useConfigOnly", "true")  # git would otherwise guess one from the host name
    head = repo.git("rev-parse", "HEAD")
    code = submit(repo, "--set", "train.lr=0.01")
    assert_nothing_changed(repo, runs_root, head, capsys, code, errors.IdentityError, "git config --global user.email")


def test_a_failing_commit_hook_leaves_config_json_as_committed(repo, runs_root, capsys):
    hook = repo.path / ".git" / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\necho 'config.json: not today' >&2\nexit 1\n")
    hook.chmod(0o755)
    head = repo.git("rev-parse", "HEAD")
    code = submit(repo, "--set", "train.lr=0.01")
    assert_nothing_changed(repo, runs_root, head, capsys, code, errors.GitError, "not today")
    assert repo.git("status", "--porcelain") == ""


@pytest.mark.parametrize(
    ("text", "path", "value"),
    [
        ("{}", ["a"], 1),
        ('{"a": 1}', ["a"], {"b": [1, 2]}),
        ('{"a": {"b": 1}, "c": 2}', ["a", "b"], "x"),
        ('{"a": {}}', ["a", "b", "c"], None),
        ('{\n\t"a": 1\n}\n', ["b"], "ü"),
        ('{"a": 1, "a": 2}', ["a"], 3),
        ('{"x.y": {"z": 1}}', ["x.y", "z"], 2),
        ('{ "s": "a \\" } { ", "n" : 1e5 }', ["n"], 0.5),
    ],
)
def test_json_edits_set_exactly_one_value(text, path, value):
    expected = json.loads(text)
    node = expected
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    edited = set_value(text, path, value)
    assert json.loads(edited) == expected
    assert edited.startswith(text[:1]) and edited.endswith(text[-1:])


def test_edits_never_reach_a_shell(repo, runs_root):
    value = "$(touch pwned); `touch pwned` 'q\" \n"
    assert submit(repo, "--set", f"train.env_name={value}") == 0
    assert committed_config(repo)["train"]["env_name"] == value
    assert not (repo.path / "pwned").exists() and not Path(os.getcwd(), "pwned").exists()


def test_a_config_json_that_is_not_utf8_is_refused_in_one_line(make_repo, runs_root, capsys):
    repo = make_repo()
    config = (repo.path / "config.json").read_text()
    (repo.path / "config.json").write_bytes(config.encode("utf-16"))  # json reads it; an editor might write it
    head = repo.commit(message="utf-16 config")
    code = submit(repo, "--set", "train.train_seed=2")
    err = capsys.readouterr().err.strip()
    assert code == errors.ConfigError.exit_code and "not UTF-8" in err and "\n" not in err, err
    assert repo.git("rev-parse", "HEAD") == head and repo.git("status", "--porcelain") == ""
