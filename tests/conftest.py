"""Fixtures: real git repositories in awkward paths, and the real Docker engine.

A test that needs Docker fails when CI=true and the engine or the base image is missing;
elsewhere it is skipped with the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

BASE_IMAGE = "expman-base:bookworm"
IN_CI = os.environ.get("CI") == "true"
# Spaces, both quote kinds and non-ASCII: paths must reach git and Docker verbatim.
AWKWARD = "dir with spaces 'q\" ü"

JOB = """\
import json, os, sys, time
cfg = json.load(open(os.environ["EXPMAN_CONFIG"]))
job = cfg["job"]
out = os.environ["EXPMAN_OUTPUT_DIR"]
print("code version", job.get("version", 1), flush=True)
if os.path.exists("/image-marker"):
    print("image marker", open("/image-marker").read().strip(), flush=True)
print("a line on stderr", file=sys.stderr, flush=True)
mode = job.get("mode", "ok")
if mode == "sleep":
    time.sleep(job["seconds"])
elif mode == "oom":
    blocks = []
    while True:
        blocks.append(b"x" * (16 << 20))
elif mode == "fail":
    sys.exit(3)
elif mode == "checkpoint":  # SIGUSR1 writes a checkpoint; the run goes on
    import signal
    def on_signal(signum, frame):
        with open(os.path.join(out, "checkpoint.txt"), "a") as f:
            f.write(signal.Signals(signum).name + "\\n")
    signal.signal(signal.SIGUSR1, on_signal)
    time.sleep(job["seconds"])
elif mode == "env":
    print(json.dumps(dict(os.environ), sort_keys=True), flush=True)
elif mode == "signals":  # note every signal received (SIGTERM ends the run unless ignored)
    import signal, subprocess
    def on_signal(signum, frame):
        with open(os.path.join(out, "signals.txt"), "a") as f:
            f.write(f"{os.getpid()} {signal.Signals(signum).name}\\n")
        if signum == signal.SIGTERM and not job.get("ignore_term"):
            sys.exit(0)
    for name in ("SIGTERM", "SIGUSR1", "SIGINT"):
        signal.signal(getattr(signal, name), on_signal)
    if job.get("grandchild"):  # in a session of its own, holding stdout open
        daemon = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
        with open(os.path.join(out, "grandchild.pid"), "w") as f:
            f.write(str(daemon.pid))
    with open(os.path.join(out, "ready.txt"), "w") as f:
        f.write(str(os.getpid()))
    deadline = time.monotonic() + job["seconds"]
    while time.monotonic() < deadline:
        time.sleep(0.05)
elif mode == "resumable":  # counts steps; SIGUSR1 saves the count, SIGTERM ends; a new attempt resumes
    import signal
    state = os.path.join(out, "step.txt")
    step = int(open(state).read()) if os.path.exists(state) else 0
    with open(os.path.join(out, "resumes.txt"), "a") as f:
        f.write(f"{step}\\n")
    def note(name):
        with open(os.path.join(out, "signals.txt"), "a") as f:
            f.write(f"{os.getpid()} {name} {step}\\n")
    def on_usr1(signum, frame):
        note("SIGUSR1")
        with open(state + ".tmp", "w") as f:
            f.write(str(step))
        os.replace(state + ".tmp", state)
    def on_term(signum, frame):
        note("SIGTERM")
        sys.exit(143)
    signal.signal(signal.SIGUSR1, on_usr1)
    signal.signal(signal.SIGTERM, on_term)
    with open(os.path.join(out, "ready.txt"), "a") as f:
        f.write(str(os.getpid()) + "\\n")
    while step < job["steps"]:
        time.sleep(0.1)
        step += 1
elif mode == "fill":  # fill the output's disk, then go on printing (as a program that ignores the error)
    try:
        with open(os.path.join(out, "filler.bin"), "wb") as f:
            while True:
                f.write(b"x" * 65536)
                f.flush()
    except OSError:
        pass
    while True:
        print("still printing " + "y" * 200, flush=True)
        time.sleep(0.001)
with open(os.path.join(out, "results.json"), "w") as f:
    json.dump({"accuracy": 0.9, "uid": os.getuid(), "gid": os.getgid(), "cwd": os.getcwd()}, f)
