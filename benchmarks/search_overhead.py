"""Search overhead: ``expman search``'s steering against Optuna's own ask-and-tell loop, and a
whole search over the queue against a bare ``study.optimize(n_jobs=2)``, in the same run.

  steering  the cost per point of the steering (ask, run directory, queue job, the lookup of
            its result, tell) near 1,000 completed TPE trials on SQLite, against Optuna's
            ask/tell loop on a SQLite file of its own, same space, sampler and seed. The
            steering runs in this process with no programs: between its steps this process
            completes its jobs as a worker would (claim, a results.json written into the run's
            output, finish), outside the clock. The two take turns point by
            point up to ``--trials``; each point is timed, and the last ``--last`` are
            compared. Target: at most 1.2x Optuna's per point.
  e2e       ``--points`` points of a ``--program-ms`` program (a Python script that sleeps and
            writes results.json) with 2 workers: the wall time of ``expman search`` (points
            run by an ``expman worker -j 2`` started beforehand, process backend) against
            ``study.optimize(n_jobs=2)`` on a SQLite file whose objective runs the same
            program as a subprocess, in ``--rounds`` alternating rounds. Target: at most 1.3x.
            ``expman search`` starts in about 1.5 s (imports, git checks, Optuna): with
            --quick's 40 points that is most of the difference.

Everything is written into a fresh temporary directory, deleted at the end. Asserts nothing
about time.

    python benchmarks/search_overhead.py [--trials 1000] [--last 100] [--points 200] [--rounds 3]
    python benchmarks/search_overhead.py --quick      # --trials 300 --last 50 --points 40 --rounds 1

Needs Optuna (pip install optuna); no Docker.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402

from expman.experiment.plan import plan_submission  # noqa: E402
from expman.queue import JobState, open_queue  # noqa: E402
from expman.runners.search import check, studies  # noqa: E402

STEERING_TARGET, E2E_TARGET = 1.2, 1.3
SPACE = {
    "model.x": {"method": "uniform", "dimension": {"low": -5, "high": 5}},
    "model.lr": {"method": "loguniform", "dimension": {"low": 1e-4, "high": 1e-1}},
    "model.units": {"method": "uniformint", "dimension": {"low": 16, "high": 256}},
    "model.act": {"method": "categorical", "dimension": {"categories": ["relu", "tanh", "sigmoid"]}},
}
# The program of every point, for both ways: its config from EXPMAN_CONFIG, its results into
# EXPMAN_OUTPUT_DIR, as an expman run gets them.
PROGRAM = """\
import json, math, os, time
cfg = json.load(open(os.environ["EXPMAN_CONFIG"]))["model"]
time.sleep(float(os.environ["BENCH_SLEEP_S"]))
loss = (cfg["x"] - 0.3) ** 2 + abs(math.log10(cfg["lr"]) + 2) + abs(cfg["units"] - 100) / 100
loss += 0 if cfg["act"] == "tanh" else 1
with open(os.path.join(os.environ["EXPMAN_OUTPUT_DIR"], "results.json"), "w") as f:
    json.dump({"loss": loss}, f)
"""


def loss_of(params: dict[str, Any]) -> float:
    """PROGRAM's loss, for the points whose results this process writes itself."""
    import math

    loss = (params["model.x"] - 0.3) ** 2 + abs(math.log10(params["model.lr"]) + 2)
    loss += abs(params["model.units"] - 100) / 100
    return loss + (0 if params["model.act"] == "tanh" else 1)


