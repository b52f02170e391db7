"""The repository side: GitPython against the git command line, for the two steps
expman/experiment/ keeps on the command line (content.py) or tunes (git.py).

On a generated repository (5,000 small Python files in 50 directories plus 20 files of
10 MiB of random bytes, about 205 MiB as a tar), alternating the ways, median of the rounds:

- content scan (submodules and Git LFS pointers): ``ls-tree -r -l`` plus one
  ``cat-file --batch`` for every blob of at most 1 KiB (what content.py does) against GitPython's
  tree walk, which asks its object database for each blob's size and content;
- archive stream into a file: ``git archive`` writing the file itself against GitPython's
  ``Repo.archive`` with its default 8 KiB chunks and with the 1 MiB chunks git.py uses.

    python benchmarks/git_side.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import git  # noqa: E402

from expman.experiment import content  # noqa: E402

SMALL_DIRS, SMALL_FILES, BIG_FILES, BIG_BYTES = 50, 100, 20, 10 << 20


def make_repository(path: Path) -> str:
    for d in range(SMALL_DIRS):
        (path / f"pkg{d}").mkdir(parents=True)
        for f in range(SMALL_FILES):
            (path / f"pkg{d}" / f"m{f}.py").write_text(f"# module {d}.{f}\n" + "x = 1\n" * (f % 60 + 1))
    (path / "data").mkdir()
    for i in range(BIG_FILES):
        (path / "data" / f"blob{i}.bin").write_bytes(os.urandom(BIG_BYTES))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    for argv in (["init", "-q"], ["add", "-A"], ["-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "b"]):
        subprocess.run(["git", "-C", str(path), *argv], check=True, env=env)
    head = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, env=env)
    return head.stdout.strip()


def scan_cli(path: Path, commit: str) -> None:
    content.ensure_plain_content(path, commit, content.list_tree(path, commit))


def scan_gitpython(path: Path, commit: str) -> None:
    repo = git.Repo(path)
    for item in repo.commit(commit).tree.traverse():
        assert item.type != "submodule"
        if item.type == "blob" and item.size <= 1024:
            assert not item.data_stream.read().startswith(b"version https://git-lfs.github.com/spec/")
    repo.close()


def archive_cli(path: Path, commit: str, dest: Path) -> None:
    with open(dest, "wb") as out:
        subprocess.run(["git", "-C", str(path), "archive", "--format=tar", commit], stdout=out, check=True)


def archive_gitpython(path: Path, commit: str, dest: Path, chunk_bytes: int | None) -> None:
    repo = git.Repo(path)
    options = {} if chunk_bytes is None else {"max_chunk_size": chunk_bytes}
    with open(dest, "wb") as out:
        repo.archive(out, commit, format="tar", **options)
    repo.close()


def compare(ways: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, way in ways.items():
            start = time.perf_counter()
            way()
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in seconds.items()}


def report(title: str, medians: dict[str, float]) -> None:
    first = next(iter(medians.values()))
    print(title)
    for name, median in medians.items():
        print(f"  {name:<40} {median:8.3f} s  {median / first:5.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="expman-git-bench-") as scratch:
        path, tar = Path(scratch) / "repo", Path(scratch) / "code.tar"
        commit = make_repository(path)
        files = SMALL_DIRS * SMALL_FILES + BIG_FILES
        scan = {
            "command line (ls-tree, cat-file --batch)": lambda: scan_cli(path, commit),
            "GitPython tree walk": lambda: scan_gitpython(path, commit),
        }
        report(f"content scan, {files:,} files, median of {args.rounds}", compare(scan, args.rounds))
        archive = {
            "git archive > file": lambda: archive_cli(path, commit, tar),
            "GitPython Repo.archive, 8 KiB chunks": lambda: archive_gitpython(path, commit, tar, None),
            "GitPython Repo.archive, 1 MiB chunks": lambda: archive_gitpython(path, commit, tar, 1 << 20),
        }
        medians = compare(archive, args.rounds)
        report(f"archive stream, {tar.stat().st_size / 2**20:.0f} MiB, median of {args.rounds}", medians)


if __name__ == "__main__":
    main()
