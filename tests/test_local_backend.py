"""The local Docker backend, on the real engine."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from pathlib import Path

import pytest

from expman import errors
from expman.backends.local import container_spec
from expman.cli import main
from expman.rundir.layout import RunDir

from .conftest import BASE_IMAGE, DOCKERFILE, JOB, init_repo, only_run, read_record, run_dirs
from .helpers import cancel_with_ctrl_c, minimal_record, submit, wait_for_status

RECORD_FIELDS = {
    "run_id",
    "status",
    "reason",
    "git",
    "config_hash",
    "image",
    "backend",
    "host",
    "container_id",
    "submitter",
    "host_facts",
    "queued_at",
    "started_at",
    "ended_at",
    "duration_s",
    "exit_code",
    "oom_killed",
    "peak_memory_bytes",
    "environment",
    "command",
    "resources",
    "schema_version",
}


def containers_of(client, run_id: str) -> list:
    return client.containers.list(all=True, filters={"label": f"expman.run_id={run_id}"})


def test_successful_run_record_outputs_and_contract(docker_client, make_repo, runs_root, capfd):
    repo = make_repo()
    assert submit(repo.path) == 0
    run = only_run(runs_root)
    record = read_record(run)
    assert RECORD_FIELDS <= set(record)
    assert record["status"] == "succeeded" and record["exit_code"] == 0 and record["oom_killed"] is False
    assert record["git"]["commit"] == repo.git("rev-parse", "HEAD") and record["git"]["subject"] == "initial experiment"
    assert record["git"]["author"] == "Test Researcher" and record["git"]["branch"] == "experiments"
    assert record["image"]["image_id"].startswith("sha256:") and record["image"]["engine_version"]
    assert record["image"]["dockerfile_hash"] and record["host_facts"]["cpu_count"] > 0
    assert record["submitter"]["uid"] == os.getuid()
    assert record["duration_s"] >= 0  # the program's own time, from the engine
    assert {p.name for p in run.iterdir()} == {"run.json", "config.json", "code.tar", "logs", "output"}
    assert {p.name for p in (run / "logs").iterdir()} >= {"stdout.log", "stderr.log", "build.log"}
    results = json.loads((run / "output" / "results.json").read_text())
    assert results["cwd"] == "/code" and results["uid"] == os.getuid() and results["gid"] == os.getgid()
    assert "image marker v1" in (run / "logs" / "stdout.log").read_text()
    assert "a line on stderr" in (run / "logs" / "stderr.log").read_text()
    assert "Step 1/3" in (run / "logs" / "build.log").read_text()
    assert "code version 1" in capfd.readouterr().out
    with tarfile.open(run / "code.tar") as tar:
        assert "job.py" in tar.getnames()
    assert containers_of(docker_client, record["run_id"]) == []  # removed once everything was saved


def test_container_settings_seen_by_the_engine(docker_client, make_repo, runs_root):
    repo = make_repo(expman={"resources": {"cpus": 0.5, "memory": "256m"}}, job={"mode": "sleep", "seconds": 4})
    assert submit(repo.path, "--detach") == 0
    record = wait_for_status(runs_root, {"running"})
    attrs = docker_client.api.inspect_container(record["container_id"])
    host = attrs["HostConfig"]
    assert host["Init"] is True and "no-new-privileges" in host["SecurityOpt"]
    assert host["NanoCpus"] == 500_000_000 and host["Memory"] == 256 * 2**20
    assert attrs["Config"]["User"] == f"{os.getuid()}:{os.getgid()}"
    assert attrs["Config"]["Labels"]["expman.run_id"] == record["run_id"]
    assert attrs["Config"]["Labels"]["expman.commit"] == record["git"]["commit"]
    env = dict(e.split("=", 1) for e in attrs["Config"]["Env"])
    assert env["EXPMAN_RUN_ID"] == record["run_id"] and env["EXPMAN_OUTPUT_DIR"] == "/output"
    assert env["EXPMAN_CONFIG"] == "/expman/config.json"
    assert (env["EXPMAN_ATTEMPT"], env["EXPMAN_RESUMED"]) == ("1", "0")
    mounts = attrs["Mounts"]
    assert [m["Destination"] for m in mounts] == ["/output"]
    assert not any("docker.sock" in m["Source"] for m in mounts)
    final = wait_for_status(runs_root, {"succeeded"})
    assert final["peak_memory_bytes"] > 0  # sampled from the engine's stats while it ran


def test_gpus_become_device_requests(tmp_path):
    record = minimal_record("r", gpus=2)
    spec = container_spec(record, str(RunDir(tmp_path).output), "1000:1000")
    assert spec["device_requests"][0]["Count"] == 2 and spec["device_requests"][0]["Capabilities"] == [["gpu"]]
    assert spec["user"] == "1000:1000" and spec["init"] is True


def test_code_only_commit_reuses_the_image(docker_client, make_repo, runs_root):
    repo = make_repo()
    assert submit(repo.path) == 0
    repo.commit({"job.py": JOB.replace('job.get("version", 1)', '"2"')}, "change only code")
    assert submit(repo.path) == 0
    first, second = run_dirs(runs_root)
    assert read_record(first)["image"]["image_id"] == read_record(second)["image"]["image_id"]
    log = (second / "logs" / "build.log").read_text()
    assert "Running in" not in log and log.count("Using cache") == 2
    assert "code version 2" in (second / "logs" / "stdout.log").read_text()


def test_older_commit_runs_its_own_code_and_dockerfile(docker_client, make_repo, runs_root):
    repo = make_repo()
    old = repo.git("rev-parse", "HEAD")
    repo.commit({"job.py": JOB.replace('job.get("version", 1)', '"new"'), "Dockerfile": DOCKERFILE.replace("v1", "v2")})
    assert submit(repo.path, "--commit-hash", old[:8]) == 0
    run = only_run(runs_root)
    out = (run / "logs" / "stdout.log").read_text()
    assert "code version 1" in out and "image marker v1" in out
    assert read_record(run)["git"]["commit"] == old


def test_timeout_kills_the_container(docker_client, make_repo, runs_root):
    repo = make_repo(expman={"resources": {"timeout": "3s"}}, job={"mode": "sleep", "seconds": 120})
    assert submit(repo.path) == errors.RunFailedError.exit_code
    record = read_record(only_run(runs_root))
    assert record["status"] == "failed" and record["reason"] == "timeout" and record["duration_s"] < 60
    assert containers_of(docker_client, record["run_id"]) == []


def test_out_of_memory_is_recorded(docker_client, make_repo, runs_root):
    repo = make_repo(expman={"resources": {"memory": "64m"}}, job={"mode": "oom"})
    assert submit(repo.path) == errors.RunFailedError.exit_code
    record = read_record(only_run(runs_root))
    assert record["status"] == "failed" and record["oom_killed"] is True and record["reason"] == "out of memory"
    assert record["exit_code"] == 137


def test_ctrl_c_stops_the_container(docker_client, make_repo, runs_root):
    repo = make_repo(job={"mode": "sleep", "seconds": 120})
    code, record = cancel_with_ctrl_c(repo.path, runs_root)
    assert code == errors.RunCancelledError.exit_code
    assert record["status"] == "cancelled" and record["duration_s"] < 60
    assert containers_of(docker_client, record["run_id"]) == []


def test_planted_secrets_are_found_nowhere(docker_client, make_repo, runs_root, monkeypatch):
    secrets = {"HF_TOKEN": "hf_plantedHuggingFaceToken123", "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMIplantedK7MDENG"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    repo = make_repo(job={"mode": "env", "seconds": 0})
    repo.git("remote", "add", "origin", "https://user:ghp_x@host/repo")
    repo.set_job(mode="sleep", seconds=3)
    assert submit(repo.path, "--detach") == 0
    record = wait_for_status(runs_root, {"running"})
    inspected = json.dumps(docker_client.api.inspect_container(record["container_id"]))
    image = json.dumps(docker_client.api.inspect_image(record["image"]["image_id"]))
    wait_for_status(runs_root, {"succeeded"})
    planted = [*secrets.values(), "ghp_x", "user:"]
    run = only_run(runs_root)
    for path in run.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret in planted:
                assert secret.encode() not in data, f"{secret} found in {path}"
    for secret in planted:
        assert secret not in inspected and secret not in image
    assert read_record(run)["git"]["remote_url"] == "https://host/repo"


def test_unreachable_engine_names_the_socket(make_repo, runs_root, monkeypatch, capsys):
    repo = make_repo()
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    assert submit(repo.path) == errors.DockerUnavailableError.exit_code
    err = capsys.readouterr().err
    assert "unix:///nonexistent/docker.sock" in err and "--backend process" in err
    assert not runs_root.exists()


def test_build_failure_is_recorded_with_its_log(docker_client, make_repo, runs_root, capsys):
    repo = make_repo()
    repo.commit({"Dockerfile": f"FROM {BASE_IMAGE}\nRUN exit 7\n"}, "broken image")
    assert submit(repo.path) == errors.BuildError.exit_code
    run = only_run(runs_root)
    record = read_record(run)
    assert record["status"] == "failed" and "image build failed" in record["reason"]
    assert "RUN exit 7" in (run / "logs" / "build.log").read_text()


@pytest.fixture
def researcher(tmp_path_factory):
    """A real non-root user in the docker group, with a home it owns."""
    name = "expman-researcher"
    if subprocess.run(["id", name], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--create-home", "--groups", "docker", name], check=True)
    return pwd.getpwnam(name)


@pytest.fixture
def shared_dir():
    """A directory another user can reach (pytest's tmp_path is private to root)."""
    base = Path(tempfile.mkdtemp(prefix="expman shared ü '"))
    os.chmod(base, 0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def test_outputs_are_owned_by_a_non_root_submitter(docker_client, researcher, shared_dir):
    if os.getuid() != 0:
        pytest.skip("creating a user needs root")
    base = shared_dir
    repo = init_repo(base / "repo")
    # The interpreter lives under /root, which the user cannot read: run the flow once as
    # root first so every lazily imported module is loaded before the child drops root.
    os.environ["EXPMAN_RUNS_ROOT"] = str(base / "warm-up runs")
    try:
        assert main(["submit", "-C", str(repo.path)]) == 0
    finally:
        del os.environ["EXPMAN_RUNS_ROOT"]
    subprocess.run(["chown", "-R", f"{researcher.pw_uid}:{researcher.pw_gid}", str(base)], check=True)
    runs_root = base / "runs"
    pid = os.fork()
    if pid == 0:  # the child becomes the researcher and submits
        code = 99
        try:
            os.setgroups([grp.getgrnam("docker").gr_gid])
            os.setgid(researcher.pw_gid)
            os.setuid(researcher.pw_uid)
            os.environ.update(HOME=researcher.pw_dir, USER=researcher.pw_name, EXPMAN_RUNS_ROOT=str(runs_root))
            code = main(["submit", "-C", str(repo.path)])
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    run = only_run(runs_root)
    results = run / "output" / "results.json"
    assert (results.stat().st_uid, results.stat().st_gid) == (researcher.pw_uid, researcher.pw_gid)
    assert json.loads(results.read_text())["uid"] == researcher.pw_uid
    assert read_record(run)["submitter"]["user"] == researcher.pw_name


def test_ctrl_c_during_the_build_records_cancelled(docker_client, make_repo, runs_root):
    repo = make_repo()
    repo.commit({"Dockerfile": f"FROM {BASE_IMAGE}\nRUN sleep 60\n"}, "slow image")
    env = {**os.environ, "EXPMAN_RUNS_ROOT": str(runs_root)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "expman", "submit", "-C", str(repo.path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not list(runs_root.glob("*/logs/build.log")) or "Step 2/2" not in _read(runs_root):
        assert time.monotonic() < deadline and proc.poll() is None, "the build never started"
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == errors.RunCancelledError.exit_code
    record = read_record(only_run(runs_root))
    assert record["status"] == "cancelled" and record["reason"] == "cancelled by user before start"


def _read(runs_root: Path) -> str:
    return "".join(p.read_text() for p in runs_root.glob("*/logs/build.log"))


def test_a_lost_answer_to_a_container_create_leaves_nothing_and_is_retried(
    docker_client, make_repo, runs_root, monkeypatch
):
    """The engine made the container but its answer was lost: expman finds the container by
    its name (run id and attempt), removes it, and creates it again; one run, one container."""
    from .docker_proxy import LossyDockerProxy

    repo = make_repo()
    assert submit(repo.path) == 0  # the image is built and cached through the real socket
    proxy = LossyDockerProxy(lose_creates=1)
    monkeypatch.setenv("DOCKER_HOST", proxy.url)
    try:
        assert submit(repo.path) == 0
    finally:
        proxy.close()
    assert proxy.creates == 2
    record = read_record(run_dirs(runs_root)[-1])
    assert record["status"] == "succeeded"
    leftovers = docker_client.containers.list(all=True, filters={"label": f"expman.run_id={record['run_id']}"})
    assert leftovers == []
