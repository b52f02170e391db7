"""Git discipline: only committed code on the configured branch runs.

Every check here runs before anything is built or written. git is always called with
argv lists and an environment stripped of the variables that would point it at another
repository (GIT_DIR, GIT_WORK_TREE, GIT_INDEX_FILE, ...).
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import (
    DirtyTreeError,
    GitError,
    NotARepositoryError,
    NotPushedError,
    UnknownRefError,
    UnreachableCommitError,
    UnsupportedContentError,
    UntrackedFilesError,
    WrongBranchError,
)

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
_LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/"
_LFS_POINTER_MAX_BYTES = 1024
_MAX_LISTED_PATHS = 10
_EXPORT_ATTRIBUTES = ("export-ignore", "export-subst")
# git's refusal of a repository owned by another user; the path is what safe.directory needs.
_DUBIOUS_OWNERSHIP = re.compile(r"detected dubious ownership in repository at '(.*?)'\n", re.DOTALL)


@dataclass(frozen=True)
class TreeEntry:
    """One entry of ``git ls-tree``: path (bytes, as git stores it), blob/tree/commit, size."""

    path: bytes
    kind: str
    oid: str
    size: int | None

    @property
    def name(self) -> str:
        return self.path.decode(errors="replace")


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


def git_text(repo: Path, *args: str) -> str:
    return run_git(repo, *args).stdout.decode(errors="replace").strip()


def find_repository(path: Path) -> Path:
    """The top of the work tree containing ``path``."""
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


def current_branch(repo: Path) -> str | None:
    """The checked-out branch, or None on a detached HEAD."""
    proc = run_git(repo, "symbolic-ref", "--quiet", "--short", "HEAD", check=False)
    return proc.stdout.decode().strip() if proc.returncode == 0 else None


def ensure_branch(repo: Path, branch: str, explicit_ref: bool) -> None:
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


def ensure_clean_tree(repo: Path, allow_untracked: bool) -> None:
    """Refuse modified or staged tracked files, and untracked files git does not ignore."""
    out = run_git(repo, "status", "--porcelain=v1", "-z", "--untracked-files=all", "--ignore-submodules=none").stdout
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
            f"uncommitted changes in {_list_paths(changed)}; commit or stash them (only committed code runs)"
        )
    if untracked and not allow_untracked:
        raise UntrackedFilesError(
            f"untracked files {_list_paths(untracked)} would be missing from the run; commit them, add them "
            f'to .gitignore, or set "allow_untracked": true'
        )


def resolve_commit(repo: Path, ref: str) -> str:
    """Full hash of a commit named by a full or short hash, tag or branch."""
    if ref.startswith("-"):
        raise UnknownRefError(f"{ref!r} is not a commit; pass a hash, tag or branch name")
    proc = run_git(repo, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}", check=False)
    if proc.returncode != 0:
        raise UnknownRefError(f"{ref!r} does not name a commit in {repo}; check 'git log' for the hash or tag")
    return proc.stdout.decode().strip()


def ensure_reachable(repo: Path, commit: str, branch: str) -> None:
    if run_git(repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", check=False).returncode != 0:
        raise WrongBranchError(f'branch {branch!r} does not exist; create it or set "branch" in config.json')
    if not _is_ancestor(repo, commit, f"refs/heads/{branch}"):
        raise UnreachableCommitError(
            f"commit {commit[:12]} is not on branch {branch!r}; merge it into {branch} or pick a commit from "
            f"'git log {branch}'"
        )


def ensure_pushed(repo: Path, commit: str, branch: str, remote: str) -> None:
    """The commit must be contained in the remote-tracking branch (as last fetched)."""
    tracking = f"refs/remotes/{remote}/{branch}"
    if run_git(repo, "rev-parse", "--verify", "--quiet", tracking, check=False).returncode != 0:
        raise NotPushedError(f"no remote-tracking branch {remote}/{branch}; run 'git push -u {remote} {branch}'")
    if not _is_ancestor(repo, commit, tracking):
        raise NotPushedError(
            f'commit {commit[:12]} is not on {remote}/{branch} ("require_pushed" is set); '
            f"run 'git push {remote} {branch}'"
        )


def list_tree(repo: Path, commit: str) -> list[TreeEntry]:
    """Every entry of ``commit``'s tree, directories included, in git's order (a directory
    before what it holds)."""
    listing = run_git(repo, "ls-tree", "-r", "-t", "-z", "-l", "--full-tree", commit).stdout
    entries = []
    for entry in filter(None, listing.split(b"\0")):
        meta, _, path = entry.partition(b"\t")
        _, kind, oid, size = meta.decode().split()
        entries.append(TreeEntry(path, kind, oid, None if size == "-" else int(size)))
    return entries


def ensure_plain_content(repo: Path, commit: str, entries: list[TreeEntry]) -> None:
    """Refuse submodules and Git LFS pointers: git archive would not contain their content."""
    small_blobs: dict[str, str] = {}
    for entry in entries:
        if entry.kind == "commit":
            raise UnsupportedContentError(
                f"submodule {entry.name!r} in commit {commit[:12]}: its code would not be archived; vendor it "
                f"into the repository or install it in the Dockerfile"
            )
        if entry.kind == "blob" and entry.size is not None and entry.size <= _LFS_POINTER_MAX_BYTES:
            small_blobs[entry.oid] = entry.name
    lfs = [small_blobs[oid] for oid in _blobs_with_prefix(repo, list(small_blobs), _LFS_POINTER_PREFIX)]
    if lfs:
        raise UnsupportedContentError(
            f"Git LFS pointer files {_list_paths(sorted(lfs))} in commit {commit[:12]}: the archive would hold "
            f"pointers, not data; fetch that data in the Dockerfile or at run time instead of storing it in LFS"
        )


def export_attributes(repo: Path, commit: str, entries: list[TreeEntry]) -> dict[str, list[str]] | None:
    """The paths of ``commit`` that git archive leaves out (export-ignore) or rewrites
    (export-subst), or None when there are none.

    Attributes are read as git archive reads them: from an index of the commit's own tree
    (its .gitattributes at every depth; ``check-attr --source`` needs git 2.40, and the work
    tree may hold other ones), plus $GIT_DIR/info/attributes and the user's and system's
    attribute files. git answers for every path, with its own pattern rules and macros,
    which a re-implementation of them here could get wrong. Directories are asked with a
    trailing slash, as git archive asks, so "vendor/ export-ignore" counts.
    """
    queries = [entry.path + b"/" if entry.kind == "tree" else entry.path for entry in entries]
    with tempfile.TemporaryDirectory(prefix="expman-attributes-") as scratch:
        index = {"GIT_INDEX_FILE": os.path.join(scratch, "index")}
        run_git(repo, "read-tree", commit, env=index)
        answers = run_git(
            repo,
            "check-attr",
            "--cached",
            "-z",
            "--stdin",
            *_EXPORT_ATTRIBUTES,
            stdin=b"".join(q + b"\0" for q in queries),
            env=index,
        ).stdout.split(b"\0")
    marked = {(answers[i], answers[i + 1].decode()) for i in range(0, len(answers) - 2, 3) if answers[i + 2] == b"set"}
    ignored: list[bytes] = []
    substituted: list[bytes] = []
    for query, entry in zip(queries, entries, strict=True):
        if any(query.startswith(outer) for outer in ignored):
            continue  # inside a left-out directory: git archive never looks at it
        if (query, "export-ignore") in marked:
            ignored.append(query)
        elif entry.kind == "blob" and (query, "export-subst") in marked:
            substituted.append(query)
    if not ignored and not substituted:
        return None
    return {
        "export_ignore": [p.decode(errors="replace") for p in ignored],
        "export_subst": [p.decode(errors="replace") for p in substituted],
    }


def ensure_export_allowed(exported: dict[str, list[str]] | None, commit: str, allowed: bool) -> None:
    """Refuse export attributes unless the configuration allows them."""
    if exported is None or allowed:
        return
    changes = [f"{attribute.replace('_', '-')} {_list_paths(paths)}" for attribute, paths in exported.items() if paths]
    raise UnsupportedContentError(
        f"attributes in commit {commit[:12]} change what git archive exports ({'; '.join(changes)}): the run "
        f'would not get the committed files; remove those attributes, or set "allow_export_attributes": true '
        f"to run the code as git archive exports it (the paths are recorded)"
    )


def commit_info(repo: Path, commit: str) -> CommitInfo:
    fields = git_text(repo, "show", "-s", "--format=%H%x00%s%x00%an%x00%ae%x00%cI", commit).split("\0")
    return CommitInfo(*fields)


def read_file_at(repo: Path, commit: str, path: str) -> bytes | None:
    """Contents of ``path`` in ``commit``, or None when the commit has no such file."""
    proc = run_git(repo, "cat-file", "blob", f"{commit}:{path}", check=False)
    return proc.stdout if proc.returncode == 0 else None


def remote_url(repo: Path, remote: str) -> str | None:
    proc = run_git(repo, "remote", "get-url", remote, check=False)
    return proc.stdout.decode(errors="replace").strip() if proc.returncode == 0 else None


def _is_ancestor(repo: Path, commit: str, ref: str) -> bool:
    proc = run_git(repo, "merge-base", "--is-ancestor", commit, ref, check=False)
    if proc.returncode not in (0, 1):
        raise GitError(["merge-base", "--is-ancestor", commit, ref], proc.returncode, proc.stderr.decode())
    return proc.returncode == 0


def _blobs_with_prefix(repo: Path, oids: list[str], prefix: bytes) -> list[str]:
    if not oids:
        return []
    out = run_git(repo, "cat-file", "--batch", stdin="\n".join(oids).encode() + b"\n").stdout
    found, pos = [], 0
    while pos < len(out):
        header_end = out.index(b"\n", pos)
        oid, _, size = out[pos:header_end].decode().split()
        body = out[header_end + 1 : header_end + 1 + int(size)]
        if body.startswith(prefix):
            found.append(oid)
        pos = header_end + 1 + int(size) + 1
    return found


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


def _list_paths(paths: list[str]) -> str:
    shown = ", ".join(paths[:_MAX_LISTED_PATHS])
    more = len(paths) - _MAX_LISTED_PATHS
    return shown + (f" (and {more} more)" if more > 0 else "")
