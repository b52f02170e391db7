"""Submit overhead: a warm ``expman submit`` of a no-op program against a bare ``docker run``
of the same image, alternating in the same run; and git archive throughput as expman does it
against plain ``git archive -o``, on a ~200 MB repository.

  submit    a throwaway experiment (command ["true"], Dockerfile FROM the base image, on
            branch experiments), its image cached by one submit first. Each round runs
            ``expman submit`` and ``docker run --rm IMAGE true`` (the image id that submit
            recorded), in alternating order, and times each from the command's start to
            its container's exit (the engine's die event; the goal, +0.5 s, is on this) and
            as a whole process; reports both, the per-round differences and the duration_s
            each run recorded (the program's own time: near zero for ``true``)
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
import dataclasses
import filecmp
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
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


class ExitWatch:
    """When containers exit, as the engine says: its ``die`` events, in nanoseconds of this
    machine's clock (the engine runs here), by container id."""

    def __init__(self) -> None:
        import docker

        self._client = docker.from_env()
        self._events = self._client.events(decode=True, filters={"type": "container", "event": "die"})
        self.exits: dict[str, int] = {}
        threading.Thread(target=self._follow, daemon=True).start()

    def _follow(self) -> None:
        for event in self._events:
            self.exits[event["id"]] = int(event["timeNano"])

    def seconds_since(self, start_ns: int, container_id: str) -> float:
        deadline = time.monotonic() + 10
        while container_id not in self.exits:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the engine never said container {container_id[:12]} exited")
            time.sleep(0.01)
        return (self.exits[container_id] - start_ns) / 1e9

    def close(self) -> None:
        self._events.close()
        self._client.close()


class Submitter:
    """Runs ``expman submit`` of one repository as a separate process, as a user would."""

    def __init__(self, repo: Path, runs_root: Path) -> None:
        self.repo, self.runs_root = repo, runs_root
        self.image_tags: set[str] = set()
        # The child imports expman from this checkout, whatever is installed.
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        # expman as pip installs it, with compiled bytecode: PYTHONDONTWRITEBYTECODE (set on some
        # machines) would compile every module of expman at every start, about 0.1 s.
        environ = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        self.env = {**environ, "EXPMAN_RUNS_ROOT": str(runs_root), "PYTHONPATH": path}

    def submit(self) -> tuple[int, float, dict]:
        """When it started (ns), its whole process's wall time, and the record of the run it made."""
        before = self.run_dirs()
        start_ns, begin = time.time_ns(), time.perf_counter()
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
        return start_ns, wall_s, record

    def run_dirs(self) -> set[Path]:
        if not self.runs_root.is_dir():
            return set()
        return {p for p in self.runs_root.iterdir() if (p / "run.json").is_file()}


def docker_run(image_id: str, work: Path) -> tuple[int, float, str]:
    """When ``docker run --rm IMAGE true`` started (ns), its wall time, and its container's id."""
    cidfile = work / f"cid-{time.monotonic_ns()}"
    start_ns, begin = time.time_ns(), time.perf_counter()
    subprocess.run(
        ["docker", "run", "--rm", "--cidfile", str(cidfile), image_id, "true"], check=True, capture_output=True
    )
    wall_s = time.perf_counter() - begin
    container_id = cidfile.read_text().strip()
    cidfile.unlink()
    return start_ns, wall_s, container_id


@dataclasses.dataclass
class Timings:
    """Per round, for each way: command start to container exit, and the whole process."""

    expman_exit: list[float] = dataclasses.field(default_factory=list)
    expman_wall: list[float] = dataclasses.field(default_factory=list)
    docker_exit: list[float] = dataclasses.field(default_factory=list)
    docker_wall: list[float] = dataclasses.field(default_factory=list)
    duration_s: list[float] = dataclasses.field(default_factory=list)


def measure_submit(submitter: Submitter, rounds: int, work: Path) -> Timings:
    _, _, record = submitter.submit()  # builds the image: every timed submit hits the cache
    image_id = record["image"]["image_id"]
    docker_run(image_id, work)
    watch, timings = ExitWatch(), Timings()
    try:
        for index in range(rounds):
            # Alternating which goes first cancels a drift in the machine's state within a round.
            if index % 2:
                _docker_round(watch, timings, image_id, work)
            start_ns, wall_s, record = submitter.submit()
            timings.expman_exit.append(watch.seconds_since(start_ns, record["container_id"]))
            timings.expman_wall.append(wall_s)
            timings.duration_s.append(record["duration_s"])
            if not index % 2:
                _docker_round(watch, timings, image_id, work)
    finally:
        watch.close()
    return timings


def _docker_round(watch: ExitWatch, timings: Timings, image_id: str, work: Path) -> None:
    start_ns, wall_s, container_id = docker_run(image_id, work)
    timings.docker_exit.append(watch.seconds_since(start_ns, container_id))
    timings.docker_wall.append(wall_s)


def report_submit(t: Timings) -> None:
    """The goal is on command start to container exit, as the issue defines it; the whole
    process (expman then records the end and removes the container) is printed too."""
    exit_differences = [e - d for e, d in zip(t.expman_exit, t.docker_exit, strict=True)]
    wall_differences = [e - d for e, d in zip(t.expman_wall, t.docker_wall, strict=True)]
    verdict = "met" if statistics.median(exit_differences) <= GOAL_S else "not met"
    print(f"submit, median of {len(t.expman_exit)} alternating rounds (min–max), no-op program, cached image")
    print("  command start to container exit")
    print(f"    docker run --rm IMAGE true   {spread(t.docker_exit)}")
    print(f"    expman submit                {spread(t.expman_exit)}")
    print(f"    difference, per round        +{spread(exit_differences)}  goal +{GOAL_S} s: {verdict}")
    print("  whole process, start to exit")
    print(f"    docker run --rm IMAGE true   {spread(t.docker_wall)}")
    print(f"    expman submit                {spread(t.expman_wall)}")
    print(f"    difference, per round        +{spread(wall_differences)}")
    print(f"  recorded duration_s            {spread(t.duration_s, digits=3)}")


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
        report_submit(measure_submit(submitter, args.rounds, work))
        report_archive(*measure_archive(work, args.rounds, args.archive_mb))
    finally:
        # Removes the tag only: the image is the base image's, which other tags keep.
        for tag in submitter.image_tags:
            subprocess.run(["docker", "image", "rm", tag], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
