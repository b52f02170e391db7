"""Checkpoints that survive a killed worker and a Slurm requeue: the snapshot store on its own
(atomic, verified, damaged snapshots passed over), then real workers on a real queue, a real
Slurm cluster, and fork() as population-based training uses it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from expman.backends.checkpointing import Checkpointing
from expman.backends.process import ProcessBackend
from expman.backends.ssh import SSHBackend
from expman.cli import main
from expman.errors import CheckpointError, ConfigError, RemoteError
from expman.experiment.config import load_config
from expman.rundir import checkpoint
from expman.rundir.layout import RunDir, create_run_dir
from expman.rundir.lifecycle import Recorder
from expman.rundir.record import load_record

from .conftest import read_record
from .helpers import alive
from .test_queue import _status, _wait, _worker
from .test_slurm_backend import requeue_and_wait, wait_all
from .test_ssh_backend import host_entry

# Counts steps, writing ckpt/state.json (write, then rename) at each; resumes from it when
# it is there (a half-written one makes it fail). With "big_at", once at that step it waits
# for a "go" file, then writes a large file among its checkpoints.
STEPS = """\
import json, os, time
job = json.load(open(os.environ["EXPMAN_CONFIG"]))["job"]
out = os.environ["EXPMAN_OUTPUT_DIR"]
ckpt = os.path.join(out, "ckpt")
os.makedirs(ckpt, exist_ok=True)
found = sorted(os.listdir(ckpt))
state = os.path.join(ckpt, "state.json")
step = json.load(open(state))["step"] if os.path.exists(state) else 0
resumed_from = step
while step < job["steps"]:
    time.sleep(job.get("sleep", 0.05))
    step += 1
    with open(state + ".tmp", "w") as f:
        json.dump({"step": step}, f)
    os.replace(state + ".tmp", state)
    if job.get("big_at") == step:
        while not os.path.exists(os.path.join(out, "go")):
            time.sleep(0.05)
        with open(os.path.join(ckpt, "big.bin"), "wb") as f:
            f.write(b"x" * (2 << 20))
with open(os.path.join(out, "results.json"), "w") as f:
    json.dump({"final_step": step, "resumed_from": resumed_from, "found": found,
               "attempt": os.environ["EXPMAN_ATTEMPT"], "resumed": os.environ["EXPMAN_RESUMED"]}, f)
"""
CHECKPOINT = {"paths": ["ckpt/"], "interval": "1s", "max_mb": 1}


def _repo(make_repo: Any, job: dict[str, Any], **expman: Any) -> Any:
    repo = make_repo({"backend": "process", "checkpoint": CHECKPOINT, **expman}, job)
    repo.commit({"job.py": STEPS}, "a program that checkpoints")
    return repo


def _results(run: Path) -> dict[str, Any]:
    return json.loads((run / "output" / "results.json").read_text())


def _snapshot_step(run: Path) -> tuple[int, int] | None:
    """(seq, step) of the run's newest verified snapshot, once it holds a step."""
    found = checkpoint.newest(RunDir(run))
    if found is None:
        return None
    return found.seq, json.loads((found.path / "data" / "ckpt" / "state.json").read_text())["step"]


def _only_run(runs_root: Path) -> Path:
    (run,) = [p for p in runs_root.iterdir() if (p / "run.json").exists()]
    return run


# --- the store on its own ---------------------------------------------------------------------


@pytest.fixture
def run(tmp_path: Path) -> RunDir:
    made = create_run_dir(tmp_path / "runs")
    (made.output / "ckpt").mkdir()
    (made.output / "ckpt" / "state.json").write_text('{"step": 1}')
    return made


def _take(run: RunDir, max_bytes: int = 1 << 20) -> checkpoint.Snapshot | None:
    return checkpoint.snapshot(run, ["ckpt/"], "interval", max_bytes, attempt=1)


def test_a_snapshot_is_taken_only_when_something_changed_and_replaces_the_older(run: RunDir) -> None:
    first = _take(run)
    assert first is not None and first.seq == 1 and _take(run) is None
    os.utime(run.output / "ckpt" / "state.json", ns=(1, 1))
    assert _take(run) is None  # touched, not changed
    (run.output / "ckpt" / "state.json").write_text('{"step": 2}')
    second = _take(run)
    assert second is not None and second.seq == 2
    assert [p.name for p in (run.path / "checkpoints").iterdir()] == ["000002"]
    entry = second.files[0]
    assert entry["path"] == "ckpt/state.json" and entry["size"] == 11 and len(entry["sha256"]) == 64


