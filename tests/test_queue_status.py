"""``expman status`` against a real SQLite queue: per-sweep lines, newest first, each with an
ETA from its own jobs; workers seen at their claims; sweep prefixes; and a look that creates
nothing."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from expman.cli import main
from expman.queue import JobState, NewJob, Queue, open_queue

OLD, NEW = "aaaa1111-0123abcd", "bbbb2222-4567cdef"


def _add(queue: Queue, sweep: str | None, count: int) -> None:
    queue.add(
        [
            NewJob(f"{sweep}-{i}", f"run-{sweep}-{i}", f"/nowhere/{sweep}-{i}", "", sweep, 0, 3, 60.0, 0.0)
            for i in range(count)
        ]
    )


def _succeed(queue: Queue, count: int) -> None:
    for _ in range(count):
        job = queue.claim("done-by-someone")
        assert job is not None
        assert queue.finish(job, JobState.SUCCEEDED)


def _set_durations(path: Path, sweep: str, seconds: float, ended_after: float) -> None:
    """The sweep's successes took ``seconds`` each and ended after ``ended_after`` (epoch s)."""
    with sqlite3.connect(path) as conn:
        conn.execute(
            "UPDATE expman_jobs SET ended_at = ? + id, claimed_at = ? + id - ? WHERE sweep_id = ? AND state = ?",
            (ended_after, ended_after, seconds, sweep, "succeeded"),
        )


@pytest.fixture
def two_sweeps(tmp_path: Path) -> tuple[str, Path]:
    """An old sweep of 40 one-second jobs, all done; a new one of 24 ten-second jobs, 14 done;
    one live worker."""
    path = tmp_path / "queue.sqlite"
    queue = open_queue(f"sqlite://{path}")
    _add(queue, OLD, 40)
    _succeed(queue, 40)
    _add(queue, NEW, 24)
    _succeed(queue, 14)
    queue.register_worker("w1", "host", 1)
    queue.close()
    _set_durations(path, OLD, 1.0, 1_000_000.0)
    _set_durations(path, NEW, 10.0, 2_000_000.0)
    return f"sqlite://{path}", path


