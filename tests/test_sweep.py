"""Sweep expansion (grids, ranges, log ranges, zip groups, repeats) and job keys."""

from __future__ import annotations

import json
from typing import Any

import pytest

from expman.cli import main
from expman.errors import ConfigError
from expman.experiment.config import hash_config
from expman.experiment.sweep import effective_config, expand_sweep
from expman.submit.schedule import job_key

DOC = {
    "expman": {"command": ["x"]},
    "model": {"neurons": 1, "act": "relu", "prep": "fast"},
    "train": {"lr": 0.1, "seed": 1},
}


def expand(sweep: dict[str, Any]) -> list[Any]:
    return expand_sweep({**DOC, "expman": {"command": ["x"], "sweep": sweep}})


def test_the_patas_readme_grid_is_3000_tasks() -> None:
    combos = expand(
        {
            "model.neurons": {"start": 1, "stop": 51, "step": 2},
            "model.prep": ["fast", "medium", "intense"],
            "model.act": ["relu", "leaky_relu", "sigmoid", "tanh"],
            "repeat": 10,
        }
    )
    assert len(combos) == 3000
    assert combos[0].values == {"model.neurons": 1, "model.prep": "fast", "model.act": "relu"}
    assert combos[1].values["model.act"] == "leaky_relu"  # the last key varies fastest
    assert combos[299].values == {"model.neurons": 49, "model.prep": "intense", "model.act": "tanh"}
    assert (combos[299].repeat, combos[300].repeat, combos[300].values) == (0, 1, combos[0].values)  # repeats slowest
    assert combos[300].label == "model.neurons=1 model.prep='fast' model.act='relu' #1"
    assert [c.index for c in combos] == list(range(3000))


def test_effective_configs_set_their_values_and_leave_the_document_alone() -> None:
    document = {**DOC, "expman": {"command": ["x"], "sweep": {"model.neurons": [2, 3], "model.act": ["tanh"]}}}
    before = json.dumps(document, sort_keys=True)
    configs = [effective_config(document, c) for c in expand_sweep(document)]
    assert [c["model"] for c in configs] == [
        {"neurons": 2, "act": "tanh", "prep": "fast"},
        {"neurons": 3, "act": "tanh", "prep": "fast"},
    ]
    assert all(c["expman"] == {"command": ["x"]} and c["train"] == DOC["train"] for c in configs)
    assert json.dumps(document, sort_keys=True) == before


