"""Atomic writes: readers of a run directory see a file's old or new content, never a mix."""

from __future__ import annotations

import atexit
import errno
import json
import os
import shutil
import socket
import threading
from pathlib import Path
from typing import Any

import orjson


def write_json_atomic(path: Path, data: Any, durable: bool = True) -> None:
    write_bytes_atomic(path, json_bytes(data), durable)


def json_bytes(data: Any, sort_keys: bool = True) -> bytes:
    """Indented JSON, UTF-8, ending in a newline. orjson, as a record is written several times
    per run and thousands of runs make a sweep; the standard library for what orjson refuses
    (integers beyond 64 bits)."""
    option = orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE | (orjson.OPT_SORT_KEYS if sort_keys else 0)
    try:
        return orjson.dumps(data, option=option)
    except TypeError:
        return (json.dumps(data, sort_keys=sort_keys, indent=2, ensure_ascii=False) + "\n").encode()


def write_bytes_atomic(path: Path, data: bytes, durable: bool = True) -> None:
    """Write to a temporary file in the same directory, fsync (when ``durable``), then rename
    over ``path``: readers see the old or the new content, never a mix."""
    put_in_place(stage_bytes(path, data), path, durable)


def stage_bytes(path: Path, data: bytes) -> Path:
    """The first half of ``write_bytes_atomic``: ``data`` in a temporary file next to ``path``,
    not synced; ``put_in_place`` finishes the write (from another thread, say)."""
    tmp = _temporary(path)
    try:
        tmp.write_bytes(data)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def put_in_place(tmp: Path, path: Path, durable: bool = True) -> None:
    """fsync (when ``durable``) a file staged by ``stage_bytes`` and rename it over ``path``."""
    try:
        if durable:
            sync_paths(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _temporary(path: Path) -> Path:
    return path.parent / f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"  # one per writing thread


def sync_paths(*paths: Path) -> None:
    """fsync files or directories (a directory's sync keeps the entries made in it)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def link_or_copy(source: Path, target: Path) -> None:
    """A hard link where the filesystem allows one (runs of a sweep share their archive), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


# --- space for the last words ------------------------------------------------------------

RESERVE_DIR = ".expman-reserve"
RESERVE_BYTES = 1 << 20
_reserved: set[Path] = set()


def disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def reserve_space(root: Path) -> None:
    """Keep RESERVE_BYTES of ``root``'s filesystem for this process (a file of its own under
    <root>/.expman-reserve/), given up by ``release_space`` when the disk is found full, so
    that the records saying so can still be written. Best effort: a root where it cannot be
    made has none. Reserves of processes that died on this host are removed."""
    if root in _reserved:
        return
    path = _reserve_path(root)
    try:
        path.parent.mkdir(exist_ok=True)
        _remove_stale_reserves(path.parent)
        with open(path, "wb") as f:
            f.write(bytes(RESERVE_BYTES))
    except OSError:
        path.unlink(missing_ok=True)
        return
    if not _reserved:
        atexit.register(_release_all)
    _reserved.add(root)


def release_space(root: Path) -> bool:
    """Give up this process's reserve in ``root``; whether there was one."""
    if root not in _reserved:
        return False
    _reserved.discard(root)
    _reserve_path(root).unlink(missing_ok=True)
    return True


def _reserve_path(root: Path) -> Path:
    return root / RESERVE_DIR / f"{socket.gethostname()}-{os.getpid()}"


def _remove_stale_reserves(directory: Path) -> None:
    host = socket.gethostname()
    for entry in directory.iterdir():
        name, _, pid = entry.name.rpartition("-")
        if name == host and pid.isdigit() and not Path(f"/proc/{pid}").exists():
            entry.unlink(missing_ok=True)


def _release_all() -> None:
    for root in list(_reserved):
        release_space(root)