def test_a_crashed_snapshot_is_ignored_then_cleaned_and_a_damaged_one_passed_over(run: RunDir) -> None:
    good = _take(run)
    assert good is not None
    store = run.path / "checkpoints"
    crashed = store / f".tmp-{socket.gethostname()}-{_dead_pid()}-abcdef"
    (crashed / "data").mkdir(parents=True)
    (store / "000007").mkdir()
    (store / "000007" / "manifest.json").write_text('{"files": [')  # cut short
    shutil.copytree(good.path, store / "000008")
    (store / "000008" / "data" / "ckpt" / "state.json").write_text('{"step": 9}')  # same size, other bytes
    newest = checkpoint.newest(run)
    assert newest is not None and newest.seq == 1
    (run.output / "ckpt" / "state.json").write_text('{"step": 3}')
    assert _take(run) is not None
    assert not crashed.exists()


def test_restore_replaces_what_a_killed_attempt_left(run: RunDir) -> None:
    assert _take(run) is not None
    (run.output / "ckpt" / "state.json").write_text('{"st')  # half-written
    (run.output / "ckpt" / "half.bin").write_bytes(b"\0" * 3)
    restored = checkpoint.restore(run, ["ckpt"])
    assert restored is not None and restored.seq == 1
    assert sorted(p.name for p in (run.output / "ckpt").iterdir()) == ["state.json"]
    assert (run.output / "ckpt" / "state.json").read_text() == '{"step": 1}'
    assert _take(run) is None  # restored with its mtime: nothing changed


def test_an_oversize_snapshot_is_refused_and_the_previous_kept(run: RunDir) -> None:
    assert _take(run, max_bytes=100) is not None
    (run.output / "ckpt" / "big.bin").write_bytes(b"x" * 200)
    with pytest.raises(CheckpointError, match="over max_mb"):
        _take(run, max_bytes=100)
    kept = checkpoint.newest(run)
    assert kept is not None and kept.seq == 1 and [f["path"] for f in kept.files] == ["ckpt/state.json"]


def test_nothing_to_snapshot_or_restore_is_no_error(tmp_path: Path) -> None:
    empty = create_run_dir(tmp_path / "runs")
    assert _take(empty) is None and checkpoint.restore(empty, ["ckpt"]) is None


@pytest.mark.parametrize("path", ["../x", "/abs", "ckpt/../../x", ".", "./"])
def test_a_path_that_escapes_the_output_is_refused(path: str) -> None:
    text = json.dumps({"expman": {"command": ["x"], "checkpoint": {"paths": ["ok/", path]}}})
    with pytest.raises(ConfigError, match=r"expman\.checkpoint\.paths\.1: .* not a path inside the output") as exc:
        load_config(text, "config.json")
    assert exc.value.exit_code == 3


def test_checkpoint_settings_have_defaults() -> None:
    text = json.dumps({"expman": {"command": ["x"], "checkpoint": {"paths": ["ckpt/"]}}})
    settings = load_config(text, "config.json").settings.checkpoint
    assert settings is not None and (settings.interval_s, settings.max_bytes) == (300.0, 100 * 2**20)


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# --- supervised: workers, oversize, Slurm, fork --------------------------------------------------


