"""Git discipline: only committed code on the configured branch runs.

Every check here runs before anything is built or written. The repository side goes
through GitPython: branches, refs and remotes are read with it, commits and files come
from its object database, and status, reachability and the archive stream run through its
command layer. Finding the repository stays on the git command line (the reason is at
find_repository), and so does the scan of a commit's content (content.py).

Nothing may point git at another repository (GIT_DIR, GIT_WORK_TREE, GIT_INDEX_FILE, ...).
git on the command line gets an environment without those variables. GitPython cannot
drop a variable from its children's environment, only add or override one (git/cmd.py
starts every child from ``os.environ.copy()``), and ``Repo(path)`` reads GIT_COMMON_DIR and
GIT_OBJECT_DIRECTORY itself (git/repo/base.py): so a repository is opened with those
variables hidden, and each of them is pinned, for every git process GitPython starts, to
the repository being checked.
"""

from __future__ import annotations

import os
import posixpath
import pwd
import re
import shlex
import subprocess
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ..errors import (
    DirtyTreeError,
    GitError,
    IdentityError,
    NotARepositoryError,
    NotPushedError,
    UnknownRefError,
    UnreachableCommitError,
    UntrackedFilesError,
    WrongBranchError,
)

if TYPE_CHECKING:
    from git import Commit, GitCommandError, Repo

# Variables that make git operate on a repository other than the one we were asked about.
_REDIRECTING_VARIABLES = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
    "GIT_CEILING_DIRECTORIES",
    "GIT_DISCOVERY_ACROSS_FILESYSTEM",
)
_MAX_LISTED_PATHS = 10
_FULL_HASH = re.compile(r"[0-9a-f]{40}")
# GitPython copies git's output into the file in chunks of this size. With its default of
# 8 KiB a 205 MiB archive took 1.15-1.32x as long as git writing the file itself; with 1 MiB,
# 0.91-1.11x, within this machine's noise (benchmarks/git_side.py, medians of 7-9 rounds).
_ARCHIVE_CHUNK_BYTES = 1 << 20
# Opening a repository hides variables from os.environ for a moment; one opening at a time.
_ENVIRON_LOCK = threading.Lock()
# git's refusal of a repository owned by another user; the path is what safe.directory needs.
_DUBIOUS_OWNERSHIP = re.compile(r"detected dubious ownership in repository at '(.*?)'\n", re.DOTALL)


@dataclass(frozen=True)
class CommitInfo:
    commit: str
    subject: str
    author: str
    author_email: str
    commit_date: str


def git_environment(environ: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in environ.items() if k not in _REDIRECTING_VARIABLES}
    env.update(GIT_TERMINAL_PROMPT="0", LC_ALL="C", GIT_OPTIONAL_LOCKS="0")
    return env


