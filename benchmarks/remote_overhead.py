"""Submit-to-start latency of expman's local, ssh (loopback) and slurm backends against a
bare ``docker run`` of the same cached image, measured in the same run, alternating.

Each submission runs a no-op program that writes time.time() into its output directory as
its first act; latency = that moment - the moment the submission began. The image is built
(cached) before timing. sshd and a one-node Slurm cluster are started as in the tests.

    python benchmarks/remote_overhead.py [--repeat 5]

Needs root (for sshd and Slurm), a running dockerd and the base image (scripts/setup).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from expman.cli import main as expman  # noqa: E402
from tests.conftest import init_repo  # noqa: E402
from tests.daemons import start_slurm, start_sshd  # noqa: E402

NOOP = "import os, time; open(os.environ['EXPMAN_OUTPUT_DIR'] + '/started', 'w').write(repr(time.time()))"


def newest_record(root: Path) -> dict:
    runs = sorted(p for p in root.iterdir() if (p / "run.json").is_file())
    return json.loads((runs[-1] / "run.json").read_text())


def wait_for(path: Path, timeout_s: float = 300) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            return float(path.read_text())
        except (FileNotFoundError, ValueError):
            time.sleep(0.02)
    raise RuntimeError(f"{path} never appeared")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="expman-bench-remote-"))
    os.chmod(work, 0o755)
    sshd = start_sshd(work / "sshd")
    slurm = start_slurm(work / "slurm")
    os.environ["SLURM_CONF"] = str(slurm.conf)
    root = work / "runs"
    os.environ["EXPMAN_RUNS_ROOT"] = str(root)
    host = {
        "ssh": sshd.target,
        "identity_file": str(sshd.identity_file),
        "known_hosts": str(sshd.known_hosts),
        "runs_root": "~/bench-runs",
    }
    repo = init_repo(work / "repo", {"command": ["python3", "-c", NOOP], "hosts": {"box": host}})
    quiet = open(os.devnull, "w")

    def submit(backend: str) -> float:
        begin = time.time()
        sys.stdout, sys.stderr = quiet, quiet
        try:
            code = expman(["submit", "-C", str(repo.path), "--backend", backend])
        finally:
            sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        if code != 0:
            raise RuntimeError(f"expman submit --backend {backend} exited {code}")
        record = newest_record(root)
        output = Path(record["remote"]["path"]) if backend == "ssh" else root / record["run_id"]
        return wait_for(output / "output" / "started") - begin

    submit("local")  # builds and caches the image
    image = newest_record(root)["image"]["image_id"]

    def bare() -> float:
        out = Path(tempfile.mkdtemp(dir=work))
        os.chmod(out, 0o777)
        begin = time.time()
        subprocess.run(
            ["docker", "run", "--rm", "-v", f"{out}:/output", "-e", "EXPMAN_OUTPUT_DIR=/output", image]
            + ["python3", "-c", NOOP],
            check=True,
        )
        return wait_for(out / "started") - begin

    measures: dict[str, Callable[[], float]] = {
        "bare docker run": bare,
        "local": lambda: submit("local"),
        "ssh (loopback)": lambda: submit("ssh"),
        "slurm": lambda: submit("slurm"),
    }
    for measure in measures.values():  # warm every path once (ssh builds on its engine: cached)
        measure()
    times: dict[str, list[float]] = {name: [] for name in measures}
    for _ in range(args.repeat):
        for name, measure in measures.items():
            times[name].append(measure())
    baseline = statistics.median(times["bare docker run"])
    print(f"submit-to-start latency, median of {args.repeat} (no-op program, cached image)")
    print(f"{'':<18}{'median':>10}{'min':>10}{'max':>10}{'vs bare':>10}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<18}{median:>9.3f}s{min(values):>9.3f}s{max(values):>9.3f}s{median / baseline:>9.2f}x")
    sshd.stop()
    slurm.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
