"""Snapshots of a run's checkpoint paths: the last complete checkpoint, kept beside the output.

<run>/checkpoints/<seq>/manifest.json   per file: path, size, sha256, mtime_ns; taken_at, attempt, reason
<run>/checkpoints/<seq>/data/<path>     the files, as they were

A snapshot is copied into a temporary directory, synced, then renamed into place, so a
crash leaves either a whole snapshot or a temporary directory that nothing reads (and the
next snapshot removes). Only the newest snapshot is kept. A snapshot is verified (every file
there, its size and sha256 as the manifest says) before it is restored or forked, so a
damaged one is passed over. The output is the program's: it may put a link (or a FIFO)
anywhere in it, at any moment, so every path under it is opened one component at a time
from a directory descriptor, never following a link, and a file is copied only once its
open descriptor shows a regular file. Pure file logic: where the output lives and when to snapshot
is the supervisor's business.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import posixpath
import secrets
import shutil
import socket
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from ..errors import CheckpointError
from .files import json_bytes, sync_paths, write_bytes_atomic
from .layout import RunDir, utc_now

STORE = "checkpoints"
MANIFEST = "manifest.json"
DATA = "data"
_TEMPORARY = ".tmp-"
_CHUNK = 1 << 20
_NAME_TRIES = 100
_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO the program put there must not hang the open (it is refused after fstat).
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class _NotFollowed(OSError):
    """A link, or something neither a regular file nor a directory, where the program's
    checkpoint was: expman neither follows nor copies it."""


@dataclass(frozen=True)
class Snapshot:
    """One snapshot in a run's store, as its manifest describes it."""

    seq: int
    path: Path
    manifest: dict[str, Any]

    @property
    def files(self) -> list[dict[str, Any]]:
        return list(self.manifest.get("files", []))

    def summary(self) -> dict[str, Any]:
        """What a run record notes of it."""
        keys = ("taken_at", "attempt", "reason", "bytes")
        return {"snapshot": self.seq, **{k: self.manifest.get(k) for k in keys}}


def store(run: RunDir) -> Path:
    return run.path / STORE


def normalized(paths: Iterable[str]) -> list[str]:
    """Configured paths relative to the output, without trailing slashes, and none inside
    another (its files are copied once)."""
    clean = sorted({posixpath.normpath(p).strip("/") for p in paths})
    return [p for p in clean if not any(p.startswith(other + "/") for other in clean if other != p)]


# --- taking a snapshot ---------------------------------------------------------------------


def snapshot(
    run: RunDir, paths: Sequence[str], reason: str, max_bytes: int, attempt: int, now: datetime | None = None
) -> Snapshot | None:
    """Copy ``paths`` of the run's output into a new snapshot; None when nothing is there or
    nothing changed since the newest snapshot. Over ``max_bytes`` raises CheckpointError and
    the previous snapshot stays the newest; so does any other failure (a full disk)."""
    paths = normalized(paths)
    try:
        return _snapshot(run, paths, reason, max_bytes, attempt, now or utc_now())
    except OSError as exc:
        raise CheckpointError(f"cannot snapshot {', '.join(paths)} of run {run.run_id}: {exc}") from None


def _snapshot(
    run: RunDir, paths: list[str], reason: str, max_bytes: int, attempt: int, now: datetime
) -> Snapshot | None:
    found = _scan(run.output, paths)
    if not found:
        return None
    previous = _latest(run)
    if previous is not None and _signature(previous.files) == _signature(found):
        return None
    total = sum(int(f["size"]) for f in found)
    if total > max_bytes:
        raise CheckpointError(
            f"checkpoint paths {', '.join(paths)} hold {total / 2**20:.1f} MB, over max_mb "
            f"({max_bytes / 2**20:g} MB); the previous snapshot is kept"
        )
    _remove_temporaries(store(run))
    temporary = _new_temporary(store(run))
    try:
        files = _copy_in(run.output, found, temporary / DATA)
        if not files or (previous is not None and _contents(previous.files) == _contents(files)):
            shutil.rmtree(temporary)
            return None  # touched, not changed (or gone meanwhile)
        manifest = {
            "taken_at": now.isoformat(),
            "attempt": attempt,
            "reason": reason,
            "paths": paths,
            "bytes": sum(int(f["size"]) for f in files),
            "files": files,
        }
        return _put_in_place(run, temporary, manifest)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


