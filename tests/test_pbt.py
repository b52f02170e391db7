"""Population-based training over the real queue: generations of runs that start from their
parent's snapshot, exploit and explore, and fall back to their true ancestor."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest

from expman.cli import main
from expman.experiment.plan import plan_submission
from expman.queue import open_queue
from expman.runners.search import check, steer, studies
from expman.runners.search.pbt import PbtSteering
from expman.runners.search.study import open_storage

from .conftest import Repo, init_repo, read_record
from .test_search import search_with_workers, stop, workers

# Each step adds a gain that peaks at lr = 0.1; the state (step, score, lrs) is the checkpoint.
TRAIN = """\
import json, math, os, sys
cfg = json.load(open(os.environ["EXPMAN_CONFIG"]))
out = os.environ["EXPMAN_OUTPUT_DIR"]
lr, epochs = cfg["train"]["lr"], cfg["train"]["epochs"]
doomed = cfg["train"].get("doomed")  # the first run to train this far fails, every attempt
if doomed and epochs == doomed["epochs"]:
    try:
        fd = os.open(doomed["file"], os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        os.write(fd, os.environ["EXPMAN_RUN_ID"].encode())
        os.close(fd)
    except FileExistsError:
        pass
    if open(doomed["file"]).read() == os.environ["EXPMAN_RUN_ID"]:
        sys.exit(7)
path = os.path.join(out, "ckpt", "state.json")
state = json.load(open(path)) if os.path.exists(path) else {"step": 0, "score": 0.0, "lrs": []}
resumed = state["step"]
os.makedirs(os.path.dirname(path), exist_ok=True)
while state["step"] < epochs:
    state["step"] += 1
    state["score"] += 1 - (math.log10(lr) + 1) ** 2
    state["lrs"].append(lr)
    with open(path + ".tmp", "w") as f:
        json.dump(state, f)
    os.replace(path + ".tmp", path)
with open(os.path.join(out, "results.json"), "w") as f:
    json.dump({"score": state["score"], "step": state["step"], "resumed_from": resumed,
               "resumed": os.environ.get("EXPMAN_RESUMED")}, f)
"""
PBT = {
    "space": {"train.lr": {"method": "loguniform", "dimension": {"low": 1e-3, "high": 1.0}}},
    "objective": "score",
    "direction": "maximize",
    "algorithm": "pbt",
    "population": 4,
    "parallel": 4,
    "seed": 3,
    "fidelity": {"key": "train.epochs", "step": 2, "max": 6},
    "exploit": {"quantile": 0.25},
}


def pbt_repo(path: Path, search: dict[str, Any] | None = None, **train: Any) -> Repo:
    repo = init_repo(path, {"backend": "process", "queue": {"lease": "5s", "max_attempts": 2, "backoff": "0s"}})
    config = json.loads((repo.path / "config.json").read_text())
    search = {**PBT, **(search or {})}
    config["expman"].update(command=["python3", "train.py"], search=search, checkpoint={"paths": ["ckpt/"]})
    config["train"] = {"lr": 0.5, "epochs": 1, **train}
    repo.commit({"config.json": json.dumps(config, indent=2), "train.py": TRAIN}, "pbt")
    return repo


def steer_in_process(
    repo: Repo, url: str, count: int, between_steps: Callable[[PbtSteering, float], None]
) -> PbtSteering:
    """The repository's search steered in this process (``between_steps(steering, seconds)``
    runs between its steps and sleeps), with ``count`` workers running its points."""
    environ = dict(os.environ)
    plan = plan_submission(repo.path, None, None, environ)
    queue = open_queue(url)
    (steering,) = studies(plan, check(plan, environ), queue, url, environ, ["expman", "search"], lambda line: None)
    assert isinstance(steering, PbtSteering)
    pool = workers(url, count)
    try:
        steer([steering], poll_s=0.2, sleep=lambda seconds: between_steps(steering, seconds))
    finally:
        stop(pool)
        queue.close()
    return steering


def results(run_dir: str) -> dict[str, Any]:
    return json.loads((Path(run_dir) / "output" / "results.json").read_text())


def test_pbt_generations_fork_their_parents_snapshots_and_the_lineage_is_right(
    tmp_path: Path, runs_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = pbt_repo(tmp_path / "repo")
    url = f"sqlite://{tmp_path / 'queue.sqlite'}"
    removed: list[str] = []

    def between_steps(steering: PbtSteering, seconds: float) -> None:
        """After generation 1 has ended, before generation 2 is decided: remove the snapshot of
        generation 1's best run, whose member then has no snapshot of its own to continue from."""
        gen1 = [m for m in steering.members.values() if m.generation == 1]
        if not removed and len(gen1) == 4 and all(m.outcome for m in gen1):
            assert not steering.pending and not any(m.generation == 2 for m in steering.members.values())
            victim = max(gen1, key=lambda m: m.value or 0)
            shutil.rmtree(Path(victim.run_dir) / "checkpoints")
            removed.append(victim.run_dir)
        time.sleep(seconds)

    steering = steer_in_process(repo, url, 4, between_steps)
    members = list(steering.members.values())
    assert len(members) == 12 and all(m.outcome == "succeeded" for m in members)
    by_run = {m.run_id: m for m in members}
    for m in members:
        record = read_record(Path(m.run_dir))
        assert record["search"]["generation"] == m.generation and record["search"]["member"] == m.member
        assert record["search"]["parent"] == m.parent
        got = results(m.run_dir)
        assert got["step"] == 2 * (m.generation + 1)
        if m.parent is None:
            assert (m.generation, got["resumed_from"], got["resumed"]) == (0, 0, "0")
        else:  # started from a copy of its parent's final snapshot: the step counter goes on
            assert got["resumed_from"] == results(by_run[m.parent].run_dir)["step"] and got["resumed"] == "1"
            assert m.run_dir != by_run[m.parent].run_dir
    for generation in (1, 2):  # the worst member exploits the best one that has a snapshot
        ranked = sorted(
            (m for m in members if m.generation == generation - 1), key=lambda m: m.value or 0, reverse=True
        )
        worst = next(m for m in members if m.generation == generation and m.member == ranked[-1].member)
        best = next(m for m in ranked if m.run_dir not in removed)
        assert worst.origin == "exploit" and worst.parent == best.run_id
    (victim,) = removed  # its member continues from its own line's newest run with a snapshot
    lost = next(m for m in members if m.run_dir == victim)
    child = next(m for m in members if m.generation == 2 and m.member == lost.member)
    assert child.origin == "ancestor" and child.parent is not None
    ancestor = by_run[child.parent]
    assert (ancestor.member, ancestor.generation) == (lost.member, 0)  # its own tree, not the one it jumped to
    assert results(child.run_dir)["resumed_from"] == 2
    assert not any(m.parent == lost.run_id for m in members)  # never exploited: no snapshot

    capsys.readouterr()
    assert main(["lineage", steering.name, "--queue", url, "--runs-root", str(runs_root)]) == 0
    tree = capsys.readouterr().out
    assert all(f"member {i}" in tree for i in range(4)) and "exploits member" in tree
    last = next(m for m in members if m.generation == 2 and m.origin == "exploit")
    assert main(["lineage", last.run_id, "--format", "json", "--runs-root", str(runs_root)]) == 0
    schedule = json.loads(capsys.readouterr().out)
    assert [s["generation"] for s in schedule] == [0, 1, 2] and schedule[-1]["run_id"] == last.run_id
    assert schedule[-1]["parent"] == schedule[1]["run_id"]


