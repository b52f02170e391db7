"""expman gc: removes ended runs of the statuses asked for, after a confirmation naming the
count and the size; never a queued or running run, not even one queued again between the
listing and the removal; takes the queue jobs and the code copies nobody uses with them."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from expman import errors
from expman.cli import main
from expman.cli.runs import size
from expman.experiment.shared_code import SHARED_CODE_DIR
from expman.queue import open_queue
from expman.rundir import lifecycle
from expman.rundir.layout import RunDir, list_runs, utc_now
from expman.rundir.record import RunStatus
from expman.submit import gc

from .conftest import read_record, run_dirs
from .helpers import minimal_record, submit, wait_for_status

ALL_FINAL = "succeeded,failed,cancelled,lost"


def ended_run(root: Path, name: str, status: RunStatus, age: timedelta = timedelta(0), payload: int = 0) -> RunDir:
    """A run directory with a full record, ended ``age`` ago as ``status``, and ``payload``
    bytes of output."""
    run = RunDir(root / f"20261201-1000{len(list(root.glob('2*'))) if root.exists() else 0:02d}-000-{name}")
    (run.path / "output").mkdir(parents=True)
    (run.path / "logs").mkdir()
    record = minimal_record(run.run_id)
    record.mark_ended(status, utc_now() - age)
    lifecycle.create(run, record)
    (run.output / "model.bin").write_bytes(b"x" * payload)
    return run


def bytes_under(paths: list[Path]) -> int:
    return sum(p.stat().st_size for path in paths for p in path.rglob("*") if p.is_file() and not p.is_symlink())


@pytest.fixture
def mixed(runs_root: Path) -> dict[str, RunDir]:
    return {
        "failed": ended_run(runs_root, "fail", RunStatus.FAILED, payload=30_000),
        "cancelled": ended_run(runs_root, "canc", RunStatus.CANCELLED, payload=50_000),
        "succeeded": ended_run(runs_root, "good", RunStatus.SUCCEEDED, payload=70_000),
        "old-failed": ended_run(runs_root, "oldf", RunStatus.FAILED, age=timedelta(days=40), payload=1000),
    }


def test_dry_run_lists_and_removes_nothing(mixed, runs_root, capsys):
    assert main(["gc", "--status", "failed,cancelled", "--dry-run"]) == 0
    out = capsys.readouterr().out
    chosen = [mixed[k] for k in ("failed", "cancelled", "old-failed")]
    assert {line.split()[0] for line in out.splitlines()[:-1]} == {run.run_id for run in chosen}
    assert (
        out.splitlines()[-1] == f"would remove 3 runs ({size(bytes_under([r.path for r in chosen]))}) under {runs_root}"
    )
    assert set(list_runs(runs_root)) == set(mixed.values())


def test_without_a_terminal_or_yes_it_refuses_in_one_line(mixed, runs_root, capsys):
    assert main(["gc"]) == errors.UsageError.exit_code
    err = capsys.readouterr().err
    total = size(bytes_under([mixed["failed"].path, mixed["cancelled"].path, mixed["old-failed"].path]))
    assert f"remove 3 runs ({total})" in err and "--yes" in err and err.count("\n") == 1, err
    assert len(list_runs(runs_root)) == 4


def test_the_confirmation_names_count_and_size_and_no_keeps_everything(mixed, runs_root):
    expected = f"Remove 2 runs ({size(bytes_under([mixed['failed'].path, mixed['old-failed'].path]))}) under"
    for answer in ("n", "y"):
        screen = _gc_on_a_terminal(runs_root, answer, "--status", "failed")
        assert expected in screen, screen
    assert "removed 2 runs" in screen
    assert set(list_runs(runs_root)) == set([mixed["cancelled"], mixed["succeeded"]])


def _gc_on_a_terminal(runs_root: Path, answer: str, *args: str) -> str:
    """``expman gc`` in a real pseudo-terminal: answers ``answer`` once asked; the screen."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "expman", "gc", "--runs-root", str(runs_root), *args],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    os.close(terminal)
    screen = b""
    answered = False
    while True:
        ready, _, _ = select.select([controller], [], [], 60)
        assert ready, screen
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # the terminal closed: gc has ended
            break
        if not chunk:
            break
        screen += chunk
        if not answered and b"[y/N]" in screen:
            os.write(controller, answer.encode() + b"\n")
            answered = True
    os.close(controller)
    assert proc.wait(timeout=60) == (0 if answer == "y" else 1)
    return screen.decode(errors="replace")


def test_status_and_age_select_and_only_final_statuses_may_be_named(mixed, runs_root, capsys):
    assert main(["gc", "--status", "failed", "--older-than", "30d", "--yes"]) == 0
    assert "removed 1 run (" in capsys.readouterr().out
    assert not mixed["old-failed"].path.exists()
    assert set(list_runs(runs_root)) == set(mixed[k] for k in ("failed", "cancelled", "succeeded"))
    assert not list((runs_root / gc.TRASH_DIR).iterdir())
    for status in ("running", "queued"):
        assert main(["gc", "--status", f"failed,{status}", "--yes"]) == errors.UsageError.exit_code
        assert f"never removes {status} runs" in capsys.readouterr().err
    assert main(["gc", "--older-than", "a month", "--yes"]) == errors.UsageError.exit_code
    assert len(list_runs(runs_root)) == 3


