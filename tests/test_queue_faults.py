"""The queue under faults, for real: a write lock held past SQLite's busy timeout by a
second connection; a full filesystem (a small tmpfs) under a SQLite file and under a
PostgreSQL tablespace; and a network filesystem (sshfs over the test sshd, a FUSE mount)
where SQLite must not be used at all."""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from expman.cli import main
from expman.errors import QueueError
from expman.queue import JobState, NewJob, Queue, open_queue
from expman.queue.filesystems import network_filesystem

from .conftest import AWKWARD, require


def _jobs(*keys: str) -> list[NewJob]:
    return [NewJob(key, f"run-{key}", f"/nowhere/{key}", "", "s", 0, 3, 60.0, 0.0) for key in keys]


def _hold_write_lock(path: Path) -> sqlite3.Connection:
    """A second connection holding the database's write lock, as a long transaction would."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)  # released from a timer
    conn.execute("BEGIN IMMEDIATE")
    return conn


def _one_line(exc: pytest.ExceptionInfo[QueueError]) -> str:
    message = exc.value.message
    assert "\n" not in message and "Traceback" not in message
    return message


# --- a lock held longer than the busy timeout -----------------------------------------


def _short_busy_queue(path: Path, retry_for_s: float) -> Queue:
    """A queue whose busy timeout is 50 ms (the URL's options)."""
    return open_queue(f"sqlite://{path}?busy_timeout=0.05&retry_for={retry_for_s}")


def test_a_lock_held_past_the_busy_timeout_is_waited_out(tmp_path: Path) -> None:
    queue = _short_busy_queue(tmp_path / "queue.sqlite", retry_for_s=60.0)
    queue.register_worker("w1", "host", 1)
    queue.add(_jobs("a", "b"))
    job = queue.claim("w1")
    assert job is not None
    holder = _hold_write_lock(tmp_path / "queue.sqlite")
    # held for 10x the busy timeout: every operation below waits past it at least once
    release = threading.Timer(0.5, lambda: holder.execute("ROLLBACK"))
    release.start()
    try:
        assert queue.heartbeat(job) == "ok"
        queue.worker_beat("w1")
        assert queue.finish(job, JobState.SUCCEEDED)
    finally:
        release.join()
        holder.close()
    assert queue.counts() == {"succeeded": 1, "pending": 1}


def test_a_lock_held_past_every_retry_is_one_queue_error(tmp_path: Path) -> None:
    queue = _short_busy_queue(tmp_path / "queue.sqlite", retry_for_s=0.3)
    queue.register_worker("w1", "host", 1)
    queue.add(_jobs("a", "b"))
    job = queue.claim("w1")
    assert job is not None
    holder = _hold_write_lock(tmp_path / "queue.sqlite")
    try:
        assert queue.claim("w2") is None  # a worker idles while another holds the lock
        for operation in (lambda: queue.heartbeat(job), lambda: queue.worker_beat("w1")):
            with pytest.raises(QueueError) as raised:
                operation()
            message = _one_line(raised)
            assert str(tmp_path / "queue.sqlite") in message and "locked" in message
        with pytest.raises(QueueError):  # a second worker starting meanwhile: one line, no traceback
            _short_busy_queue(tmp_path / "queue.sqlite", retry_for_s=0.3).register_worker("w2", "host", 2)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert queue.heartbeat(job) == "ok"  # the queue works again once the lock is gone


# --- a full filesystem --------------------------------------------------------------


@contextmanager
def _small_tmpfs(mount: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted on ``mount`` (a new directory) while the block runs."""
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "expman-test", str(mount)], capture_output=True, text=True
    )
    require(done.returncode == 0, f"a tmpfs mount (needs root: {done.stderr.strip()})")
    try:
        yield mount
    finally:  # lazy: a connection a failed test left open must not keep the mount
        subprocess.run(["umount", "--lazy", str(mount)], check=True)


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    with _small_tmpfs(tmp_path / f"{AWKWARD} small fs") as mount:
        yield mount


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\1" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def test_a_full_queue_database_is_one_line_and_loses_nothing(small_filesystem: Path) -> None:
    path = small_filesystem / "queue.sqlite"
    queue = open_queue(f"sqlite://{path}")
    try:
        _fill_and_exercise(queue, path, small_filesystem)
    finally:
        queue.close()


def _fill_and_exercise(queue: Queue, path: Path, small_filesystem: Path) -> None:
    queue.register_worker("w1", "host", 1)
    queue.add(_jobs("a", "b"))
    running = queue.claim("w1")
    assert running is not None
    filler = _fill(small_filesystem)
    operations = {
        "add": lambda: queue.add(_jobs("c")),
        "claim": lambda: queue.claim("w2"),
        "finish": lambda: queue.finish(running, JobState.SUCCEEDED),
        "heartbeat": lambda: queue.heartbeat(running),
        "worker beat": lambda: queue.worker_beat("w1"),
    }
    for name, operation in operations.items():
        with pytest.raises(QueueError) as raised:
            operation()
        message = _one_line(raised)
        assert str(path) in message and "database or disk is full" in message, (name, message)
    filler.unlink()
    with sqlite3.connect(path) as check:
        assert check.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    jobs = {job.key: job for job in queue.jobs_of()}  # every row readable
    assert set(jobs) == {"a", "b"}  # the add was not half applied
    # the finish was not written: still running as attempt 1, so its lease runs out as usual
    assert (jobs["a"].state, jobs["a"].attempt, jobs["a"].worker) == ("running", 1, "w1")
    assert jobs["a"].lease_until is not None
    assert (jobs["b"].state, jobs["b"].attempt) == ("pending", 0)  # the claim was not committed
    assert queue.finish(running, JobState.SUCCEEDED)  # and the queue works again
    claimed = queue.claim("w2")
    assert claimed is not None and claimed.key == "b"


@pytest.fixture
def postgres_on_small_filesystem(postgres: Any) -> Iterator[tuple[str, Path]]:
    """A PostgreSQL database whose tables live in a tablespace on a 1 MiB tmpfs."""
    name = f"q_full_{os.getpid()}_{time.monotonic_ns()}"
    with _small_tmpfs(postgres.datadir.parent / name) as mount:  # a directory the server can reach
        shutil.chown(mount, "postgres", "postgres")
        postgres.psql(f"CREATE TABLESPACE {name} LOCATION '{mount}'")
        url = postgres.create_database(name)
        postgres.psql(f"ALTER DATABASE {name} SET default_tablespace = {name}")
        try:
            yield url, mount
        finally:
            postgres.psql(f"DROP DATABASE {name} WITH (FORCE)")
            postgres.psql(f"DROP TABLESPACE {name}")


def test_a_full_postgresql_queue_is_one_line_not_a_lost_connection(
    postgres_on_small_filesystem: tuple[str, Path],
) -> None:
    url, mount = postgres_on_small_filesystem
    queue = open_queue(f"{url}?retry_for=1")
    try:
        queue.add(_jobs("a"))
        filler = _fill(mount)
        with pytest.raises(QueueError) as raised:
            queue.add(_jobs(*(f"k{i}" for i in range(500))))  # more than the table's first pages hold
        message = _one_line(raised)
        assert "No space left on device" in message and "lost the connection" not in message
        filler.unlink()
        assert queue.counts() == {"pending": 1}  # nothing of the failed add
        assert len(queue.add(_jobs(*(f"k{i}" for i in range(500))))) == 500
    finally:
        queue.close()


# --- a network filesystem -------------------------------------------------------------


@pytest.fixture
def sshfs_mount(sshd: Any, tmp_path: Path) -> Iterator[Path]:
    """A directory of the test sshd's user, mounted here with sshfs (FUSE)."""
    require(shutil.which("sshfs") is not None, "sshfs (scripts/setup installs it)")
    remote = sshd.home / f"expman-sshfs-{os.getpid()}-{tmp_path.name}"
    remote.mkdir()
    shutil.chown(remote, sshd.user, sshd.user)
    mount = tmp_path / f"{AWKWARD} sshfs"
    mount.mkdir()
    options = [
        f"IdentityFile={sshd.identity_file}",
        f"UserKnownHostsFile={sshd.known_hosts}",
        "StrictHostKeyChecking=yes",
        "BatchMode=yes",
    ]
    argv = ["sshfs", "-p", str(sshd.port), *(f"-o{o}" for o in options), f"{sshd.user}@127.0.0.1:{remote}", str(mount)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    require(done.returncode == 0, f"an sshfs mount (sshfs said: {done.stderr.strip()})")
    try:
        yield mount
    finally:
        subprocess.run(["fusermount3", "-u", str(mount)], check=True)
        shutil.rmtree(remote)


def test_filesystems_are_told_apart(tmp_path: Path, small_filesystem: Path, sshfs_mount: Path) -> None:
    assert network_filesystem(tmp_path) is None
    assert network_filesystem(small_filesystem) is None
    assert network_filesystem(sshfs_mount) == "FUSE"
    assert network_filesystem(sshfs_mount / "not yet" / "made") == "FUSE"  # the nearest existing directory counts


def test_a_sqlite_queue_on_a_network_filesystem_is_refused(
    sshfs_mount: Path, make_repo: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    for path in (sshfs_mount / "queue.sqlite", sshfs_mount / "deeper" / "queue.sqlite"):
        with pytest.raises(QueueError) as raised:
            open_queue(f"sqlite://{path}")
        message = _one_line(raised)
        assert str(path) in message and "FUSE" in message
        assert "--queue postgresql://" in message and "EXPMAN_QUEUE" in message
    assert list(sshfs_mount.iterdir()) == []  # nothing was made there
    # the default queue lives in runs_root: a runs_root shared over the network is refused as it is
    monkeypatch.setenv("EXPMAN_RUNS_ROOT", str(sshfs_mount / "runs"))
    repo = make_repo({"backend": "process"})
    capsys.readouterr()
    assert main(["schedule", "-C", str(repo.path)]) == 28
    assert main(["worker"]) == 28
    err = capsys.readouterr().err
    assert err.count("network filesystem") == 2 and "postgresql://" in err
    assert not (sshfs_mount / "runs" / "queue.sqlite").exists()


def test_a_bad_wait_in_the_queue_url_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from expman.cli import main

    url = f"sqlite://{tmp_path / 'q.sqlite'}?busy_timeout=soon"
    assert main(["status", "--queue", url, "--runs-root", str(tmp_path)]) == 28
    assert "busy_timeout='soon': give a number of seconds" in capsys.readouterr().err
