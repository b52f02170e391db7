"""The queue contract, against a real SQLite file and a real PostgreSQL server alike:
atomic claims under contention, leases and fencing, retries, idempotent scheduling, idle
workers while rows are locked, and a connection killed in the middle of a claim."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from expman.cli import main
from expman.queue import JobState, NewJob, open_queue
from expman.rundir.layout import RunDir
from expman.rundir.lifecycle import record_lock

from .conftest import read_record

CLIENTS = Path(__file__).parent / "queue_clients.py"
LEASE = "2s"


@pytest.fixture(params=["sqlite", "postgresql"])
def queue_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return new_queue_url(request, tmp_path)


def new_queue_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty queue in the database ``request.param`` names (sqlite or postgresql)."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'queue.sqlite'}"
    server = request.getfixturevalue("postgres")
    return server.create_database(f"q_{os.getpid()}_{time.monotonic_ns()}")


def _jobs(count: int, **overrides: Any) -> list[NewJob]:
    fields = dict(sweep_id="s", priority=0, max_attempts=3, lease_s=60.0, backoff_s=0.0) | overrides
    return [NewJob(key=f"k{i}", run_id=f"r{i}", run_dir=f"/nowhere/r{i}", label="", **fields) for i in range(count)]


def _worker(url: str, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "expman", "worker", "--queue", url, *args]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait(check: Any, what: str, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _status(run: Path) -> str | None:
    try:
        return json.loads((run / "run.json").read_text())["status"]
    except (OSError, ValueError):
        return None


class TestQueueContract:
    def test_every_job_is_claimed_exactly_once_by_32_workers(self, queue_url: str, tmp_path: Path) -> None:
        queue = open_queue(queue_url)
        queue.add(_jobs(1000))
        outs = [tmp_path / f"claims-{i}" for i in range(32)]
        # a pause between the claim's SELECT and UPDATE widens the race window
        procs = [subprocess.Popen([sys.executable, str(CLIENTS), "claim", queue_url, str(o), "0.002"]) for o in outs]
        assert [p.wait(timeout=600) for p in procs] == [0] * 32
        claims = Counter(int(line) for o in outs for line in o.read_text().split())
        assert len(claims) == 1000 and set(claims.values()) == {1}
        assert sum(1 for o in outs if o.read_text()) > 1  # the work was really shared
        assert queue.counts() == {"succeeded": 1000}
        assert {j.attempt for j in queue.jobs_of()} == {1}

    def test_gc_deletes_only_finished_jobs_of_a_run(self, queue_url: str) -> None:
        queue = open_queue(queue_url)
        queue.add(_jobs(3))
        claimed = queue.claim("w")
        assert claimed is not None and claimed.run_id == "r0"
        queue.cancel(run_id="r1")
        assert queue.remove_jobs_of("r0") is False  # running
        assert queue.remove_jobs_of("r2") is False  # pending
        assert queue.remove_jobs_of("r1") is True  # cancelled: gone
        assert queue.remove_jobs_of("never") is True
        assert sorted(job.run_id for job in queue.jobs_of()) == ["r0", "r2"]
        queue.close()

    def test_scheduling_the_same_sweep_twice_adds_nothing(
        self, queue_url: str, make_repo: Any, runs_root: Path
    ) -> None:
        repo = make_repo({"backend": "process", "sweep": {"train.train_seed": [1, 2, 3], "repeat": 2}})
        assert main(["schedule", "-C", str(repo.path), "--queue", queue_url]) == 0
        assert main(["schedule", "-C", str(repo.path), "--queue", queue_url]) == 0
        queue = open_queue(queue_url)
        assert queue.counts() == {"pending": 6}
        assert len([p for p in runs_root.iterdir() if (p / "run.json").exists()]) == 6
        assert main(["schedule", "-C", str(repo.path), "--queue", queue_url, "--commit-hash", "HEAD"]) == 0
        assert queue.counts() == {"pending": 6}
        repo.commit({"notes.txt": "new code"}, "new code")  # another commit is other code: new runs
        assert main(["schedule", "-C", str(repo.path), "--queue", queue_url]) == 0
        assert queue.counts() == {"pending": 12}

    def test_worker_idles_while_every_pending_row_is_locked(
        self, queue_url: str, make_repo: Any, runs_root: Path
    ) -> None:
        repo = make_repo({"backend": "process", "queue": {"lease": LEASE}})
        assert main(["schedule", "-C", str(repo.path), "--queue", queue_url]) == 0
        release = _lock_all_pending(queue_url)
        worker = _worker(queue_url, dict(os.environ))
        try:
            time.sleep(3)
            assert worker.poll() is None, worker.communicate()[0]  # waiting, not gone
            assert open_queue(queue_url).counts() == {"pending": 1}
        finally:
            release()
        output, _ = worker.communicate(timeout=60)
        assert worker.returncode == 0, output
        assert open_queue(queue_url).counts() == {"succeeded": 1}

    @pytest.mark.parametrize(
        ("hook", "attempt_inside"),
        [("claim_pause", 0), ("claim_before_commit", 1)],
        ids=["before-the-update", "before-the-commit"],
    )
    def test_a_claim_cut_off_midway_is_all_or_nothing(
        self, queue_url: str, tmp_path: Path, hook: str, attempt_inside: int
    ) -> None:
        queue = open_queue(queue_url)
        queue.add(_jobs(1))
        marker = tmp_path / "in-claim"
        argv = [sys.executable, str(CLIENTS), "claim-once", queue_url, str(marker), "5", hook]
        client = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        _wait(marker.exists, "the claim to reach its pause")
        assert marker.read_text() == str(attempt_inside)  # the claim's own transaction has (not) updated the row
        (job,) = queue.jobs_of()
        assert (job.state, job.attempt, job.worker) == ("pending", 0, None)  # nobody else sees it before its COMMIT
        if queue_url.startswith("postgresql"):  # the server drops the connection; the client reconnects
            killed = queue._execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = ?",
                (f"claim-once {client.pid}",),
            ).fetchall()
            assert killed == [(True,)]
            output, _ = client.communicate(timeout=60)
            assert output.split() == ["1", "1"]  # claimed once after reconnecting: attempt 1, not 2
        else:  # the process dies holding the write lock
            client.kill()
            client.wait()
            (job,) = queue.jobs_of()
            assert (job.state, job.attempt, job.worker) == ("pending", 0, None)
            claimed = queue.claim("after")
            assert claimed is not None and claimed.attempt == 1
        (job,) = queue.jobs_of()
        assert (job.state, job.attempt) == ("running", 1)

    def test_worker_killed_mid_job_reruns_once_and_records_once(
        self, queue_url: str, make_repo: Any, runs_root: Path
    ) -> None:
        run, first = _first_attempt_running(make_repo, runs_root, queue_url, seconds=3)
        orphan = read_record(run)["pid"]
        first.kill()  # kill -9: no heartbeat, no record; its program runs on as an orphan
        first.communicate()
        assert main(["runs", "--runs-root", str(runs_root)]) == 0
        assert _status(run) == "running"  # not "lost": the queue owns it, and its lease is running out
        time.sleep(2.5)  # the lease expires
        second = _worker(queue_url, dict(os.environ))
        output, _ = second.communicate(timeout=120)
        assert second.returncode == 0, output
        record = read_record(run)
        assert record["status"] == "succeeded"
        assert [a["attempt"] for a in record["attempts"]] == [1, 2]
        assert record["attempts"][0]["status"] == "lost" and record["attempts"][1]["status"] == "succeeded"
        assert (run / "logs" / "attempt-1" / "stdout.log").exists()
        assert not Path(f"/proc/{orphan}").exists() or _is_zombie(orphan)  # the orphan was stopped
        (job,) = open_queue(queue_url).jobs_of()
        assert (job.state, job.attempt) == ("succeeded", 2)
        assert main(["table", "--runs-root", str(runs_root), "--format", "json"]) == 0

    def test_a_stopped_worker_that_comes_back_cannot_record(
        self, queue_url: str, make_repo: Any, runs_root: Path
    ) -> None:
        run, stale = _first_attempt_running(make_repo, runs_root, queue_url, seconds=4)
        with record_lock(RunDir(run)):  # the "running" record written, its lock let go: stop it after that
            os.kill(stale.pid, signal.SIGSTOP)
        time.sleep(3)  # past the lease
        fresh = _worker(queue_url, dict(os.environ))
        _wait(lambda: len(read_record(run)["attempts"]) == 2 and _status(run) == "running", "attempt 2 to run")
        os.kill(stale.pid, signal.SIGCONT)
        stale_output, _ = stale.communicate(timeout=60)
        fresh_output, _ = fresh.communicate(timeout=120)
        assert stale.returncode == 0 and fresh.returncode == 0, stale_output + fresh_output
        assert "rejected" in stale_output or "lost its lease" in stale_output, stale_output
        record = read_record(run)
        assert record["status"] == "succeeded" and len(record["attempts"]) == 2
        assert record["attempts"][1]["status"] == "succeeded"
        (job,) = open_queue(queue_url).jobs_of()
        assert (job.state, job.attempt) == ("succeeded", 2)

    def test_status_sees_sweeps_and_busy_workers_and_a_look_makes_nothing(
        self, queue_url: str, tmp_path: Path, capsys: Any
    ) -> None:
        status = ["status", "--queue", queue_url, "--runs-root", str(tmp_path / "no runs")]
        assert main(status) == 0 and "no queue yet" in capsys.readouterr().out
        assert not open_queue(queue_url, create=False).exists()  # no file, no tables
        queue = open_queue(queue_url)
        queue.register_worker("w1", "host", 1)
        queue.add(_jobs(3))
        first = queue.claim("w1")
        assert first is not None and queue.finish(first, JobState.SUCCEEDED)
        second = queue.claim("w1")
        assert second is not None
        (sweep,) = queue.sweeps()
        assert (sweep.sweep_id, sweep.counts) == ("s", {"succeeded": 1, "running": 1, "pending": 1})
        assert len(sweep.durations) == 1
        (worker,) = queue.live_workers()
        assert (worker.job_id, worker.jobs_done) == (second.id, 1)  # from the claim and the finish
        assert main([*status, "--sweep", "s"]) == 0
        out = capsys.readouterr().out
        assert "sweep s" in out and "1/3 done" in out and f"worker w1: job {second.id}, 1 done" in out

    def test_a_poison_job_runs_exactly_max_attempts(self, queue_url: str, make_repo: Any, runs_root: Path) -> None:
        queue_settings = {"lease": LEASE, "max_attempts": 3, "backoff": "0.5s"}
        repo = make_repo({"backend": "process", "queue": queue_settings}, {"mode": "fail"})
        assert main(["schedule", "-C", str(repo.path), "--queue", queue_url]) == 0
        (run,) = [p for p in runs_root.iterdir() if (p / "run.json").exists()]
        worker = _worker(queue_url, dict(os.environ))
        output, _ = worker.communicate(timeout=120)
        assert worker.returncode == 0, output
        (job,) = open_queue(queue_url).jobs_of()
        assert (job.state, job.attempt) == ("failed", 3) and "exit code 3" in job.error
        record = read_record(run)
        assert record["status"] == "failed" and record["reason"] == "exit code 3"
        assert [a["status"] for a in record["attempts"]] == ["failed"] * 3
        assert sorted(p.name for p in (run / "logs").iterdir() if p.is_dir()) == ["attempt-1", "attempt-2"]
        # put back by hand: one more attempt
        assert main(["retry", "--failed", "--queue", queue_url]) == 0
        assert read_record(run)["status"] == "queued"
        assert open_queue(queue_url).counts() == {"pending": 1}


def _schedule_sleeper(make_repo: Any, runs_root: Path, url: str, seconds: float, lease: str = LEASE) -> Path:
    """One scheduled run of a program that sleeps, with a short lease; its run directory."""
    repo = make_repo({"backend": "process", "queue": {"lease": lease}}, {"mode": "sleep", "seconds": seconds})
    assert main(["schedule", "-C", str(repo.path), "--queue", url]) == 0
    (run,) = [p for p in runs_root.iterdir() if (p / "run.json").exists()]
    return run


def _first_attempt_running(
    make_repo: Any, runs_root: Path, url: str, seconds: float
) -> tuple[Path, subprocess.Popen[str]]:
    """A scheduled sleeper and the worker whose first attempt of it is running."""
    run = _schedule_sleeper(make_repo, runs_root, url, seconds)
    worker = _worker(url, dict(os.environ))
    _wait(lambda: _status(run) == "running", "the first attempt to run")
    return run, worker


def _lock_all_pending(url: str) -> Any:
    """Hold every pending row (PostgreSQL) or the database's write lock (SQLite) in an open
    transaction, as another claim would; returns the release."""
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite://"), isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
    else:
        import psycopg

        conn = psycopg.connect(url)
        conn.execute("SELECT id FROM expman_jobs WHERE state = 'pending' FOR UPDATE").fetchall()

    def release() -> None:
        conn.rollback() if not isinstance(conn, sqlite3.Connection) else conn.execute("ROLLBACK")
        conn.close()

    return release


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return True


def test_configuration_errors_are_not_retried(make_repo: Any, runs_root: Path, tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'q.sqlite'}"
    repo = make_repo({"backend": "process", "command": ["no-such-program-here"], "queue": {"max_attempts": 5}})
    assert main(["schedule", "-C", str(repo.path), "--queue", url]) == 0
    assert main(["worker", "--queue", url]) == 0
    (job,) = open_queue(url).jobs_of()
    assert (job.state, job.attempt) == ("failed", 1) and "start failed" in job.error


def test_cancel_a_sweep(make_repo: Any, runs_root: Path, tmp_path: Path, capsys: Any) -> None:
    url = f"sqlite://{tmp_path / 'q.sqlite'}"
    repo = make_repo({"backend": "process", "sweep": {"train.train_seed": [1, 2, 3]}})
    assert main(["schedule", "-C", str(repo.path), "--queue", url]) == 0
    sweep = open_queue(url).jobs_of()[0].sweep_id
    assert main(["cancel", "--sweep", sweep, "--queue", url]) == 0
    assert "3 pending jobs cancelled" in capsys.readouterr().out
    assert open_queue(url).counts() == {"cancelled": 3}
    statuses = {read_record(p)["status"] for p in runs_root.iterdir() if (p / "run.json").exists()}
    assert statuses == {"cancelled"}
    assert main(["worker", "--queue", url]) == 0  # nothing to do


def test_status_shows_counts_progress_and_workers(make_repo: Any, runs_root: Path, tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'q.sqlite'}"
    repo = make_repo({"backend": "process", "sweep": {"train.train_seed": [1, 2]}}, {"mode": "sleep", "seconds": 2})
    assert main(["schedule", "-C", str(repo.path), "--queue", url]) == 0
    worker = _worker(url, dict(os.environ), "--forever")
    try:
        _wait(lambda: open_queue(url).counts().get("succeeded"), "a job to succeed")
        status = subprocess.run(
            [sys.executable, "-m", "expman", "status", "--queue", url], capture_output=True, text=True, check=True
        ).stdout
        assert "running" in status and "succeeded" in status and "/2 done" in status and "ETA" in status
        assert f"worker {os.uname().nodename}:{worker.pid}:" in status
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=60)
    assert worker.returncode == 0
    assert open_queue(url).live_workers() == []
    assert "running" not in open_queue(url).counts()  # the job it ran when stopped went back


def test_secret_in_a_queue_url_is_refused(tmp_path: Path, capsys: Any) -> None:
    code = main(["status", "--queue", "postgresql://alice:hunter2@127.0.0.1/db", "--runs-root", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 28 and "PGPASSWORD" in err and "hunter2" not in err
    code = main(["status", "--queue", "sqlite:///x.sqlite?table=jobs;DROP TABLE x", "--runs-root", str(tmp_path)])
    assert code == 28 and "not allowed" in capsys.readouterr().err


def test_values_with_sql_metacharacters_are_stored_verbatim(tmp_path: Path) -> None:
    queue = open_queue(f"sqlite://{tmp_path / 'q.sqlite'}?table=my_queue")
    evil = "x'); DROP TABLE my_queue_jobs; --"
    queue.add([NewJob(evil, evil, evil, evil, evil, 0, 1, 1.0, 0.0)])
    (job,) = queue.jobs_of(sweep_id=evil)
    assert (job.key, job.run_id, job.label) == (evil, evil, evil)


def test_workers_run_a_docker_sweep_that_the_table_reads(
    docker_client: Any, make_repo: Any, runs_root: Path, tmp_path: Path, capsys: Any
) -> None:
    url = f"sqlite://{tmp_path / 'q.sqlite'}"
    repo = make_repo({"sweep": {"train.train_seed": [1, 2, 3]}})
    assert main(["schedule", "-C", str(repo.path), "--queue", url]) == 0
    assert main(["worker", "--queue", url, "-j", "2"]) == 0
    assert open_queue(url).counts() == {"succeeded": 3}
    records = [read_record(p) for p in runs_root.iterdir() if (p / "run.json").exists()]
    assert {r["status"] for r in records} == {"succeeded"} and {r["backend"] for r in records} == {"local"}
    assert len({r["image"]["image_id"] for r in records}) == 1  # one image, built once, cached after
    assert all(r["container_id"] and r["attempts"][0]["worker"] for r in records)
    assert sorted(
        json.loads((runs_root / r["run_id"] / "config.json").read_text())["train"]["train_seed"] for r in records
    ) == [1, 2, 3]
    capsys.readouterr()
    assert main(["table", "--runs-root", str(runs_root), "--rows", "train.train_seed", "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["cells"]) == 3


def test_cancel_a_scheduled_run_while_a_worker_runs_it(make_repo: Any, runs_root: Path, tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'q.sqlite'}"
    repo = make_repo({"backend": "process", "queue": {"lease": "1.5s"}}, {"mode": "sleep", "seconds": 60})
    assert main(["schedule", "-C", str(repo.path), "--queue", url]) == 0
    (run,) = [p for p in runs_root.iterdir() if (p / "run.json").exists()]
    worker = _worker(url, dict(os.environ))
    _wait(lambda: _status(run) == "running", "the run to start")
    assert main(["cancel", run.name, "--queue", url]) == 0
    output, _ = worker.communicate(timeout=60)
    assert worker.returncode == 0, output
    record = read_record(run)
    assert (record["status"], record["reason"]) == ("cancelled", "cancelled by user")
    (job,) = open_queue(url).jobs_of()
    assert (job.state, job.attempt) == ("cancelled", 1)


def test_a_slurm_array_of_workers_drains_a_postgresql_queue(
    slurm: Any, postgres: Any, make_repo: Any, runs_root: Path
) -> None:
    url = postgres.create_database(f"q_slurm_{os.getpid()}")
    repo = make_repo(
        {"backend": "process", "sweep": {"train.train_seed": [1, 2, 3, 4]}}, {"mode": "sleep", "seconds": 1}
    )
    assert main(["schedule", "-C", str(repo.path), "--queue", url]) == 0
    logs = runs_root / "worker-logs"
    logs.mkdir()
    submitted = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--array=0-1",
            "--output",
            str(logs / "%A_%a.out"),
            "--wrap",
            f"{sys.executable} -m expman worker --queue {url}",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **slurm.environ},
    )
    job_id = submitted.stdout.strip()
    _wait(lambda: open_queue(url).counts() == {"succeeded": 4}, "the array to drain the queue", timeout_s=180)
    runs = [p for p in runs_root.iterdir() if (p / "run.json").exists()]
    # the queue hears of an outcome first, then the record is written
    _wait(lambda: {_status(p) for p in runs} == {"succeeded"}, "the last record to be written")
    records = [read_record(p) for p in runs]
    workers = {r["attempts"][0]["worker"] for r in records}
    assert len(records) == 4
    assert len(workers) >= 1 and all(r["attempts"][0]["environment"].get("SLURM_JOB_ID") for r in records)
    _wait(lambda: len(list(logs.glob(f"{job_id}_*.out"))) == 2, "both array tasks to write their logs")


def test_a_cancel_stops_a_short_running_job_before_it_ends(make_repo: Any, runs_root: Path, tmp_path: Path) -> None:
    """Fault 4: the worker hears of a cancel within about a second, not at its next lease
    extension (the default lease is two minutes): a job that would succeed six seconds in
    ends cancelled."""
    url = f"sqlite://{tmp_path / 'q.sqlite'}"
    repo = make_repo({"backend": "process"}, {"mode": "signals", "seconds": 6})
    assert main(["schedule", "-C", str(repo.path), "--queue", url]) == 0
    (run,) = [p for p in runs_root.iterdir() if (p / "run.json").exists()]
    worker = _worker(url, dict(os.environ))
    _wait(lambda: (run / "output" / "ready.txt").exists(), "the program to start")
    assert main(["cancel", run.name, "--queue", url]) == 0
    output, _ = worker.communicate(timeout=60)
    assert worker.returncode == 0, output
    record = read_record(run)
    assert (record["status"], record["reason"]) == ("cancelled", "cancelled by user"), output
    assert (run / "output" / "signals.txt").read_text().split()[1] == "SIGTERM"
    (job,) = open_queue(url).jobs_of()
    assert job.state == "cancelled"


def test_a_damaged_run_directory_fails_its_job_not_the_worker(make_repo: Any, runs_root: Path, tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'q.sqlite'}"
    repo = make_repo({"backend": "process", "sweep": {"train.train_seed": [1, 2]}})
    assert main(["schedule", "-C", str(repo.path), "--queue", url]) == 0
    damaged, intact = sorted(p for p in runs_root.iterdir() if (p / "run.json").exists())
    (damaged / "run.json").write_text("{ not json")
    worker = _worker(url, dict(os.environ))
    output, _ = worker.communicate(timeout=120)
    assert worker.returncode == 0 and "Traceback" not in output, output
    states = {job.run_id: (job.state, job.error) for job in open_queue(url).jobs_of()}
    assert states[damaged.name][0] == "failed" and "cannot read" in states[damaged.name][1]
    assert states[intact.name][0] == "succeeded" and _status(intact) == "succeeded"


def test_a_queue_with_its_own_tables_is_recorded_so_that_cancel_finds_it(
    make_repo: Any, runs_root: Path, tmp_path: Path
) -> None:
    url = f"sqlite://{tmp_path / 'q.sqlite'}?table=mine"
    repo = make_repo({"backend": "process"})
    assert main(["schedule", "-C", str(repo.path), "--queue", url]) == 0
    (run,) = [p for p in runs_root.iterdir() if (p / "run.json").exists()]
    assert read_record(run)["queue"]["url"] == url
    assert main(["cancel", run.name]) == 0  # no --queue: the recorded URL names the tables
    assert open_queue(url).counts() == {"cancelled": 1}


def test_an_idle_worker_wakes_for_a_job_another_process_adds_not_for_other_commits(tmp_path: Path) -> None:
    """SQLite: a worker waiting for work reads the queue when another connection commits, and
    returns once a job can be claimed (a server database is not watched: its wait runs out)."""
    url = f"sqlite://{tmp_path / 'queue.sqlite'}"
    scheduler = open_queue(url)
    waiting, woke = threading.Event(), threading.Event()

    def idle_worker() -> None:
        queue = open_queue(url)  # a connection per thread
        waiting.set()
        queue.wait_for_work(3600)
        woke.set()
        queue.close()

    threading.Thread(target=idle_worker, daemon=True).start()
    assert waiting.wait(30)
    scheduler.register_worker("w", "host", os.getpid())  # a commit that makes nothing claimable
    assert not woke.wait(0.5)
    scheduler.add(_jobs(1))
    assert woke.wait(30), "the waiting worker never saw the job added"
    assert scheduler.claim("w") is not None
    scheduler.close()
