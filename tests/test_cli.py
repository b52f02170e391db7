"""The command line as a new user meets it: help, suggestions, completion, -C, plain output
for scripts, and what runs, show, logs and sweep --show print."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from expman import errors
from expman.cli import main
from expman.cli.main import build_parser
from expman.rundir import lifecycle
from expman.rundir.layout import RunDir, utc_now

from .conftest import Repo, read_record
from .helpers import submit
from .results_helpers import make_run

SUBJECT = "Wider layers and a longer warm-up for the Atari runs of table three"


@pytest.fixture
def three_runs(make_repo: Any, runs_root: Path) -> tuple[Repo, list[Path]]:
    """Three real process-backend runs of a sweep over train.train_seed, oldest first."""
    repo = make_repo(
        {"backend": "process", "parse": {"version": "code version (@int@)"}, "sweep": {"train.train_seed": [1, 2, 3]}}
    )
    repo.commit(message=SUBJECT)
    assert submit(repo.path) == 0
    runs = [p for p in runs_root.iterdir() if not p.name.startswith(".")]
    assert len(runs) == 3
    # in sweep order: runs made within one millisecond sort by the random end of their ids
    return repo, sorted(runs, key=lambda run: json.loads((run / "run.json").read_text())["sweep"]["index"])


def run_cli(console: Console, *argv: str) -> int:
    args = build_parser().parse_args(list(argv))
    args.argv = list(argv)
    return int(args.handler(args, console))


def narrow_console(width: int = 100) -> Console:
    return Console(file=io.StringIO(), width=width, height=50, highlight=False, color_system=None)


# --- finding one's way ------------------------------------------------------------------


def test_expman_alone_prints_the_help(capsys):
    assert main([]) == errors.UsageError.exit_code
    out = capsys.readouterr().out
    assert out.startswith("usage: expman") and "submit" in out and "table" in out


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (["sumbit"], "did you mean 'submit'?"),
        (["runs", "--stauts", "failed"], "did you mean --status?"),
        (["runs", "--format", "jsno"], "did you mean 'json'?"),
        (["table", "--rwos", "a"], "did you mean --rows?"),
    ],
)
def test_unknown_commands_options_and_choices_get_suggestions(argv, hint, capsys, tmp_path):
    assert main(argv) == errors.UsageError.exit_code
    err = capsys.readouterr().err
    assert hint in err and err.count("\n") == 1, err


def test_debug_with_a_usage_error_prints_the_one_line(capsys):
    assert main(["--debug", "runs", "--bogus"]) == errors.UsageError.exit_code
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and "--bogus" in err


@pytest.mark.parametrize(("shell", "marker"), [("bash", "complete -o"), ("zsh", "#compdef expman")])
def test_completion_scripts_for_bash_and_zsh(shell, marker, capsys):
    assert main(["completion", shell]) == 0
    script = capsys.readouterr().out
    assert marker in script and "submit" in script and "--runs-root" in script


def test_bash_completion_completes_subcommands(tmp_path, capsys):
    bash = shutil.which("bash")
    assert bash is not None
    assert main(["completion", "bash"]) == 0
    (tmp_path / "expman.bash").write_text(capsys.readouterr().out)
    probe = (
        f"source {json.dumps(str(tmp_path / 'expman.bash'))}; COMP_WORDS=(expman s); COMP_CWORD=1; "
        'COMP_LINE="expman s"; COMP_POINT=${#COMP_LINE}; _shtab_expman; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    out = subprocess.run([bash, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert set(out.split()) == {"submit", "sweep", "schedule", "search", "status", "sync", "show"}


def test_global_dash_c_as_git_does(make_repo, tmp_path, monkeypatch, capsys):
    repo = make_repo({"backend": "process", "runs_root": "../runs of the repo"})
    monkeypatch.delenv("EXPMAN_RUNS_ROOT", raising=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["-C", str(repo.path), "submit"]) == 0
    capsys.readouterr()
    assert main(["-C", str(repo.path), "runs", "--format", "json"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert Path.cwd() == elsewhere  # main gives the working directory back
    assert main(["-C", str(repo.path.parent), "show", "-C", repo.path.name, "--format", "path"]) == 0
    shown = Path(capsys.readouterr().out.strip())
    assert shown.resolve() == (repo.path.parent / "runs of the repo" / record["run_id"]).resolve()
    assert main(["-C", str(tmp_path / "nowhere"), "runs"]) == errors.UsageError.exit_code
    assert "nowhere" in capsys.readouterr().err


# --- output for scripts -----------------------------------------------------------------


def test_runs_as_json_is_plain_and_cheap(three_runs, runs_root, capsys):
    _, runs = three_runs
    for copy in range(200):
        target = runs_root / f"20991231-000000-{copy:03d}-copy"
        shutil.copytree(runs[0], target, symlinks=True)
        record = read_record(target)
        (target / "run.json").write_text(json.dumps({**record, "run_id": target.name}))
    assert main(["runs", "--offline"]) == 0  # the runs index is built (its cost: benchmarks/scale.py)
    capsys.readouterr()
    tracemalloc.start()
    try:
        assert main(["runs", "--format", "json", "--offline"]) == 0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    out = capsys.readouterr().out
    listed = json.loads(out)
    assert len(listed) == 203 and listed[-1]["run_id"] == runs[0].name
    # rich's pretty-printer held hundreds of bytes per byte of output; plain JSON a few
    assert peak < 10 * len(out), (peak, len(out))


def test_messages_to_a_pipe_are_not_wrapped(runs_root, capsys):
    make_run(runs_root, {"train": {"lr": 0.1}}, {"score": 1})
    make_run(runs_root, {"train": {"lr": 0.2}}, '{"score": 2')  # damaged
    assert main(["table", "--value", "score", "--format", "csv"]) == 0
    note = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert len(note) == 1 and note[0].endswith("'expman table --list' names them") and len(note[0]) > 80


# --- expman runs ------------------------------------------------------------------------


def test_runs_where_and_limit(three_runs, capsys):
    _, runs = three_runs
    assert main(["runs", "--where", "train_seed>=2", "--format", "json"]) == 0
    assert [r["run_id"] for r in json.loads(capsys.readouterr().out)] == [runs[2].name, runs[1].name]
    assert main(["runs", "--where", "results.accuracy=0.9", "--where", "train_seed=1", "--format", "json"]) == 0
    assert [r["run_id"] for r in json.loads(capsys.readouterr().out)] == [runs[0].name]
    assert main(["runs", "--limit", "2", "--format", "json"]) == 0
    assert [r["run_id"] for r in json.loads(capsys.readouterr().out)] == [runs[2].name, runs[1].name]
    assert main(["runs"]) == 0  # piped: every run
    out = capsys.readouterr().out
    assert all(run.name in out for run in runs) and "more" not in out
    assert main(["runs", "--where", "train_sed=1"]) == errors.UsageError.exit_code
    assert "did you mean" in capsys.readouterr().err


def test_runs_on_a_terminal_shows_a_screenful(three_runs, runs_root):
    _, runs = three_runs
    for copy in range(40):
        shutil.copytree(runs[0], runs_root / f"20991231-000000-{copy:03d}-copy", symlinks=True)
    console = Console(file=io.StringIO(), width=160, height=20, force_terminal=True, color_system=None)
    assert run_cli(console, "runs", "--offline") == 0
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert 5 <= out.count("succeeded") < 20 and "more" in out and "--limit" in out


def test_the_subject_stays_readable_at_100_columns(three_runs):
    console = narrow_console(100)
    assert run_cli(console, "runs", "--offline") == 0
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert max(len(line) for line in out.splitlines()) <= 100
    assert SUBJECT[:14] in out, out


# --- expman show, logs ------------------------------------------------------------------


def test_show_has_the_config_and_results_and_no_container_rows_for_process_runs(three_runs):
    _, runs = three_runs
    console = narrow_console(160)
    assert run_cli(console, "show", runs[1].name) == 0
    out = console.file.getvalue()  # type: ignore[attr-defined]
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert rows["train.train_seed"] == ["2"] and rows["job.mode"] == ["ok"]
    assert rows["accuracy"] == ["0.9"] and rows["version"] == ["1"]  # results.json and parsed stdout
    assert "container" not in rows and "image" not in rows and "pid" in rows


def test_logs_defaults_to_the_newest_run(three_runs, capfd):
    _, runs = three_runs
    (runs[2] / "logs" / "stdout.log").write_text("the newest\n")
    capfd.readouterr()
    assert main(["logs"]) == 0
    assert capfd.readouterr().out == "the newest\n"


def test_logs_of_each_attempt(three_runs, capfd):
    _, runs = three_runs
    run = RunDir(runs[0])
    (run.logs / "stdout.log").write_text("first attempt\n")
    lifecycle.begin_attempt(run, utc_now(), number=1)
    (run.logs / "stdout.log").write_text("still the first\n")
    lifecycle.begin_attempt(run, utc_now())
    (run.logs / "stdout.log").write_text("second attempt\n")
    assert (run.attempt_logs(1) / "stdout.log").read_text() == "still the first\n"
    capfd.readouterr()
    assert main(["logs", run.run_id, "--attempt", "1", "--stream", "stdout"]) == 0
    assert capfd.readouterr().out == "still the first\n"
    assert main(["logs", run.run_id, "--stream", "stdout"]) == 0
    assert capfd.readouterr().out == "second attempt\n"
    assert main(["logs", run.run_id, "--attempt", "2", "--stream", "stdout"]) == 0
    assert capfd.readouterr().out == "second attempt\n"
    assert main(["logs", run.run_id, "--attempt", "3"]) == errors.UsageError.exit_code
    err = capfd.readouterr().err
    assert "attempts 1, 2" in err and err.count("\n") == 1


# --- sweep --show -----------------------------------------------------------------------


def test_sweep_show_of_a_huge_sweep_prints_the_count_and_the_first_rows(make_repo, capsys):
    values = list(range(100))
    repo = make_repo({"sweep": {"a.x": values, "a.y": values, "a.z": list(range(30))}})
    config = json.loads((repo.path / "config.json").read_text())
    repo.commit({"config.json": json.dumps({**config, "a": {"x": 0, "y": 0, "z": 0}})}, "a huge sweep")
    assert main(["sweep", "--show", "-C", str(repo.path)]) == 0
    out = capsys.readouterr().out
    assert "300000 combinations" in out.replace(",", "") and "299,980 more" in out and "--format json" in out
    assert len(out.splitlines()) < 40
    assert main(["sweep", "--show", "-C", str(repo.path), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 300_000 and rows[-1]["values"] == {"a.x": 99, "a.y": 99, "a.z": 29}


def test_config_errors_reach_the_user_in_one_line(make_repo, capsys):
    repo = make_repo({"resources": {"timeout": "5 hours"}})
    assert main(["sweep", "-C", str(repo.path)]) == errors.ConfigError.exit_code
    err = capsys.readouterr().err
    assert "resources.timeout: '5 hours' is not a duration (examples: 90s, 30m, 6h, 2d)" in err
    assert err.count("\n") == 1


def test_errors_to_a_pipe_ignore_columns(three_runs):
    env = {**os.environ, "COLUMNS": "40"}
    proc = subprocess.run(
        [sys.executable, "-m", "expman", "runs", "--offline", "--where", "no_such_key_anywhere_at_all=1"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == errors.UsageError.exit_code
    assert len(proc.stderr.splitlines()) == 1, proc.stderr


def test_tags_are_in_runs_in_sql_and_in_where(three_runs, capsys):
    _, runs = three_runs
    assert main(["tag", runs[1].name, "paper=fig2", "stage=final"]) == 0
    assert main(["note", runs[1].name, "the good one"]) == 0
    capsys.readouterr()
    assert main(["runs", "--offline", "--limit", "0"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if runs[1].name in line]
    assert len(lines) == 1 and "paper=fig2 stage=final" in lines[0]
    assert main(["runs", "--offline", "--format", "json"]) == 0
    listed = {r["run_id"]: r for r in json.loads(capsys.readouterr().out)}
    assert listed[runs[1].name]["tags"] == {"paper": "fig2", "stage": "final"} and "tags" not in listed[runs[0].name]
    sql = "SELECT run_id, notes FROM runs WHERE \"tag.paper\" = 'fig2'"
    assert main(["query", sql, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"run_id": runs[1].name, "notes": "the good one"}]
    assert main(["runs", "--offline", "--where", "tag.stage=final", "--format", "json"]) == 0
    assert [r["run_id"] for r in json.loads(capsys.readouterr().out)] == [runs[1].name]
