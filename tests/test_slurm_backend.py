"""The slurm backend against a real one-node cluster (slurmctld, slurmd, munged on this host)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from expman.backends.slurm import render_sbatch
from expman.cli import main
from expman.experiment.config import SlurmSettings
from expman.results import load_runs

GOLDEN = Path(__file__).parent / "golden" / "sbatch_array.sh"


def test_sbatch_script_matches_the_golden_file():
    settings = SlurmSettings(
        partition="gpu",
        time="2-00:00:00",
        gres="gpu:1",
        cpus_per_task=4,
        mem="16G",
        account="lab",
        qos="normal",
        extra={"constraint": "a100", "exclusive": True},
        array_throttle=2,
        signal="USR1@120",
        requeue=True,
    )
    assert render_sbatch(settings, "expman-demo", 5, "/opt/py 3/bin/python") == GOLDEN.read_text()


def test_single_run_script_has_no_array_and_defaults():
    script = render_sbatch(SlurmSettings(), "expman-x", 1, "/usr/bin/python3")
    assert "--array" not in script and "#SBATCH --signal=B:USR1@60" in script and "#SBATCH --no-requeue" in script


def records(root: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(root.glob("*/run.json"))]


def wait_all(root: Path, statuses: set[str], count: int = 1, timeout_s: float = 120) -> list[dict[str, Any]]:
    """Poll through `expman runs` (which reconciles with squeue) until every run is in ``statuses``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        main(["runs", "--format", "json"])
        found = records(root)
        if len(found) == count and all(r["status"] in statuses for r in found):
            return found
        time.sleep(1)
    raise AssertionError(f"runs did not reach {statuses}: {[(r['run_id'], r['status']) for r in records(root)]}")


@pytest.fixture
def slurm_repo(make_repo, slurm, docker_client):
    def make(job: dict[str, Any] | None = None, **settings: Any) -> Any:
        return make_repo({"backend": "slurm", "slurm": settings}, job)

    return make


def test_slurm_submit_run_record(slurm_repo, runs_root, capsys):
    repo = slurm_repo()
    assert main(["submit", "-C", str(repo.path)]) == 0
    assert "queued (Slurm job" in capsys.readouterr().out
    (record,) = wait_all(runs_root, {"succeeded", "failed", "lost"})
    assert record["status"] == "succeeded" and record["exit_code"] == 0, record["reason"]
    assert record["job_id"] and record["slurm"]["script"] and len(record["attempts"]) == 1
    assert record["image"]["image_id"].startswith("sha256:") and record["host"]
    run = runs_root / record["run_id"]
    assert json.loads((run / "output" / "results.json").read_text())["accuracy"] == 0.9
    assert "code version 1" in (run / "logs" / "stdout.log").read_text()


def test_process_runtime_for_clusters_without_docker(slurm_repo, runs_root):
    repo = slurm_repo(runtime="process")
    assert main(["submit", "-C", str(repo.path)]) == 0
    (record,) = wait_all(runs_root, {"succeeded", "failed", "lost"})
    assert record["status"] == "succeeded" and record["container_id"] is None and record["pid"], record["reason"]
    results = json.loads((runs_root / record["run_id"] / "output" / "results.json").read_text())
    assert results["cwd"] == str((runs_root / record["run_id"] / "code").resolve())


def test_sweep_of_five_seeds_is_one_job_array(slurm_repo, runs_root):
    repo = slurm_repo(array_throttle=2)
    repo.set_expman(sweep={"train.train_seed": [1, 9, 17, 25, 33]})
    assert main(["submit", "-C", str(repo.path)]) == 0
    found = wait_all(runs_root, {"succeeded", "failed", "lost"}, count=5, timeout_s=240)
    assert {r["status"] for r in found} == {"succeeded"}
    assert len({r["slurm"]["job_id"] for r in found}) == 1
    assert sorted(r["job_id"].split("_")[1] for r in found) == ["0", "1", "2", "3", "4"]
    seeds = sorted(
        json.loads((runs_root / r["run_id"] / "config.json").read_text())["train"]["train_seed"] for r in found
    )
    assert seeds == [1, 9, 17, 25, 33]
    inodes = {(runs_root / r["run_id"] / "code.tar").stat().st_ino for r in found}
    assert len(inodes) == 1  # one archive, hard-linked
    frame = load_runs(runs_root)
    assert sorted(frame["config.train.train_seed"]) == seeds and set(frame["results.accuracy"]) == {0.9}