def test_ranges_are_exact() -> None:
    assert [c.values["train.lr"] for c in expand({"train.lr": {"start": 0.1, "stop": 0.5, "step": 0.1}})] == [
        0.1,
        0.2,
        0.3,
        0.4,
    ]
    assert [c.values["train.seed"] for c in expand({"train.seed": {"start": 5, "stop": 0, "step": -2}})] == [5, 3, 1]
    log = expand({"train.lr": {"start": 1e-5, "stop": 1e-1, "num": 5, "log": True}})
    assert [c.values["train.lr"] for c in log] == [1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    linear = expand({"train.lr": {"start": 0, "stop": 1, "num": 3}})
    assert [c.values["train.lr"] for c in linear] == [0.0, 0.5, 1.0]


def test_zip_groups_vary_together() -> None:
    combos = expand({"zip": [{"train.seed": [1, 2, 3], "train.lr": [0.1, 0.2, 0.3]}], "model.act": ["a", "b"]})
    assert [(c.values["train.seed"], c.values["train.lr"], c.values["model.act"]) for c in combos] == [
        (1, 0.1, "a"),
        (1, 0.1, "b"),
        (2, 0.2, "a"),
        (2, 0.2, "b"),
        (3, 0.3, "a"),
        (3, 0.3, "b"),
    ]


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ({"train.lr": {"start": 1, "stop": 5}}, 'one of "step" or "num"'),
        ({"train.lr": {"start": 1, "stop": 5, "step": 0}}, "step is 0"),
        ({"train.lr": {"start": 5, "stop": 1, "step": 1}}, "holds no values"),
        ({"train.lr": {"start": 0, "stop": 1, "num": 3, "log": True}}, "positive start and stop"),
        ({"train.lr": {"start": "a", "stop": 1, "step": 1}}, "numeric"),
        ({"zip": [{"train.seed": [1, 2], "train.lr": [0.1]}]}, "lists of one length"),
        ({"zip": [{"train.seed": [1, 2]}], "train.seed": [3]}, "varied twice"),
        ({"repeat": 0}, "not a positive integer"),
        ({"train.nope": [1]}, "not in config.json"),
        ({"train.lr": []}, "the list is empty"),
    ],
)
def test_bad_sweeps_name_the_problem(sweep: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        expand(sweep)


def test_job_keys_ignore_key_order_and_number_spelling() -> None:
    commit = "a" * 40
    first = json.loads('{"train": {"lr": 0.1, "seed": 1}, "model": {"act": "relu"}}')
    same = json.loads('{"model": {"act": "relu"}, "train": {"seed": 1, "lr": 1e-1}}')
    assert job_key(commit, hash_config(first), 0) == job_key(commit, hash_config(same), 0)
    assert job_key(commit, hash_config(first), 0) != job_key(commit, hash_config(first), 1)  # another repeat
    assert job_key(commit, hash_config(first), 0) != job_key("b" * 40, hash_config(first), 0)  # other code
    as_text = json.loads('{"train": {"lr": "0.1", "seed": 1}, "model": {"act": "relu"}}')
    assert job_key(commit, hash_config(first), 0) != job_key(
        commit, hash_config(as_text), 0
    )  # a string is not a number
    as_float = json.loads('{"train": {"lr": 0.1, "seed": 1.0}, "model": {"act": "relu"}}')
    assert job_key(commit, hash_config(first), 0) != job_key(commit, hash_config(as_float), 0)  # nor is 1.0 the int 1


def test_sweep_show_prints_every_combination(make_repo: Any, capsys: Any) -> None:
    repo = make_repo({"sweep": {"train.train_seed": {"start": 1, "stop": 4, "step": 1}, "repeat": 2}})
    assert main(["sweep", "--show", "-C", str(repo.path), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["values"]["train.train_seed"], r["repeat"]) for r in rows] == [
        (1, 0),
        (2, 0),
        (3, 0),
        (1, 1),
        (2, 1),
        (3, 1),
    ]
    assert main(["sweep", "--show", "-C", str(repo.path)]) == 0
    assert "6 combinations" in capsys.readouterr().out


def test_a_sweep_of_one_combination_runs_that_combination(make_repo: Any, runs_root: Any) -> None:
    """Fault 1: a one-value sweep must run the swept value, and the record says it was swept."""
    repo = make_repo({"backend": "process", "sweep": {"train.train_seed": [7]}})
    assert main(["submit", "-C", str(repo.path)]) == 0
    (run,) = [p for p in runs_root.iterdir() if (p / "run.json").exists()]
    assert json.loads((run / "config.json").read_text())["train"]["train_seed"] == 7
    record = json.loads((run / "run.json").read_text())
    assert record["sweep"]["values"] == {"train.train_seed": 7} and record["sweep"]["count"] == 1


def test_duplicate_combinations_collapse_before_anything_is_created() -> None:
    """Fault 3: equal values (0.1 and 1e-1; dicts in other key orders) are one combination."""
    combos = expand({"train.lr": json.loads("[0.1, 1e-1, 0.2]"), "model.act": [{"a": 1, "b": 2}, {"b": 2, "a": 1}]})
    assert [c.values for c in combos] == [
        {"train.lr": 0.1, "model.act": {"a": 1, "b": 2}},
        {"train.lr": 0.2, "model.act": {"a": 1, "b": 2}},
    ]
    assert [c.index for c in combos] == [0, 1]
    ints_and_floats = expand({"train.seed": [1, 1.0, True]})
    assert [c.values["train.seed"] for c in ints_and_floats] == [1, 1.0, True]  # different to the program


def test_scheduling_duplicates_leaves_no_run_queued_forever(
    make_repo: Any, runs_root: Any, tmp_path: Any, capsys: Any
) -> None:
    url = f"sqlite://{tmp_path / 'q.sqlite'}"
    sweep = {"train.train_seed": json.loads("[0.1, 1e-1, 0.2, 2e-1]"), "repeat": 2}
    repo = make_repo({"backend": "process", "sweep": sweep})
    assert main(["schedule", "-C", str(repo.path), "--queue", url]) == 0
    out = capsys.readouterr()
    assert "4 runs scheduled" in out.out and "duplicate" in out.err
    runs = [p for p in runs_root.iterdir() if (p / "run.json").exists()]
    assert len(runs) == 4
    assert main(["worker", "--queue", url]) == 0
    assert {json.loads((p / "run.json").read_text())["status"] for p in runs} == {"succeeded"}


def test_a_decimal_range_never_includes_its_stop() -> None:
    values = [c.values["train.lr"] for c in expand({"train.lr": {"start": 1, "stop": 2.2, "step": 0.2}})]
    assert values == [1.0, 1.2, 1.4, 1.6, 1.8, 2.0]
