"""The benchmarks can run: none shadows a standard-library module for the others (a script's
own folder comes first on sys.path), and each at least imports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("*.py"))


def test_no_benchmark_is_named_like_a_standard_library_module():
    assert len(SCRIPTS) >= 4
    shadowing = [p.name for p in BENCHMARKS.iterdir() if p.name.partition(".")[0] in sys.stdlib_module_names]
    assert shadowing == []


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_each_benchmark_imports(script):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BENCHMARKS.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, env=env, cwd=BENCHMARKS.parent
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout
