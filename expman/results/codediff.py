"""The code of two runs compared as ``git diff --stat`` shows it: lines added and removed
per file. From git when the repository the first run recorded is at hand and holds both
commits, else from the runs' own code.tar archives (a run directory holds its code)."""

from __future__ import annotations

import difflib
import hashlib
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from ..errors import ExpmanError
from ..experiment.git import run_git
from ..rundir.layout import RunDir
from ..rundir.record import RunRecord

GIT, ARCHIVES, UNAVAILABLE = "git", "archives", "unavailable"


@dataclass(frozen=True)
class FileChange:
    """Lines added and removed in one file; None for both when it is binary."""

    path: str
    added: int | None
    removed: int | None


@dataclass(frozen=True)
class CodeDiff:
    commit_a: str
    commit_b: str
    source: str
    files: list[FileChange] = field(default_factory=list)
    reason: str | None = None  # why the code could not be compared (``UNAVAILABLE``)


def code_diff(a: RunDir, record_a: RunRecord, b: RunDir, record_b: RunRecord) -> CodeDiff:
    commit_a, commit_b = record_a.git.commit, record_b.git.commit
    if commit_a == commit_b:
        return CodeDiff(commit_a, commit_b, GIT)
    for repository in dict.fromkeys((record_a.git.repository, record_b.git.repository)):
        files = _from_git(Path(repository), commit_a, commit_b) if repository else None
        if files is not None:
            return CodeDiff(commit_a, commit_b, GIT, files)
    missing = [run.code_tar for run in (a, b) if not run.code_tar.is_file()]
    if missing:
        reason = f"no repository with both commits, and no archive at {missing[0]}"
        return CodeDiff(commit_a, commit_b, UNAVAILABLE, reason=reason)
    try:
        files = _from_archives(a.code_tar, b.code_tar)
    except (OSError, tarfile.TarError) as exc:
        return CodeDiff(commit_a, commit_b, UNAVAILABLE, reason=f"unreadable archive ({exc})")
    return CodeDiff(commit_a, commit_b, ARCHIVES, files)


def _from_git(repository: Path, commit_a: str, commit_b: str) -> list[FileChange] | None:
    """``git diff --numstat`` of the two commits; None when the repository is gone or lacks one."""
    if not repository.is_dir():
        return None
    try:
        for commit in (commit_a, commit_b):
            if run_git(repository, "cat-file", "-e", f"{commit}^{{commit}}", check=False).returncode != 0:
                return None
        out = run_git(repository, "diff", "--numstat", "-z", "--no-renames", commit_a, commit_b).stdout
    except (ExpmanError, OSError):
        return None
    changes = []
    for item in out.decode(errors="replace").split("\0"):
        if item:
            added, removed, path = item.split("\t", 2)
            changes.append(FileChange(path, _count(added), _count(removed)))
    return changes


def _count(text: str) -> int | None:
    return None if text == "-" else int(text)


def _from_archives(a: Path, b: Path) -> list[FileChange]:
    """Files whose content differs, by digest first: only those are read whole."""
    digests_a, digests_b = _archive_digests(a), _archive_digests(b)
    changed = sorted(p for p in digests_a.keys() | digests_b.keys() if digests_a.get(p) != digests_b.get(p))
    contents_a, contents_b = _archive_contents(a, set(changed)), _archive_contents(b, set(changed))
    return [_line_counts(path, contents_a.get(path, b""), contents_b.get(path, b"")) for path in changed]


def _archive_digests(archive: Path) -> dict[str, str]:
    """sha256 of each regular file, and each symlink's target (git diff counts a link's target)."""
    digests = {}
    with tarfile.open(archive) as tar:
        for member in tar:
            if member.isfile():
                handle = tar.extractfile(member)
                digests[member.name] = _sha256(handle) if handle is not None else ""
            elif member.issym():
                digests[member.name] = "link:" + member.linkname
    return digests


def _sha256(stream: IO[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in iter(lambda: stream.read(1 << 20), b""):
        digest.update(chunk)
    return digest.hexdigest()


def _archive_contents(archive: Path, paths: set[str]) -> dict[str, bytes]:
    contents = {}
    with tarfile.open(archive) as tar:
        for member in tar:
            if member.name not in paths:
                continue
            if member.isfile():
                handle = tar.extractfile(member)
                contents[member.name] = handle.read() if handle is not None else b""
            elif member.issym():
                contents[member.name] = member.linkname.encode()
    return contents


def _line_counts(path: str, old: bytes, new: bytes) -> FileChange:
    """Lines added and removed, as git counts them; a file holding a NUL byte is binary."""
    if b"\0" in old or b"\0" in new:
        return FileChange(path, None, None)
    lines_a, lines_b = old.splitlines(), new.splitlines()
    added = removed = 0
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, lines_a, lines_b, autojunk=False).get_opcodes():
        if tag != "equal":
            removed += i2 - i1
            added += j2 - j1
    return FileChange(path, added, removed)
