"""The ssh backend against a real sshd on 127.0.0.1 and the real Docker engine behind it."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import paramiko
import pytest

from expman import errors
from expman.backends.remote import alive_timeout_s, connect
from expman.cli import main
from expman.experiment.config import HostSettings

from .conftest import BASE_IMAGE, only_run, read_record
from .daemons import kill_pids, start_sshd
from .helpers import submit, wait_for_status


def host_entry(sshd: Any, **overrides: Any) -> dict[str, Any]:
    entry = {
        "ssh": sshd.target,
        "identity_file": str(sshd.identity_file),
        "known_hosts": str(sshd.known_hosts),
        "runs_root": f"~/runs-{secrets.token_hex(4)}",
    }
    return {**entry, **overrides}


@pytest.fixture
def remote_repo(make_repo, sshd, docker_client):
    def make(job: dict[str, Any] | None = None, **host: Any) -> Any:
        return make_repo({"backend": "ssh", "hosts": {"box": host_entry(sshd, **host)}}, job)

    return make


def host_settings(sshd: Any) -> HostSettings:
    return HostSettings(
        name="box",
        user=sshd.user,
        hostname="127.0.0.1",
        port=sshd.port,
        runs_root="~",
        identity_file=str(sshd.identity_file),
        known_hosts=str(sshd.known_hosts),
    )


def remote_dir(sshd: Any, record: dict[str, Any]) -> Path:
    path = Path(record["remote"]["path"])
    assert path.is_relative_to(sshd.home)
    return path


def test_remote_submit_run_sync_and_table(remote_repo, sshd, runs_root, docker_client, capsys):
    repo = remote_repo()
    assert submit(repo.path) == 0
    run = only_run(runs_root)
    record = read_record(run)
    assert record["status"] == "succeeded" and record["backend"] == "ssh" and record["host"] == "box"
    assert record["remote"]["synced_at"] and record["image"]["image_id"].startswith("sha256:")
    results = json.loads((run / "output" / "results.json").read_text())
    remote_uid = int(subprocess.run(["id", "-u", sshd.user], capture_output=True, text=True).stdout)
    assert results["uid"] == remote_uid != os.getuid() and results["cwd"] == "/code"
    assert "code version 1" in (run / "logs" / "stdout.log").read_text()
    assert "a line on stderr" in (run / "logs" / "stderr.log").read_text()
    there = remote_dir(sshd, record)
    assert {p.name for p in there.iterdir()} == {"run.json", "config.json", "code.tar", "logs", "output"}
    assert json.loads((there / "run.json").read_text())["status"] == "succeeded"
    assert (there / "output" / "results.json").stat().st_uid == remote_uid
    assert not docker_client.containers.list(all=True, filters={"label": f"expman.run_id={run.name}"})
    capsys.readouterr()
    assert main(["table", "--value", "results.accuracy", "--format", "csv", "--rows", "train.train_seed"]) == 0
    assert "0.9" in capsys.readouterr().out


def test_one_connection_carries_many_docker_requests(sshd, docker_client):
    """Each Docker request is its own SSH channel; hundreds of them, each ending as the host
    closes it, must never make sshd drop the connection."""
    with connect(host_settings(sshd)) as host:
        engine = host.docker({})
        for _ in range(100):
            engine.api.ping()
            engine.containers.list(all=True, limit=1)
            engine.images.get(BASE_IMAGE)
        assert host.alive


def test_an_answering_link_outlives_many_keepalive_deadlines(sshd):
    """Each keepalive asks for a reply and gets one: an idle, healthy link stays open."""
    with connect(host_settings(sshd), alive_timeout_s=1.5) as host:
        time.sleep(4)  # several probes, each answered within its deadline
        assert host.alive and host.sftp.listdir(".") is not None


@pytest.mark.parametrize("value", ["soon", "0s"])
def test_an_unusable_alive_timeout_is_refused(value):
    with pytest.raises(errors.ConfigError, match="EXPMAN_SSH_ALIVE_TIMEOUT"):
        alive_timeout_s({"EXPMAN_SSH_ALIVE_TIMEOUT": value})
    assert alive_timeout_s({"EXPMAN_SSH_ALIVE_TIMEOUT": "2m"}) == 120 and alive_timeout_s({}) == 45


@pytest.fixture
def other_sshd(sshd):
    """A second sshd listener, as another test run or engineer on this machine would have."""
    workdir = Path(tempfile.mkdtemp(prefix="expman-sshd-"))
    daemon = start_sshd(workdir)
    yield daemon
    daemon.stop()
    shutil.rmtree(workdir, ignore_errors=True)


def test_killing_the_sessions_of_one_sshd_leaves_those_of_another(sshd, other_sshd):
    """A test ends only the processes it started: the sessions of its own sshd listener."""
    with connect(host_settings(sshd)) as mine, connect(host_settings(other_sshd)) as theirs:
        other_sshd.kill_sessions()
        with pytest.raises((OSError, EOFError, paramiko.SSHException)):
            theirs.sftp.listdir(".")
        assert mine.sftp.listdir(".") is not None and mine.alive


def submit_in_child(repo: Any, env: dict[str, str]) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "expman", "submit", "-C", str(repo.path)]
    return subprocess.Popen(argv, env=env, stderr=subprocess.PIPE)


def assert_left_going_and_recovered(
    proc: subprocess.Popen[bytes], runs_root: Path, env: dict[str, str], capsys
) -> None:
    """The submit ended as a lost connection; the run went on, and reconnecting brings it home."""
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == errors.ConnectionLostError.exit_code, stderr
    assert b"goes on there" in stderr
    run = only_run(runs_root)
    assert read_record(run)["status"] == "running"
    assert main(["show", run.name, "--format", "json"]) == 0  # reconnects: still running
    assert json.loads(capsys.readouterr().out)["status"] == "running"
    follow = subprocess.run(  # streams until the end, then syncs
        [sys.executable, "-m", "expman", "logs", run.name, "--follow"], env=env, capture_output=True, timeout=120
    )
    assert follow.returncode == 0 and b"code version 1" in follow.stdout, follow.stderr
    record = read_record(run)
    assert record["status"] == "succeeded" and record["exit_code"] == 0 and record["remote"]["synced_at"]
    assert json.loads((run / "output" / "results.json").read_text())["accuracy"] == 0.9
    assert main(["sync", run.name]) == 0
    assert "0 files" in capsys.readouterr().out  # nothing changed since


def test_dropped_connection_leaves_the_run_going_and_status_recovers(remote_repo, sshd, runs_root, capsys):
    repo = remote_repo(job={"mode": "sleep", "seconds": 8})
    env = {**os.environ, "EXPMAN_RUNS_ROOT": str(runs_root)}
    proc = submit_in_child(repo, env)
    wait_for_status(runs_root, {"running"})
    time.sleep(1.5)
    sshd.kill_sessions()
    assert_left_going_and_recovered(proc, runs_root, env, capsys)


def test_silent_link_is_declared_lost_and_the_run_recovers(remote_repo, sshd, runs_root, capsys):
    """The peer gone without closing: its sshd sessions stopped, the TCP connection still
    open. Keepalives that get no reply within the deadline end the follow as a closed link."""
    repo = remote_repo(job={"mode": "sleep", "seconds": 20})
    env = {**os.environ, "EXPMAN_RUNS_ROOT": str(runs_root), "EXPMAN_SSH_ALIVE_TIMEOUT": "5s"}
    proc = submit_in_child(repo, env)
    wait_for_status(runs_root, {"running"})
    frozen = sshd.freeze_sessions()
    try:
        proc.wait(timeout=60)
    finally:
        proc.kill()
        kill_pids(frozen)
    assert_left_going_and_recovered(proc, runs_root, env, capsys)


def test_detached_remote_run_status_sync_and_cancel(remote_repo, sshd, runs_root, capsys):
    repo = remote_repo(job={"mode": "sleep", "seconds": 120})
    assert submit(repo.path, "--detach") == 0
    run = only_run(runs_root)
    assert read_record(run)["status"] == "running"
    assert main(["runs"]) == 0 and "running" in capsys.readouterr().out
    assert main(["sync"]) == 0
    assert "still running" in capsys.readouterr().out
    assert main(["cancel", run.name]) == 0
    record = read_record(run)
    assert record["status"] == "cancelled" and record["remote"]["synced_at"]
    assert "code version 1" in (run / "logs" / "stdout.log").read_text()


def test_remote_timeout_is_enforced_when_the_status_is_read(remote_repo, runs_root):
    """A detached run past its timeout is asked to stop (SIGTERM to every process, a
    wrapper's child included), and recorded as a timeout once it has ended."""
    repo = remote_repo(job={"mode": "signals", "seconds": 120})
    repo.set_expman(command=["bash", "run.sh"], resources={"timeout": "8s", "kill_grace": "60s"})
    assert submit(repo.path, "--detach") == 0
    run_id = only_run(runs_root).name
    deadline = time.monotonic() + 60
    while not (only_run(runs_root) / "output" / "ready.txt").exists():  # its signal handlers are set
        assert time.monotonic() < deadline, "the program never started"
        assert main(["sync", run_id]) == 0
        time.sleep(0.5)
    while read_record(only_run(runs_root))["status"] == "running" and time.monotonic() < deadline:
        assert main(["runs"]) == 0
        time.sleep(0.5)
    record = read_record(only_run(runs_root))
    assert record["status"] == "failed" and record["reason"] == "timeout"
    assert main(["sync", record["run_id"]]) == 0
    signals = (only_run(runs_root) / "output" / "signals.txt").read_text().split()
    assert signals[1::2] == ["SIGTERM"] and record["exit_code"] == 143


@pytest.mark.parametrize("problem", ["wrong key", "unknown key", "refused login", "unreachable"])
def test_host_problems_are_refused_with_nothing_recorded(problem, remote_repo, sshd, runs_root, tmp_path, capsys):
    other_key = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)], check=True)
    known = tmp_path / "known_hosts"
    if problem == "wrong key":
        known.write_text(f"[127.0.0.1]:{sshd.port} {other_key.with_suffix('.pub').read_text()}")
        repo, code, text = remote_repo(known_hosts=str(known)), errors.HostKeyError.exit_code, "does not match"
    elif problem == "unknown key":
        known.write_text("")
        repo, code, text = remote_repo(known_hosts=str(known)), errors.HostKeyError.exit_code, "is not in"
    elif problem == "refused login":
        repo, code, text = remote_repo(identity_file=str(other_key)), errors.RemoteError.exit_code, "refused the login"
    else:
        with __import__("socket").socket() as s:
            s.bind(("127.0.0.1", 0))
            closed_port = s.getsockname()[1]
        repo = remote_repo(ssh=f"{sshd.user}@127.0.0.1:{closed_port}")
        code, text = errors.RemoteError.exit_code, "cannot reach"
    assert submit(repo.path) == code
    err = capsys.readouterr().err
    assert text in err and len(err.strip().splitlines()) == 1
    assert not runs_root.exists() or not list(runs_root.iterdir())


