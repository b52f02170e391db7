"""``expman search``: ask-and-tell steering over the real queue (SQLite and PostgreSQL) with real
Optuna and real workers running the points with the process backend."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import optuna
import pytest

from expman.cli import main
from expman.experiment.plan import plan_submission
from expman.queue import open_queue
from expman.runners.search import check, studies
from expman.runners.search.study import open_storage

from .conftest import Repo, init_repo, read_record, run_dirs

# A quadratic in x and y with its minimum 0 at (0.3, -0.2), plus 1 unless act is "tanh".
# "fail_act" fails every run of that activation; "marker" makes the first run that finds no
# marker file create it and sleep (long enough to be killed).
TOY = """\
import json, os, sys, time
cfg = json.load(open(os.environ["EXPMAN_CONFIG"]))
m, job = cfg["model"], cfg["job"]
if m["act"] == job.get("fail_act"):
    sys.exit(5)
if job.get("marker") and not os.path.exists(job["marker"]):
    open(job["marker"], "w").close()
    time.sleep(60)
time.sleep(job.get("sleep", 0))
loss = (m["x"] - 0.3) ** 2 + (m["y"] + 0.2) ** 2 + (0 if m["act"] == "tanh" else 1)
with open(os.path.join(os.environ["EXPMAN_OUTPUT_DIR"], "results.json"), "w") as f:
    json.dump({"loss": loss, "segment": cfg["data"]["segment"]}, f)