def test_a_killed_workers_run_resumes_from_its_newest_snapshot(make_repo: Any, runs_root: Path, tmp_path: Path) -> None:
    """kill -9 of the worker (and of its program): a worker taking over the job after the
    lease starts the program from the newest snapshot, whatever the killed attempt left
    half-written; its step counter goes on to the end."""
    url = f"sqlite://{tmp_path / 'queue.sqlite'}"
    repo = _repo(make_repo, {"steps": 200}, queue={"lease": "2s"})
    assert main(["schedule", "-C", str(repo.path), "--queue", url]) == 0
    run = _only_run(runs_root)
    first = _worker(url, dict(os.environ))
    _wait(lambda: (_snapshot_step(run) or (0, 0))[1] > 0, "a snapshot of the first attempt")
    first.kill()
    first.communicate()
    program = read_record(run)["pid"]
    os.killpg(program, signal.SIGKILL)
    _wait(lambda: not alive(program), "the first attempt's program to end")
    seq, saved = _snapshot_step(run) or (0, 0)
    (run / "output" / "ckpt" / "state.json").write_text('{"step": ')  # killed mid-write
    (run / "output" / "ckpt" / "half.bin").write_bytes(b"\0" * 100)
    second = _worker(url, dict(os.environ))
    output, _ = second.communicate(timeout=120)
    assert second.returncode == 0, output
    record = read_record(run)
    assert record["status"] == "succeeded", record["reason"]
    assert record["attempts"][1]["restored"]["snapshot"] == seq == record["restored"]["snapshot"]
    results = _results(run)
    assert saved > 0 and results["resumed_from"] == saved and results["final_step"] == 200
    assert (results["found"], results["attempt"], results["resumed"]) == (["state.json"], "2", "1")
    assert record["snapshot"]["reason"] == "end" and (_snapshot_step(run) or (0, 0))[1] == 200


def test_an_oversize_snapshot_warns_and_keeps_the_previous(make_repo: Any, runs_root: Path) -> None:
    repo = _repo(make_repo, {"steps": 3, "big_at": 2})
    submit = subprocess.Popen(
        [sys.executable, "-m", "expman", "submit", "-C", str(repo.path), "--detach"], env=dict(os.environ)
    )
    assert submit.wait(timeout=120) == 0
    run = _only_run(runs_root)
    _wait(lambda: _snapshot_step(run), "a first snapshot")
    (run / "output" / "go").write_text("")
    _wait(lambda: _status(run) not in ("queued", "running"), "the run to end")
    record = read_record(run)
    assert record["status"] == "succeeded", record["reason"]
    assert any("over max_mb" in w for w in record["warnings"]), record["warnings"]
    kept = checkpoint.newest(RunDir(run))
    assert kept is not None and [f["path"] for f in kept.files] == ["ckpt/state.json"]
    assert record["snapshot"]["snapshot"] == kept.seq
    assert _results(run)["final_step"] == 3


def test_a_requeued_slurm_job_resumes_from_its_snapshot(make_repo: Any, runs_root: Path, slurm: Any) -> None:
    repo = _repo(make_repo, {"steps": 400}, backend="slurm", slurm={"runtime": "process", "requeue": True})
    assert main(["submit", "-C", str(repo.path)]) == 0
    (record,) = wait_all(runs_root, {"running"})
    run = runs_root / record["run_id"]
    _wait(lambda: (_snapshot_step(run) or (0, 0))[1] > 0, "a snapshot of the first attempt")
    (record,) = requeue_and_wait(slurm, record["job_id"], runs_root)
    assert record["status"] == "succeeded", record["reason"]
    assert [a["attempt"] for a in record["attempts"]] == [1, 2]
    assert "restored" not in record["attempts"][0] and record["attempts"][1]["restored"]["attempt"] == 1
    results = _results(run)
    assert results["resumed_from"] > 0 and results["final_step"] == 400
    assert (results["attempt"], results["resumed"]) == ("2", "1")


def test_a_forked_child_starts_from_its_parents_snapshot(make_repo: Any, runs_root: Path, tmp_path: Path) -> None:
    repo = _repo(make_repo, {"steps": 5})
    assert main(["submit", "-C", str(repo.path)]) == 0
    parent = RunDir(_only_run(runs_root))
    repo.set_job(steps=8)
    url = f"sqlite://{tmp_path / 'queue.sqlite'}"
    assert main(["schedule", "-C", str(repo.path), "--queue", url]) == 0
    (child,) = [RunDir(p) for p in runs_root.iterdir() if (p / "run.json").exists() and p != parent.path]
    forked = checkpoint.fork(parent, child)
    assert forked is not None and forked.manifest["forked_from"]["run"] == parent.run_id
    worker = _worker(url, dict(os.environ))
    output, _ = worker.communicate(timeout=120)
    assert worker.returncode == 0, output
    results = _results(child.path)
    assert (results["resumed_from"], results["final_step"], results["attempt"], results["resumed"]) == (5, 8, "1", "1")
    assert read_record(child.path)["attempts"][0]["restored"]["snapshot"] == forked.seq


