"""expman rerun (a recorded run again, from its directory alone, and whether it reproduced)
and expman diff (two runs section by section), on real runs of real repositories."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import uuid
from pathlib import Path
from typing import Any

import pytest

from expman.cli import main
from expman.rundir import lifecycle
from expman.rundir.layout import RunDir
from expman.rundir.record import GitInfo, ImageInfo, RunStatus

from .conftest import DOCKERFILE, only_run, read_record, run_dirs
from .helpers import minimal_record, submit
from .results_helpers import scalars, write_events

GOLDEN = Path(__file__).parent / "golden"

# A program that needs only the standard library (the base image has no TensorBoard): its
# results, a weights file and TensorBoard scalars are the same on every run, unless its
# config says "random"; a log with the time in it and the event file's own name and wall
# times differ on every run all the same.
PROGRAM = r"""
import json, os, socket, struct, time
job = json.load(open(os.environ["EXPMAN_CONFIG"]))["job"]
out = os.environ["EXPMAN_OUTPUT_DIR"]
rand = job.get("mode") == "random"
noise = int.from_bytes(os.urandom(4), "little") / 2**32 if rand else 0.25

def crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF

def masked(data):
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF

def varint(n):
    out = b""
    while n > 0x7F:
        out += bytes([(n & 0x7F) | 0x80])
        n >>= 7
    return out + bytes([n])

def event(step, tag, value):
    item = b"\x0a" + varint(len(tag)) + tag + b"\x15" + struct.pack("<f", value)
    summary = b"\x0a" + varint(len(item)) + item
    return b"\x09" + struct.pack("<d", time.time()) + b"\x10" + varint(step) + b"\x2a" + varint(len(summary)) + summary

def record(data):
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked(header)) + data + struct.pack("<I", masked(data))

os.makedirs(os.path.join(out, "tb"))
name = f"events.out.tfevents.{time.time():.0f}.{socket.gethostname()}.{os.getpid()}.0"
with open(os.path.join(out, "tb", name), "wb") as f:
    for step in range(5):
        f.write(record(event(step, b"loss", 1.0 / (step + 1) + noise)))
with open(os.path.join(out, "weights.bin"), "wb") as f:
    f.write(os.urandom(64) if rand else bytes(range(64)))
with open(os.path.join(out, "train.log"), "w") as f:
    f.write(f"finished at {time.time()}\n")
with open(os.path.join(out, "results.json"), "w") as f:
    json.dump({"accuracy": 0.9, "noise": noise, "returns": [1.0, 2.0, 3.0 + noise]}, f)