"""
SPACE = {
    "model.x": {"method": "uniform", "dimension": {"low": -5, "high": 5}},
    "model.y": {"method": "uniform", "dimension": {"low": -5, "high": 5}},
    "model.act": {"method": "categorical", "dimension": {"categories": ["relu", "tanh", "sigmoid"]}},
}
QUEUE = {"lease": "2s", "max_attempts": 2, "backoff": "0s"}


def search_repo(path: Path, search: dict[str, Any], job: dict[str, Any] | None = None, **expman: Any) -> Repo:
    repo = init_repo(path, {"backend": "process", "queue": QUEUE, **expman})
    config = json.loads((repo.path / "config.json").read_text())
    config["expman"]["command"] = ["python3", "toy.py"]
    config["expman"]["search"] = {"space": SPACE, "objective": "loss", "seed": 0, **search}
    config.update(model={"x": 0.0, "y": 0.0, "act": "relu"}, data={"segment": "all"}, job=job or {})
    repo.commit({"config.json": json.dumps(config, indent=2), "toy.py": TOY}, "search")
    return repo


def workers(url: str, count: int = 1) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "expman", "worker", "--forever", "--queue", url, "-j", str(count)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def steer(repo: Repo, url: str, *extra: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "expman", "-C", str(repo.path), "search", "--queue", url, "--poll", "0.2", *extra]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    return out


def search_with_workers(repo: Repo, url: str, count: int) -> None:
    """``expman search`` in this process, with ``count`` workers running its points."""
    pool = workers(url, count)
    try:
        assert main(["-C", str(repo.path), "search", "--queue", url, "--poll", "0.2"]) == 0
    finally:
        stop(pool)


def the_study(url: str) -> optuna.Study:
    storage = open_storage(url)
    (name,) = optuna.study.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage)


@pytest.fixture(params=["sqlite", "postgresql"])
def any_queue(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'queue.sqlite'}"
    return request.getfixturevalue("postgres").create_database(f"s_{os.getpid()}_{time.monotonic_ns()}")


def search_best(tmp_path: Path, runs_root: Path, algorithm: str) -> float:
    repo = search_repo(tmp_path / f"repo-{algorithm}", {"algorithm": algorithm, "max_points": 40, "parallel": 1})
    url = f"sqlite://{tmp_path / f'{algorithm}.sqlite'}"
    pool = workers(url)
    try:
        steering = steer(repo, url)
        out, _ = steering.communicate(timeout=300)
        assert steering.returncode == 0, out
    finally:
        stop(pool)
    study = the_study(url)
    assert len(study.trials) == 40 and all(t.state.name == "COMPLETE" for t in study.trials)
    return float(study.best_value)


def test_tpe_finds_the_known_optimum_and_beats_random_on_the_same_budget(tmp_path: Path, runs_root: Path) -> None:
    tpe = search_best(tmp_path, runs_root, "tpe")
    best = the_study(f"sqlite://{tmp_path / 'tpe.sqlite'}").best_params
    assert tpe < 0.25 and best["model.act"] == "tanh"  # (x, y) within 0.5 of the optimum
    random_best = search_best(tmp_path, runs_root, "random")
    assert tpe < random_best / 5  # seeded and one point at a time: both searches are the same on every run


def test_in_flight_never_exceeds_parallel_and_exactly_max_points_are_evaluated(
    tmp_path: Path, runs_root: Path, any_queue: str
) -> None:
    repo = search_repo(tmp_path / "repo", {"max_points": 12, "parallel": 3}, {"sleep": 0.3})
    pool = workers(any_queue, 5)  # more workers than parallel: the bound is the steering's
    seen: list[int] = []
    done = threading.Event()

    def sample() -> None:
        queue = open_queue(any_queue)
        while not done.is_set():
            counts = queue.counts()
            seen.append(counts.get("pending", 0) + counts.get("running", 0))
            time.sleep(0.1)
        queue.close()

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        steering = steer(repo, any_queue)
        out, _ = steering.communicate(timeout=300)
    finally:
        done.set()
        sampler.join()
        stop(pool)
    assert steering.returncode == 0, out
    assert max(seen) <= 3 and 3 in seen
    jobs = open_queue(any_queue).jobs_of()
    assert len(jobs) == 12 and {j.state for j in jobs} == {"succeeded"}
    runs = [p for p in run_dirs(runs_root) if (p / "run.json").exists()]
    assert len(runs) == 12
    study = the_study(any_queue)
    told = {t.user_attrs["expman_run_id"]: t.value for t in study.trials}
    for run in runs:
        record = read_record(run)
        assert record["search"]["study"] == study.study_name and record["status"] == "succeeded"
        results = json.loads((run / "output" / "results.json").read_text())
        assert told[record["run_id"]] == results["loss"]
        config = json.loads((run / "config.json").read_text())
        assert {k: config["model"][k.split(".")[1]] for k in SPACE} == record["search"]["params"]


def test_a_point_that_starts_to_run_is_a_change_so_the_steering_looks_again_soon(
    tmp_path: Path, runs_root: Path
) -> None:
    """The wait between looks grows while nothing changes; a worker claiming a point is a
    change, so the look for its end starts short, whatever the wait grew to while it was queued."""
    repo = search_repo(tmp_path / "repo", {"max_points": 2, "parallel": 1})
    url = f"sqlite://{tmp_path / 'queue.sqlite'}"
    environ = dict(os.environ)
    plan = plan_submission(repo.path, None, None, environ)
    queue, worker = open_queue(url), open_queue(url)
    (steering,) = studies(plan, check(plan, environ), queue, url, environ, ["expman", "search"], lambda line: None)
    steering.start()
    assert steering.step()  # the first point asked and queued
    assert not steering.step()
    assert worker.claim("worker") is not None
    assert steering.step()  # it runs now
    assert not steering.step()
    steering.lock.release()
    queue.close()
    worker.close()


def test_a_steering_killed_at_five_random_moments_resumes_the_same_study(
    tmp_path: Path, runs_root: Path, any_queue: str
) -> None:
    repo = search_repo(tmp_path / "repo", {"max_points": 16, "parallel": 3}, {"sleep": 0.2})
    pool = workers(any_queue, 3)
    rng = random.Random(14)
    try:
        for _ in range(5):  # each kill comes at a random moment once the steering has queued 1-3 more points
            steering = steer(repo, any_queue)
            target = len(open_queue(any_queue).jobs_of()) + rng.randint(1, 3)
            deadline = time.monotonic() + 120
            while len(open_queue(any_queue).jobs_of()) < target and steering.poll() is None:
                assert time.monotonic() < deadline, "the steering queued nothing"
                time.sleep(0.02)
            time.sleep(rng.uniform(0, 0.3))
            steering.kill()
            steering.wait()
        steering = steer(repo, any_queue)
        out, _ = steering.communicate(timeout=300)
    finally:
        stop(pool)
    assert steering.returncode == 0, out
    resumed = re.search(r"(\d+) of 16 points evaluated", out)
    assert resumed and int(resumed[1]) > 0, out  # the kills came while the search went on
    study = the_study(any_queue)
    assert len(study.trials) == 16 and all(t.state.name == "COMPLETE" for t in study.trials)
    jobs = open_queue(any_queue).jobs_of()
    assert len(jobs) == 16 and len({j.key for j in jobs}) == 16 and {j.state for j in jobs} == {"succeeded"}
    runs = {p.name: p for p in run_dirs(runs_root)}
    assert sorted(runs) == sorted(j.run_id for j in jobs)  # and no directory left half made
    for trial in study.trials:  # every result is in the study, each told once, from its own run
        run = runs[trial.user_attrs["expman_run_id"]]
        assert json.loads((run / "output" / "results.json").read_text())["loss"] == trial.value
        assert read_record(run)["search"]["trial"] == trial.number


def test_a_failing_point_is_told_failed_value_and_a_killed_worker_is_not_a_failure(
    tmp_path: Path, runs_root: Path
) -> None:
    marker = tmp_path / "first-run-started"
    search = {"max_points": 8, "parallel": 2, "failed_value": 1e9, "algorithm": "random"}
    repo = search_repo(tmp_path / "repo", search, {"fail_act": "sigmoid", "marker": str(marker)})
    url = f"sqlite://{tmp_path / 'queue.sqlite'}"
    steering = steer(repo, url)
    first = workers(url)
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    first.kill()  # the worker, with SIGKILL; its program goes on until the next attempt stops it
    first.wait()
    pool = workers(url, 2)
    try:
        out, _ = steering.communicate(timeout=300)
    finally:
        stop(pool)
    assert steering.returncode == 0, out
    study = the_study(url)
    assert len(study.trials) == 8 and all(t.state.name == "COMPLETE" for t in study.trials)
    jobs = {j.run_id: j for j in open_queue(url).jobs_of()}
    sigmoid = [t for t in study.trials if t.params["model.act"] == "sigmoid"]
    assert sigmoid, "seed 0 draws sigmoid at least once"
    for trial in study.trials:
        job = jobs[trial.user_attrs["expman_run_id"]]
        if trial in sigmoid:
            assert (trial.value, trial.user_attrs["outcome"], job.state, job.attempt) == (1e9, "failed", "failed", 2)
        else:
            assert trial.user_attrs["outcome"] == "succeeded" and trial.value < 1e9
    killed = [t for t in study.trials if jobs[t.user_attrs["expman_run_id"]].attempt == 2 and t not in sigmoid]
    assert len(killed) == 1  # the run whose worker was killed ran again and was told its real value


def test_segments_are_independent_studies_shown_per_segment(
    tmp_path: Path, runs_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    segments = {"key": "data.segment", "values": ["arms", "legs"]}
    repo = search_repo(tmp_path / "repo", {"max_points": 4, "parallel": 2, "segments": segments})
    url = f"sqlite://{tmp_path / 'queue.sqlite'}"
    pool = workers(url, 2)
    try:
        steering = steer(repo, url)
        out, _ = steering.communicate(timeout=300)
    finally:
        stop(pool)
    assert steering.returncode == 0, out
    names = optuna.study.get_all_study_names(open_storage(url))
    assert len(names) == 2
    by_segment: dict[str, list[str]] = {}
    for run in run_dirs(runs_root):
        record = read_record(run)
        segment = json.loads((run / "output" / "results.json").read_text())["segment"]
        assert record["search"]["segment"] == segment
        by_segment.setdefault(segment, []).append(record["search"]["study"])
    assert {k: len(v) for k, v in by_segment.items()} == {"arms": 4, "legs": 4}
    assert len({*by_segment["arms"]}) == 1 and set(by_segment["arms"]).isdisjoint(by_segment["legs"])
    capsys.readouterr()
    assert main(["-C", str(repo.path), "search", "--show", "--queue", url, "--format", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [(s["segment"], s["done"], len(s["values"])) for s in shown] == [("arms", 4, 4), ("legs", 4, 4)]
    assert main(["-C", str(repo.path), "search", "--show", "--queue", url]) == 0
    table = capsys.readouterr().out
    assert "best point per segment" in table and "arms" in table and "legs" in table


@pytest.mark.parametrize(
    ("search", "message"),
    [
        ({"space": {"model.x": {"method": "normal", "dimension": {}}}}, "expman.search.space.model.x.method: 'normal'"),
        (
            {"space": {"model.x": {"method": "uniform", "dimension": {"low": 2, "high": 1}}}},
            "expman.search.space.model.x.dimension: low 2 is not below high 1",
        ),
        (
            {"space": {"model.nope": {"method": "uniform", "dimension": {"low": 0, "high": 1}}}},
            "'model.nope' is not in config.json",
        ),
        ({"space": "missing_space.json"}, "no file 'missing_space.json' in the commit"),
        ({"objective": ""}, "expman.search.objective"),
        ({"algorithm": "grid"}, 'a grid needs "num" values'),
        ({"population": 4}, 'only population-based training uses it; set "algorithm": "pbt"'),
        ({"algorithm": "pbt"}, "pbt needs {"),
        (
            {"algorithm": "pbt", "fidelity": {"key": "data.segment", "step": 1, "max": 3}},
            "pbt starts each generation from its parent's snapshot",
        ),
        (
            {"algorithm": "pbt", "fidelity": {"key": "data.segment", "step": 1, "max": 1e300}},
            "generations; take larger steps",
        ),
    ],
)
def test_a_bad_search_is_one_line_before_anything_is_queued(
    tmp_path: Path, runs_root: Path, capsys: pytest.CaptureFixture[str], search: dict[str, Any], message: str
) -> None:
    repo = search_repo(tmp_path / "repo", search)
    url = f"sqlite://{tmp_path / 'queue.sqlite'}"
    capsys.readouterr()
    assert main(["-C", str(repo.path), "search", "--queue", url]) == 3
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "queue.sqlite").exists() and not runs_root.exists()


def test_a_space_in_a_file_of_the_commit(tmp_path: Path, runs_root: Path) -> None:
    repo = search_repo(tmp_path / "repo", {"space": "search_space.json", "max_points": 2, "parallel": 2})
    repo.commit({"search_space.json": json.dumps({"model.act": SPACE["model.act"]})}, "space in a file")
    url = f"sqlite://{tmp_path / 'queue.sqlite'}"
    pool = workers(url)
    try:
        assert main(["-C", str(repo.path), "search", "--queue", url, "--poll", "0.2"]) == 0
    finally:
        stop(pool)
    assert {tuple(t.params) for t in the_study(url).trials} == {("model.act",)}


def test_a_detached_search_of_points_in_docker(
    docker_client: Any, tmp_path: Path, runs_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = search_repo(tmp_path / "repo", {"max_points": 3, "parallel": 2}, backend="local")
    url = f"sqlite://{tmp_path / 'queue.sqlite'}"
    capsys.readouterr()
    assert main(["-C", str(repo.path), "search", "--queue", url, "--detach"]) == 0
    started = re.search(r"steering in the background \(pid (\d+)\)", capsys.readouterr().out)
    assert started
    pool = workers(url, 2)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            names = optuna.study.get_all_study_names(open_storage(url)) if (tmp_path / "queue.sqlite").exists() else []
            trials = the_study(url).trials if names else []
            if len(trials) == 3 and all(t.state.name == "COMPLETE" for t in trials):
                break
            time.sleep(0.5)
    finally:
        stop(pool)
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(started[1]), signal.SIGKILL)
    records = [read_record(p) for p in run_dirs(runs_root)]
    assert len(records) == 3 and {(r["backend"], r["status"]) for r in records} == {("local", "succeeded")}
    assert all(r["container_id"] and r["search"]["trial"] in (0, 1, 2) for r in records)
    (log,) = (runs_root / ".searches").iterdir()
    deadline = time.monotonic() + 30
    while "3 points evaluated" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "3 points evaluated (0 failed)" in log.read_text()


@pytest.mark.parametrize(
    ("algorithm", "space", "points"),
    [
        (
            "grid",
            {
                "model.act": SPACE["model.act"],
                "model.x": {"method": "uniform", "dimension": {"low": 0, "high": 1, "num": 2}},
            },
            6,
        ),
        ("cmaes", {"model.x": SPACE["model.x"], "model.y": SPACE["model.y"]}, 5),
    ],
)
def test_grid_and_cmaes_searches(
    tmp_path: Path, runs_root: Path, algorithm: str, space: dict[str, Any], points: int
) -> None:
    repo = search_repo(
        tmp_path / "repo",
        {"algorithm": algorithm, "space": space, "max_points": 5 if algorithm == "cmaes" else 50, "parallel": 2},
    )
    url = f"sqlite://{tmp_path / 'queue.sqlite'}"
    search_with_workers(repo, url, 2)
    trials = the_study(url).trials
    assert len(trials) == points and all(t.state.name == "COMPLETE" for t in trials)
    if algorithm == "grid":  # every point of the grid once, though max_points allows more
        assert sorted((t.params["model.act"], t.params["model.x"]) for t in trials) == sorted(
            (a, x) for a in ("relu", "tanh", "sigmoid") for x in (0.0, 1.0)
        )


def test_cancelling_a_searchs_sweep_stops_it_and_tells_no_failed_value(
    tmp_path: Path, runs_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = search_repo(tmp_path / "repo", {"max_points": 8, "parallel": 2, "failed_value": 1e9}, {"sleep": 30})
    url = f"sqlite://{tmp_path / 'queue.sqlite'}"
    steering = steer(repo, url)
    pool = workers(url, 2)
    try:
        deadline = time.monotonic() + 60
        while len(open_queue(url).jobs_of(states=["running"])) < 2:
            assert time.monotonic() < deadline, "two points did not start"
            time.sleep(0.1)
        (sweep,) = {j.sweep_id for j in open_queue(url).jobs_of()}
        cancel = [sys.executable, "-m", "expman", "cancel", "--sweep", str(sweep), "--queue", url]
        done = subprocess.run(cancel, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        out, _ = steering.communicate(timeout=120)
    finally:
        steering.kill()
        stop(pool)
    assert steering.returncode == 0 and "stopped early" in out, out
    trials = the_study(url).trials
    assert len(trials) == 2 and all(t.state.name == "FAIL" and t.value is None for t in trials)
    assert {t.user_attrs["outcome"] for t in trials} == {"cancelled"}


def test_show_before_any_search_makes_nothing(
    tmp_path: Path, runs_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = search_repo(tmp_path / "repo", {"max_points": 2})
    url = f"sqlite://{tmp_path / 'nowhere' / 'queue.sqlite'}"
    assert main(["-C", str(repo.path), "search", "--show", "--queue", url]) == 2
    assert "no search in" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()