def git(repo: Path, *args: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    subprocess.run(["git", "-C", str(repo), *args], env=env, check=True, capture_output=True)


def make_experiment(repo: Path, points: int, parallel: int) -> None:
    """A process-backend experiment searching SPACE for ``points`` points, ``parallel`` at a time."""
    search = {"space": SPACE, "objective": "loss", "algorithm": "tpe", "seed": 0}
    search.update(max_points=points, parallel=parallel)
    expman = {"command": [sys.executable, "point.py"], "backend": "process", "search": search}
    config = {"expman": expman, "model": {"x": 0.0, "lr": 0.01, "units": 64, "act": "relu"}}
    repo.mkdir()
    git(repo, "init", "-q", "-b", "experiments")
    (repo / "config.json").write_text(json.dumps(config, indent=2))
    (repo / "point.py").write_text(PROGRAM)
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=Bench", "-c", "user.email=bench@example.org", "commit", "-q", "-m", "a search")


def spread(values: list[float], scale: float = 1000.0, unit: str = "ms", digits: int = 1) -> str:
    v = [x * scale for x in values]
    return f"{statistics.median(v):.{digits}f} {unit} ({min(v):.{digits}f}–{max(v):.{digits}f})"


def sampler(parallel: int) -> optuna.samplers.BaseSampler:
    """The sampler the steering makes for this search (expman.runners.search.study.sampler)."""
    return optuna.samplers.TPESampler(seed=0, constant_liar=parallel > 1)


def suggest(trial: optuna.Trial) -> dict[str, Any]:
    return {
        "model.x": trial.suggest_float("model.x", -5, 5),
        "model.lr": trial.suggest_float("model.lr", 1e-4, 1e-1, log=True),
        "model.units": trial.suggest_int("model.units", 16, 256),
        "model.act": trial.suggest_categorical("model.act", ["relu", "tanh", "sigmoid"]),
    }


# --- steering cost per point ----------------------------------------------------------------


class SteeringLoop:
    """expman's steering of one study, driven step by step in this process; its jobs are
    completed here between steps, as a worker would complete them."""

    def __init__(self, work: Path, points: int) -> None:
        repo = work / "steered"
        make_experiment(repo, points, parallel=1)
        environ = {**os.environ, "EXPMAN_RUNS_ROOT": str(work / "runs")}
        plan = plan_submission(repo, None, None, environ)
        url = f"sqlite://{work / 'steered.sqlite'}"
        self.queue = open_queue(url, application_name="bench steering")
        self.worker = open_queue(url, application_name="bench worker")
        (self.steering,) = studies(plan, check(plan, environ), self.queue, url, environ, ["expman"], lambda _: None)
        self.steering.start()

    def point(self) -> float:
        """One step (the tell of the point that ended, the ask of the next), timed; then the
        new point's job completed, untimed."""
        begin = time.perf_counter()
        self.steering.step()
        elapsed = time.perf_counter() - begin
        while (job := self.worker.claim("bench-worker")) is not None:
            output = Path(job.run_dir) / "output"
            output.mkdir(exist_ok=True)
            (params,) = (p.params for p in self.steering.in_flight.values() if p.key == job.key)
            (output / "results.json").write_text(json.dumps({"loss": loss_of(params)}))
            self.worker.finish(job, JobState.SUCCEEDED)
        return elapsed

    def close(self) -> int:
        """The points told, after one last step tells the last."""
        self.steering.step()
        self.steering.lock.release()
        self.queue.close()
        self.worker.close()
        return self.steering.progress.told


class OptunaLoop:
    """Optuna's own ask/tell loop on a SQLite file of its own."""

    def __init__(self, work: Path) -> None:
        storage = optuna.storages.RDBStorage(f"sqlite:///{work / 'optuna.sqlite'}")
        self.study = optuna.create_study(study_name="bench", storage=storage, sampler=sampler(1))

    def point(self) -> float:
        begin = time.perf_counter()
        trial = self.study.ask()
        self.study.tell(trial, loss_of(suggest(trial)))
        return time.perf_counter() - begin

    def close(self) -> int:
        return len(self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


def measure_steering(work: Path, trials: int, last: int) -> dict[str, list[float]]:
    """Per point of the last ``last`` of ``trials``: seconds, for each way. The two ways take
    turns point by point (which goes first alternating), from the first point: a drift in the
    machine's state (other work on it) falls on both alike."""
    ways: dict[str, Any] = {"steering": SteeringLoop(work, trials), "optuna": OptunaLoop(work)}
    times: dict[str, list[float]] = {name: [] for name in ways}
    for index in range(trials):
        for name in sorted(ways, reverse=bool(index % 2)):
            times[name].append(ways[name].point())
        if (index + 1) % 100 == 0:
            shown = "  ".join(f"{name} {spread(t[-100:])}" for name, t in times.items())
            print(f"  points {index - 98}–{index + 1}: {shown}", flush=True)
    told = {name: way.close() for name, way in ways.items()}
    if set(told.values()) != {trials}:
        raise RuntimeError(f"expected {trials} completed trials each, got {told}")
    return {name: t[-last:] for name, t in times.items()}


def report_steering(times: dict[str, list[float]], trials: int) -> float:
    ours, theirs = times["steering"], times["optuna"]
    ratio = statistics.median(ours) / statistics.median(theirs)
    verdict = "met" if ratio <= STEERING_TARGET else "not met"
    print(f"steering cost per point, points {trials - len(ours) + 1}–{trials} of {trials}, TPE, SQLite (min–max)")
    print(f"  Optuna ask + tell                        {spread(theirs)}")
    print(f"  expman steering (ask, run, job, tell)    {spread(ours)}")
    difference_ms = (statistics.median(ours) - statistics.median(theirs)) * 1000
    print(f"  difference of medians                    {difference_ms:+.1f} ms")
    print(f"  ratio of medians                         {ratio:.2f}x   target {STEERING_TARGET}x: {verdict}")
    print(f"  ratio of means                           {statistics.mean(ours) / statistics.mean(theirs):.2f}x")
    return ratio


# --- end to end ------------------------------------------------------------------------------


def child_env(work: Path, sleep_s: float) -> dict[str, str]:
    """The children import expman from this checkout, whatever is installed."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "EXPMAN_QUEUE")}
    return {**environ, "PYTHONPATH": path, "EXPMAN_RUNS_ROOT": str(work / "runs"), "BENCH_SLEEP_S": str(sleep_s)}


def expman_search(work: Path, repo: Path, env: dict[str, str], workers: int) -> float:
    """Seconds of ``expman search`` from start to exit, its points run by workers started
    (and idle) before it."""
    url = f"sqlite://{work / 'queue.sqlite'}"
    expman = [sys.executable, "-m", "expman"]
    pool = subprocess.Popen(
        [*expman, "worker", "--forever", "--queue", url, "-j", str(workers)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        begin = time.perf_counter()
        done = subprocess.run([*expman, "-C", str(repo), "search", "--queue", url], env=env, capture_output=True)
        elapsed = time.perf_counter() - begin
    finally:
        pool.send_signal(signal.SIGTERM)
        pool.wait(timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"expman search exited {done.returncode}: {done.stderr.decode().strip()[-2000:]}")
    return elapsed


def check_expman(work: Path, points: int) -> None:
    runs = [p for p in (work / "runs").iterdir() if (p / "run.json").is_file()]
    statuses = [json.loads((p / "run.json").read_text())["status"] for p in runs]
    if statuses.count("succeeded") != points:
        raise RuntimeError(f"expected {points} succeeded runs, found {sorted(statuses)}")


def optuna_optimize(work: Path, program: Path, env: dict[str, str], points: int, workers: int) -> float:
    """Seconds of ``study.optimize(n_jobs=workers)`` whose objective runs ``program`` as a
    subprocess with the trial's config, as expman's process backend gives it."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{work / 'optuna.sqlite'}")

    def objective(trial: optuna.Trial) -> float:
        place = work / f"trial-{trial.number}"
        place.mkdir()
        model = {k.split(".")[1]: v for k, v in suggest(trial).items()}
        (place / "config.json").write_text(json.dumps({"model": model}))
        trial_env = {**env, "EXPMAN_CONFIG": str(place / "config.json"), "EXPMAN_OUTPUT_DIR": str(place)}
        subprocess.run([sys.executable, str(program)], env=trial_env, check=True, cwd=place)
        return float(json.loads((place / "results.json").read_text())["loss"])

    begin = time.perf_counter()
    study = optuna.create_study(study_name="bench", storage=storage, sampler=sampler(workers))
    study.optimize(objective, n_trials=points, n_jobs=workers)
    elapsed = time.perf_counter() - begin
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) != points:
        raise RuntimeError(f"expected {points} complete trials, found {len(complete)}")
    return elapsed


