"""Snapshots of a run's checkpoint paths: the last complete checkpoint, kept beside the output.

<run>/checkpoints/<seq>/manifest.json   per file: path, size, sha256, mtime_ns; taken_at, attempt, reason
<run>/checkpoints/<seq>/data/<path>     the files, as they were

A snapshot is copied into a temporary directory, synced, then renamed into place, so a
crash leaves either a whole snapshot or a temporary directory that nothing reads (and the
next snapshot removes). Only the newest snapshot is kept. A snapshot is verified (every file
there, its size and sha256 as the manifest says) before it is restored or forked, so a
damaged one is passed over. Pure file logic: where the output lives and when to snapshot
is the supervisor's business.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import secrets
import shutil
import socket
from collections.abc import Iterable, Sequence
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
    the previous snapshot stays the newest."""
    paths = normalized(paths)
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
        if previous is not None and _contents(previous.files) == _contents(files):
            shutil.rmtree(temporary)
            return None  # touched, not changed
        manifest = {
            "taken_at": (now or utc_now()).isoformat(),
            "attempt": attempt,
            "reason": reason,
            "paths": paths,
            "bytes": sum(int(f["size"]) for f in files),
            "files": files,
        }
        return _put_in_place(run, temporary, manifest)
    except OSError as exc:
        shutil.rmtree(temporary, ignore_errors=True)
        raise CheckpointError(f"cannot snapshot {', '.join(paths)} of run {run.run_id}: {exc}") from None


def _scan(output: Path, paths: Sequence[str]) -> list[dict[str, Any]]:
    """The regular files under ``paths`` (symlinks are not followed), with size and mtime."""
    found: list[dict[str, Any]] = []
    for path in paths:
        top = output / path
        if top.is_symlink() or not top.exists() or not _inside(output, path):
            continue  # the program has not checkpointed yet (or a link leads elsewhere)
        if top.is_file():
            found.append(_entry(top, path))
            continue
        for directory, _, names in os.walk(top):
            for name in names:
                full = Path(directory) / name
                if full.is_file() and not full.is_symlink():
                    found.append(_entry(full, full.relative_to(output).as_posix()))
    return [f for f in found if f]


def _inside(output: Path, path: str) -> bool:
    """Whether ``path``'s parent is within the output, symlinks resolved (a program may have
    made a directory on the way a link to a place it should not reach through expman)."""
    return (output / path).parent.resolve().is_relative_to(output.resolve())


def _entry(path: Path, relative: str) -> dict[str, Any]:
    try:
        stat = path.stat()
    except FileNotFoundError:  # renamed away meanwhile (a temporary of the program)
        return {}
    return {"path": relative, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "mode": stat.st_mode & 0o777}


def _signature(files: Iterable[dict[str, Any]]) -> set[tuple[str, int, int]]:
    return {(f["path"], int(f["size"]), int(f["mtime_ns"])) for f in files}


def _contents(files: Iterable[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(f["path"], f["sha256"]) for f in files}


def _copy_in(output: Path, found: list[dict[str, Any]], target: Path) -> list[dict[str, Any]]:
    """Copy each found file under ``target``, hashing what is copied; a file that vanished
    meanwhile is left out."""
    copied = []
    for entry in found:
        destination = target / entry["path"]
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            size, digest = _copy_file(output / entry["path"], destination)
        except FileNotFoundError:
            continue
        os.chmod(destination, entry["mode"])
        copied.append({**entry, "size": size, "sha256": digest})
    return copied


def _copy_file(source: Path, destination: Path) -> tuple[int, str]:
    """Copy and hash in one read; the copy is synced. Its size and sha256."""
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
    when there is no snapshot."""
    found = newest(run)
    if found is None:
        return None
    paths = normalized(paths)
    try:
        for path in paths:
            if not _inside(run.output, path):
                raise OSError(f"{path} leads out of the output directory through a symbolic link")
            _remove(run.output / path)
        for entry in found.files:
            if any(entry["path"] == p or entry["path"].startswith(p + "/") for p in paths):
                _restore_file(run.output, found, entry)
    except OSError as exc:
        raise CheckpointError(f"cannot restore snapshot {found.seq} into {run.output}: {exc}") from None
    return found


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _restore_file(output: Path, found: Snapshot, entry: dict[str, Any]) -> None:
    """Copy one file back, with its mode and mtime (so the next snapshot sees it unchanged)."""
    target = output / entry["path"]
    target.parent.mkdir(parents=True, exist_ok=True)
    if not _inside(output, entry["path"]):
        raise OSError(f"{target.parent} leads out of the output directory through a symbolic link")
    temporary = target.parent / f".{target.name}.restoring"
    shutil.copyfile(_data_path(found.path, entry), temporary)
    os.chmod(temporary, int(entry.get("mode", 0o644)))
    os.utime(temporary, ns=(int(entry["mtime_ns"]), int(entry["mtime_ns"])))
    os.replace(temporary, target)


def fork(parent: RunDir, child: RunDir) -> Snapshot | None:
    """Copy the parent's newest verified snapshot into the child's store, so that the child's
    first attempt starts from it; None when the parent has none (or only damaged ones). The
    copy is verified before it is put in place."""
    found = newest(parent)
    if found is None:
        return None
    _remove_temporaries(store(child))
    temporary = _new_temporary(store(child))
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
