"""The code of a run: ``git archive`` of one commit, and safe ways to unpack it.

The archive is the only way code reaches a run: it is the Docker build context, it is
copied into the container at /code, and the process backend extracts it. The work tree is
never read.

Unpacking does not rely on tarfile's "data" filter: Python releases before the 2025 tarfile
fixes (3.11.7 among them) let crafted links past it (CVE-2025-4517: symlinks expanding past
PATH_MAX; CVE-2025-4330: a hardlink re-creating a symlink elsewhere). Every member is checked
against a model of the tree instead, before any of its bytes is used: only what ``git
archive`` writes (regular files, directories, symlinks), each path at most once and never
under a symlink or a file, and every symlink, followed through the others as the kernel
would, staying inside the tree. A refused archive leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ..errors import GitError, UnsafeArchiveError
from .git import stream_archive

CODE_DIR = "code"
CONFIG_DIR = "expman"
FILE, DIRECTORY, SYMLINK = "file", "dir", "symlink"
_KINDS = {tarfile.REGTYPE: FILE, tarfile.AREGTYPE: FILE, tarfile.DIRTYPE: DIRECTORY, tarfile.SYMTYPE: SYMLINK}
_OTHER_KINDS = {
    tarfile.LNKTYPE: "hard link",
    tarfile.FIFOTYPE: "fifo",
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.CONTTYPE: "contiguous file",
    tarfile.GNUTYPE_SPARSE: "sparse file",
}
MAX_LINK_HOPS = 40  # Linux's MAXSYMLINKS: no path lookup follows more, so nothing further is reachable


def write_archive(repo: Path, commit: str, dest: Path) -> None:
    """``git archive`` ``commit`` into ``dest``."""
    try:
        with open(dest, "wb") as out:
            stream_archive(repo, commit, out)
    except GitError:
        dest.unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Extracted:
    """One entry of an extracted archive: ``path`` relative to its top, '/'-separated;
    ``digest`` is a file's sha256, a symlink's target, empty for a directory."""

    path: str
    kind: str
    digest: str


class _Tree:
    """The tree an archive unpacks to, built member by member; refuses what does not fit."""

    def __init__(self, archive: Path) -> None:
        self.archive = archive
        self.kinds: dict[str, str] = {}
        self.links: dict[str, str] = {}

    def admit(self, member: tarfile.TarInfo) -> tuple[str, str, list[str]]:
        """The member's path, its kind, and the directories it implies that are not there yet."""
        kind = _KINDS.get(member.type)
        if kind is None:
            raise self.refuse(member.name, f"is a {_OTHER_KINDS.get(member.type, f'entry of type {member.type!r}')}")
        parts = member.name.removesuffix("/").split("/") if kind == DIRECTORY else member.name.split("/")
        if any(part in ("", ".", "..") for part in parts):
            raise self.refuse(member.name, "has an absolute path or an empty, '.' or '..' part")
        implied = []
        for end in range(1, len(parts)):
            parent = "/".join(parts[:end])
            found = self.kinds.get(parent)
            if found is None:
                self.kinds[parent] = DIRECTORY
                implied.append(parent)
            elif found != DIRECTORY:
                raise self.refuse(member.name, f"lies under the {found} {parent!r}")
        path = "/".join(parts)
        if path in self.kinds:
            raise self.refuse(member.name, "appears twice")
        self.kinds[path] = kind
        if kind == SYMLINK:
            if not member.linkname or member.linkname.startswith("/"):
                raise self.refuse(member.name, f"links to {member.linkname!r}, which is empty or absolute")
            self.links[path] = member.linkname
        return path, kind, implied

    def check_links(self) -> None:
        """Follow every symlink through the others; refuse one that would leave the tree."""
        for path, target in self.links.items():
            self._follow(path, target)

    def _follow(self, path: str, target: str) -> None:
        place = path.split("/")[:-1]
        pending = deque(target.split("/"))
        hops = 0
        while pending and hops <= MAX_LINK_HOPS:
            part = pending.popleft()
            if part == "..":
                if not place:
                    raise self.refuse(path, f"links outside the tree (through {target!r})")
                place.pop()
            elif part not in ("", "."):
                place.append(part)
                through = self.links.get("/".join(place))
                if through is not None:
                    hops += 1
                    place.pop()
                    pending.extendleft(reversed(through.split("/")))

    def refuse(self, name: str, reason: str) -> UnsafeArchiveError:
        return UnsafeArchiveError(
            f"{self.archive}: member {name!r} {reason}; refusing to unpack it "
            "(a run's code holds only files, directories and symlinks that stay inside it)"
        )