def measure_e2e(work: Path, points: int, rounds: int, program_ms: float, workers: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"expman": [], "optuna": []}
    program = work / "point.py"
    program.write_text(PROGRAM)
    ways: dict[str, Callable[[Path], float]] = {
        "expman": lambda place: expman_search(place, place / "repo", child_env(place, program_ms / 1000), workers),
        "optuna": lambda place: optuna_optimize(place, program, child_env(place, program_ms / 1000), points, workers),
    }
    for index in range(rounds):
        for name in sorted(ways, reverse=bool(index % 2)):
            place = work / f"e2e-{name}-{index}"
            place.mkdir()
            if name == "expman":
                make_experiment(place / "repo", points, parallel=workers)
            times[name].append(ways[name](place))
            if name == "expman":
                check_expman(place, points)
            shutil.rmtree(place)  # the next round starts as clean as this one did
            print(f"  round {index + 1}: {name:6} {times[name][-1]:.2f} s", flush=True)
    return times


def report_e2e(times: dict[str, list[float]], points: int, program_ms: float, workers: int) -> float:
    ours, theirs = times["expman"], times["optuna"]
    ratio = statistics.median(ours) / statistics.median(theirs)
    verdict = "met" if ratio <= E2E_TARGET else "not met"
    print(
        f"end to end, {points} points of a {program_ms:.0f} ms program, {workers} workers, "
        f"median of {len(ours)} alternating rounds (min–max)"
    )
    print(f"  optuna study.optimize(n_jobs={workers}), subprocess {spread(theirs, 1, 's', 2)}")
    print(f"  expman search + expman worker -j {workers}          {spread(ours, 1, 's', 2)}")
    print(f"  wall time per point, optuna              {spread([t / points for t in theirs])}")
    print(f"  wall time per point, expman              {spread([t / points for t in ours])}")
    rounds = ", ".join(f"{a / b:.2f}x" for a, b in zip(ours, theirs, strict=True))
    print(f"  ratio of medians                         {ratio:.2f}x   target {E2E_TARGET}x: {verdict}")
    print(f"  ratio in each round                      {rounds} (other work on the machine varies between rounds)")
    return ratio


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000, help="steering: completed TPE trials at the end")
    parser.add_argument("--last", type=int, default=100, help="steering: the points timed, the last of --trials")
    parser.add_argument("--points", type=int, default=200, help="e2e: points of the search")
    parser.add_argument("--rounds", type=int, default=3, help="e2e: alternating rounds")
    parser.add_argument("--program-ms", type=float, default=50.0, help="e2e: how long the program sleeps")
    parser.add_argument("--workers", type=int, default=2, help="e2e: points run at once")
    parser.add_argument("--only", choices=("steering", "e2e"), help="one of the two measurements")
    parser.add_argument("--quick", action="store_true", help="--trials 300 --last 50 --points 40 --rounds 1")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.last, args.points, args.rounds = 300, 50, 40, 1
    optuna.logging.set_verbosity(logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="expman-bench-search-"))
    try:
        if args.only != "e2e":
            (work / "steering").mkdir()
            times = measure_steering(work / "steering", args.trials, args.last)
            report_steering(times, args.trials)
        if args.only != "steering":
            (work / "e2e").mkdir()
            e2e = measure_e2e(work / "e2e", args.points, args.rounds, args.program_ms, args.workers)
            report_e2e(e2e, args.points, args.program_ms, args.workers)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