def test_a_run_queued_again_between_listing_and_removal_is_kept(mixed, runs_root):
    criteria = gc.Criteria(gc.parse_statuses("failed"))
    candidates = gc.select(runs_root, criteria)
    assert {c.run for c in candidates} == {mixed["failed"], mixed["old-failed"]}
    lifecycle.requeue(mixed["failed"], "retry requested")  # as 'expman retry' does, after the listing
    outcome = gc.remove(runs_root, candidates, criteria, lambda done, total: None)
    assert outcome.removed == [mixed["old-failed"].run_id]
    assert outcome.kept == [(mixed["failed"].run_id, "it is queued now")]
    assert read_record(mixed["failed"].path)["status"] == "queued"


def test_a_trash_left_by_an_interrupted_gc_is_emptied(mixed, runs_root):
    trash = runs_root / gc.TRASH_DIR
    (trash / "20261130-000000-000-half.1234" / "output").mkdir(parents=True)
    assert main(["gc", "--status", "cancelled", "--yes"]) == 0
    assert list(trash.iterdir()) == []


def test_never_a_running_or_queued_run(make_repo, runs_root, tmp_path, capsys):
    repo = make_repo({"backend": "process"}, job={"mode": "sleep", "seconds": 120})
    assert submit(repo.path, "--detach") == 0
    running = Path(run_dirs(runs_root)[0])
    wait_for_status(runs_root, {"running"})
    url = f"sqlite://{tmp_path / 'queue.sqlite'}"
    assert main(["schedule", "-C", str(repo.path), "--queue", url]) == 0  # no worker: it stays queued
    (queued,) = [p for p in run_dirs(runs_root) if p != running]
    capsys.readouterr()
    try:
        assert main(["gc", "--status", ALL_FINAL, "--yes"]) == 0
        assert "no runs to remove" in capsys.readouterr().out
        assert read_record(running)["status"] == "running" and read_record(queued)["status"] == "queued"
        assert [job.run_id for job in open_queue(url).jobs_of()] == [queued.name]
    finally:
        assert main(["cancel", running.name]) == 0
    assert main(["gc", "--status", "cancelled", "--yes"]) == 0  # once it has ended, it may go
    assert not running.exists() and queued.exists()


def test_queue_jobs_and_unused_code_copies_go_and_used_ones_stay(make_repo, runs_root, tmp_path):
    url = f"sqlite://{tmp_path / 'queue.sqlite'}"
    repo = make_repo({"backend": "process", "sweep": {"job.mode": ["fail", "ok"]}, "queue": {"max_attempts": 1}})
    kept_commit = repo.git("rev-parse", "HEAD")
    assert main(["schedule", "-C", str(repo.path), "--queue", url]) == 0
    gone_commit = repo.set_expman(sweep={"job.mode": ["fail"]})
    assert main(["schedule", "-C", str(repo.path), "--queue", url]) == 0
    worker = subprocess.run(
        [sys.executable, "-m", "expman", "worker", "--queue", url],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert worker.returncode == 0, worker.stdout + worker.stderr
    runs = {(read_record(p)["git"]["commit"], read_record(p)["status"]): p for p in run_dirs(runs_root)}
    assert set(runs) == {(kept_commit, "failed"), (kept_commit, "succeeded"), (gone_commit, "failed")}
    assert copies_of(runs_root, gone_commit) and copies_of(runs_root, kept_commit)

    assert main(["gc", "--status", "failed", "--yes"]) == 0

    assert run_dirs(runs_root) == [runs[(kept_commit, "succeeded")]]
    assert [job.run_id for job in open_queue(url).jobs_of()] == [runs[(kept_commit, "succeeded")].name]
    assert copies_of(runs_root, gone_commit) == []
    assert not (runs_root / SHARED_CODE_DIR / f"{gone_commit}.json").exists()
    (kept_copy,) = copies_of(runs_root, kept_commit)
    assert (runs[(kept_commit, "succeeded")] / "code").resolve() == kept_copy
    assert (kept_copy / "job.py").is_file()


def copies_of(root: Path, commit: str) -> list[Path]:
    store = root / SHARED_CODE_DIR
    return sorted(p for p in store.iterdir() if p.is_dir() and p.name.startswith(f"{commit}."))


def test_progress_is_reported_per_run(mixed, runs_root):
    criteria = gc.Criteria(gc.parse_statuses(ALL_FINAL))
    reports: list[tuple[int, int]] = []
    gc.remove(runs_root, gc.select(runs_root, criteria), criteria, lambda done, total: reports.append((done, total)))
    assert reports == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert list_runs(runs_root) == []