def test_a_parent_without_a_sound_snapshot_forks_nothing(run: RunDir, tmp_path: Path) -> None:
    child = create_run_dir(tmp_path / "runs")
    taken = _take(run)
    assert taken is not None
    (taken.path / "data" / "ckpt" / "state.json").write_text('{"step": 7}')  # damaged
    assert checkpoint.fork(run, child) is None
    shutil.rmtree(taken.path)
    assert checkpoint.fork(run, child) is None
    assert checkpoint.newest(child) is None


def test_an_ssh_runs_checkpoints_travel_over_sftp(
    make_repo: Any, sshd: Any, runs_root: Path, docker_client: Any
) -> None:
    """Snapshots of an ssh run are taken here from the host's output; a restore puts the
    snapshot back there, replacing what a killed attempt left."""
    repo = make_repo({"backend": "ssh", "hosts": {"box": host_entry(sshd)}, "checkpoint": CHECKPOINT}, {"steps": 5})
    repo.commit({"job.py": STEPS}, "a program that checkpoints")
    assert main(["submit", "-C", str(repo.path)]) == 0
    run = _only_run(runs_root)
    record = read_record(run)
    assert record["status"] == "succeeded", record["reason"]
    assert (_snapshot_step(run) or (0, 0))[1] == 5 and record["snapshot"]["reason"] == "end"
    there = Path(record["remote"]["path"]) / "output" / "ckpt"
    (there / "state.json").write_text('{"step": ')
    (there / "half.bin").write_bytes(b"\0" * 100)
    assert checkpoint.restore(RunDir(run), ["ckpt/"]) is not None
    backend = SSHBackend(dict(os.environ))
    try:
        backend.push_checkpoint(RunDir(run), load_record(RunDir(run)), ["ckpt/"])
    finally:
        backend.close()
    assert [p.name for p in there.iterdir()] == ["state.json"]
    assert json.loads((there / "state.json").read_text()) == {"step": 5}


# --- a hostile program: it controls everything under its output --------------------------------


def test_restore_never_writes_through_a_link_the_killed_attempt_left(run: RunDir, tmp_path: Path) -> None:
    """The killed attempt planted links at the restore's old temporary name and on the way
    to a checkpoint path: the restore refuses or replaces them, and never writes elsewhere."""
    (run.output / "model.pt").write_bytes(b"weights")
    assert checkpoint.snapshot(run, ["model.pt"], "interval", 1 << 20, attempt=1) is not None
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (run.output / ".model.pt.restoring").symlink_to(victim)
    assert checkpoint.restore(run, ["model.pt"]) is not None
    assert victim.read_text() == "keep" and (run.output / "model.pt").read_bytes() == b"weights"
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "ckpt").mkdir(parents=True)
    (elsewhere / "ckpt" / "keep").write_text("keep")
    (run.output / "deep" / "ckpt").mkdir(parents=True)
    (run.output / "deep" / "ckpt" / "state.json").write_text("{}")
    assert checkpoint.snapshot(run, ["deep/ckpt"], "interval", 1 << 20, attempt=1) is not None
    shutil.rmtree(run.output / "deep")
    (run.output / "deep").symlink_to(elsewhere)
    with pytest.raises(CheckpointError, match="deep"):
        checkpoint.restore(run, ["deep/ckpt"])
    assert sorted(p.name for p in (elsewhere / "ckpt").iterdir()) == ["keep"]


def test_restore_refuses_what_is_neither_file_nor_directory_on_the_way(run: RunDir) -> None:
    (run.output / "deep" / "ckpt").mkdir(parents=True)
    (run.output / "deep" / "ckpt" / "state.json").write_text("{}")
    assert checkpoint.snapshot(run, ["deep/ckpt"], "interval", 1 << 20, attempt=1) is not None
    shutil.rmtree(run.output / "deep")
    os.mkfifo(run.output / "deep")
    with pytest.raises(CheckpointError, match="deep"):
        checkpoint.restore(run, ["deep/ckpt"])


