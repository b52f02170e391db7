"""load_runs / load_scalars on run directories made directly: results.json, stdout
metrics, scalars, damaged input, filters and the cache."""

from __future__ import annotations

import math
import multiprocessing
import os

import numpy as np
import pytest

from expman.errors import ConfigError, UsageError
from expman.results import load_runs, load_scalars, read_results, read_run_scalars
from expman.results import rows as loader_module
from expman.results.cache import CACHE_DIR
from expman.results.flatten import flatten_config, flatten_results
from expman.results.rows import UNCACHED_BYTES

from .results_helpers import make_run, scalars, write_events

CONFIG = {"expman": {"command": ["python3", "train.py"]}, "train": {"lr": 0.1, "seed": 1}}


def test_nested_results_are_flattened_with_nan_infinity_and_list_summaries(runs_root):
    text = '{"eval": {"mean": NaN, "best": Infinity, "scores": [1, 2, 3, 4.5]}, "name": "x", "ok": true,'
    text += ' "per_env": [{"env": "Pong", "r": 3}], "final": {"deep": {"er": -1e-3}}}'
    run = make_run(runs_root, CONFIG, text)
    row = load_runs(runs_root).iloc[0]
    assert math.isnan(row["results.eval.mean"]) and row["results.eval.best"] == math.inf
    assert row["results.eval.scores.mean"] == pytest.approx(2.625)
    assert row["results.eval.scores.std"] == pytest.approx(np.std([1, 2, 3, 4.5], ddof=1))
    assert row["results.eval.scores.n"] == 4
    assert row["results.per_env.0.env"] == "Pong" and row["results.final.deep.er"] == -1e-3
    assert row["config.train.lr"] == 0.1 and row["config.expman.command"] == '["python3","train.py"]'
    raw = read_results(run / "output" / "results.json")
    assert raw.lists["eval.scores"].tolist() == [1, 2, 3, 4.5]


@pytest.mark.parametrize("bad", ['{"eval": {"mean": 1.', "not json", "\xff\xfe"])
def test_invalid_results_flag_that_run_and_load_the_others(runs_root, bad):
    make_run(runs_root, CONFIG, {"eval": {"mean": 1.0}})
    broken = make_run(runs_root, CONFIG)
    (broken / "output" / "results.json").write_bytes(bad.encode("latin-1"))
    frame = load_runs(runs_root)
    assert frame["partial"].tolist() == [False, True]
    assert "results.json" in frame["problems"][1]
    assert frame["results.eval.mean"][0] == 1.0 and frame["results.eval.mean"].isna()[1]


def test_metrics_parsed_from_stdout(runs_root):
    config = dict(
        CONFIG,
        expman={
            "command": ["x"],
            "parse": {
                "test_acc": "Test accuracy: (@float@)",
                "epochs": r"epoch (@int@)",
                "loss": r"loss=([0-9.]+)",
                "timing": r"took (?P<seconds>@float@)s for (?P<items>@int@) items",
            },
        },
    )
    stdout = "epoch 1\nloss=0.5\nepoch 2\nloss=0.25\nTest accuracy: 9.5e-1\ntook 3.5s for 100 items\n"
    make_run(runs_root, config, {"test_acc": 0.5}, stdout=stdout)
    row = load_runs(runs_root).iloc[0]
    assert row["results.test_acc"] == 0.5  # results.json wins over stdout
    assert row["results.epochs"] == 2 and row["results.loss"] == 0.25
    assert row["results.timing.seconds"] == 3.5 and row["results.timing.items"] == 100
    override = load_runs(runs_root, parse={"acc": "Test accuracy: (@float@)"}).iloc[0]
    assert override["results.acc"] == 0.95 and "results.epochs" not in override
    with pytest.raises(ConfigError, match="not a regular expression"):
        load_runs(runs_root, parse={"bad": "(unclosed"})


def test_scalars_long_frame_and_summaries(runs_root):
    for seed in range(3):
        run = make_run(runs_root, dict(CONFIG, train={"seed": seed}))
        write_events(run / "output" / "tb", scalars("eprewmean", range(100), lambda s, k=seed: s + k))
        write_events(run / "output" / "tb" / "eval", scalars("acc", range(5)))
    frame = load_scalars(runs_root, tags="eprewmean")
    assert list(frame.columns) == ["run_id", "tag", "step", "wall_time", "value"]
    assert len(frame) == 300 and set(frame["tag"]) == {"tb/eprewmean"}
    assert frame.groupby("run_id", observed=True)["value"].last().tolist() == [99, 100, 101]
    assert len(load_scalars(runs_root)) == 315
    assert len(load_scalars(runs_root, tags="tb/eval/*")) == 15
    row = load_runs(runs_root).iloc[2]
    assert row["tb:tb/eprewmean:last"] == 101 and row["tb:tb/eprewmean:max"] == 101
    assert row["tb:tb/eprewmean:min"] == 2 and row["tb:tb/eprewmean:mean_last_10"] == pytest.approx(96.5)
    custom = load_runs(runs_root, scalar_stats=["mean_last_3"]).iloc[0]
    assert custom["tb:tb/eprewmean:mean_last_3"] == 98