def test_cancel_works_for_local_runs(make_repo, runs_root, docker_client):
    repo = make_repo(job={"mode": "sleep", "seconds": 120})
    assert submit(repo.path, "--detach") == 0
    run = only_run(runs_root)
    assert main(["cancel", run.name]) == 0
    record = wait_for_status(runs_root, {"cancelled"})
    assert record["reason"] == "cancelled by user" and record["ended_at"]
    assert not docker_client.containers.list(all=True, filters={"label": f"expman.run_id={run.name}"})


def test_a_worker_runs_a_scheduled_ssh_run_on_the_host_chosen_at_schedule_time(
    make_repo, sshd, runs_root, tmp_path, docker_client
):
    """The worker has no plan: the host named by --host at schedule time comes from the
    record, its settings from the run's own config.json; the run is mirrored there only once
    a worker prepares it."""
    hosts = {"box": host_entry(sshd), "other": host_entry(sshd)}
    repo = make_repo({"backend": "ssh", "hosts": hosts, "host": "box"})
    url = f"sqlite://{tmp_path / 'queue.sqlite'}"
    assert main(["schedule", "-C", str(repo.path), "--queue", url, "--host", "other"]) == 0
    run = only_run(runs_root)
    assert read_record(run)["remote"] is None
    assert main(["worker", "--queue", url]) == 0
    record = read_record(run)
    assert record["status"] == "succeeded", record["reason"]
    assert record["host"] == record["remote"]["name"] == "other"
    assert remote_dir(sshd, record).parent.name == hosts["other"]["runs_root"].removeprefix("~/")
    assert json.loads((run / "output" / "results.json").read_text())["accuracy"] == 0.9


