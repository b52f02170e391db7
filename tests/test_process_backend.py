"""The process backend: same run directory and record, no container."""

from __future__ import annotations

import json
import os

from expman import errors
from expman.cli import main

from .conftest import only_run, read_record
from .helpers import alive, cancel_with_ctrl_c, submit, wait_for_status


def test_successful_run_record_and_outputs(make_repo, runs_root, capfd):
    repo = make_repo()
    assert submit(repo.path, "--backend", "process") == 0
    run = only_run(runs_root)
    record = read_record(run)
    assert record["status"] == "succeeded" and record["exit_code"] == 0 and record["reason"] is None
    assert record["backend"] == "process" and record["container_id"] is None and record["pid"] > 0
    assert record["git"]["commit"] == repo.git("rev-parse", "HEAD")
    assert record["peak_memory_bytes"] > 0 and record["duration_s"] >= 0
    results = json.loads((run / "output" / "results.json").read_text())
    # ran from the extracted archive, not the work tree; shared by the commit's runs
    assert results["cwd"] == str((run / "code").resolve())
    copy = (run / "code").resolve()
    assert copy.parent == runs_root / ".expman-code" and copy.name.startswith(record["git"]["commit"])
    assert "code version 1" in (run / "logs" / "stdout.log").read_text()
    assert "a line on stderr" in (run / "logs" / "stderr.log").read_text()
    assert "code version 1" in capfd.readouterr().out  # followed on the terminal


def test_failing_program_is_recorded_failed(make_repo, runs_root, capsys):
    repo = make_repo(job={"mode": "fail"})
    assert submit(repo.path, "--backend", "process") == errors.RunFailedError.exit_code
    record = read_record(only_run(runs_root))
    assert record["status"] == "failed" and record["exit_code"] == 3 and record["reason"] == "exit code 3"


def test_timeout_kills_and_records_reason(make_repo, runs_root):
    repo = make_repo(expman={"resources": {"timeout": "1s"}}, job={"mode": "sleep", "seconds": 60})
    assert submit(repo.path, "--backend", "process") == errors.RunFailedError.exit_code
    record = read_record(only_run(runs_root))
    assert record["status"] == "failed" and record["reason"] == "timeout" and record["duration_s"] < 30


def test_ctrl_c_cancels(make_repo, runs_root):
    repo = make_repo(job={"mode": "sleep", "seconds": 60})
    code, record = cancel_with_ctrl_c(repo.path, runs_root, "--backend", "process")
    assert code == errors.RunCancelledError.exit_code
    assert record["status"] == "cancelled" and record["duration_s"] < 30


def test_detach_then_logs_and_runs(make_repo, runs_root, capsys):
    repo = make_repo(job={"mode": "sleep", "seconds": 1})
    assert submit(repo.path, "--backend", "process", "--detach") == 0
    assert "logs" in capsys.readouterr().out
    run_id = only_run(runs_root).name
    assert main(["logs", run_id[:15], "--follow"]) == 0
    assert "code version 1" in capsys.readouterr().out
    assert wait_for_status(runs_root, {"succeeded"})["status"] == "succeeded"
    assert main(["runs", "--format", "json", "--status", "succeeded"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in listed] == [run_id]
    assert main(["runs", "--format", "json", "--status", "failed"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["runs", "--commit", repo.git("rev-parse", "HEAD")[:8]]) == 0
    assert run_id in capsys.readouterr().out
    assert main(["show", run_id[:17]]) == 0
    assert "succeeded" in capsys.readouterr().out


def test_unknown_run_is_a_clear_error(runs_root, capsys):
    assert main(["show", "nope"]) == errors.RunNotFoundError.exit_code
    assert "expman runs" in capsys.readouterr().err


def test_a_run_cancelled_while_it_waits_in_a_sweep_never_starts(make_repo, runs_root):
    """``expman cancel`` of a run that a foreground sweep has not reached yet: the sweep
    passes it over, and its record stays cancelled."""
    import os
    import subprocess
    import sys
    import time

    repo = make_repo({"backend": "process", "sweep": {"train.train_seed": [1, 2]}}, {"mode": "sleep", "seconds": 3})
    env = {**os.environ, "EXPMAN_RUNS_ROOT": str(runs_root)}
    argv = [sys.executable, "-m", "expman", "submit", "-C", str(repo.path)]
    follower = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len([r for r in _records(runs_root) if r["status"] == "running"]) < 1:
        assert time.monotonic() < deadline and follower.poll() is None, "the first run never started"
        time.sleep(0.1)
    (waiting,) = [r for r in _records(runs_root) if r["status"] == "queued"]
    assert main(["cancel", waiting["run_id"]]) == 0
    follower.communicate(timeout=120)
    statuses = {r["run_id"]: r["status"] for r in _records(runs_root)}
    assert statuses[waiting["run_id"]] == "cancelled" and list(statuses.values()).count("succeeded") == 1
    assert not (runs_root / waiting["run_id"] / "logs" / "stdout.log").exists()


def test_cancelling_a_run_followed_on_another_host_is_refused_there(make_repo, runs_root, capsys):
    repo = make_repo(job={"mode": "sleep", "seconds": 60})
    assert submit(repo.path, "--backend", "process", "--detach") == 0
    run = only_run(runs_root)
    record = read_record(run)
    pid = record["supervisor"]["pid"]
    record["supervisor"]["host"] = "elsewhere"  # as if followed on another machine
    (run / "run.json").write_text(json.dumps(record))
    capsys.readouterr()
    assert main(["cancel", run.name]) == errors.UsageError.exit_code
    assert "on elsewhere" in capsys.readouterr().err
    assert read_record(run)["status"] == "running" and alive(pid)  # nothing here was signalled
    record["supervisor"]["host"] = os.uname().nodename
    (run / "run.json").write_text(json.dumps(record))
    assert main(["cancel", run.name]) == 0
    assert read_record(run)["status"] == "cancelled"


def _records(root):
    return [read_record(p) for p in root.iterdir() if (p / "run.json").exists()] if root.exists() else []