def test_cancel_uses_scancel(slurm_repo, runs_root, docker_client):
    repo = slurm_repo(job={"mode": "sleep", "seconds": 300})
    assert main(["submit", "-C", str(repo.path)]) == 0
    (record,) = wait_all(runs_root, {"running"})
    assert main(["cancel", record["run_id"]]) == 0
    (record,) = records(runs_root)
    assert record["status"] == "cancelled" and record["reason"] == "cancelled by user"
    assert not docker_client.containers.list(all=True, filters={"label": f"expman.run_id={record['run_id']}"})


def test_time_limit_signals_then_records_timeout(slurm_repo, runs_root):
    # Slurm sends --signal up to 60 s before the time asked for: 30 s before a 2-minute limit
    # lands 30-90 s in, always after the program has started.
    repo = slurm_repo(job={"mode": "checkpoint", "seconds": 600}, time="2", signal="USR1@30")
    repo.set_expman(command=["bash", "run.sh"])  # the signal reaches the wrapper's child
    assert main(["submit", "-C", str(repo.path)]) == 0
    (record,) = wait_all(runs_root, {"failed", "succeeded", "cancelled", "lost"}, timeout_s=300)
    assert record["status"] == "failed" and record["reason"] == "timeout"
    checkpoint = runs_root / record["run_id"] / "output" / "checkpoint.txt"
    assert checkpoint.read_text().startswith("SIGUSR1")


def test_a_requeued_job_is_asked_to_checkpoint_then_resumes(slurm_repo, runs_root, slurm):
    """On a requeue (as on a preemption) Slurm sends SIGTERM to the batch step: the program
    first gets the configured checkpoint signal, then SIGTERM, within Slurm's KillWait; the
    next attempt starts from what it saved."""
    repo = slurm_repo(job={"mode": "resumable", "steps": 200})
    repo.set_expman(resources={"kill_grace": "6s"})  # the checkpoint signal, then SIGTERM 3 s later
    assert main(["submit", "-C", str(repo.path), "--requeue"]) == 0
    (record,) = wait_all(runs_root, {"running"})
    run = runs_root / record["run_id"]
    deadline = time.monotonic() + 60
    while not (run / "output" / "ready.txt").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2)  # some steps done
    (record,) = requeue_and_wait(slurm, record["job_id"], runs_root)
    assert record["status"] == "succeeded", record["reason"]
    assert [a["attempt"] for a in record["attempts"]] == [1, 2]
    assert record["attempts"][0]["status"] == "queued" and "interrupted" in record["attempts"][0]["reason"]
    signals = [line.split() for line in (run / "output" / "signals.txt").read_text().splitlines()]
    assert [name for _, name, _ in signals] == ["SIGUSR1", "SIGTERM"]
    saved = int(signals[0][2])
    assert saved > 0 and (run / "output" / "resumes.txt").read_text().split() == ["0", str(saved)]
    assert "code version 1" in (run / "logs" / "attempt-1" / "stdout.log").read_text()
    assert "code version 1" in (run / "logs" / "stdout.log").read_text()


def requeue_and_wait(slurm: Any, job_id: str, runs_root: Path) -> list[dict[str, Any]]:
    """Requeue the Slurm job, let it start again at once, and wait for its runs to end."""
    env = slurm.environ | _path()
    subprocess.run(["scontrol", "requeue", job_id], check=True, env=env)
    _release_the_requeue_hold(job_id, env)
    return wait_all(runs_root, {"succeeded", "failed", "cancelled", "lost"}, timeout_s=300)


def _release_the_requeue_hold(job_id: str, env: dict[str, str]) -> None:
    """Slurm holds a requeued job back for two minutes (BeginTime); the test need not wait that out."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = subprocess.run(
            ["squeue", "-h", "-j", job_id, "-o", "%T %S"], capture_output=True, text=True, env=env
        ).stdout.split()
        if state and state[0] == "PENDING":
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], env=env, check=True)
            return
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never went back to PENDING after the requeue")


def _path() -> dict[str, str]:
    import os

    return {"PATH": os.environ["PATH"]}