def test_a_damaged_event_file_flags_the_run_partial(runs_root):
    run = make_run(runs_root, CONFIG, {"a": 1})
    path = write_events(run / "output", scalars("x", range(20)))
    path.write_bytes(path.read_bytes()[:-10])
    row = load_runs(runs_root).iloc[0]
    assert bool(row["partial"]) and "truncated record" in row["problems"]
    assert row["tb:x:last"] == 9.0  # step 18 of 0..19: the last record is cut
    assert len(load_scalars(runs_root)) == 19


def test_filters(runs_root):
    make_run(runs_root, {"train": {"lr": 0.1, "env": "Pong"}}, {"score": 1}, commit="abc" + "0" * 37)
    make_run(runs_root, {"train": {"lr": 0.01, "env": "Pong"}}, {"score": 2}, branch="other")
    make_run(runs_root, {"train": {"lr": 0.001, "env": "Breakout"}}, {"score": 3}, status="failed")
    assert len(load_runs(runs_root)) == 3
    assert load_runs(runs_root, status="succeeded")["results.score"].tolist() == [1, 2]
    assert load_runs(runs_root, commit="abc")["results.score"].tolist() == [1]
    assert load_runs(runs_root, branch="other")["results.score"].tolist() == [2]
    assert load_runs(runs_root, where=["train.lr<0.05"])["results.score"].tolist() == [2, 3]
    assert load_runs(runs_root, where=["train.env!=Pong"])["results.score"].tolist() == [3]
    assert load_runs(runs_root, where=["score>=2", "env=Pong"])["results.score"].tolist() == [2]
    assert load_runs(runs_root, **{"train.lr": 0.1})["results.score"].tolist() == [1]
    with pytest.raises(UsageError, match="no column 'train.l'"):
        load_runs(runs_root, where=["train.l=1"])


def test_the_cache_reparses_only_what_changed(runs_root, monkeypatch):
    runs = []
    for seed in range(4):
        run = make_run(runs_root, dict(CONFIG, train={"seed": seed}), {"score": seed})
        write_events(run / "output", scalars("x", range(10)))
        runs.append(run)
    first_rows, first_points = load_runs(runs_root), load_scalars(runs_root)
    assert (runs_root / CACHE_DIR).is_dir()
    parsed = []
    real = loader_module.read_run_scalars
    monkeypatch.setattr(loader_module, "read_run_scalars", lambda *a, **k: parsed.append(a[0]) or real(*a, **k))
    real_results = loader_module.read_results
    monkeypatch.setattr(loader_module, "read_results", lambda p: parsed.append(p) or real_results(p))
    assert load_runs(runs_root).equals(first_rows)
    assert load_scalars(runs_root).equals(first_points)
    assert parsed == []
    write_events(runs[2] / "output", scalars("x", range(10, 15)))  # the run goes on
    (runs[3] / "output" / "results.json").write_text('{"score": 42}')
    os.utime(runs[3] / "output" / "results.json", ns=(1, 1))  # a new size is enough, even with an old mtime
    rows, points = load_runs(runs_root), load_scalars(runs_root)
    assert rows["results.score"].tolist() == [0, 1, 2, 42]
    assert rows["tb:x:last"].tolist() == [4.5, 4.5, 7.0, 4.5]
    assert len(points) == 45
    # only the two changed runs are read again, each whole (a run's row is one index entry)
    changed = {runs[2] / "output", runs[2] / "output" / "results.json", runs[3] / "output" / "results.json"}
    changed.add(runs[3] / "output")
    assert set(parsed) == changed


def test_small_runs_are_parsed_afresh_and_big_ones_cached(runs_root):
    """Rows the runs index does not keep (a statistic other than the default ones, here)
    are made from the files, with the results cache."""
    small = make_run(runs_root, CONFIG, {"score": 1})
    big = make_run(runs_root, CONFIG, {"score": 2, "notes": "x" * UNCACHED_BYTES})
    odd = ("mean_last_3",)
    assert load_runs(runs_root, scalar_stats=odd)["results.score"].tolist() == [1, 2]
    entries = [p.name for p in (runs_root / CACHE_DIR).rglob("*.row")]
    assert entries == [f"{big.name}.row"], entries
    assert load_runs(runs_root, scalar_stats=odd)["results.score"].tolist() == [1, 2]
    assert not [p for p in (runs_root / CACHE_DIR).rglob("*") if p.name.startswith(small.name)]