def test_a_worker_with_backend_ssh_runs_a_process_run_on_the_only_host(make_repo, sshd, runs_root, tmp_path):
    repo = make_repo({"hosts": {"box": host_entry(sshd)}})
    url = f"sqlite://{tmp_path / 'queue.sqlite'}"
    assert main(["schedule", "-C", str(repo.path), "--queue", url, "--backend", "process"]) == 0
    assert main(["worker", "--queue", url, "--backend", "ssh"]) == 0
    record = read_record(only_run(runs_root))
    assert record["status"] == "succeeded", record["reason"]
    assert record["host"] == record["remote"]["name"] == "box"
    remote_uid = int(subprocess.run(["id", "-u", sshd.user], capture_output=True, text=True).stdout)
    assert json.loads((only_run(runs_root) / "output" / "results.json").read_text())["uid"] == remote_uid


def test_a_worker_with_backend_ssh_and_no_host_to_choose_fails_the_job_in_one_line(
    make_repo, sshd, runs_root, tmp_path, capsys
):
    repo = make_repo({"hosts": {"box": host_entry(sshd), "other": host_entry(sshd)}})
    url = f"sqlite://{tmp_path / 'queue.sqlite'}"
    assert main(["schedule", "-C", str(repo.path), "--queue", url, "--backend", "process"]) == 0
    capsys.readouterr()
    assert main(["worker", "--queue", url, "--backend", "ssh"]) == 0
    record = read_record(only_run(runs_root))
    assert record["status"] == "failed" and len(record["attempts"]) == 1  # fails the same way again: final
    reason = record["reason"]
    assert "expman.host" in reason and "box, other" in reason and "--host" in reason and "\n" not in reason
    assert reason in capsys.readouterr().out


def test_a_worker_with_backend_ssh_fails_a_run_without_a_dockerfile_in_one_line(make_repo, sshd, runs_root, tmp_path):
    repo = make_repo({"hosts": {"box": host_entry(sshd)}})
    repo.git("rm", "-q", "Dockerfile")
    repo.commit(message="no Dockerfile: a process experiment")
    url = f"sqlite://{tmp_path / 'queue.sqlite'}"
    assert main(["schedule", "-C", str(repo.path), "--queue", url, "--backend", "process"]) == 0
    assert main(["worker", "--queue", url, "--backend", "ssh"]) == 0
    record = read_record(only_run(runs_root))
    assert record["status"] == "failed" and len(record["attempts"]) == 1 and record["remote"] is None
    assert "has no Dockerfile" in record["reason"] and "(process)" in record["reason"]