@contextlib.contextmanager
def _directory(output: Path, parts: Sequence[str], create: bool = False) -> Iterator[int]:
    """A descriptor of the output's directory ``parts``, opened one component at a time
    without following a link; with ``create``, missing ones are made. The output itself is
    expman's (its own path may hold links); what is below it is the program's."""
    fd = os.open(output, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for depth, name in enumerate(parts):
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, dir_fd=fd)
            try:
                inner = os.open(name, _DIRECTORY_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                shown = "/".join(parts[: depth + 1])
                raise _NotFollowed(
                    f"{shown} is a symbolic link or not a directory; expman does not follow it"
                ) from None
            os.close(fd)
            fd = inner
        yield fd
    finally:
        os.close(fd)


def _split(relative: str) -> tuple[list[str], str]:
    *parents, name = relative.split("/")
    return parents, name


def _scan(output: Path, paths: Sequence[str]) -> list[dict[str, Any]]:
    """The regular files at or under ``paths``, with size and mtime; links (on the way or
    below) are left out, never followed."""
    found: list[dict[str, Any]] = []
    for path in paths:
        parents, name = _split(path)
        try:
            with _directory(output, parents) as parent:
                found.extend(_scan_at(parent, parents, name))
        except (FileNotFoundError, _NotFollowed):
            continue  # the program has not checkpointed yet (or a link leads elsewhere)
    return found


def _scan_at(parent: int, parents: list[str], name: str) -> list[dict[str, Any]]:
    top = os.stat(name, dir_fd=parent, follow_symlinks=False)
    if stat.S_ISREG(top.st_mode):
        return [_entry("/".join([*parents, name]), top)]
    if not stat.S_ISDIR(top.st_mode):
        return []
    found = []
    # fwalk opens each directory without following a link and checks it is the one listed.
    for directory, _, names, fd in os.fwalk(name, dir_fd=parent, follow_symlinks=False):
        for file_name in names:
            try:
                attributes = os.stat(file_name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:  # renamed away meanwhile (a temporary of the program)
                continue
            if stat.S_ISREG(attributes.st_mode):
                found.append(_entry("/".join([*parents, directory, file_name]), attributes))
    return found


def _entry(relative: str, attributes: os.stat_result) -> dict[str, Any]:
    mode = attributes.st_mode & 0o777
    return {"path": relative, "size": attributes.st_size, "mtime_ns": attributes.st_mtime_ns, "mode": mode}


def _signature(files: Iterable[dict[str, Any]]) -> set[tuple[str, int, int]]:
    return {(f["path"], int(f["size"]), int(f["mtime_ns"])) for f in files}


def _contents(files: Iterable[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(f["path"], f["sha256"]) for f in files}


def _copy_in(output: Path, found: list[dict[str, Any]], target: Path) -> list[dict[str, Any]]:
    """Copy each found file under ``target``, hashing what is copied; a file that vanished
    meanwhile is left out."""
    copied = []
    for entry in found:
        try:
            source = _open_file(output, entry["path"])
        except (FileNotFoundError, _NotFollowed):
            continue  # gone, or swapped for a link, since the scan
        destination = target / entry["path"]
        destination.parent.mkdir(parents=True, exist_ok=True)
        size, digest = _copy_file(source, destination)
        os.chmod(destination, entry["mode"])
        copied.append({**entry, "size": size, "sha256": digest})
    return copied


def _open_file(output: Path, relative: str) -> int:
    """A descriptor of the output's regular file ``relative``, no link followed on the way."""
    parents, name = _split(relative)
    with _directory(output, parents) as parent:
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            raise _NotFollowed(f"{relative} is a symbolic link; expman does not follow it") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _NotFollowed(f"{relative} is not a regular file")
    return fd


def _copy_file(source: int | Path, destination: Path) -> tuple[int, str]:
    """Copy and hash in one read (a descriptor is closed after); the copy is synced. Its
    size and sha256."""
    digest, size = hashlib.sha256(), 0
    with open(source, "rb") as reader, open(destination, "wb") as writer:
        while chunk := reader.read(_CHUNK):
            digest.update(chunk)
            writer.write(chunk)
            size += len(chunk)
        writer.flush()
        os.fsync(writer.fileno())
    return size, digest.hexdigest()


def _put_in_place(run: RunDir, temporary: Path, manifest: dict[str, Any]) -> Snapshot:
    """Write the manifest, sync the directories, rename the temporary to the next sequence
    number, then remove the older snapshots."""
    write_bytes_atomic(temporary / MANIFEST, json_bytes(manifest))
    sync_paths(*_directories(temporary))
    for _ in range(_NAME_TRIES):
        seq = max((s for s, _ in _numbered(run)), default=0) + 1
        target = store(run) / f"{seq:06d}"
        try:
            temporary.rename(target)
        except OSError:  # another process took that number
            continue
        sync_paths(store(run))
        _remove_older(run, seq)
        return Snapshot(seq, target, manifest)
    raise CheckpointError(f"cannot name a new snapshot under {store(run)}; remove stale entries there")


def _directories(top: Path) -> list[Path]:
    return [Path(d) for d, _, _ in os.walk(top)]


def _new_temporary(where: Path) -> Path:
    where.mkdir(exist_ok=True)
    path = where / f"{_TEMPORARY}{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
    path.mkdir()
    return path


def _remove_temporaries(where: Path) -> None:
    """Temporary directories of snapshots whose process on this host is gone (a crash)."""
    if not where.is_dir():
        return
    host = socket.gethostname()
    for entry in where.iterdir():
        if not entry.name.startswith(_TEMPORARY):
            continue
        name, _, rest = entry.name.removeprefix(_TEMPORARY).rpartition("-")
        owner, _, pid = name.rpartition("-")
        if owner == host and pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(entry, ignore_errors=True)


def _remove_older(run: RunDir, newest: int) -> None:
    for seq, path in _numbered(run):
        if seq < newest:
            shutil.rmtree(path, ignore_errors=True)


# --- reading snapshots ------------------------------------------------------------------------


def _numbered(run: RunDir) -> list[tuple[int, Path]]:
    """The snapshot directories, newest first (temporaries are not among them)."""
    try:
        entries = list(store(run).iterdir())
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise CheckpointError(f"cannot read the snapshots in {store(run)}: {exc}; remove what is there") from None
    return sorted(((int(p.name), p) for p in entries if p.name.isdigit()), reverse=True)


def _load(seq: int, path: Path) -> Snapshot | None:
    try:
        manifest = orjson.loads((path / MANIFEST).read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        return None
    return Snapshot(seq, path, manifest)


def _latest(run: RunDir) -> Snapshot | None:
    """The newest snapshot whose files are all there at their sizes (not hashed: cheap
    enough to ask at every interval)."""
    for seq, path in _numbered(run):
        found = _load(seq, path)
        if found is not None and all(_present(found, f) for f in found.files):
            return found
    return None


def _present(found: Snapshot, entry: dict[str, Any]) -> bool:
    try:
        data = _data_path(found.path, entry)
        return data.is_file() and data.stat().st_size == int(entry["size"])
    except (KeyError, TypeError, ValueError, OSError):
        return False


def _data_path(top: Path, entry: dict[str, Any]) -> Path:
    """Where a manifest entry's file is; a path that would leave the snapshot is refused."""
    relative = str(entry["path"])
    if relative.startswith("/") or ".." in relative.split("/"):
        raise ValueError(f"{relative!r} leaves the snapshot")
    return top / DATA / relative


def verify(found: Snapshot) -> bool:
    """Every file of the manifest is there, with its size and sha256."""
    for entry in found.files:
        if not _present(found, entry):
            return False
        digest = hashlib.sha256()
        try:
            with open(_data_path(found.path, entry), "rb") as reader:
                while chunk := reader.read(_CHUNK):
                    digest.update(chunk)
        except OSError:
            return False
        if digest.hexdigest() != entry.get("sha256"):
            return False
    return True


def newest(run: RunDir) -> Snapshot | None:
    """The newest snapshot that verifies; a damaged or half-made one is passed over."""
    for seq, path in _numbered(run):
        found = _load(seq, path)
        if found is not None and verify(found):
            return found
    return None


# --- restoring and forking ------------------------------------------------------------------


def restore(run: RunDir, paths: Sequence[str]) -> Snapshot | None:
    """Make ``paths`` of the run's output what the newest verified snapshot holds: whatever is
    there first (a killed attempt's half-written files) is removed. None, touching nothing,
    when there is no snapshot. A link on the way to a path is refused, never followed."""
    found = newest(run)
    if found is None:
        return None
    paths = normalized(paths)
    try:
        for path in paths:
            _remove(run.output, path)
        for entry in found.files:
            if any(entry["path"] == p or entry["path"].startswith(p + "/") for p in paths):
                _restore_file(run.output, found, entry)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot restore snapshot {found.seq} into {run.output}: {exc}") from None
    return found


def _remove(output: Path, path: str) -> None:
    """Remove the output's ``path`` (a link there itself, not what it leads to)."""
    parents, name = _split(path)
    try:
        with _directory(output, parents) as parent:
            if stat.S_ISDIR(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
                shutil.rmtree(name, dir_fd=parent)
            else:
                os.unlink(name, dir_fd=parent)
    except FileNotFoundError:
        return


def _restore_file(output: Path, found: Snapshot, entry: dict[str, Any]) -> None:
    """Copy one file back, with its mode and mtime (so the next snapshot sees it unchanged),
    through a new temporary renamed over whatever has its name."""
    source = _data_path(found.path, entry)  # a path that would leave the snapshot is refused
    parents, name = _split(str(entry["path"]))
    mtime_ns = int(entry["mtime_ns"])
    with _directory(output, parents, create=True) as parent, open(source, "rb") as reader:
        temporary, fd = _new_file(parent)
        try:
            with os.fdopen(fd, "wb") as writer:
                shutil.copyfileobj(reader, writer, _CHUNK)
                writer.flush()
                os.fchmod(fd, int(entry.get("mode", 0o644)))
                os.utime(fd, ns=(mtime_ns, mtime_ns))
            os.replace(temporary, name, src_dir_fd=parent, dst_dir_fd=parent)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=parent)
            raise


def _new_file(parent: int) -> tuple[str, int]:
    """A new file of a fresh name in ``parent``, made here (never a name the program made)."""
    for _ in range(_NAME_TRIES):
        name = f".expman-{secrets.token_hex(8)}.restoring"
        try:
            return name, os.open(name, _CREATE_FLAGS, 0o600, dir_fd=parent)
        except FileExistsError:
            continue
    raise FileExistsError("cannot name a temporary file for the restore")


def fork(parent: RunDir, child: RunDir) -> Snapshot | None:
    """Copy the parent's newest verified snapshot into the child's store, so that the child's
    first attempt starts from it; None when the parent has none (or only damaged ones). The
    copy is verified before it is put in place."""
    found = newest(parent)
    if found is None:
        return None
    try:
        _remove_temporaries(store(child))
        temporary = _new_temporary(store(child))
    except OSError as exc:
        raise CheckpointError(f"cannot fork snapshot {found.seq} of run {parent.run_id}: {exc}") from None
    try:
        for entry in found.files:
            destination = _data_path(temporary, entry)
            destination.parent.mkdir(parents=True, exist_ok=True)
            _copy_file(_data_path(found.path, entry), destination)
            os.chmod(destination, int(entry.get("mode", 0o644)))
        manifest = {**found.manifest, "forked_from": {"run": parent.run_id, "snapshot": found.seq}}
        if not verify(Snapshot(0, temporary, manifest)):
            shutil.rmtree(temporary)
            return None  # changed under us (the parent's store was pruned meanwhile)
        return _put_in_place(child, temporary, manifest)
    except OSError as exc:
        with contextlib.suppress(OSError):
            shutil.rmtree(temporary)
        raise CheckpointError(f"cannot fork snapshot {found.seq} of run {parent.run_id}: {exc}") from None