def test_a_child_that_fails_every_attempt_is_made_again_from_its_true_ancestor(tmp_path: Path, runs_root: Path) -> None:
    doomed = {"epochs": 4, "file": str(tmp_path / "doomed")}
    repo = pbt_repo(tmp_path / "repo", {"fidelity": {"key": "train.epochs", "step": 2, "max": 4}}, doomed=doomed)
    url = f"sqlite://{tmp_path / 'queue.sqlite'}"
    search_with_workers(repo, url, 4)
    storage = open_storage(url)
    (name,) = optuna.study.get_all_study_names(storage)
    trials = optuna.load_study(study_name=name, storage=storage).trials
    assert len(trials) == 9  # 4 members x 2 generations, and the failed child made again
    failed = [t for t in trials if t.user_attrs["outcome"] != "succeeded"]
    (dead,) = failed
    assert Path(doomed["file"]).read_text() == dead.user_attrs["expman_run_id"]
    (again,) = [t for t in trials if t.user_attrs["origin"] == "replace"]
    assert again.user_attrs["member"] == dead.user_attrs["member"] and again.user_attrs["generation"] == 1
    ancestor = next(t for t in trials if t.user_attrs["expman_run_id"] == again.user_attrs["parent"])
    assert (ancestor.user_attrs["member"], ancestor.user_attrs["generation"]) == (dead.user_attrs["member"], 0)
    got = results(again.user_attrs["expman_run_dir"])
    assert (got["resumed_from"], got["step"]) == (2, 4)  # from the ancestor's snapshot
    generation1 = [t for t in trials if t.user_attrs["generation"] == 1 and t.user_attrs["outcome"] == "succeeded"]
    assert len(generation1) == 4  # the population kept its size
    jobs = {j.run_id: j for j in open_queue(url).jobs_of()}
    assert (jobs[dead.user_attrs["expman_run_id"]].state, jobs[dead.user_attrs["expman_run_id"]].attempt) == (
        "failed",
        2,
    )


