"""The process runtime's shared copy of a commit's code: each run starts from the commit's
exact code, whatever an earlier run did to the copy, and any user can run it."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import pytest

from expman.cli import main
from expman.experiment.archive import write_archive
from expman.experiment.shared_code import SHARED_CODE_DIR, SharedCode

from .conftest import AWKWARD, init_repo, read_record
from .helpers import submit

DAMAGING_JOB = """\
import json, os
mode = json.load(open(os.environ["EXPMAN_CONFIG"]))["job"]["mode"]
print("payload:", open("payload.txt").read(), flush=True)
if mode == "delete":  # careless: makes its working directory writable, removes a file
    os.chmod(".", 0o755)
    os.remove("payload.txt")
elif mode == "edit":  # careless: makes the file writable, rewrites it (same size: only times tell)
    os.chmod("payload.txt", 0o644)
    with open("payload.txt", "w") as f:
        f.write("tampered")
elif mode == "import":  # Python writes __pycache__ next to the module (as root, whatever the mode)
    import helper
"""


def runs_by_mode(root: Path) -> dict[str, Path]:
    runs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return {json.loads((run / "config.json").read_text())["job"]["mode"]: run for run in runs}


def copies(root: Path, commit: str) -> list[str]:
    return sorted(p.name for p in (root / SHARED_CODE_DIR).iterdir() if p.is_dir() and commit in p.name)


def assert_read_only(copy: Path) -> None:
    for path in [copy, *copy.rglob("*")]:
        if not path.is_symlink():
            assert stat.S_IMODE(path.lstat().st_mode) & 0o222 == 0, path


@pytest.mark.parametrize("damage", ["delete", "edit"])
def test_the_run_after_one_that_damaged_the_code_runs_the_commits_code(make_repo, runs_root, damage):
    repo = make_repo(expman={"sweep": {"job.mode": [damage, "ok"]}})
    commit = repo.commit({"job.py": DAMAGING_JOB, "payload.txt": "original"}, "a careless program")
    # one submit: both runs are prepared before the first one starts
    assert submit(repo.path, "--backend", "process") == 0
    runs = runs_by_mode(runs_root)
    assert "payload: original" in (runs["ok"] / "logs" / "stdout.log").read_text()
    warnings = read_record(runs["ok"])["warnings"]
    expected = {"delete": "payload.txt is missing", "edit": "payload.txt changed"}[damage]
    assert [w for w in warnings if "fresh copy" in w and expected in w] == warnings != [], warnings
    assert read_record(runs[damage])["warnings"] == []
    fresh = (runs["ok"] / "code").resolve()
    assert copies(runs_root, commit) == [fresh.name]  # the damaged copy is gone, nothing half-made
    assert (fresh / "payload.txt").read_text() == "original"
    assert_read_only(fresh)


def test_an_intact_copy_is_reused_by_the_next_submit(make_repo, runs_root, monkeypatch):
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
    repo = make_repo(expman={"sweep": {"job.mode": ["import", "ok"]}})
    commit = repo.commit({"job.py": DAMAGING_JOB, "payload.txt": "original", "helper.py": "x = 1\n"}, "imports")
    assert submit(repo.path, "--backend", "process") == 0
    assert submit(repo.path, "--backend", "process") == 0
    records = [read_record(run) for run in runs_root.iterdir() if not run.name.startswith(".")]
    assert len(records) == 4 and all(r["status"] == "succeeded" and r["warnings"] == [] for r in records)
    (copy,) = copies(runs_root, commit)
    # root writes bytecode whatever the mode; another user cannot, and imports compile afresh
    assert (runs_root / SHARED_CODE_DIR / copy / "__pycache__").is_dir() == (os.getuid() == 0)


CHECKOUT = """\
import sys
from pathlib import Path
from expman.experiment.shared_code import SharedCode
archive, commit, link = sys.argv[1:]
print(SharedCode().checkout(Path(archive), commit, Path(link)), flush=True)
sys.stdin.read()  # the copy stays held until stdin closes, as while a run goes on
"""


def start_checkout(archive: Path, commit: str, run: Path) -> subprocess.Popen[str]:
    run.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-c", CHECKOUT, str(archive), commit, str(run / "code")]
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    proc.communicate("", timeout=60)
    assert proc.returncode == 0
    return line


def edit(copy: Path, name: str = "payload.txt") -> None:
    os.chmod(copy / name, 0o644)
    (copy / name).write_text("tampered")


@pytest.fixture
def archived(make_repo, tmp_path):
    repo = make_repo()
    commit = repo.commit({"payload.txt": "original", "pkg/deep/module.py": "y = 2\n"}, "code")
    archive = tmp_path / "code.tar"
    write_archive(repo.path, commit, archive)
    return archive, commit, tmp_path / "runs"


def test_concurrent_runs_find_the_damage_and_share_one_fresh_copy(archived):
    archive, commit, root = archived
    first = finish(start_checkout(archive, commit, root / "run0"))
    damaged = (root / "run0" / "code").resolve()
    edit(damaged)
    procs = [start_checkout(archive, commit, root / f"run{i}") for i in range(1, 5)]
    reports = [finish(proc) for proc in procs]
    assert first == "there was none"
    assert sum(r != "None" for r in reports) == 1 and "payload.txt changed" in reports
    fresh = {(root / f"run{i}" / "code").resolve() for i in range(1, 5)}
    assert len(fresh) == 1 and (fresh.pop() / "payload.txt").read_text() == "original"
    assert copies(root, commit) == [(root / "run1" / "code").resolve().name]  # nobody held the old one
    assert not [p for p in (root / SHARED_CODE_DIR).iterdir() if p.name.startswith(".")]  # no staging left


def test_a_copy_in_use_is_kept_until_its_run_is_over(archived):
    archive, commit, root = archived
    holder = start_checkout(archive, commit, root / "run0")
    assert holder.stdout is not None and holder.stdout.readline().strip() == "there was none"
    in_use = (root / "run0" / "code").resolve()
    edit(in_use)
    assert finish(start_checkout(archive, commit, root / "run1")) == "payload.txt changed"
    assert in_use.is_dir()  # run0 goes on in it
    holder.communicate("", timeout=60)
    replaced = (root / "run1" / "code").resolve()
    edit(replaced)
    (root / "run2").mkdir()
    shared = SharedCode()
    assert shared.checkout(archive, commit, root / "run2" / "code") == "payload.txt changed"
    assert copies(root, commit) == [(root / "run2" / "code").resolve().name]


@pytest.fixture
def reader():
    """A real non-root user."""
    name = "expman-code-reader"
    if subprocess.run(["id", name], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--create-home", name], check=True)
    return pwd.getpwnam(name)


RUN_SH = """\
#!/bin/sh
id -u > "$EXPMAN_OUTPUT_DIR/uid"
cat payload.txt > "$EXPMAN_OUTPUT_DIR/seen"
if [ "$(id -u)" != 0 ] && (echo x > payload.txt) 2>/dev/null; then touch "$EXPMAN_OUTPUT_DIR/wrote"; fi
"""


def test_a_non_root_user_runs_the_copy_root_extracted(reader, monkeypatch):
    if os.getuid() != 0:
        pytest.skip("creating a user needs root")
    base = Path(tempfile.mkdtemp(prefix=f"{AWKWARD} "))
    try:
        os.chmod(base, 0o755)
        repo = init_repo(base / "repo", expman={"command": ["./run.sh"]})
        (repo.path / "run.sh").write_text(RUN_SH)
        (repo.path / "run.sh").chmod(0o755)
        repo.commit({"payload.txt": "original"}, "a script")
        runs_root = base / "runs"
        monkeypatch.setenv("EXPMAN_RUNS_ROOT", str(runs_root))
        assert main(["submit", "-C", str(repo.path), "--backend", "process"]) == 0  # as root: extracts
        subprocess.run(["chown", "-R", f"{reader.pw_uid}:{reader.pw_gid}", str(repo.path)], check=True)
        os.chown(runs_root, reader.pw_uid, reader.pw_gid)
        assert submit_as(reader, repo.path) == 0
        run = next(p for p in runs_root.iterdir() if p.stat().st_uid == reader.pw_uid and p.is_dir())
        output = run / "output"
        assert (output / "uid").read_text().strip() == str(reader.pw_uid)
        assert (output / "seen").read_text() == "original"
        assert not (output / "wrote").exists()  # read-only to the program
        assert (run / "code").resolve().stat().st_uid == 0
        assert read_record(run)["warnings"] == []
    finally:
        shutil.rmtree(base, ignore_errors=True)


def submit_as(user: pwd.struct_passwd, repo: Path) -> int:
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            os.environ.update(HOME=user.pw_dir, USER=user.pw_name)
            code = main(["submit", "-C", str(repo), "--backend", "process"])
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)