@contextlib.contextmanager
def _opened(archive: Path) -> Iterator[tarfile.TarFile]:
    try:
        with tarfile.open(archive) as tar:
            yield tar
    except tarfile.TarError as exc:
        raise UnsafeArchiveError(
            f"{archive} is not a readable tar archive ({exc}); make it again from the commit"
        ) from None


def _members(tar: tarfile.TarFile, tree: _Tree) -> Iterator[tuple[tarfile.TarInfo, str, str, list[str]]]:
    """Each member admitted to ``tree``, with its path, kind and implied directories; the
    links are checked once the last member is in."""
    for member in tar:
        path, kind, implied = tree.admit(member)
        yield member, path, kind, implied
    tree.check_links()


def extract_archive(archive: Path, dest: Path) -> list[Extracted]:
    """Unpack ``archive`` at ``dest`` (which must not exist), read-only: files 0444 (0555 when
    executable), directories 0555. Members are written into a temporary directory next to
    ``dest`` that is renamed into place once every member and link passed the checks; on a
    refusal or any error nothing is left. Returns the entries, parents before children."""
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        top = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
        try:
            entries = _unpack(archive, top)
            _make_read_only(top, [e.path for e in entries if e.kind == DIRECTORY])
        finally:
            os.close(top)
        os.rename(staging, dest)
    except BaseException:
        remove_tree(staging)
        raise
    return entries


def _unpack(archive: Path, top: int) -> list[Extracted]:
    """Every member written below the directory ``top``; each path is created afresh (never
    followed, never replaced), inside directories this function made."""
    entries = []
    with _opened(archive) as tar:
        tree = _Tree(archive)
        for member, path, kind, implied in _members(tar, tree):
            for directory in implied:
                os.mkdir(directory, 0o700, dir_fd=top)
                entries.append(Extracted(directory, DIRECTORY, ""))
            try:
                digest = _write_member(tar, member, path, kind, top)
            except FileExistsError:  # a case-insensitive or normalizing file system
                raise tree.refuse(member.name, "names the same file as another member here") from None
            entries.append(Extracted(path, kind, digest))
    return entries


def _write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, path: str, kind: str, top: int) -> str:
    if kind == DIRECTORY:
        os.mkdir(path, 0o700, dir_fd=top)
        return ""
    if kind == SYMLINK:
        os.symlink(member.linkname, path, dir_fd=top)
        return member.linkname
    source = tar.extractfile(member)
    assert source is not None  # a regular file always has content, if only empty
    digest = hashlib.sha256()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with open(os.open(path, flags, 0o600, dir_fd=top), "wb") as out:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fchmod(out.fileno(), 0o555 if member.mode & 0o111 else 0o444)
        os.utime(out.fileno(), ns=(int(member.mtime) * 10**9,) * 2)
    return digest.hexdigest()


def _make_read_only(top: int, directories: list[str]) -> None:
    """Directories last and deepest first, so that making one read-only never stops the next."""
    for directory in sorted(directories, key=lambda d: d.count("/"), reverse=True):
        os.chmod(directory, 0o555, dir_fd=top)
    os.fchmod(top, 0o555)


def remove_tree(path: Path) -> None:
    """Delete a tree made read-only by ``extract_archive``: as its owner, directories need
    write permission back first. What cannot be deleted stays."""
    for directory, _, _ in os.walk(path):
        with contextlib.suppress(OSError):
            os.chmod(directory, 0o700)
    shutil.rmtree(path, ignore_errors=True)


def container_payload(archive: Path, config_json: bytes) -> IO[bytes]:
    """A tar to unpack at / in a container: the archive under code/, the config at expman/.

    Entries are re-rooted rather than extracted, so nothing from the archive touches the
    host's file system on the way in; they pass the same checks as ``extract_archive``.
    """
    payload = tempfile.TemporaryFile()
    try:
        with _opened(archive) as src, tarfile.open(fileobj=payload, mode="w") as dst:
            for directory in (CODE_DIR, CONFIG_DIR):
                dst.addfile(_directory_entry(directory))
            for member, path, kind, _ in _members(src, _Tree(archive)):
                fileobj = src.extractfile(member) if kind == FILE else None
                member.name = f"{CODE_DIR}/{path}"
                dst.addfile(member, fileobj)
            info = tarfile.TarInfo(f"{CONFIG_DIR}/config.json")
            info.size, info.mode = len(config_json), 0o644
            dst.addfile(info, io.BytesIO(config_json))
    except BaseException:
        payload.close()
        raise
    payload.seek(0)
    return payload


def _directory_entry(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    return info
