"""A full disk under the runs root while a program writes: the program is stopped, the run
is recorded failed with the reason, the user gets one line and a non-zero exit, and what
was recorded before stays readable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from expman import errors

from .conftest import require
from .helpers import alive


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, mounted for the test."""
    require(os.getuid() == 0, "root (to mount a small tmpfs)")
    mount = tmp_path / "small disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_runs_root_stops_the_program_and_records_why(make_repo: Any, small_disk: Path) -> None:
    runs_root = small_disk / "runs"
    repo = make_repo({"backend": "process"}, {"mode": "fill"})
    env = {**os.environ, "EXPMAN_RUNS_ROOT": str(runs_root)}
    argv = [sys.executable, "-m", "expman", "submit", "-C", str(repo.path)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == errors.RunFailedError.exit_code, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.count("expman: error:") == 1 and "disk full" in done.stderr
    (run,) = [p for p in runs_root.iterdir() if not p.name.startswith(".")]
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "failed" and record["reason"].startswith(f"disk full at {runs_root}")
    assert not alive(record["pid"])
