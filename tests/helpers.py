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