print("done", flush=True)
"""


def experiment(make_repo: Any, mode: str = "fixed") -> Any:
    repo = make_repo(expman={"command": ["python3", "program.py"]}, job={"mode": mode})
    repo.commit({"program.py": PROGRAM}, "a program with outputs")
    return repo


def rerun(*args: str) -> int:
    return main(["rerun", *args])


def verdict_lines(out: str) -> list[str]:
    """What rerun says, without what the program printed (echoed as it ran)."""
    return [line for line in out.splitlines() if line != "done"]


def rerun_of(runs_root: Path, original: Path) -> Path:
    (new,) = [p for p in run_dirs(runs_root) if p != original]
    return new


# --- rerun -------------------------------------------------------------------------------


def test_a_deterministic_run_reruns_as_reproduced_without_its_repository(make_repo, runs_root, capsys):
    repo = experiment(make_repo)
    assert submit(repo.path, "--backend", "process") == 0
    original = only_run(runs_root)
    shutil.rmtree(repo.path)  # the run directory holds everything a rerun needs
    capsys.readouterr()

    assert rerun(original.name) == 0

    assert verdict_lines(capsys.readouterr().out)[0] == "reproduced"
    new = rerun_of(runs_root, original)
    record = read_record(new)
    assert record["rerun_of"] == original.name
    assert record["status"] == "succeeded"
    assert record["reproduction"]["verdict"] == "reproduced"
    assert record["reproduction"]["differences"] == []
    assert (new / "code.tar").read_bytes() == (original / "code.tar").read_bytes()
    assert (new / "config.json").read_bytes() == (original / "config.json").read_bytes()
    assert record["git"] == read_record(original)["git"]
    # what differs on every run was there to differ, and was not counted
    assert (new / "output/train.log").read_text() != (original / "output/train.log").read_text()
    names = [p.name for p in (new / "output/tb").iterdir()], [p.name for p in (original / "output/tb").iterdir()]
    assert names[0] != names[1]
    # the link and the verdict are columns of the runs view, and lines of show
    sql = "SELECT run_id, rerun_of, reproduction FROM runs WHERE rerun_of IS NOT NULL"
    assert main(["query", sql, "--format", "json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found == [{"run_id": new.name, "rerun_of": original.name, "reproduction": "reproduced"}]
    assert main(["show", "--offline", new.name]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("rerun of") and line.endswith(original.name) for line in lines)
    assert any(line.startswith("reproduction") and line.endswith("reproduced") for line in lines)


def test_a_deterministic_run_reruns_as_reproduced_on_docker(docker_client, make_repo, runs_root, capsys):
    repo = experiment(make_repo)
    assert submit(repo.path, "--backend", "local") == 0
    original = only_run(runs_root)
    capsys.readouterr()

    assert rerun(original.name) == 0

    assert verdict_lines(capsys.readouterr().out)[0] == "reproduced"
    record = read_record(rerun_of(runs_root, original))
    assert record["backend"] == "local"
    assert record["image"]["image_id"] == read_record(original)["image"]["image_id"]
    assert record["reproduction"]["verdict"] == "reproduced"
    assert record["warnings"] == []
    assert not (rerun_of(runs_root, original) / "logs/build.log").exists()  # run on the recorded image, unbuilt


def test_a_run_seeded_differently_each_time_names_every_differing_key(make_repo, runs_root, capsys):
    repo = experiment(make_repo, mode="random")
    assert submit(repo.path, "--backend", "process") == 0
    original = only_run(runs_root)
    capsys.readouterr()

    assert rerun(original.name, "--logs") == 1

    lines = verdict_lines(capsys.readouterr().out)
    assert lines[0].startswith("not reproduced: ")
    named = {line.split(":")[0] for line in lines[1:] if not line.startswith("note:")}
    assert {"results.noise", "results.returns", "results.returns.mean", "scalars.tb/loss"} <= named
    assert {"outputs.weights.bin", "outputs.train.log"} <= named  # the log: only with --logs
    assert "outputs.logs/stdout.log" not in named  # the program printed the same
    assert "results.accuracy" not in named
    (returns,) = [line for line in lines if line.startswith("results.returns: ")]
    assert "; 1 of 3 values differ; first at index 2: " in returns
    assert "np." not in returns  # plain numbers, not numpy's repr
    record = read_record(rerun_of(runs_root, original))
    assert record["reproduction"]["verdict"] == "differs"
    assert record["reproduction"]["differences"] == lines[1 : 1 + len(record["reproduction"]["differences"])]


def test_a_rerun_whose_image_is_gone_rebuilds_it_and_notes_the_new_id(docker_client, make_repo, runs_root, capsys):
    repo = experiment(make_repo)
    # an image of this test's own, so that removing it takes no other test's image away
    repo.commit({"Dockerfile": f"{DOCKERFILE}RUN echo {uuid.uuid4()} > /rerun-marker\n"}, "an image of its own")
    assert submit(repo.path, "--backend", "local") == 0
    original = only_run(runs_root)
    old_image = read_record(original)["image"]["image_id"]
    docker_client.images.remove(old_image, force=True)
    shutil.rmtree(repo.path)
    capsys.readouterr()

    assert rerun(original.name) == 0

    out = verdict_lines(capsys.readouterr().out)
    record = read_record(rerun_of(runs_root, original))
    new_image = record["image"]["image_id"]
    assert new_image != old_image
    assert docker_client.images.get(new_image)
    assert out[0] == "reproduced"
    assert f"note: environment.image: {old_image} -> {new_image}" in out
    assert any(old_image in w and new_image in w and "rebuilt" in w for w in record["warnings"])
    assert record["reproduction"]["notes"] == [f"environment.image: {old_image} -> {new_image}"]


def test_a_process_run_reruns_on_docker_when_asked(docker_client, make_repo, runs_root, capsys):
    repo = experiment(make_repo)
    assert submit(repo.path, "--backend", "process") == 0
    original = only_run(runs_root)
    capsys.readouterr()

    assert rerun(original.name, "--backend", "local") == 0

    out = verdict_lines(capsys.readouterr().out)
    assert out[0] == "reproduced"
    assert "note: environment.backend: process -> local" in out


def test_bad_input_is_one_line_and_makes_nothing(make_repo, runs_root, capsys):
    repo = experiment(make_repo)
    assert submit(repo.path, "--backend", "process") == 0
    original = only_run(runs_root)
    capsys.readouterr()

    assert rerun("nosuchrun") == 30
    assert rerun(original.name, "--rtol", "-1") == 2
    assert rerun(original.name, "--backend", "slurm") == 2
    (original / "code.tar").unlink()
    assert rerun(original.name) == 2
    assert main(["diff", original.name, "nosuchrun"]) == 30

    err = capsys.readouterr().err.splitlines()
    assert len(err) == 5, err
    assert "no run 'nosuchrun'" in err[0]
    assert "--rtol -1.0" in err[1]
    assert "invalid choice: 'slurm'" in err[2]
    assert f"run {original.name} has no code.tar" in err[3]
    assert "Traceback" not in "".join(err)
    assert run_dirs(runs_root) == [original]


# --- diff --------------------------------------------------------------------------------


def made_run(root: Path, run_id: str, **fields: Any) -> RunDir:
    """A finished run directory written directly: record, config, code.tar and outputs."""
    run = RunDir(root / run_id)
    run.output.mkdir(parents=True)
    run.logs.mkdir()
    record = minimal_record(run_id)
    record.status = RunStatus.SUCCEEDED
    record.exit_code = 0
    for name, value in fields.pop("record", {}).items():
        setattr(record, name, value)
    lifecycle.create(run, record)
    run.config.write_text(json.dumps(fields.pop("config")))
    _write_tar(run.code_tar, fields.pop("code"))
    for name, content in fields.pop("outputs").items():
        path = run.output / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return run


def _write_tar(path: Path, files: dict[str, str]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, text in sorted(files.items()):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000
            tar.addfile(info, io.BytesIO(data))


def two_runs(root: Path) -> tuple[RunDir, RunDir]:
    def record(commit: str, host: str, image: str) -> dict[str, Any]:
        facts = {"hostname": host, "os": "Debian GNU/Linux 12 (bookworm)", "gpus": []}
        return {"host": host, "host_facts": facts, "image": ImageInfo(image_id=image), "git": _git(commit)}

    code = {"train.py": "import json\nlr = 0.1\nsteps = 10\nprint(lr)\n", "Dockerfile": "FROM base\n"}
    a = made_run(
        root,
        "20261122-120000-000-aaaa",
        record=record("a" * 40, "node-1", "sha256:" + "1" * 64),
        config={"train": {"lr": 0.1, "seed": 1, "layers": [64, 64]}, "expman": {"command": ["python3"]}},
        code=code,
        outputs={
            "results.json": '{"accuracy": 0.9, "loss": 0.5, "steps": 10}',
            "model.bin": "weights a",
            "old.txt": "",
        },
    )
    code_b = {**code, "train.py": "import json\nlr = 0.01\nsteps = 10\nprint(lr)\nprint(steps)\n", "new.py": "x = 1\n"}
    b = made_run(
        root,
        "20261122-120500-000-bbbb",
        record=record("b" * 40, "node-2", "sha256:" + "1" * 64),
        config={"train": {"lr": 0.01, "seed": 1, "layers": [64, 64]}, "expman": {"command": ["python3"]}},
        code=code_b,
        outputs={"results.json": '{"accuracy": 0.95, "loss": 0.5, "f1": 0.8}', "model.bin": "weights b", "new.txt": ""},
    )
    write_events(a.output / "tb", scalars("loss", range(4)))
    write_events(b.output / "tb", scalars("loss", range(4), fn=lambda s: s * 0.5 + (s == 2)))
    return a, b


def _git(commit: str) -> GitInfo:
    return GitInfo(commit, "experiments", "a commit", "R", "r@example.org", "2026-11-22", None, "/nowhere")


@pytest.mark.parametrize("fmt,golden", [("text", "diff.txt"), ("markdown", "diff.md"), ("json", "diff.json")])
def test_diff_matches_the_golden_output(tmp_path, capsys, fmt, golden):
    a, b = two_runs(tmp_path)
    capsys.readouterr()

    assert main(["diff", "--runs-root", str(tmp_path), a.run_id, b.run_id, "--format", fmt]) == 0

    assert capsys.readouterr().out == (GOLDEN / golden).read_text()


def test_diff_all_shows_what_is_the_same_too(tmp_path, capsys):
    a, b = two_runs(tmp_path)
    capsys.readouterr()

    assert main(["diff", "--runs-root", str(tmp_path), a.run_id, b.run_id, "--all"]) == 0

    out = capsys.readouterr().out
    assert "  train.seed: 1\n" in out
    assert "  loss: 0.5\n" in out
    assert "  os: Debian GNU/Linux 12 (bookworm)\n" in out


def test_diff_reads_the_code_from_git_when_the_repository_is_at_hand(make_repo, runs_root, capsys):
    repo = experiment(make_repo)
    assert submit(repo.path, "--backend", "process") == 0
    repo.commit({"program.py": PROGRAM + "print('one more line')\n", "extra.txt": "x\n"}, "more")
    assert submit(repo.path, "--backend", "process") == 0
    a, b = run_dirs(runs_root)
    (a / "code.tar").unlink()  # git answers: the archives are not needed
    capsys.readouterr()

    assert main(["diff", a.name, b.name]) == 0

    out = capsys.readouterr().out
    assert "(from git)" in out
    assert "  extra.txt  | 1 +\n" in out
    assert "  program.py | 1 +\n" in out
    assert "  2 files changed, 2 insertions(+), 0 deletions(-)\n" in out


def test_diff_within_rtol_and_of_event_files_by_their_scalars(tmp_path, capsys):
    a, b = two_runs(tmp_path)
    (a.output / "results.json").write_text('{"accuracy": 0.9}')
    (b.output / "results.json").write_text('{"accuracy": 0.9000000001}')
    write_events(a.output / "tb", scalars("acc", range(5)), filename_suffix=".acc")
    write_events(b.output / "tb", scalars("acc", range(5)), filename_suffix=".acc")  # other wall times and name
    capsys.readouterr()

    assert main(["diff", "--runs-root", str(tmp_path), a.run_id, b.run_id, "--format", "json"]) == 0
    exact = json.loads(capsys.readouterr().out)["sections"]
    assert main(["diff", "--runs-root", str(tmp_path), a.run_id, b.run_id, "--format", "json", "--rtol", "1e-6"]) == 0
    tolerant = json.loads(capsys.readouterr().out)["sections"]

    assert [e["key"] for e in exact["results"]] == ["accuracy"]
    assert "results" not in tolerant
    (loss,) = exact["scalars"]  # tb/acc: the same points
    assert loss["key"] == "tb/loss"
    assert loss["detail"] == "1 of 4 points differ; first at step 2: 1.0 -> 2.0"
    assert (loss["a"], loss["b"], loss["delta"]) == (1.5, 1.5, None)
