"""The patas README grid, end to end: expman against patas and against a plain process pool.

The grid: neurons 1..51 step 2 x 3 preprocessing x 4 activations x repeat 10 = 3,000 tasks
of a trivial program that prints its metrics (as patas' examples/basic_usage/main.py does).
Three ways to run it with 2 workers and get a table of the metrics, alternating in one run:

- floor:  a 2-process pool that only runs the program and saves its stdout;
- patas:  ``patas explore`` + ``patas parse`` (pip install 'expman[bench]');
- expman: ``expman schedule`` (every task a run directory with its full record, sharing one
          extracted archive), ``expman worker -j 2`` (process backend, SQLite queue), and
          ``expman table`` parsing the metrics from stdout into a CSV pivot.

Target: expman <= 1.25x the floor. The floor and expman run next to each other in every
round (the order alternates), and the verdict is the median of the rounds' own ratios, as the
speed of a shared machine drifts between rounds.

    python benchmarks/sweep_vs_patas.py [--rounds 1] [--repeat 10]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The repository, for the tests' git helper.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import Repo  # noqa: E402

PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
PROGRAM = f"""#!{PYTHON}
import json, os, random, sys
if len(sys.argv) > 1:
    neurons, activation, preprocessing = int(sys.argv[1]), sys.argv[2], sys.argv[3]
else:
    model = json.load(open(os.environ["EXPMAN_CONFIG"]))["model"]
    neurons, activation, preprocessing = model["neurons"], model["activation"], model["preprocessing"]
