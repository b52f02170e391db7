"""Submit overhead: a warm ``expman submit`` of a no-op program against a bare ``docker run``
of the same image, alternating in the same run; and git archive throughput as expman does it
against plain ``git archive -o``, on a ~200 MB repository.

  submit    a throwaway experiment (command ["true"], Dockerfile FROM the base image, on
            branch experiments), its image cached by one submit first. Each round times
            ``expman submit`` as a whole process (start to exit) and ``docker run --rm IMAGE
            true`` (the image id that submit recorded), in alternating order; reports both,
            the per-round difference (goal: +0.5 s) and the duration_s each run recorded
            (the program's own time: near zero for ``true``)
  archive   a generated repository of mixed-size files, half compressible text, half random
            bytes; each round times expman.experiment.archive.write_archive of HEAD and
            ``git archive -o`` of HEAD, alternating; reports MB/s and the ratio

Everything is written into a fresh temporary directory, deleted at the end with the image
tag the submits made. Asserts nothing about time.

    python benchmarks/submit_overhead.py [--rounds 7] [--archive-mb 200]

Needs a running dockerd and the base image expman-base:bookworm (scripts/setup).
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from expman.experiment.archive import write_archive  # noqa: E402

BASE_IMAGE = "expman-base:bookworm"
GOAL_S = 0.5
MB = 1_000_000
WORDS = "loss reward epoch step seed lr gamma batch eval train policy value entropy".split()


def git(repo: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    done = subprocess.run(["git", "-C", str(repo), *args], env=env, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def commit_all(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=Bench", "-c", "user.email=bench@example.org", "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def make_experiment(repo: Path) -> None:
    repo.mkdir()
    git(repo, "init", "-q", "-b", "experiments")
    (repo / "config.json").write_text(json.dumps({"expman": {"command": ["true"]}}, indent=2))
    (repo / "Dockerfile").write_text(f"FROM {BASE_IMAGE}\n")
    commit_all(repo, "a no-op experiment")


def spread(values: list[float], unit: str = "s", digits: int = 2) -> str:
    median = statistics.median(values)
    return f"{median:.{digits}f} {unit} ({min(values):.{digits}f}–{max(values):.{digits}f})"


# --- submit overhead ------------------------------------------------------------------------


class Submitter:
    """Runs ``expman submit`` of one repository as a separate process, as a user would."""

    def __init__(self, repo: Path, runs_root: Path) -> None:
        self.repo, self.runs_root = repo, runs_root
        self.image_tags: set[str] = set()
        # The child imports expman from this checkout, whatever is installed.
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        self.env = {**os.environ, "EXPMAN_RUNS_ROOT": str(runs_root), "PYTHONPATH": path}

    def submit(self) -> tuple[float, dict]:
        """Wall time of the whole process, and the record of the run it made."""
        before = self.run_dirs()
        begin = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "expman", "submit", "-C", str(self.repo)],
            env=self.env,
            capture_output=True,
            text=True,
        )
        wall_s = time.perf_counter() - begin
        if done.returncode != 0:
            raise RuntimeError(f"expman submit exited {done.returncode}: {done.stderr.strip()}")
        (new,) = self.run_dirs() - before
        record = json.loads((new / "run.json").read_text())
        if record["status"] != "succeeded":
            raise RuntimeError(f"run {record['run_id']} ended {record['status']}: {record.get('reason')}")
        self.image_tags.add(record["image"]["image_tag"])
        return wall_s, record

    def run_dirs(self) -> set[Path]:
        if not self.runs_root.is_dir():
            return set()
        return {p for p in self.runs_root.iterdir() if (p / "run.json").is_file()}


def docker_run(image_id: str) -> float:
    begin = time.perf_counter()
    subprocess.run(["docker", "run", "--rm", image_id, "true"], check=True, capture_output=True)
    return time.perf_counter() - begin


def measure_submit(submitter: Submitter, rounds: int) -> tuple[list[float], list[float], list[float]]:
    """Per round: expman's wall time, docker run's, and the duration_s expman recorded."""
    _, record = submitter.submit()  # builds the image: every timed submit hits the cache
    image_id = record["image"]["image_id"]
    docker_run(image_id)
    expman_s, docker_s, duration_s = [], [], []
    for index in range(rounds):
        # Alternating which goes first cancels a drift in the machine's state within a round.
        if index % 2:
            docker_s.append(docker_run(image_id))
        wall_s, record = submitter.submit()
        expman_s.append(wall_s)
        duration_s.append(record["duration_s"])
        if not index % 2:
            docker_s.append(docker_run(image_id))
    return expman_s, docker_s, duration_s


def report_submit(expman_s: list[float], docker_s: list[float], duration_s: list[float]) -> None:
    differences = [e - d for e, d in zip(expman_s, docker_s, strict=True)]
    overhead = statistics.median(differences)
    verdict = "met" if overhead <= GOAL_S else "not met"
    print(f"submit, median of {len(expman_s)} alternating rounds (min–max), no-op program, cached image")
    print(f"  docker run --rm IMAGE true     {spread(docker_s)}")
    print(f"  expman submit (whole process)  {spread(expman_s)}")
    print(f"  difference, per round          +{spread(differences)}  goal +{GOAL_S} s: {verdict}")
    print(f"  ratio of medians               {statistics.median(expman_s) / statistics.median(docker_s):.2f}x")
    print(f"  recorded duration_s            {spread(duration_s, digits=3)}")


# --- git archive throughput -----------------------------------------------------------------


def file_sizes(total_bytes: int, rng: random.Random) -> list[int]:
    """Mixed sizes summing to ``total_bytes``: most files small, most bytes in a few large ones."""
    bands = [(1_000, 64_000, 0.1), (64_000, 4 * MB, 0.4), (8 * MB, 24 * MB, 0.5)]
    sizes = []
    for low, high, share in bands:
        left = int(total_bytes * share)
        while left > 0:
            size = min(rng.randint(low, high), left)
            sizes.append(size)
            left -= size
    return sizes


def text_bytes(size: int, rng: random.Random) -> bytes:
    """Log-like lines: compressible, as source, configs and CSV files are."""
    lines = [f"{rng.choice(WORDS)},{rng.randint(0, 10**6)},{rng.random():.6f}\n" for _ in range(4096)]
    block = "".join(lines).encode()
    return (block * (size // len(block) + 1))[:size]


def make_big_repo(repo: Path, total_mb: int) -> tuple[str, int]:
    """A repository of ~``total_mb`` MB of committed files; returns HEAD and its bytes."""
    repo.mkdir()
    git(repo, "init", "-q", "-b", "experiments")
    rng = random.Random(19)
    sizes = file_sizes(total_mb * MB, rng)
    for index, size in enumerate(sizes):
        folder = repo / f"part{index % 16:02d}"
        folder.mkdir(exist_ok=True)
        if index % 2:
            (folder / f"weights{index:04d}.bin").write_bytes(rng.randbytes(size))
        else:
            (folder / f"log{index:04d}.csv").write_bytes(text_bytes(size, rng))
    return commit_all(repo, "generated files"), sum(sizes)


def timed(action: Callable[[], object]) -> float:
    begin = time.perf_counter()
    action()
    return time.perf_counter() - begin


def measure_archive(work: Path, rounds: int, total_mb: int) -> tuple[list[float], list[float], int]:
    """Per round: write_archive's seconds and ``git archive -o``'s; and the archive's bytes."""
    repo = work / "big"
    commit, _ = make_big_repo(repo, total_mb)
    ours, plain = work / "expman.tar", work / "plain.tar"
    ways: dict[str, Callable[[], object]] = {
        "expman": lambda: write_archive(repo, commit, ours),
        "plain": lambda: git(repo, "archive", "--format=tar", "-o", str(plain), commit),
    }
    for way in ways.values():  # the first reads the objects into the page cache for both
        way()
    times: dict[str, list[float]] = {name: [] for name in ways}
    for index in range(rounds):
        for name in sorted(ways, reverse=bool(index % 2)):
            (ours if name == "expman" else plain).unlink()
            times[name].append(timed(ways[name]))
    if not filecmp.cmp(ours, plain, shallow=False):
        raise RuntimeError("write_archive and git archive -o made different archives")
    return times["expman"], times["plain"], ours.stat().st_size


def report_archive(ours_s: list[float], plain_s: list[float], size: int) -> None:
    print(f"git archive of HEAD, {size / MB:.0f} MB tar, median of {len(ours_s)} alternating rounds (min–max)")
    print(f"  git archive -o                 {spread(plain_s)}  {size / MB / statistics.median(plain_s):.0f} MB/s")
    print(f"  write_archive (expman)         {spread(ours_s)}  {size / MB / statistics.median(ours_s):.0f} MB/s")
    print(f"  ratio of medians               {statistics.median(ours_s) / statistics.median(plain_s):.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--archive-mb", type=int, default=200, help="size of the generated repository")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="expman-bench-submit-"))
    submitter = Submitter(work / "experiment", work / "runs")
    try:
        make_experiment(submitter.repo)
        report_submit(*measure_submit(submitter, args.rounds))
        report_archive(*measure_archive(work, args.rounds, args.archive_mb))
    finally:
        # Removes the tag only: the image is the base image's, which other tags keep.
        for tag in submitter.image_tags:
            subprocess.run(["docker", "image", "rm", tag], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