def run_git(
    repo: Path, *args: str, stdin: bytes | None = None, check: bool = True, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run ``git -C repo args...`` (``env`` added to the isolated environment); raise GitError
    with stderr when it fails and check is set."""
    argv = ["git", "-C", str(repo), *args]
    proc = subprocess.run(argv, input=stdin, capture_output=True, env={**git_environment(os.environ), **(env or {})})
    if check and proc.returncode != 0:
        raise GitError(list(args), proc.returncode, proc.stderr.decode(errors="replace"))
    return proc


@contextmanager
def open_repository(top: Path) -> Iterator[Repo]:
    """The repository whose work tree is ``top`` (see find_repository), in GitPython, bound to
    that repository whatever the environment says; its git processes end with the block."""
    from git import Repo  # here, not at the top: commands that only read records start faster

    with _ENVIRON_LOCK:
        hidden = {name: os.environ.pop(name) for name in _REDIRECTING_VARIABLES if name in os.environ}
        try:
            repo = Repo(top)
        finally:
            os.environ.update(hidden)
    repo.git.update_environment(**_pinned_environment(repo, top))
    try:
        yield repo
    finally:
        repo.close()


def _pinned_environment(repo: Repo, top: Path) -> dict[str, str]:
    git_dir, common_dir = Path(repo.git_dir), Path(repo.common_dir)
    return {
        "GIT_DIR": str(git_dir),
        "GIT_WORK_TREE": str(top),
        "GIT_COMMON_DIR": str(common_dir),
        "GIT_INDEX_FILE": str(git_dir / "index"),
        "GIT_OBJECT_DIRECTORY": str(common_dir / "objects"),
        # Empty means none: no borrowed objects, no namespace, no discovery to bound.
        "GIT_ALTERNATE_OBJECT_DIRECTORIES": "",
        "GIT_NAMESPACE": "",
        "GIT_CEILING_DIRECTORIES": "",
        "GIT_DISCOVERY_ACROSS_FILESYSTEM": "",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_OPTIONAL_LOCKS": "0",
    }


def find_repository(path: Path) -> Path:
    """The top of the work tree containing ``path``.

    On the command line, with the redirecting variables removed: git's own discovery applies
    its ownership check (safe.directory), which GitPython's (``search_parent_directories``)
    skips, and GitPython could only pin GIT_DIR, not remove it, before the repository is known.
    """
    proc = run_git(path, "rev-parse", "--show-toplevel", check=False)
    if proc.returncode != 0:
        stderr = proc.stderr.decode(errors="replace")
        if owned := _DUBIOUS_OWNERSHIP.search(stderr):
            raise NotARepositoryError(_ownership_refusal(owned.group(1)))
        detail = stderr.strip().splitlines()[-1:] or ["no detail"]
        raise NotARepositoryError(
            f"{path} is not inside a git work tree ({detail[0]}); run expman in your experiment repository"
        )
    return Path(proc.stdout.decode().strip())


def current_branch(repo: Repo) -> str | None:
    """The checked-out branch, or None on a detached HEAD."""
    return None if repo.head.is_detached else repo.head.reference.name


def ensure_branch(repo: Repo, branch: str, explicit_ref: bool) -> None:
    current = current_branch(repo)
    if current is None and not explicit_ref:
        raise WrongBranchError(
            f"HEAD is detached, not on branch {branch!r}; run 'git checkout {branch}' or pass --commit-hash"
        )
    if current is not None and current != branch:
        raise WrongBranchError(
            f"on branch {current!r}, but experiments run from {branch!r}; run 'git checkout {branch}' "
            f'(or set "branch" in the expman section of config.json)'
        )


def ensure_clean_tree(repo: Repo, allow_untracked: bool) -> None:
    """Refuse modified or staged tracked files, and untracked files git does not ignore.

    One ``git status`` through GitPython's command layer: its is_dirty and untracked_files
    would run three git processes (two diffs and a status) and report renames and
    submodules otherwise."""
    out = _git(repo, "status", "--porcelain=v1", "-z", "--untracked-files=all", "--ignore-submodules=none")
    entries = [e.decode(errors="replace") for e in out.split(b"\0") if e]
    changed, untracked, skip_next = [], [], False
    for entry in entries:
        if skip_next:  # the source path of a rename
            skip_next = False
            continue
        status, path = entry[:2], entry[3:]
        if status == "??":
            untracked.append(path)
        else:
            changed.append(path)
            skip_next = "R" in status or "C" in status
    if changed:
        raise DirtyTreeError(
            f"uncommitted changes in {list_paths(changed)}; commit or stash them (only committed code runs)"
        )
    if untracked and not allow_untracked:
        raise UntrackedFilesError(
            f"untracked files {list_paths(untracked)} would be missing from the run; commit them, add them "
            f'to .gitignore, or set "allow_untracked": true'
        )


def resolve_commit(repo: Repo, ref: str) -> str:
    """Full hash of a commit named by a full or short hash, tag or branch.

    GitPython reads HEAD from the repository's files; any other name goes to git's own
    rev-parse (through GitPython's command layer), because GitPython's rev_parse
    re-implements only part of git's revision syntax and a name must mean what it means to git."""
    from git import SymbolicReference

    if ref.startswith("-"):
        raise UnknownRefError(f"{ref!r} is not a commit; pass a hash, tag or branch name")
    try:
        if ref == "HEAD":
            return SymbolicReference.dereference_recursive(repo, "HEAD")
        return _git(repo, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}").decode().strip()
    except (GitError, ValueError):  # ValueError: HEAD of a branch without commits
        raise UnknownRefError(
            f"{ref!r} does not name a commit in {repo.working_tree_dir}; check 'git log' for the hash or tag"
        ) from None


def ensure_reachable(repo: Repo, commit: str, branch: str) -> None:
    tip = _ref_commit(repo, f"refs/heads/{branch}")
    if tip is None:
        raise WrongBranchError(f'branch {branch!r} does not exist; create it or set "branch" in config.json')
    if not _contains(repo, tip, commit):
        raise UnreachableCommitError(
            f"commit {commit[:12]} is not on branch {branch!r}; merge it into {branch} or pick a commit from "
            f"'git log {branch}'"
        )


def ensure_pushed(repo: Repo, commit: str, branch: str, remote: str) -> None:
    """The commit must be contained in the remote-tracking branch (as last fetched)."""
    tip = _ref_commit(repo, f"refs/remotes/{remote}/{branch}")
    if tip is None:
        raise NotPushedError(f"no remote-tracking branch {remote}/{branch}; run 'git push -u {remote} {branch}'")
    if not _contains(repo, tip, commit):
        raise NotPushedError(
            f'commit {commit[:12]} is not on {remote}/{branch} ("require_pushed" is set); '
            f"run 'git push {remote} {branch}'"
        )


def commit_info(repo: Repo, commit: str) -> CommitInfo:
    found = _commit(repo, commit)
    return CommitInfo(
        commit=found.hexsha,
        subject=_subject(found.message),
        author=found.author.name or "",
        author_email=found.author.email or "",
        commit_date=found.committed_datetime.isoformat(),
    )


def read_file_at(repo: Repo, commit: str, path: str) -> bytes | None:
    """Contents of ``path`` in ``commit`` (HEAD, a full hash, or any name git resolves), or
    None when the commit has no such file."""
    from git import ODBError

    inside = posixpath.normpath(path)
    if inside.startswith(("/", "../")) or inside == "..":
        return None
    try:
        found = _commit(repo, commit if _FULL_HASH.fullmatch(commit) else resolve_commit(repo, commit)).tree / inside
    except (KeyError, ValueError, ODBError, UnknownRefError):  # no such file, or no such commit
        return None
    return found.data_stream.read() if found.type == "blob" else None


def remote_url(repo: Path, remote: str) -> str | None:
    from git import GitCommandError

    with open_repository(repo) as handle:
        try:
            return next(handle.remote(remote).urls, None)
        except (ValueError, GitCommandError):  # no such remote, or one without a URL
            return None


def stream_archive(repo: Path, commit: str, out: BinaryIO) -> None:
    """``git archive --format=tar commit`` into ``out``."""
    from git import GitCommandError

    with open_repository(repo) as handle:
        try:
            handle.archive(out, commit, format="tar", max_chunk_size=_ARCHIVE_CHUNK_BYTES)
        except GitCommandError as exc:
            raise _git_error(exc) from None


def ensure_identity(repo: Repo) -> None:
    """Refuse before anything changes when git has no name and email to commit with."""
    for role in ("AUTHOR", "COMMITTER"):
        try:
            _git(repo, "var", f"GIT_{role}_IDENT")
        except GitError as exc:
            raise IdentityError(
                f"git has no identity to commit with ({exc.stderr.strip().splitlines()[-1]}); run: "
                "git config --global user.name 'Your Name' && git config --global user.email you@example.org"
            ) from None


def commit_file(repo: Repo, path: str, message: str) -> str:
    """Commit the work tree's ``path`` alone, as the user would with ``git commit`` (their
    identity, hooks and signing settings), and return the new commit's hash."""
    _git(repo, "commit", "--quiet", "--message", message, "--only", "--", path)
    return resolve_commit(repo, "HEAD")


def _git(repo: Repo, *args: str) -> bytes:
    """stdout of ``git args`` run by GitPython (so with the pinned environment)."""
    status, out, err = repo.git.execute(
        ["git", *args],
        with_extended_output=True,
        with_exceptions=False,
        stdout_as_string=False,
        strip_newline_in_stdout=False,
    )
    if status != 0:
        raise GitError(list(args), status, err)
    return out


def _ref_commit(repo: Repo, path: str) -> str | None:
    """The hash the ref ``path`` (refs/heads/main) points at, or None when there is no such ref.
    Only a path found among the refs is read: a configured name never becomes a file path."""
    from git import Reference, SymbolicReference

    for ref in Reference.iter_items(repo, common_path=posixpath.dirname(path)):
        if ref.path == path:
            return SymbolicReference.dereference_recursive(repo, path)
    return None


def _contains(repo: Repo, tip: str, commit: str) -> bool:
    """``commit`` is ``tip`` or one of its ancestors (the tip itself needs no git process)."""
    from git import GitCommandError

    try:
        return commit == tip or repo.is_ancestor(_commit(repo, commit), _commit(repo, tip))
    except GitCommandError as exc:
        raise _git_error(exc) from None


def _commit(repo: Repo, commit: str) -> Commit:
    """The commit with this full hash. Made directly, not by repo.commit(), which would start
    a second git process only to learn that a hash from rev-parse ^{commit} is a commit."""
    from git import Commit
    from git.util import hex_to_bin

    return Commit(repo, hex_to_bin(commit))


def _git_error(exc: GitCommandError) -> GitError:
    """GitPython's error as expman's: the argv after "git", the exit status, git's own stderr."""
    stderr = exc.stderr.strip().removeprefix("stderr: '").removesuffix("'")
    status = exc.status if isinstance(exc.status, int) else -1
    return GitError([str(arg) for arg in exc.command[1:]], status, stderr)


def _subject(message: str | bytes) -> str:
    """The subject as git's %s gives it: the first paragraph's lines joined by spaces."""
    text = message if isinstance(message, str) else message.decode(errors="replace")
    lines = [line.rstrip() for line in text.split("\n")]
    while lines and not lines[0]:
        lines.pop(0)
    paragraph = lines[: lines.index("")] if "" in lines else lines
    return " ".join(paragraph)


def _ownership_refusal(top: str) -> str:
    try:
        owner = _user_name(os.stat(top).st_uid)
    except OSError:
        owner = "another user"
    return (
        f"{top} belongs to {owner}, not to you ({_user_name(os.geteuid())}), and git refuses to work in "
        f'another user\'s repository (its "dubious ownership" check); if you trust it, run: '
        f"git config --global --add safe.directory {shlex.quote(top)}"
    )


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def list_paths(paths: list[str]) -> str:
    """Paths for a one-line message: the first ten, and how many more."""
    shown = ", ".join(paths[:_MAX_LISTED_PATHS])
    more = len(paths) - _MAX_LISTED_PATHS
    return shown + (f" (and {more} more)" if more > 0 else "")
