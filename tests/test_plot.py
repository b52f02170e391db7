"""Plots: the plotted means and sds against values computed here, learning curves over
steps, byte-identical PNG, SVG and PDF files from separate processes (SOURCE_DATE_EPOCH
honoured), and bad input answered in one line."""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from expman.cli import main
from expman.results import load_runs, load_scalars
from expman.results.plotdata import aggregate_curve, aggregate_points

from .results_helpers import make_run, scalar_event, write_events

NETWORKS = ["cnn", "mlp"]
LRS = [0.001, 0.01, 0.1]
ENVS = ["Pong", "Breakout"]
SEEDS = [1, 2, 3, 4]
STEPS = range(0, 40, 10)


@pytest.fixture
def grid(runs_root):
    """Runs of network x lr x env x seed with an accuracy and a loss curve; returns
    {(network, lr, env): ([accuracy per seed], {step: [loss per seed]})}."""
    rng = random.Random(15)
    expected: dict[tuple, tuple[list[float], dict[int, list[float]]]] = {}
    for network in NETWORKS:
        for lr in LRS:
            for env in ENVS:
                for seed in SEEDS:
                    accuracy = rng.uniform(0, 1)
                    config = {"model": {"network": network}, "train": {"lr": lr, "env": env, "seed": seed}}
                    run = make_run(runs_root, config, {"accuracy": accuracy})
                    losses = {step: rng.uniform(0, 10) for step in STEPS}
                    write_events(run / "output" / "tb", [scalar_event("loss", s, v) for s, v in losses.items()])
                    accuracies, curve = expected.setdefault((network, lr, env), ([], {}))
                    accuracies.append(accuracy)
                    for step, value in losses.items():
                        curve.setdefault(step, []).append(value)
    make_run(runs_root, config, {"accuracy": 100.0}, status="failed")  # never plotted by default
    return expected


def test_points_are_mean_and_sample_sd_over_seeds_per_hue_and_x(runs_root, grid):
    points = aggregate_points(load_runs(runs_root, status="succeeded"), "lr", "accuracy", "network")
    # env varies too: it joins the hue, so that no point mixes configurations
    assert points.hue_keys == ["config.model.network", "config.train.env"]
    assert len(points.frame) == len(grid)
    for hue, x, mean, sd, n in points.frame.itertuples(index=False):
        network, env = (part.split("=", 1)[1] for part in hue.split(", "))
        accuracies = grid[(network, x, env)][0]
        assert n == len(SEEDS)
        assert mean == pytest.approx(statistics.mean(accuracies), rel=1e-12)
        assert sd == pytest.approx(statistics.stdev(accuracies), rel=1e-12)


def test_pooling_a_key_puts_its_runs_in_one_point(runs_root, grid):
    points = aggregate_points(load_runs(runs_root, status="succeeded"), "network", "accuracy", None, pool=["env", "lr"])
    assert list(points.frame["x"]) == NETWORKS
    for x, mean, sd, n in points.frame[["x", "mean", "sd", "n"]].itertuples(index=False):
        values = [v for (network, _, _), (accuracies, _) in grid.items() if network == x for v in accuracies]
        assert n == len(values)
        assert (mean, sd) == (pytest.approx(statistics.mean(values)), pytest.approx(statistics.stdev(values)))


def test_curve_is_mean_and_sd_over_seeds_at_each_step(runs_root, grid):
    runs = load_runs(runs_root, status="succeeded", scalar_stats=("last",))
    scalars = load_scalars(runs_root, "loss")
    points = aggregate_curve(runs, scalars, "loss", "network", pool=["env", "lr"])
    assert points.hues == NETWORKS
    for hue, step, mean, sd, n in points.frame.itertuples(index=False):
        values = [v for (network, _, _), (_, curve) in grid.items() if network == hue for v in curve[step]]
        assert n == len(values) == len(SEEDS) * len(LRS) * len(ENVS)
        assert (mean, sd) == (pytest.approx(statistics.mean(values)), pytest.approx(statistics.stdev(values)))
    assert sorted(set(points.frame["x"])) == list(STEPS)


def _plot(tmp_path: Path, name: str, *argv: str, epoch: str | None = None) -> bytes:
    """The file ``expman plot`` writes, from a process of its own."""
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    if epoch is not None:
        env["SOURCE_DATE_EPOCH"] = epoch
    out = tmp_path / name
    code = "import sys; from expman.cli import main; sys.exit(main())"
    proc = subprocess.run([sys.executable, "-c", code, "plot", *argv, "-o", str(out)], env=env, capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()
    return out.read_bytes()


@pytest.mark.parametrize(
    "fmt, argv",
    [
        ("png", ("lines", "--x", "lr", "--y", "accuracy", "--hue", "network", "--err-style", "bars")),
        ("svg", ("bars", "--x", "env", "--y", "accuracy", "--hue", "network", "--pool", "lr")),
        ("pdf", ("heatmap", "--x", "lr", "--y", "network", "--z", "accuracy", "--pool", "env")),
        ("png", ("curve", "--y", "tb:loss", "--hue", "network", "--pool", "env", "--pool", "lr")),
    ],
    ids=["lines-png", "bars-svg", "heatmap-pdf", "curve-png"],
)
def test_the_same_inputs_give_byte_identical_files(runs_root, grid, tmp_path, fmt, argv):
    """Each kind in one format here; the SOURCE_DATE_EPOCH test below covers SVG and PDF of lines."""
    first = _plot(tmp_path, f"a.{fmt}", *argv)
    second = _plot(tmp_path, f"b.{fmt}", *argv)
    assert first == second
    assert first.startswith({"png": b"\x89PNG", "svg": b"<?xml", "pdf": b"%PDF"}[fmt])


def test_source_date_epoch_is_the_date_in_the_files_and_keeps_them_identical(runs_root, grid, tmp_path):
    argv = ("lines", "--x", "lr", "--y", "accuracy")
    svg = _plot(tmp_path, "a.svg", *argv, epoch="1000000000")
    assert svg == _plot(tmp_path, "b.svg", *argv, epoch="1000000000")
    assert b"2001-09-09T01:46:40" in svg
    assert b"<dc:date>" not in _plot(tmp_path, "c.svg", *argv)
    pdf = _plot(tmp_path, "a.pdf", *argv, epoch="1000000000")
    assert pdf == _plot(tmp_path, "b.pdf", *argv, epoch="1000000000")
    assert b"/CreationDate (D:20010909014640Z)" in pdf
    assert b"/CreationDate" not in _plot(tmp_path, "c.pdf", *argv)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["heatmap", "--x", "lr", "--y", "network"], "plot heatmap needs --z"),
        (["lines", "--y", "accuracy"], "plot lines needs --x"),
        (["curve", "--y", "loss"], "name a TensorBoard scalar as tb:TAG"),
        (["curve", "--y", "tb:nope"], "no scalar 'nope'"),
        (["lines", "--x", "lr", "--y", "nope"], "no column 'nope'"),
        (["lines", "--x", "lr", "--y", "accuracy", "-o", "plot.gif"], "name a .png, .svg or .pdf file"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(runs_root, grid, tmp_path, capsys, argv, message):
    if "-o" not in argv:
        argv = [*argv, "-o", str(tmp_path / "p.png")]
    assert main(["plot", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_a_bad_source_date_epoch_is_a_usage_error(runs_root, grid, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    assert main(["plot", "lines", "--x", "lr", "--y", "accuracy", "-o", str(tmp_path / "p.svg")]) == 2
    assert "SOURCE_DATE_EPOCH='yesterday'" in capsys.readouterr().err
