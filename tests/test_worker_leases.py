"""A worker's hold on its job, each mechanism exercised on its own by a real worker process
against a real queue: the heartbeat keeps the lease of a program that runs several leases
long; a worker stopped past its lease, whose job another machine took over, stops its own
program when it comes back and records nothing; a write lock held past the queue's busy
timeout troubles the heartbeat but costs it neither its life nor the lease."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

from expman.queue import Job, JobState, Queue, open_queue
from expman.queue.dialects import SQLiteDialect
from expman.rundir import lifecycle
from expman.rundir.layout import RunDir, utc_now

from .conftest import read_record
from .test_queue import _is_zombie, _schedule_sleeper, _status, _wait, _worker, new_queue_url

RIVAL = "a worker on another machine"


@pytest.fixture(params=["sqlite", "postgresql"])
def queue_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return new_queue_url(request, tmp_path)


@contextmanager
def _leftovers_ended(worker: subprocess.Popen[Any], program: list[int]) -> Iterator[None]:
    """On the way out of a failed test, end the worker and its program (by their ids)."""
    try:
        yield
    except BaseException:
        if worker.poll() is None:
            worker.send_signal(signal.SIGCONT)
            worker.kill()
            worker.communicate()
        for pid in program:
            with suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        raise


def _running_program(run: Path) -> int:
    """The pid of the run's program once its attempt runs."""
    return _wait(lambda: _status(run) == "running" and read_record(run).get("pid"), "the attempt to run")


def _claims_nothing_until_exit(rival: Queue, worker: subprocess.Popen[Any], timeout_s: float = 120.0) -> set[float]:
    """Claim as a worker on another machine would, again and again until ``worker`` exits:
    every claim must find nothing. Returns the lease deadlines the job showed meanwhile."""
    deadlines: set[float] = set()
    deadline = time.monotonic() + timeout_s
    while worker.poll() is None:
        assert time.monotonic() < deadline, "the worker did not end"
        assert rival.claim(RIVAL) is None, "the job's lease ran out under a healthy worker"
        deadlines.update(job.lease_until for job in rival.jobs_of() if job.lease_until is not None)
        time.sleep(0.1)
    return deadlines


def _ran_once(url: str, run: Path) -> None:
    (job,) = open_queue(url).jobs_of()
    assert (job.state, job.attempt, job.worker) == ("succeeded", 1, read_record(run)["attempts"][0]["worker"])
    record = read_record(run)
    assert record["status"] == "succeeded" and [a["status"] for a in record["attempts"]] == ["succeeded"]


class TestLeases:
    def test_the_heartbeat_keeps_the_lease_of_a_program_several_leases_long(
        self, queue_url: str, make_repo: Any, runs_root: Path
    ) -> None:
        run = _schedule_sleeper(make_repo, runs_root, queue_url, seconds=8)  # four leases of 2 s
        worker = _worker(queue_url, dict(os.environ))
        program: list[int] = []
        with _leftovers_ended(worker, program):
            program.append(_running_program(run))
            deadlines = _claims_nothing_until_exit(open_queue(queue_url), worker)
        output, _ = worker.communicate()
        assert worker.returncode == 0, output
        assert len(deadlines) >= 3, deadlines  # the lease was extended while the program ran on
        _ran_once(queue_url, run)

    def test_a_stale_worker_stops_its_own_program_and_records_nothing(
        self, queue_url: str, make_repo: Any, runs_root: Path
    ) -> None:
        """No fresh worker on this host stops the program first: the job is taken over from
        another machine while this worker is stopped, and only this worker can stop it."""
        run = _schedule_sleeper(make_repo, runs_root, queue_url, seconds=600)
        stale = _worker(queue_url, dict(os.environ))
        program: list[int] = []
        with _leftovers_ended(stale, program):
            program.append(_running_program(run))
            os.kill(stale.pid, signal.SIGSTOP)
            taken, takeover = _take_over(queue_url, run)
            left = read_record(run)
            os.kill(stale.pid, signal.SIGCONT)
            _wait(lambda: _gone_while_held(takeover, taken, program[0]), "the stale worker to stop its program")
            assert takeover.finish(taken, JobState.SUCCEEDED)  # the stale worker now finds nothing to do
            output, _ = stale.communicate(timeout=60)
        assert stale.returncode == 0, output
        assert "attempt 1 lost its lease" in output or "result of attempt 1 rejected" in output, output
        assert read_record(run) == left  # nothing recorded after the takeover
        assert not (run / "output" / "results.json").exists()  # the program never reached its end
        (job,) = takeover.jobs_of()
        assert (job.state, job.attempt, job.worker) == ("succeeded", 2, RIVAL)


def _take_over(url: str, run: Path) -> tuple[Job, Queue]:
    """Claim the job once its lease ran out and begin attempt 2 in the record, as a worker
    on another machine does; the claimed job and that worker's queue."""
    takeover = open_queue(url)
    taken = _wait(lambda: takeover.claim(RIVAL), "the stopped worker's lease to run out")
    assert (taken.attempt, taken.worker) == (2, RIVAL)
    lifecycle.begin_attempt(
        RunDir(run), utc_now(), number=2, unfinished="its worker stopped heartbeating", worker=RIVAL, host="elsewhere"
    )
    return taken, takeover


def _gone_while_held(takeover: Queue, taken: Job, pid: int) -> bool:
    assert takeover.heartbeat(taken) == "ok"  # the other machine keeps its lease meanwhile
    return _is_zombie(pid)  # a zombie or no process at all


def test_a_lock_held_past_the_busy_timeout_costs_neither_the_heartbeat_nor_the_lease(
    make_repo: Any, runs_root: Path, tmp_path: Path
) -> None:
    """Fault 9, the worker's half: a second connection holds SQLite's write lock until the
    worker's heartbeat has given up on it (a 0.5 s busy timeout, retried for 1 s: the queue
    URL's options), then lets go; the lease (8 s) outlives the trouble, and the job runs once."""
    path = tmp_path / "queue.sqlite"
    url = f"sqlite://{path}?busy_timeout=0.5&retry_for=1"
    run = _schedule_sleeper(make_repo, runs_root, url, seconds=20, lease="8s")
    log = tmp_path / "worker.log"
    with open(log, "w") as out:
        argv = [sys.executable, "-m", "expman", "worker", "--queue", url]
        worker = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    program: list[int] = []
    with _leftovers_ended(worker, program):
        program.append(_running_program(run))
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            _wait(lambda: "heartbeat:" in log.read_text(), "the heartbeat to give up on the held lock")
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        rival = Queue(SQLiteDialect(path, "expman", busy_timeout_s=0.05))
        _claims_nothing_until_exit(rival, worker)
    assert worker.returncode == 0, log.read_text()
    said = [line.split(" ", 1)[1] for line in log.read_text().splitlines() if "heartbeat:" in line]
    assert len(said) == 2 and "stayed locked" in said[0], said
    assert said[1] == "heartbeat: the queue answers again", said
    _ran_once(url, run)
