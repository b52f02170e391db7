"""Tables: Table 3-shaped data (3 games x 4 architectures x 5 seeds) with the expected
cells computed independently here, every aggregate, every format, and the CLI."""

from __future__ import annotations

import csv
import io
import json
import random
import statistics

import pytest

from expman.cli import main
from expman.results import load_runs
from expman.results.export import render
from expman.results.table import build_table

from .results_helpers import make_run, scalars, write_events

GAMES = ["Breakout", "Pong", "Seaquest"]
NETWORKS = ["cnn", "impala", "lstm", "mlp"]
SEEDS = [1, 9, 17, 25, 33]


@pytest.fixture
def table3(runs_root):
    """Runs of every game x network x seed; returns {(network, game): [eval.mean per seed]}."""
    rng = random.Random(3)
    expected: dict[tuple[str, str], list[float]] = {}
    for game in GAMES:
        for network in NETWORKS:
            for seed in SEEDS:
                score = rng.uniform(0, 1000)
                config = {"model": {"network": network}, "train": {"env_name": game, "train_seed": seed}}
                config["expman"] = {"command": ["python3", "train.py"]}
                run = make_run(runs_root, config, {"eval": {"mean": score, "episodes": [score - 1, score + 1]}})
                write_events(run / "output" / "tb", scalars("eprewmean", range(20), lambda s, v=score: v + s))
                expected.setdefault((network, game), []).append(score)
    make_run(runs_root, config, {"eval": {"mean": 1e9}}, status="failed")  # never in a default table
    return expected


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_table3_cells_are_mean_and_sample_std_over_seeds(runs_root, table3, capsys):
    args = ["table", "--rows", "model.network", "--cols", "train.env_name", "--value", "eval.mean"]
    code, out, _ = run_cli(capsys, *args, "--format", "csv")
    assert code == 0
    cells = list(csv.DictReader(io.StringIO(out)))
    assert len(cells) == 12
    for cell in cells:
        scores = table3[(cell["model.network"], cell["train.env_name"])]
        assert float(cell["center"]) == pytest.approx(statistics.mean(scores), rel=1e-12)
        assert float(cell["spread"]) == pytest.approx(statistics.stdev(scores), rel=1e-12)
        assert cell["n"] == "5"


def test_default_grouping_is_every_varying_key_but_seeds(runs_root, table3):
    model = build_table(load_runs(runs_root, status="succeeded"))
    assert model.row_keys == ["config.model.network", "config.train.env_name"]
    assert model.value == "results.eval.mean"  # the first numeric result
    assert len(model.rows) == 12 and all(c.n == 5 for c in model.cells.values())


def test_a_varying_key_left_out_is_added_to_the_rows_not_mixed(runs_root):
    for lr in (0.1, 0.01):
        for seed in (1, 2):
            make_run(runs_root, {"net": "cnn", "lr": lr, "seed": seed}, {"score": lr * 10 + seed})
    model = build_table(load_runs(runs_root), cols=["net"], value="score")
    assert model.row_keys == ["config.lr"]
    assert model.cell((0.01,), ("cnn",)).center == pytest.approx(1.6)
    pooled = build_table(load_runs(runs_root), cols=["net"], value="score", pool=["lr"])
    assert pooled.row_keys == [] and pooled.cell((), ("cnn",)).n == 4


@pytest.mark.parametrize(
    "agg, expect",
    [
        ("mean±std", lambda v: (statistics.mean(v), statistics.stdev(v))),
        ("mean±sem", lambda v: (statistics.mean(v), statistics.stdev(v) / len(v) ** 0.5)),
        ("median", lambda v: (statistics.median(v), None)),
        ("min", lambda v: (min(v), None)),
        ("max", lambda v: (max(v), None)),
        ("last", lambda v: (v[-1], None)),
        ("count", lambda v: (len(v), None)),
    ],
)
def test_aggregates(runs_root, table3, agg, expect):
    model = build_table(load_runs(runs_root, status="succeeded"), ["network"], ["env_name"], "eval.mean", agg)
    for (network, game), scores in table3.items():
        cell = model.cell((network,), (game,))
        center, spread = expect(scores)
        assert cell.center == pytest.approx(center, rel=1e-12)
        assert cell.spread == (pytest.approx(spread, rel=1e-12) if spread is not None else None)


def test_latex_booktabs_pm_best_bold_caption(runs_root, table3, capsys):
    code, out, _ = run_cli(
        capsys,
        "table",
        "--rows",
        "network",
        "--cols",
        "env_name",
        "--value",
        "eval.mean",
        "--format",
        "latex",
        "--best",
        "max",
        "--caption",
        "Scores & more_stuff",
    )
    assert code == 0
    assert "\\toprule" in out and "\\midrule" in out and "\\bottomrule" in out
    assert "\\caption{Scores \\& more\\_stuff; eval.mean, mean$\\pm$std; n = 5 per cell}" in out
    assert out.count("$\\pm$") >= 12
    for game in GAMES:
        best = max(NETWORKS, key=lambda n: statistics.mean(table3[(n, game)]))
        col = GAMES.index(game)
        row = next(line for line in out.splitlines() if line.startswith(best + " &"))
        assert row.split(" & ")[1 + col].startswith("\\textbf{")
    bold_rows = [line for line in out.splitlines() if "\\textbf" in line]
    assert sum(line.count("\\textbf") for line in bold_rows) == 3