def _load_in_child(root, queue):
    frame = load_scalars(root)
    queue.put((len(frame), float(frame["value"].sum())))


def test_concurrent_readers_share_the_cache(runs_root):
    for seed in range(6):
        run = make_run(runs_root, dict(CONFIG, train={"seed": seed}))
        write_events(run / "output", scalars("x", range(2000), lambda s, k=seed: s * k))
    expected = (12000, float(sum(s * k for k in range(6) for s in range(2000))))
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    children = [ctx.Process(target=_load_in_child, args=(runs_root, queue)) for _ in range(8)]
    for child in children:
        child.start()
    results = [queue.get(timeout=60) for _ in children]
    for child in children:
        child.join(10)
        assert child.exitcode == 0
    assert results == [expected] * 8
    assert not [p for p in (runs_root / CACHE_DIR).rglob("*.tmp")]


def test_an_unwritable_cache_just_means_no_cache(runs_root):
    run = make_run(runs_root, CONFIG, {"score": 1})
    write_events(run / "output", scalars("x", range(10)))
    (runs_root / CACHE_DIR).write_text("in the way")  # mkdir fails here, even for root
    assert load_runs(runs_root)["tb:x:last"].tolist() == [4.5]
    assert load_scalars(runs_root)["value"].tolist() == [s * 0.5 for s in range(10)]


def test_disabled_cache_writes_nothing(runs_root):
    run = make_run(runs_root, CONFIG, {"score": 1})
    write_events(run / "output", scalars("x", range(10)))
    load_runs(runs_root, cache=False)
    load_scalars(runs_root, cache=False)
    assert not (runs_root / CACHE_DIR).exists()


def test_unknown_keep_mode_is_a_usage_error(runs_root):
    with pytest.raises(UsageError, match="keep='newest'"):
        load_scalars(runs_root, keep="newest")


def test_no_runs_give_empty_frames(runs_root):
    runs_root.mkdir()
    assert load_runs(runs_root).empty and load_scalars(runs_root).empty


@pytest.mark.parametrize("load", [load_runs, load_scalars])
def test_a_missing_runs_root_is_a_usage_error_naming_it(runs_root, load):
    with pytest.raises(UsageError) as exc:
        load(runs_root)
    assert str(runs_root) in exc.value.message and "\n" not in exc.value.message


def test_the_public_api_takes_str_paths_too(runs_root):
    run = make_run(runs_root, CONFIG, {"eval": {"scores": [1, 2]}})
    write_events(run / "output", scalars("x", range(10)))
    assert read_results(str(run / "output" / "results.json")).values["eval.scores.n"] == 2
    assert read_run_scalars(str(run / "output")).keys == ["x"]
    assert load_runs(str(runs_root))["tb:x:last"].tolist() == [4.5]
    assert len(load_scalars(str(runs_root))) == 10


def deep_json(depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


# orjson reads all JSON but NaN and Infinity; a NaN before the deep part sends the file to the stdlib parser
@pytest.mark.parametrize("before", ["", '"nan": NaN, '], ids=["orjson", "stdlib json"])
def test_results_nested_deeper_than_the_recursion_limit_flag_only_that_run(runs_root, before):
    make_run(runs_root, CONFIG, {"score": 1})
    make_run(runs_root, CONFIG, '{"score": 2, ' + before + '"deep": ' + deep_json(100_000) + "}")
    make_run(runs_root, CONFIG, {"score": 3})
    frame = load_runs(runs_root)
    assert frame["results.score"].tolist()[::2] == [1, 3] and frame["partial"].tolist() == [False, True, False]
    assert "results.json: nested deeper than" in frame["problems"][1]


def test_flattening_has_no_depth_limit(runs_root):
    run = make_run(runs_root, CONFIG, deep_json(1020))  # orjson reads 1,024 levels; flattening must not recurse
    assert read_results(run / "output" / "results.json").values == {".".join(["a"] * 1020): 1}
    node: dict = {"leaf": [1, 2]}
    for _ in range(100_000):
        node = {"a": node}
    flat = flatten_config(node)
    assert list(flat.values()) == ["[1,2]"] and next(iter(flat)).endswith("a.a.leaf")
    assert flatten_results(node).values[".".join(["a"] * 100_000) + ".leaf.n"] == 2


def test_a_deep_config_flags_nothing_and_keeps_the_others(runs_root):
    deep = make_run(runs_root, CONFIG, {"score": 2})
    (deep / "config.json").write_text(deep_json(100_000))
    make_run(runs_root, CONFIG, {"score": 3})
    assert load_runs(runs_root)["results.score"].tolist() == [2, 3]
