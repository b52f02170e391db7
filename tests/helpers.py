from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from expman.cli import main
from expman.rundir.record import RunRecord


def submit(repo_path: Path, *args: str) -> int:
    return main(["submit", "-C", str(repo_path), *args])


def wait_for_status(root: Path, statuses: set[str], timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = [p for p in root.glob("*/run.json")] if root.exists() else []
        if runs:
            try:
                record = json.loads(runs[0].read_text())
            except ValueError:
                record = {}
            if record.get("status") in statuses:
                return record
        time.sleep(0.1)
    raise AssertionError(f"no run reached {statuses} within {timeout_s}s under {root}")


def cancel_with_ctrl_c(repo_path: Path, runs_root: Path, *args: str) -> tuple[int, dict[str, Any]]:
    """Submit in a child process, press Ctrl-C (SIGINT) once the run is running."""
    env = {**os.environ, "EXPMAN_RUNS_ROOT": str(runs_root)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "expman", "submit", "-C", str(repo_path), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    wait_for_status(runs_root, {"running"})
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    return proc.returncode, wait_for_status(runs_root, {"cancelled", "failed", "succeeded"})


def minimal_record(run_id: str, **resources: Any) -> RunRecord:
    """A queued record with every required field and nothing else."""
    return RunRecord.from_dict(
        {
            "run_id": run_id,
            "status": "queued",
            "config_hash": "h",
            "command": ["python"],
            "backend": "local",
            "resources": {"gpus": 0, "cpus": None, "memory_bytes": None, "timeout_s": None, **resources},
            "git": {
                "commit": "c",
                "branch": "b",
                "subject": "",
                "author": "",
                "author_email": "",
                "commit_date": "",
                "remote_url": None,
                "repository": "",
            },
            "submitter": {
                "user": "u",
                "uid": 1000,
                "gid": 1000,
                "expman_version": "0",
                "python_version": "3",
                "argv": [],
            },
            "host_facts": {},
            "environment": {},
            "queued_at": "",
        }
    )


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie has ended: only its exit status is left)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