def test_significant_digits_follow_the_spread(runs_root):
    for seed, score in enumerate([0.91234, 0.91534, 0.90934]):
        make_run(runs_root, {"net": "a", "seed": seed}, {"acc": score, "big": 12345.678 + seed * 300})
    frame = load_runs(runs_root)
    text = render(build_table(frame, value="acc"), "markdown")
    assert "0.9123 ± 0.0030" in text
    assert "12646 ± 300" in render(build_table(frame, value="big"), "markdown")


def test_missing_cells_show_a_dash_never_a_crash(runs_root, capsys):
    make_run(runs_root, {"net": "cnn", "game": "Pong"}, {"score": 1.0})
    make_run(runs_root, {"net": "mlp", "game": "Breakout"}, {"score": 2.0})
    make_run(runs_root, {"net": "mlp", "game": "Pong"}, {"other": 1})
    make_run(runs_root, {"net": "rnn", "game": "Pong"})
    for fmt in ("rich", "markdown", "html"):
        code, out, _ = run_cli(capsys, "table", "--rows", "net", "--cols", "game", "--value", "score", "--format", fmt)
        assert code == 0 and "—" in out
    code, out, _ = run_cli(capsys, "table", "--rows", "net", "--cols", "game", "--value", "score", "--format", "latex")
    assert "---" in out
    code, out, _ = run_cli(capsys, "table", "--rows", "net", "--cols", "game", "--value", "score", "--format", "json")
    cells = json.loads(out)["cells"]
    assert {(c["net"], c["game"]): c["center"] for c in cells}[("cnn", "Breakout")] is None


def test_a_scalar_as_the_value(runs_root, table3, capsys):
    code, out, _ = run_cli(
        capsys, "table", "--rows", "network", "--cols", "env_name", "--value", "tb:eprewmean:last", "--format", "csv"
    )
    assert code == 0
    for cell in csv.DictReader(io.StringIO(out)):
        scores = table3[(cell["model.network"], cell["train.env_name"])]
        assert float(cell["center"]) == pytest.approx(statistics.mean(scores) + 19)
    args = ["table", "--cols", "env_name", "--value", "tb:tb/eprewmean:mean_last_5", "--format", "csv"]
    code, out, _ = run_cli(capsys, *args)
    assert code == 0 and len(list(csv.DictReader(io.StringIO(out)))) == 12


def test_where_status_commit_branch(runs_root, capsys):
    make_run(runs_root, {"net": "a", "lr": 0.1}, {"score": 1.0}, commit="1" * 40)
    make_run(runs_root, {"net": "a", "lr": 0.2}, {"score": 3.0}, commit="2" * 40, branch="exp2")
    make_run(runs_root, {"net": "a", "lr": 0.3}, {"score": 5.0}, status="failed")
    base = ["table", "--cols", "net", "--value", "score", "--pool", "lr", "--format", "csv"]

    def center(*extra: str) -> float:
        code, out, err = run_cli(capsys, *base, *extra)
        assert code == 0, err
        return float(next(csv.DictReader(io.StringIO(out)))["center"])

    assert center() == 2.0
    assert center("--status", "succeeded", "--status", "failed") == 3.0
    assert center("--commit", "2222") == 3.0
    assert center("--branch", "experiments") == 1.0
    assert center("--where", "lr>0.15") == 3.0
    assert center("--where", "lr!=0.2") == 1.0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--value", "nope"], "no column 'nope'"),
        (["--rows", "train.envname"], "did you mean"),
        (["--value", "tb:missing:last"], "no scalar 'missing'"),
        (["--value", "tb:eprewmean:median"], "unknown scalar statistic 'median'"),
        (["--agg", "mode"], "--agg 'mode'"),
        (["--where", "nonsense"], "--where 'nonsense'"),
        (["--commit", "ffff"], "no runs under"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(runs_root, table3, capsys, args, message):
    code, out, err = run_cli(capsys, "table", *args)
    assert code == 2 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1


def test_ambiguous_names_must_be_written_out(runs_root, capsys):
    make_run(runs_root, {"a": {"lr": 1}, "b": {"lr": 2}}, {"score": 1.0})
    code, _, err = run_cli(capsys, "table", "--rows", "lr")
    assert code == 2 and "'config.a.lr' or 'config.b.lr'" in err


def test_list_shows_columns_and_partial_runs(runs_root, table3, capsys):
    broken = make_run(runs_root, {"net": "x"})
    (broken / "output" / "results.json").write_text("{")
    code, out, err = run_cli(capsys, "table", "--list")
    assert code == 0 and "results.eval.mean" in out and "tb:tb/eprewmean:mean_last_10" in out
    assert f"partial: {broken.name}: results.json: invalid JSON" in out
    code, out, err = run_cli(capsys, "table", "--cols", "env_name", "--value", "eval.mean", "--format", "markdown")
    assert code == 0 and "1 run(s) had damaged files" in err


def test_output_file(runs_root, table3, tmp_path, capsys):
    target = tmp_path / "table.tex"
    code, out, _ = run_cli(capsys, "table", "--format", "latex", "-o", str(target))
    assert code == 0 and out == "" and target.read_text().startswith("\\begin{table}")