def test_a_pbt_steering_killed_at_random_moments_makes_each_member_generation_once(
    tmp_path: Path, runs_root: Path
) -> None:
    repo = pbt_repo(tmp_path / "repo", {"parallel": 2})
    url = f"sqlite://{tmp_path / 'queue.sqlite'}"
    pool = workers(url, 2)
    argv = [sys.executable, "-m", "expman", "-C", str(repo.path), "search", "--queue", url, "--poll", "0.2"]
    try:
        for moment in random.Random(5).sample([0.8, 1.2, 1.6, 2.0, 2.4, 2.8], 4):
            steering = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(moment)
            steering.kill()
            steering.wait()
        assert subprocess.run(argv, capture_output=True, timeout=300).returncode == 0
    finally:
        stop(pool)
    storage = open_storage(url)
    (name,) = optuna.study.get_all_study_names(storage)
    trials = optuna.load_study(study_name=name, storage=storage).trials
    slots = sorted((t.user_attrs["member"], t.user_attrs["generation"]) for t in trials)
    assert slots == sorted((m, g) for m in range(4) for g in range(3))
    assert all(t.state.name == "COMPLETE" and t.user_attrs["outcome"] == "succeeded" for t in trials)
    by_run = {t.user_attrs["expman_run_id"]: t for t in trials}
    for trial in trials:
        got = results(trial.user_attrs["expman_run_dir"])
        parent = by_run.get(trial.user_attrs["parent"])
        assert got["resumed_from"] == (results(parent.user_attrs["expman_run_dir"])["step"] if parent else 0)
    assert len(open_queue(url).jobs_of()) == 12


def test_a_pending_child_whose_parent_lost_its_snapshot_starts_from_its_true_ancestor(
    tmp_path: Path, runs_root: Path
) -> None:
    repo = pbt_repo(tmp_path / "repo", {"parallel": 1, "fidelity": {"key": "train.epochs", "step": 2, "max": 4}})
    url = f"sqlite://{tmp_path / 'queue.sqlite'}"
    removed: list[tuple[int, str]] = []

    def between_steps(steering: PbtSteering, seconds: float) -> None:
        """Once generation 1 is decided: the parent of a child that waits to be made loses its snapshot."""
        waiting = [c for c in steering.pending if c.parent is not None]
        if not removed and waiting:
            parent = waiting[0].parent
            assert parent is not None
            shutil.rmtree(Path(str(parent.run_dir)) / "checkpoints")
            removed.append((waiting[0].member, str(parent.run_id)))
        time.sleep(seconds)

    steering = steer_in_process(repo, url, 1, between_steps)
    ((member, lost_parent),) = removed
    child = next(m for m in steering.members.values() if m.member == member and m.generation == 1)
    assert child.origin == "ancestor" and child.parent != lost_parent and child.outcome == "succeeded"
    own = next(m for m in steering.members.values() if m.member == member and m.generation == 0)
    if own.run_id == lost_parent:  # its own run lost its snapshot: nothing of its line is left, from scratch
        assert child.parent is None and results(str(child.run_dir))["resumed_from"] == 0
    else:  # it was to exploit another member: it continues its own line instead
        assert child.parent == own.run_id and results(str(child.run_dir))["resumed_from"] == 2