rng = random.Random()
acc = min(0.99, 0.2 + neurons / 100 + rng.random() / 10)
print(f"Time to train (ms): {{rng.uniform(100, 200):.3f}}")
print(f"Time to test (ms):  {{rng.uniform(1, 9):.3f}}")
print(f"Train accuracy:     {{acc:.3f}}")
print(f"Test accuracy:      {{acc - 0.01:.3f}}")
print(f"Final Loss:         {{1 - acc:.3f}}")
"""
NEURONS = (1, 51, 2)
PREPROCESSING = ["fast", "medium", "intense"]
ACTIVATIONS = ["relu", "leaky_relu", "sigmoid", "tanh"]
PATTERNS = {
    "train_time": r"Time to train \(ms\): (@float@)",
    "test_time": r"Time to test \(ms\):  (@float@)",
    "train_acc": r"Train accuracy:     (@float@)",
    "test_acc": r"Test accuracy:      (@float@)",
    "loss": r"Final Loss:         (@float@)",
}
WORKERS = 2


def tasks(repeat: int) -> list[tuple[str, str, str]]:
    return [(str(n), a, p) for _ in range(repeat) for n in range(*NEURONS) for p in PREPROCESSING for a in ACTIVATIONS]


def _run_one(job: tuple[Path, Path, tuple[str, str, str]]) -> None:
    code, stdout, args = job
    with open(stdout, "wb") as out:
        subprocess.run(["./main.py", *args], cwd=code, stdout=out, check=True)


def floor(work: Path, out: Path, repeat: int) -> float:
    out.mkdir()
    start = time.perf_counter()
    with multiprocessing.Pool(WORKERS) as pool:
        jobs = [(work / "code", out / f"{i}.stdout", t) for i, t in enumerate(tasks(repeat))]
        pool.map(_run_one, jobs, chunksize=1)
    elapsed = time.perf_counter() - start
    assert len(list(out.iterdir())) == len(tasks(repeat))
    return elapsed


def patas(work: Path, lab: Path, repeat: int) -> float:
    start = time.perf_counter()
    explore = ["patas", "explore", "--type", "grid", "--cmd", "./main.py {neurons} {activation} {preprocessing}"]
    explore += ["--va", "neurons", *map(str, NEURONS), "--vl", "preprocessing", *PREPROCESSING]
    explore += ["--vl", "activation", *ACTIVATIONS, "--node", "localhost", str(WORKERS)]
    explore += ["--repeat", str(repeat), "--workdir", str(work / "code"), "-o", str(lab), "-y", "-q"]
    subprocess.run(explore, cwd=work / "code", check=True, stdout=subprocess.DEVNULL)
    parse = ["patas", "parse", "-e", str(lab / "grid")]
    for name, pattern in PATTERNS.items():
        parse += ["-p", name, pattern]
    subprocess.run(parse, cwd=lab, check=True, stdout=subprocess.DEVNULL)
    elapsed = time.perf_counter() - start
    assert len((lab / "grid" / "grid.csv").read_text().splitlines()) == len(tasks(repeat)) + 1
    return elapsed


def expman(work: Path, out: Path, repeat: int) -> float:
    runs = out / "runs"
    env = {**os.environ, "EXPMAN_RUNS_ROOT": str(runs)}
    cli = [sys.executable, "-m", "expman"]
    table = [*cli, "table", "--rows", "model.neurons,model.preprocessing", "--cols", "model.activation"]
    table += ["--value", "test_acc", "--format", "csv", "-o", str(out / "table.csv")]
    steps = {
        "schedule": [*cli, "schedule", "-C", str(work / "experiment")],
        "worker": [*cli, "worker", "-j", str(WORKERS)],
        "table": table,
    }
    start = time.perf_counter()
    took = {}
    for name, argv in steps.items():
        began = time.perf_counter()
        subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        took[name] = time.perf_counter() - began
    elapsed = time.perf_counter() - start
    print("         " + ", ".join(f"{name} {t:.2f}s" for name, t in took.items()))
    assert len(list(runs.glob("*/run.json"))) == len(tasks(repeat))
    assert len((out / "table.csv").read_text().splitlines()) == 1 + 25 * 3 * 4  # one line per cell
    return elapsed


def make_repo(work: Path, repeat: int) -> Repo:
    path = work / "experiment"
    path.mkdir()
    repo = Repo(path)
    repo.git("init", "-q", "-b", "experiments")
    repo.git("config", "user.name", "Bench")
    repo.git("config", "user.email", "bench@example.org")
    sweep = {
        "model.neurons": dict(zip(("start", "stop", "step"), NEURONS, strict=True)),
        "model.preprocessing": PREPROCESSING,
        "model.activation": ACTIVATIONS,
        "repeat": repeat,
    }
    config = {
        "expman": {"command": ["./main.py"], "backend": "process", "parse": PATTERNS, "sweep": sweep},
        "model": {"neurons": 1, "preprocessing": "fast", "activation": "relu"},
    }
    repo.commit({"config.json": json.dumps(config, indent=2), "main.py": PROGRAM}, "the grid")
    (path / "main.py").chmod(0o755)
    repo.commit(message="executable")
    code = work / "code"
    code.mkdir()
    (code / "main.py").write_text(PROGRAM)
    (code / "main.py").chmod(0o755)
    return repo


def _children_cpu() -> float:
    """CPU seconds of every finished descendant (patas' ssh-started tasks are not among them)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=10, help="runs of each combination (10: 3,000 tasks)")
    args = parser.parse_args()
    if shutil.which("patas") is None:
        print("patas is missing: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="expman-bench-patas-"))
    make_repo(work, args.repeat)
    n = len(tasks(args.repeat))
    times: dict[str, list[float]] = {"floor": [], "patas": [], "expman": []}
    for round_ in range(args.rounds):
        for name in ("floor", "expman", "patas") if round_ % 2 == 0 else ("patas", "expman", "floor"):
            # A new directory for every way and round, all deleted at the end: on a filesystem
            # such as ext4 without a journal (this machine's), every file created skips one by
            # one the inodes freed in the last 30 s, so deleting the last round's tens of
            # thousands of files would slow down whatever way runs next.
            out = work / f"round-{round_ + 1}-{name}"
            before = _children_cpu()
            elapsed = {"floor": floor, "patas": patas, "expman": expman}[name](work, out, args.repeat)
            cpu = _children_cpu() - before
            times[name].append(elapsed)
            print(
                f"round {round_ + 1} {name:6}: {elapsed:6.2f}s ({elapsed / n * 1000:.2f} ms per task; "
                f"CPU {cpu / n * 1000:.2f} ms per task)",
                flush=True,
            )
    base = statistics.median(times["floor"])
    print(f"\n{n} tasks, {WORKERS} workers, median of {args.rounds} round(s)\n")
    print("| way | seconds | ms per task | vs floor |\n|---|---|---|---|")
    for name, values in times.items():
        t = statistics.median(values)
        print(f"| {name} | {t:.2f} | {t / n * 1000:.2f} | {t / base:.2f}x |")
    # The machine's speed drifts between rounds: expman runs next to the floor in every round,
    # and the verdict is the median of each round's own ratio.
    ratio = statistics.median(e / f for e, f in zip(times["expman"], times["floor"], strict=True))
    print(f"\nexpman end to end: {ratio:.2f}x the floor, median of each round's ratio (target <= 1.25x)")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if ratio <= 1.25 else 1


if __name__ == "__main__":
    sys.exit(main())