# Swaps ckpt/z between a file and a link to a secret, and ckpt/d between a directory and a
# link to the secret's directory, as fast as it can.
SWAPPER = """\
import os, sys
ckpt, secret = sys.argv[1], sys.argv[2]
z, d = os.path.join(ckpt, "z"), os.path.join(ckpt, "d")
n = 0
while True:
    n += 1
    with open(z + ".f", "w") as f:
        f.write(str(n))
    os.symlink(secret, z + ".l")
    os.replace(z + ".f", z)
    os.makedirs(d + ".d")
    with open(os.path.join(d + ".d", "x"), "w") as f:
        f.write(str(n))
    if os.path.islink(d):
        os.unlink(d)
    os.rename(d + ".d", d)
    os.symlink(os.path.dirname(secret), d + ".l")
    os.rename(d, d + ".old")
    os.rename(d + ".l", d)
    os.unlink(os.path.join(d + ".old", "x"))
    os.rmdir(d + ".old")
    os.replace(z + ".l", z)
"""


def test_a_snapshot_never_reads_through_a_link_swapped_in_meanwhile(run: RunDir, tmp_path: Path) -> None:
    secret = tmp_path / "secrets" / "secret"
    secret.parent.mkdir()
    secret.write_text("the secret")
    swapper = subprocess.Popen([sys.executable, "-c", SWAPPER, str(run.output / "ckpt"), str(secret)])
    held: list[str] = []
    try:
        _wait(lambda: (run.output / "ckpt" / "d").exists(), "the swapper to start")
        for _ in range(5000):  # until z was copied often enough (the swapper may run slow)
            if held.count("ckpt/z") >= 30:
                break
            taken = _take(run)
            for f in taken.files if taken is not None else []:
                held.append(f["path"])
                assert b"secret" not in (taken.path / "data" / f["path"]).read_bytes(), f["path"]
    finally:
        swapper.kill()
        swapper.wait()
    assert swapper.returncode == -signal.SIGKILL
    assert "ckpt/state.json" in held and "ckpt/z" in held and "ckpt/d/secret" not in held


def test_a_link_loop_is_a_checkpoint_error_never_a_traceback(run: RunDir) -> None:
    (run.output / "a" / "ckpt").mkdir(parents=True)
    (run.output / "a" / "ckpt" / "state.json").write_text("{}")
    assert checkpoint.snapshot(run, ["a/ckpt"], "interval", 1 << 20, attempt=1) is not None
    shutil.rmtree(run.output / "a")
    (run.output / "a").symlink_to("a")
    (run.output / "ckpt" / "loop").symlink_to("loop")
    assert checkpoint.snapshot(run, ["a/ckpt", "ckpt"], "interval", 1 << 20, attempt=1) is not None
    with pytest.raises(CheckpointError, match="a/ckpt|symbolic link"):
        checkpoint.restore(run, ["a/ckpt"])


def test_a_store_that_cannot_be_written_is_a_checkpoint_error(run: RunDir) -> None:
    (run.path / "checkpoints").write_text("not a directory")
    with pytest.raises(CheckpointError, match="checkpoints"):
        _take(run)
    with pytest.raises(CheckpointError, match="checkpoints"):
        checkpoint.restore(run, ["ckpt"])


class _LeaseRecorder(Recorder):
    """A worker's recorder whose lease is gone: it notes when the snapshot thread asks."""

    def __init__(self, run: RunDir) -> None:
        super().__init__(run)
        self.asked = threading.Event()

    @property
    def holds_run(self) -> bool:
        self.asked.set()
        return False


def test_interval_snapshots_stop_once_the_lease_is_lost(make_repo: Any, runs_root: Path, tmp_path: Path) -> None:
    """A new attempt elsewhere restores the newest snapshot: the attempt that lost the lease
    must neither take another nor remove that one."""
    repo = _repo(make_repo, {"steps": 1})
    assert main(["schedule", "-C", str(repo.path), "--queue", f"sqlite://{tmp_path / 'queue.sqlite'}"]) == 0
    run = RunDir(_only_run(runs_root))
    (run.output / "ckpt").mkdir()
    (run.output / "ckpt" / "state.json").write_text('{"step": 1}')
    assert _take(run) is not None
    (run.output / "ckpt" / "state.json").write_text('{"step": 2}')
    record = load_record(run)
    record.checkpoint = {**(record.checkpoint or {}), "interval_s": 0.01}
    recorder = _LeaseRecorder(run)
    checkpoints = Checkpointing(ProcessBackend(dict(os.environ)), run, record, recorder)
    checkpoints.start()
    try:
        _wait(lambda: recorder.asked.is_set() or _newest_seq(run) != 1, "the thread to ask or snapshot")
    finally:
        checkpoints.close()
    assert _newest_seq(run) == 1 and record.snapshot is None


