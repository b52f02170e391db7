"""What ``git archive`` of a commit would hold, checked before anything is written:
submodules and Git LFS pointers (their content would be missing) and the export-ignore
and export-subst attributes (files left out or rewritten).

These run on the git command line. The scan is ``ls-tree`` and one ``cat-file --batch``:
on 5,020 files GitPython's tree walk, with a round trip to its object database for each
blob's size and content, took 1.7-2.4x as long (benchmarks/git_side.py, medians of 7-9
rounds). The attributes: GitPython has none of git's attribute machinery.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import UnsupportedContentError
from .git import list_paths, run_git

_LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/"
_LFS_POINTER_MAX_BYTES = 1024
_EXPORT_ATTRIBUTES = ("export-ignore", "export-subst")


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
            f"Git LFS pointer files {list_paths(sorted(lfs))} in commit {commit[:12]}: the archive would hold "
            f"pointers, not data; fetch that data in the Dockerfile or at run time instead of storing it in LFS"
        )


def export_attributes(repo: Path, commit: str, entries: list[TreeEntry]) -> dict[str, list[str]] | None:
    """The paths of ``commit`` that git archive leaves out (export-ignore) or rewrites
    (export-subst), or None when there are none. Inside a left-out directory nothing else
    counts: git archive never looks there."""
    queries = [entry.path + b"/" if entry.kind == "tree" else entry.path for entry in entries]
    marked = _attributes_set(repo, commit, queries)
    ignored: list[bytes] = []
    substituted: list[bytes] = []
    for query, entry in zip(queries, entries, strict=True):
        if any(query.startswith(outer) for outer in ignored):
            continue
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
    changes = [f"{attribute.replace('_', '-')} {list_paths(paths)}" for attribute, paths in exported.items() if paths]
    raise UnsupportedContentError(
        f"attributes in commit {commit[:12]} change what git archive exports ({'; '.join(changes)}): the run "
        f'would not get the committed files; remove those attributes, or set "allow_export_attributes": true '
        f"to run the code as git archive exports it (the paths are recorded)"
    )


def _attributes_set(repo: Path, commit: str, queries: list[bytes]) -> set[tuple[bytes, str]]:
    """(path, attribute) for each export attribute set on a path, as git archive sees it.

    git archive reads attributes from an index of the commit's own tree (its .gitattributes
    at every depth), plus $GIT_DIR/info/attributes and the user's and system's attribute
    files; ``check-attr --cached`` against a temporary index read from the commit does the
    same. ``check-attr --source`` would need git 2.40, and the work tree may hold other
    .gitattributes. git applies its own pattern rules and macros, which a re-implementation
    here could get wrong. Directories are asked with a trailing slash, as git archive asks,
    so that "vendor/ export-ignore" counts.
    """
    with tempfile.TemporaryDirectory(prefix="expman-attributes-") as scratch:
        index = {"GIT_INDEX_FILE": os.path.join(scratch, "index")}
        run_git(repo, "read-tree", commit, env=index)
        stdin = b"".join(query + b"\0" for query in queries)
        check = ["check-attr", "--cached", "-z", "--stdin", *_EXPORT_ATTRIBUTES]
        answers = run_git(repo, *check, stdin=stdin, env=index).stdout.split(b"\0")
    triples = zip(answers[0::3], answers[1::3], answers[2::3], strict=False)
    return {(path, attribute.decode()) for path, attribute, value in triples if value == b"set"}


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