def _status(capsys: Any, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["status", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_eta_comes_from_the_jobs_in_view(two_sweeps: tuple[str, Path], capsys: Any) -> None:
    url, _ = two_sweeps
    code, out, _ = _status(capsys, "--queue", url, "--format", "json")
    payload = json.loads(out)
    assert code == 0
    assert payload["eta_s"] == 100.0  # 10 jobs left x 10 s / 1 worker, not the old sweep's 1 s
    new, old = payload["sweeps"]
    assert (new["sweep"], new["done"], new["total"], new["eta_s"]) == (NEW, 14, 24, 100.0)
    assert (old["sweep"], old["done"], old["total"], old["eta_s"]) == (OLD, 40, 40, 0.0)
    code, out, _ = _status(capsys, "--queue", url, "--sweep", NEW, "--format", "json")
    assert json.loads(out)["eta_s"] == 100.0


def test_sweeps_are_shown_newest_first_with_a_total(two_sweeps: tuple[str, Path], capsys: Any) -> None:
    url, _ = two_sweeps
    code, out, _ = _status(capsys, "--queue", url)
    assert code == 0
    lines = out.splitlines()
    new = next(i for i, line in enumerate(lines) if NEW in line)
    old = next(i for i, line in enumerate(lines) if line.startswith("1 older finished sweep "))
    total = next(i for i, line in enumerate(lines) if line.startswith("total"))
    assert new < old < total and OLD not in out  # a finished older sweep is folded away
    assert "14/24 done" in lines[new] and "ETA 1m40s" in lines[new]
    assert "40/40 done" in lines[old]
    assert "54/64 done" in lines[total] and "ETA 1m40s" in lines[total]
    code, out, _ = _status(capsys, "--queue", url, "--sweep", OLD)
    assert f"sweep {OLD}" in out and "40/40 done" in out and "total" not in out


def test_older_finished_sweeps_fold_into_one_line(tmp_path: Path, capsys: Any) -> None:
    url = f"sqlite://{tmp_path / 'queue.sqlite'}"
    queue = open_queue(url)
    for sweep in ("cccc0001-00000000", "cccc0002-00000000", "cccc0003-00000000"):
        _add(queue, sweep, 2)
        _succeed(queue, 2)
    _add(queue, None, 1)  # a single run, scheduled last
    code, out, _ = _status(capsys, "--queue", url)
    assert code == 0
    assert "single runs" in out and "0/1 done" in out and "cccc0003" not in out
    assert "3 older finished sweeps" in out and "6/7 done" in out
    code, out, _ = _status(capsys, "--queue", url, "--format", "json")
    assert [s["sweep"] for s in json.loads(out)["sweeps"]] == [
        None,
        "cccc0003-00000000",
        "cccc0002-00000000",
        "cccc0001-00000000",
    ]


def test_a_sweep_is_named_by_a_unique_prefix(two_sweeps: tuple[str, Path], tmp_path: Path, capsys: Any) -> None:
    url, path = two_sweeps
    code, out, _ = _status(capsys, "--queue", url, "--sweep", "bbbb", "--format", "json")
    payload = json.loads(out)
    assert code == 0 and payload["counts"] == {"pending": 10, "succeeded": 14}
    assert [s["sweep"] for s in payload["sweeps"]] == [NEW]
    queue = open_queue(url)
    _add(queue, "bbbb2299-00000000", 1)
    queue.close()
    code, _, err = _status(capsys, "--queue", url, "--sweep", "bbbb22")
    assert code == 2 and err.count("\n") == 1
    assert NEW in err and "bbbb2299-00000000" in err
    code, _, err = _status(capsys, "--queue", url, "--sweep", "ffff")
    assert code == 2 and "no sweep" in err and err.count("\n") == 1


def test_a_worker_shows_its_job_from_the_claim_on(tmp_path: Path, capsys: Any) -> None:
    url = f"sqlite://{tmp_path / 'queue.sqlite'}"
    queue = open_queue(url)
    _add(queue, NEW, 2)
    queue.register_worker("w1", "host", 1)
    job = queue.claim("w1")
    assert job is not None
    (worker,) = queue.live_workers()
    assert (worker.job_id, worker.jobs_done) == (job.id, 0)
    code, out, _ = _status(capsys, "--queue", url)
    assert f"worker w1: job {job.id}, 0 done" in out
    assert queue.finish(job, JobState.SUCCEEDED)
    (worker,) = queue.live_workers()
    assert (worker.job_id, worker.jobs_done) == (None, 1)
    code, out, _ = _status(capsys, "--queue", url)
    assert "worker w1: idle, 1 done" in out


def test_status_of_a_new_runs_root_creates_nothing(tmp_path: Path, capsys: Any) -> None:
    root = tmp_path / "new runs root"
    code, out, _ = _status(capsys, "--runs-root", str(root))
    assert code == 0 and "no queue yet" in out
    assert not root.exists()
    path = tmp_path / "elsewhere" / "queue.sqlite"
    code, out, _ = _status(capsys, "--queue", f"sqlite://{path}", "--format", "json")
    assert code == 0 and json.loads(out)["exists"] is False
    assert not path.parent.exists()
    path.parent.mkdir()
    code, out, _ = _status(capsys, "--queue", f"sqlite://{path}", "--sweep", "x")
    assert code == 0 and "no queue yet" in out
    assert list(path.parent.iterdir()) == []


def test_changing_jobs_of_a_queue_never_made_is_an_error_that_makes_nothing(tmp_path: Path, capsys: Any) -> None:
    """retry and cancel --sweep change jobs already in a queue: a queue that was never made is
    one line, and they do not make it."""
    url = f"sqlite://{tmp_path / 'nowhere' / 'q.sqlite'}"
    assert main(["retry", "--failed", "--queue", url, "--runs-root", str(tmp_path)]) == 2
    assert main(["cancel", "--sweep", "abc", "--queue", url, "--runs-root", str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("no queue at") == 2
    assert not (tmp_path / "nowhere").exists()