"""
# A shell wrapper whose child runs in the foreground (not exec). Like a careful one it
# outlives the signals that reach it, so that the run lasts until its child has ended (a
# wrapper that dies at a signal ends a container at once, its child with it).
WRAPPER = "trap 'exit 143' TERM INT\ntrap '' USR1\npython3 job.py\n"
DOCKERFILE = f"FROM {BASE_IMAGE}\nCOPY requirements.txt /tmp/requirements.txt\nRUN echo v1 > /image-marker\n"


def clean_git_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}


class Repo:
    """A real git repository with an experiments branch."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def git(self, *args: str) -> str:
        proc = subprocess.run(["git", "-C", str(self.path), *args], capture_output=True, text=True, env=clean_git_env())
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    def write(self, files: dict[str, str]) -> None:
        for name, text in files.items():
            target = self.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)

    def commit(self, files: dict[str, str] | None = None, message: str = "change") -> str:
        self.write(files or {})
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.git("rev-parse", "HEAD")

    def set_job(self, message: str = "set job", **job: Any) -> str:
        config = json.loads((self.path / "config.json").read_text())
        config["job"] = job
        return self.commit({"config.json": json.dumps(config, indent=2)}, message)

    def set_expman(self, message: str = "set expman", **settings: Any) -> str:
        config = json.loads((self.path / "config.json").read_text())
        config["expman"].update(settings)
        return self.commit({"config.json": json.dumps(config, indent=2)}, message)


def init_repo(path: Path, expman: dict[str, Any] | None = None, job: dict[str, Any] | None = None) -> Repo:
    path.mkdir(parents=True)
    repo = Repo(path)
    repo.git("init", "-q", "-b", "experiments")
    repo.git("config", "user.name", "Test Researcher")
    repo.git("config", "user.email", "researcher@example.org")
    config = {
        "expman": {"command": ["python3", "job.py"], **(expman or {})},
        "job": job or {"mode": "ok"},
        "train": {"train_seed": 1},
    }
    repo.commit(
        {
            "config.json": json.dumps(config, indent=2),
            "Dockerfile": DOCKERFILE,
            "requirements.txt": "numpy\n",
            "job.py": JOB,
            "run.sh": WRAPPER,
            ".gitignore": "*.pyc\n",
        },
        "initial experiment",
    )
    return repo


@pytest.fixture
def make_repo(tmp_path: Path) -> Callable[..., Repo]:
    counter = iter(range(100))

    def make(expman: dict[str, Any] | None = None, job: dict[str, Any] | None = None) -> Repo:
        return init_repo(tmp_path / f"{AWKWARD} repo{next(counter)}", expman, job)

    return make


@pytest.fixture
def runs_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / f"{AWKWARD} runs"
    monkeypatch.setenv("EXPMAN_RUNS_ROOT", str(root))
    return root


def require(condition: bool, what: str) -> None:
    """Fail in CI, skip elsewhere, when a component the test needs is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{what} is missing (CI=true: tests that need it must not skip)")
    pytest.skip(f"{what} is missing")


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "no engine"
        require(False, f"a Docker engine ({exc})")
    try:
        client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        require(False, f"the base image {BASE_IMAGE} (scripts/build-base-image)")
    yield client
    client.close()


def run_dirs(root: Path) -> list[Path]:
    """The run directories under ``root``, oldest first (not expman's own hidden folders)."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def only_run(root: Path) -> Path:
    runs = run_dirs(root)
    assert len(runs) == 1, runs
    return runs[0]


def read_record(run: Path) -> dict[str, Any]:
    return json.loads((run / "run.json").read_text())


def _start_daemon(starter: Callable[[Path], Any], prefix: str) -> Any:
    import tempfile

    from .daemons import Missing

    try:
        return starter(Path(tempfile.mkdtemp(prefix=prefix)))
    except Missing as exc:
        require(False, str(exc))


@pytest.fixture(scope="session")
def sshd() -> Iterator[Any]:
    """A real sshd on a free 127.0.0.1 port, a key made for the test, a non-root remote user."""
    from .daemons import start_sshd

    daemon = _start_daemon(start_sshd, "expman-sshd-")
    yield daemon
    daemon.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """A real PostgreSQL server on a free 127.0.0.1 port, trusting loopback connections."""
    from .daemons import start_postgres

    server = _start_daemon(start_postgres, "expman-postgres-")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def slurm() -> Iterator[Any]:
    """A one-node Slurm cluster (munged, slurmctld, slurmd) with a slurm.conf written here."""
    from .daemons import start_slurm

    cluster = _start_daemon(start_slurm, "expman-slurm-")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    yield cluster
    cluster.stop()
