"""What a process run pays for its shared code before its program starts, on a code tree of
2,000 files: expman's check of the copy against its manifest, against reusing the copy
unchecked (as expman did before: is the directory there? link to it).

    python benchmarks/shared_code.py [--files 2000] [--rounds 300]

Per run, median of the rounds (the ways alternate, each run gets a new run directory):
  unchecked   a directory test and a symlink
  warm        SharedCode.ensure + checkout by one object, as a worker's runs (manifest in memory)
  cold        the same by a new object per run, as one `expman submit` per run (manifest parsed)
  touched     warm, with one file's times changed since extraction (that file is read)
Once: the commit's first extraction, and the replacement of a copy a run changed.
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

from expman.experiment.archive import remove_tree, write_archive  # noqa: E402
from expman.experiment.shared_code import SHARED_CODE_DIR, SharedCode  # noqa: E402


def make_archive(base: Path, files: int) -> tuple[Path, str]:
    """A git repository of ``files`` Python modules of about 3 KB in 100 packages, archived."""
    repo = base / "repo"
    for i in range(files):
        module = repo / f"package{i % 100:03d}" / f"sub{i % 7}" / f"module{i:04d}.py"
        module.parent.mkdir(parents=True, exist_ok=True)
        module.write_text("".join(f"VALUE_{i}_{j} = {i * j}  # some code of the experiment\n" for j in range(60)))
    git = ["git", "-C", str(repo), "-c", "user.name=bench", "-c", "user.email=bench@example.org"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "code"], check=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    archive = base / "code.tar"
    write_archive(repo, commit, archive)
    return archive, commit


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="expman-bench-shared-"))
    try:
        archive, commit = make_archive(base, args.files)
        root = base / "runs"
        root.mkdir()
        worker = SharedCode()
        first = timed(lambda: worker.ensure(archive, commit, root))
        worker.checkout(archive, commit, _new_run(root) / "code")
        copy = next(p for p in (root / SHARED_CODE_DIR).iterdir() if p.is_dir())

        def unchecked() -> None:
            run = _new_run(root)
            if copy.is_dir() and not (run / "code").is_symlink():
                (run / "code").symlink_to(Path("..") / SHARED_CODE_DIR / copy.name)

        def check(shared: SharedCode) -> None:
            run = _new_run(root)
            shared.ensure(archive, commit, root)
            shared.checkout(archive, commit, run / "code")

        ways: dict[str, Callable[[], None]] = {
            "unchecked": unchecked,
            "warm": lambda: check(worker),
            "cold": lambda: check(SharedCode()),
        }
        times = _alternate(ways, args.rounds)
        touched = sorted(copy.rglob("*.py"))[0]
        os.utime(touched)
        times.update(_alternate({"touched": lambda: check(worker)}, args.rounds))
        touched.chmod(0o644)
        touched.write_text("changed = True\n")
        replacement = timed(lambda: check(worker))
        _report(args.files, times, first, replacement)
    finally:
        remove_tree(base)


def _new_run(root: Path) -> Path:
    run = Path(tempfile.mkdtemp(dir=root, prefix="run-"))
    return run


def _alternate(ways: dict[str, Callable[[], None]], rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, way in ways.items():
            times[name].append(timed(way))
    return times


def _report(files: int, times: dict[str, list[float]], first: float, replacement: float) -> None:
    floor = statistics.median(times["unchecked"])
    print(f"{files} files; per run, median of {len(times['unchecked'])}:")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"  {name:10s} {median * 1e3:8.2f} ms   {median / floor:8.1f}x unchecked")
    print(f"first extraction {first * 1e3:.0f} ms; replacing a changed copy {replacement * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
