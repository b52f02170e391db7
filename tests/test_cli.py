"""The command line as a new user meets it: help, suggestions, completion, -C."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from expman import errors
from expman.cli import main

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
    assert set(out.split()) == {"submit", "sweep", "schedule", "status", "sync", "show"}


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


def test_config_errors_reach_the_user_in_one_line(make_repo, capsys):
    repo = make_repo({"resources": {"timeout": "5 hours"}})
    assert main(["sweep", "-C", str(repo.path)]) == errors.ConfigError.exit_code
    err = capsys.readouterr().err
    assert "resources.timeout: '5 hours' is not a duration (examples: 90s, 30m, 6h, 2d)" in err
    assert err.count("\n") == 1
