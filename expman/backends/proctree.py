"""Every process of a run started as a plain process, found and signalled together.

A program's processes are its process group, plus anything that left it: a child that
called setsid, a daemon whose parent exited. The process following the run becomes a
child subreaper, so such orphans are re-parented to it rather than to init; a run's
processes are then the descendants of its first process and those of our own children
whose environment names the run (``EXPMAN_RUN_ID``). Only /proc is read: no privileges,
no cgroups. A process that both leaves the tree and clears its environment escapes.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

_PR_SET_CHILD_SUBREAPER = 36
_subreaper = False


def become_subreaper() -> None:
    """Orphaned descendants of this process are re-parented to it (Linux 3.4+)."""
    global _subreaper
    if not _subreaper:
        libc = ctypes.CDLL(None, use_errno=True)
        _subreaper = libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        threads = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return []
    for thread in threads:
        try:
            found.extend(int(p) for p in (thread / "children").read_text().split())
        except OSError:
            continue
    return found


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    pending = children(pid)
    while pending:
        child = pending.pop()
        found.append(child)
        pending.extend(children(child))
    return found


def run_processes(root: int, run_id: str) -> set[int]:
    """The live processes of the run whose first process is ``root``."""
    marker = f"EXPMAN_RUN_ID={run_id}".encode()
    adopted = [c for c in children(os.getpid()) if c != root and marker in _environ(c)]
    found = {root, *descendants(root)}
    for orphan in adopted:
        found.update((orphan, *descendants(orphan)))
    return {pid for pid in found if _alive(pid)}


def find_by_run(run_id: str) -> set[int]:
    """Every live process of this user whose environment names the run (a slow scan of
    /proc, for runs whose follower is gone)."""
    marker = f"EXPMAN_RUN_ID={run_id}".encode()
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid() and marker in _environ(int(entry.name)):
            found.add(int(entry.name))
    return {pid for pid in found if _alive(pid)}


def outside_group(pids: set[int], pgid: int) -> set[int]:
    """Those of ``pids`` that left process group ``pgid`` (a signal to the group misses them)."""
    outside = set()
    for pid in pids:
        try:
            if os.getpgid(pid) != pgid:
                outside.add(pid)
        except ProcessLookupError:
            continue
    return outside


def signal_all(pids: set[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def reap(pids: set[int]) -> None:
    """Collect the exit status of those of ``pids`` that are this process's ended children."""
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")