def _newest_seq(run: RunDir) -> int | None:
    found = checkpoint.newest(run)
    return None if found is None else found.seq


def test_an_ssh_runs_checkpoints_never_follow_a_link_on_the_host(
    make_repo: Any, sshd: Any, runs_root: Path, docker_client: Any
) -> None:
    """The program controls the host's output: a checkpoint path made a link to the login
    user's files is not copied here, and a restore does not write through a linked directory."""
    repo = make_repo({"backend": "ssh", "hosts": {"box": host_entry(sshd)}, "checkpoint": CHECKPOINT}, {"steps": 2})
    repo.commit({"job.py": STEPS}, "a program that checkpoints")
    assert main(["submit", "-C", str(repo.path)]) == 0
    run = RunDir(_only_run(runs_root))
    record = load_record(run)
    there = Path((record.remote or {})["path"]) / "output"
    owner = there.stat()
    private = there.parent.parent.parent / f"private-{run.run_id}"  # in the login user's home
    (private / "ckpt").mkdir(parents=True)
    (private / "id_key").write_text("the secret")
    (private / "ckpt" / "keep").write_text("keep")
    for path in (private, private / "id_key", private / "ckpt", private / "ckpt" / "keep"):
        os.chown(path, owner.st_uid, owner.st_gid)
    shutil.rmtree(there / "ckpt")
    (there / "ckpt").symlink_to(private)
    (there / "deep").symlink_to(private)
    (run.output / "deep" / "ckpt").mkdir(parents=True)
    (run.output / "deep" / "ckpt" / "state.json").write_text("{}")
    backend = SSHBackend(dict(os.environ))
    try:
        backend.pull_checkpoint(run, record, ["ckpt/"])
        assert not (run.output / "ckpt" / "id_key").exists()
        with pytest.raises(RemoteError, match="deep"):
            backend.push_checkpoint(run, record, ["deep/ckpt"])
    finally:
        backend.close()
    assert [p.name for p in (private / "ckpt").iterdir()] == ["keep"]


def test_a_killed_workers_ssh_run_resumes_on_the_host_from_its_snapshot(
    make_repo: Any, sshd: Any, runs_root: Path, tmp_path: Path, docker_client: Any
) -> None:
    """A scheduled ssh run whose worker is killed -9: its container goes on on the host
    until a worker taking over the job after the lease stops it, uploads the newest snapshot
    into the host's output (replacing what was left half-written) and starts the program
    again, which continues its step counter."""
    url = f"sqlite://{tmp_path / 'queue.sqlite'}"
    expman = {"backend": "ssh", "hosts": {"box": host_entry(sshd)}, "checkpoint": CHECKPOINT, "queue": {"lease": "2s"}}
    repo = make_repo(expman, {"steps": 200})
    repo.commit({"job.py": STEPS}, "a program that checkpoints")
    assert main(["schedule", "-C", str(repo.path), "--queue", url]) == 0
    run = _only_run(runs_root)
    first = _worker(url, dict(os.environ))
    _wait(lambda: (_snapshot_step(run) or (0, 0))[1] > 0, "a snapshot of the first attempt", timeout_s=180)
    first.kill()
    first.communicate()
    killed = read_record(run)
    seq, saved = _snapshot_step(run) or (0, 0)
    there = Path(killed["remote"]["path"]) / "output" / "ckpt"
    (there / "half.bin").write_bytes(b"\0" * 100)  # left by the killed attempt
    second = _worker(url, dict(os.environ))
    output, _ = second.communicate(timeout=300)
    assert second.returncode == 0, output
    record = read_record(run)
    assert record["status"] == "succeeded", record["reason"]
    assert [a["attempt"] for a in record["attempts"]] == [1, 2]
    assert record["attempts"][1]["restored"]["snapshot"] == seq == record["restored"]["snapshot"]
    assert not docker_client.containers.list(filters={"id": killed["container_id"]})  # stopped by the takeover
    results = _results(run)
    assert saved > 0 and results["resumed_from"] == saved and results["final_step"] == 200
    assert (results["found"], results["attempt"], results["resumed"]) == (["state.json"], "2", "1")
    assert json.loads((there / "state.json").read_text()) == {"step": 200}
