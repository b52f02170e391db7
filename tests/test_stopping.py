"""Stopping a program, on the backends that run it here (a process, a local container):
a timeout asks first (SIGTERM) and kills after the grace; a stop reaches every process of
the program, a wrapper's children included; nothing of the program outlives its run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from expman import errors

from .conftest import only_run, read_record
from .helpers import alive

WRAPPED = ["bash", "run.sh"]


@pytest.fixture(params=["process", "local"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "local":
        request.getfixturevalue("docker_client")
    return str(request.param)


def _submit(repo: Any, runs_root: Path, backend: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """``expman submit`` as its own process, so that a hang fails the test instead of holding it."""
    env = {**os.environ, "EXPMAN_RUNS_ROOT": str(runs_root)}
    argv = [sys.executable, "-m", "expman", "submit", "-C", str(repo.path), "--backend", backend]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout_s)


def _signals(run: Path) -> list[str]:
    path = run / "output" / "signals.txt"
    return path.read_text().split("\n")[:-1] if path.exists() else []


def test_a_timeout_asks_the_program_to_stop_first(backend: str, make_repo: Any, runs_root: Path) -> None:
    resources = {"timeout": "4s", "kill_grace": "60s"}
    repo = make_repo({"command": WRAPPED, "resources": resources}, {"mode": "signals", "seconds": 600})
    done = _submit(repo, runs_root, backend)
    assert done.returncode == errors.RunFailedError.exit_code, done.stderr
    run = only_run(runs_root)
    record = read_record(run)
    assert (record["status"], record["reason"]) == ("failed", "timeout")
    # the program under the wrapper got SIGTERM and ended by itself; the wrapper ended by the
    # SIGTERM too, not by a SIGKILL after the grace
    assert [line.split()[1] for line in _signals(run)] == ["SIGTERM"]
    assert record["exit_code"] == 143


def test_a_program_that_ignores_the_request_is_killed_after_the_grace(
    backend: str, make_repo: Any, runs_root: Path
) -> None:
    resources = {"timeout": "4s", "kill_grace": "2s"}
    job = {"mode": "signals", "seconds": 600, "ignore_term": True}
    repo = make_repo({"command": ["python3", "job.py"], "resources": resources}, job)
    done = _submit(repo, runs_root, backend)
    assert done.returncode == errors.RunFailedError.exit_code, done.stderr
    run = only_run(runs_root)
    record = read_record(run)
    assert (record["status"], record["reason"]) == ("failed", "timeout")
    assert [line.split()[1] for line in _signals(run)] == ["SIGTERM"]
    assert record["exit_code"] == 137  # SIGKILL


def test_no_process_of_the_program_outlives_its_run(backend: str, make_repo: Any, runs_root: Path) -> None:
    """A grandchild in a session of its own that keeps stdout open neither holds the run
    nor survives it."""
    job = {"mode": "signals", "seconds": 0, "grandchild": True}
    repo = make_repo({"command": WRAPPED}, job)
    done = _submit(repo, runs_root, backend)
    assert done.returncode == 0, done.stderr
    run = only_run(runs_root)
    assert read_record(run)["status"] == "succeeded"
    if backend == "process":  # a container's processes are gone with the container
        grandchild = int((run / "output" / "grandchild.pid").read_text())
        assert not alive(grandchild)


def test_a_timeout_is_not_held_up_by_a_grandchild(backend: str, make_repo: Any, runs_root: Path) -> None:
    job = {"mode": "signals", "seconds": 600, "grandchild": True}
    repo = make_repo({"command": WRAPPED, "resources": {"timeout": "1s", "kill_grace": "5s"}}, job)
    done = _submit(repo, runs_root, backend)
    assert done.returncode == errors.RunFailedError.exit_code, done.stderr
    run = only_run(runs_root)
    assert read_record(run)["reason"] == "timeout"
    if backend == "process":
        assert not alive(int((run / "output" / "grandchild.pid").read_text()))
