"""The code a process run executes: one read-only copy of a commit's archive per runs root,
shared by the commit's runs and checked against its manifest before each run starts.

    <runs_root>/.expman-code/
        <commit>.<id>/    a copy: files 0444 (0555 when executable), directories 0555
        <commit>.json     the manifest of the current copy: its directory and, per entry,
                          path, kind, mode, size, mtime_ns, ctime_ns and the sha256 of a
                          file (a symlink's target)
        <commit>.lock     held while a copy is made or replaced

Read-only stops a careless program running as the copy's owner, not one running as root or
one that makes a file writable first; so before each run every entry is compared by lstat
with the manifest, and by content only where the stat differs (an entry touched but
unchanged costs a read, not a new copy). A copy that differs is never repaired in place: a
fresh one is extracted beside it and the manifest switched to it by one rename, so a run
sees a whole copy or none. The copy a run uses is held (a shared flock on its directory) by
the expman process following the run; a replaced copy is deleted only when nobody holds it.
``expman gc`` deletes the copies no remaining run links to, none holds and no queued run
may need (``remove_unused``), under each commit's lock. ``__pycache__`` directories Python
adds to the copy (running as root it ignores the mode) are allowed: their bytecode is
checked by Python against the sources checked here.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from ..errors import LaunchError
from ..rundir.files import write_bytes_atomic
from .archive import DIRECTORY, FILE, SYMLINK, Extracted, extract_archive, remove_tree

SHARED_CODE_DIR = ".expman-code"
ADDED_BY_PYTHON = frozenset({"__pycache__"})
# path, kind, mode, size, mtime_ns, ctime_ns, digest: a list per entry, as 2,000 of them are
# read by every run that does not have the manifest in memory yet
Entry = tuple[str, str, int, int, int, int, str]


@dataclass(frozen=True)
class Manifest:
    copy: str
    entries: list[Entry]
    listing: dict[str, frozenset[str]]  # directory -> the names in it

    @staticmethod
    def parse(data: bytes) -> Manifest:
        document = orjson.loads(data)
        entries: list[Entry] = [tuple(e) for e in document["entries"]]  # type: ignore[misc]
        listing: dict[str, set[str]] = {e[0]: set() for e in entries if e[1] == DIRECTORY}
        for path, *_ in entries[1:]:
            parent, _, name = path.rpartition("/")
            listing[parent or "."].add(name)
        return Manifest(document["copy"], entries, {k: frozenset(v) for k, v in listing.items()})


class SharedCode:
    """The copies one expman process uses: manifests kept in memory (a worker runs thousands
    of runs of a commit), and the hold on the copy its current run uses. A process follows
    one run at a time, so one hold is enough; it lasts until the next run's check."""

    MANIFESTS_KEPT = 8

    def __init__(self) -> None:
        self._manifests: dict[Path, tuple[tuple[int, int, int], Manifest]] = {}
        self._held: tuple[Path, int] | None = None

    def ensure(self, archive: Path, commit: str, runs_root: Path) -> None:
        """A copy of ``commit`` exists, extracted from ``archive`` if there is none yet: the
        slow part of a commit's first run, done while preparing it."""
        store = runs_root / SHARED_CODE_DIR
        if self._manifest(store, commit) is None:
            with _failing_as_launch_error(store, commit), _locked(store, commit):
                if self._manifest(store, commit) is None:
                    self._extract(archive, store, commit)

    def checkout(self, archive: Path, commit: str, link: Path) -> str | None:
        """Point ``link`` (a run's ``code``) at a copy of ``commit`` identical to its manifest,
        extracting a fresh copy when the current one differs. Returns what differed when this
        call replaced the copy, else None."""
        store = link.parent.parent / SHARED_CODE_DIR
        difference = self._check(store, commit)
        if difference is not None:
            with _failing_as_launch_error(store, commit), _locked(store, commit):
                difference = self._check(store, commit)
                if difference is not None:
                    self._extract(archive, store, commit)
                    self._prune(store, commit)
        assert self._held is not None
        _point(link, Path("..") / SHARED_CODE_DIR / self._held[0].name)
        return difference

    def _check(self, store: Path, commit: str) -> str | None:
        """None when the current copy matches its manifest (and is now held), else why not."""
        manifest = self._manifest(store, commit)
        if manifest is None:
            return "there was none"
        copy = store / manifest.copy
        try:
            top = self._hold(copy)
        except OSError as exc:
            return f"{copy.name}: {exc.strerror}"
        differences = _differences(manifest, top)
        if not differences:
            return None
        self._release()  # its replacement may delete it
        more = f" and {len(differences) - 3} more" if len(differences) > 3 else ""
        return ", ".join(differences[:3]) + more

    def _extract(self, archive: Path, store: Path, commit: str) -> None:
        store.mkdir(exist_ok=True)
        copy = store / f"{commit}.{secrets.token_hex(4)}"
        extracted = extract_archive(archive, copy)
        top = self._hold(copy)
        entries = [_entry(top, Extracted(".", DIRECTORY, "")), *(_entry(top, e) for e in extracted)]
        data = orjson.dumps({"copy": copy.name, "entries": entries}, option=orjson.OPT_APPEND_NEWLINE)
        write_bytes_atomic(store / f"{commit}.json", data)

    def _manifest(self, store: Path, commit: str) -> Manifest | None:
        path = store / f"{commit}.json"
        try:
            info = os.stat(path)
            key = (info.st_ino, info.st_mtime_ns, info.st_size)
            if path in self._manifests and self._manifests[path][0] == key:
                return self._manifests[path][1]
            manifest = Manifest.parse(path.read_bytes())
        except (OSError, ValueError, KeyError, TypeError):  # a manifest unreadable is none at all
            return None
        if len(self._manifests) >= self.MANIFESTS_KEPT:
            del self._manifests[next(iter(self._manifests))]
        self._manifests[path] = (key, manifest)
        return manifest

    def _hold(self, copy: Path) -> int:
        """An open descriptor of ``copy``'s directory, held with a shared lock."""
        if self._held is not None and self._held[0] == copy:
            return self._held[1]
        top = os.open(copy, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        with contextlib.suppress(OSError):  # no flock here (some network file systems): nothing is pruned
            fcntl.flock(top, fcntl.LOCK_SH)
        self._release()
        self._held = (copy, top)
        return top

    def _release(self) -> None:
        if self._held is not None:
            os.close(self._held[1])
            self._held = None

    def _prune(self, store: Path, commit: str) -> None:
        """Delete the commit's replaced copies nobody holds, and staging directories an
        interrupted extraction left (extractions happen under the lock the caller holds)."""
        assert self._held is not None
        for entry in os.scandir(store):
            if entry.name.startswith(f".{commit}."):
                remove_tree(Path(entry.path))
            elif entry.name.startswith(f"{commit}.") and entry.is_dir(follow_symlinks=False):
                if entry.name != self._held[0].name:
                    _remove_unheld(Path(entry.path))


def _differences(manifest: Manifest, top: int) -> list[str]:
    """What differs between the copy open at ``top`` and its manifest: nothing, when every
    entry's lstat matches; contents are read only for entries whose lstat differs."""
    found: dict[str, None] = {}  # ordered, without repeats: a directory reports its missing entries too
    for entry in manifest.entries:
        path, kind, mode, size, mtime_ns, ctime_ns, digest = entry
        try:
            info = os.lstat(path, dir_fd=top)
        except OSError:
            found[f"{path} is missing"] = None
            continue
        if (info.st_mode, info.st_size, info.st_mtime_ns, info.st_ctime_ns) == (mode, size, mtime_ns, ctime_ns):
            continue
        difference = _content_difference(top, entry, manifest)
        if difference is None and info.st_mode != mode:
            difference = f"{path} changed mode"
        if difference is not None:
            found[difference] = None
    return list(found)


def _content_difference(top: int, entry: Entry, manifest: Manifest) -> str | None:
    path, kind, *_, digest = entry
    try:
        if kind == SYMLINK:
            return None if os.readlink(path, dir_fd=top) == digest else f"{path} changed"
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_DIRECTORY if kind == DIRECTORY else 0)
        fd = os.open(path, flags, dir_fd=top)
    except OSError:
        return f"{path} changed"
    if kind == FILE:
        with open(fd, "rb") as file:
            return None if hashlib.file_digest(file, "sha256").hexdigest() == digest else f"{path} changed"
    try:
        names = set(os.listdir(fd))
    finally:
        os.close(fd)
    expected = manifest.listing[path]
    prefix = "" if path == "." else f"{path}/"
    for missing in sorted(expected - names):
        return f"{prefix}{missing} is missing"
    for added in sorted(names - expected - ADDED_BY_PYTHON):
        return f"{prefix}{added} was added"
    return None


def _entry(top: int, extracted: Extracted) -> Entry:
    info = os.lstat(extracted.path, dir_fd=top)
    return (
        extracted.path,
        extracted.kind,
        info.st_mode,
        info.st_size,
        info.st_mtime_ns,
        info.st_ctime_ns,
        extracted.digest,
    )


def _remove_unheld(copy: Path, manifest: Path | None = None) -> bool:
    """Delete ``copy`` unless a run holds it, and first ``manifest`` (when the copy is the
    current one: a checkout then extracts a fresh copy rather than find this one half gone).
    Whether it was deleted."""
    try:
        top = os.open(copy, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(top, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if manifest is not None:
            manifest.unlink(missing_ok=True)
        remove_tree(copy)
    except OSError:  # a run still uses it, or this file system cannot tell
        return False
    finally:
        os.close(top)
    return True


def remove_unused(runs_root: Path, linked: set[str], pending_commits: set[str]) -> int:
    """Delete the copies nobody uses any longer (``expman gc``): not held by a run, not
    ``linked`` (the copy names runs' ``code`` links point at), and not the current copy of a
    commit in ``pending_commits`` (that runs not yet started will check out). Each commit's
    copies are looked at under its lock, so none is deleted while it is being made. Returns
    how many copies went."""
    store = runs_root / SHARED_CODE_DIR
    try:
        names = os.listdir(store)
    except FileNotFoundError:
        return 0
    commits = {name.lstrip(".").partition(".")[0] for name in names}
    removed = 0
    for commit in sorted(commits):
        with _failing_as_launch_error(store, commit), _locked(store, commit):
            removed += _remove_unused_of(store, commit, linked, commit in pending_commits)
    return removed


def _remove_unused_of(store: Path, commit: str, linked: set[str], pending: bool) -> int:
    manifest_path = store / f"{commit}.json"
    try:
        current: str | None = Manifest.parse(manifest_path.read_bytes()).copy
    except (OSError, ValueError, KeyError, TypeError):
        current = None
    removed = 0
    for entry in os.scandir(store):
        if entry.name.startswith(f".{commit}."):  # an interrupted extraction's (none runs: we hold the lock)
            remove_tree(Path(entry.path))
        elif entry.name.startswith(f"{commit}.") and entry.is_dir(follow_symlinks=False):
            if entry.name in linked or (pending and entry.name == current):
                continue
            manifest = manifest_path if entry.name == current else None
            removed += _remove_unheld(Path(entry.path), manifest)
    return removed


def _point(link: Path, target: Path) -> None:
    """Make ``link`` a symlink to ``target``, replacing whatever link was there in one rename."""
    if link.is_symlink() and os.readlink(link) == str(target):
        return
    staged = link.with_name(f".{link.name}.{secrets.token_hex(4)}")
    staged.symlink_to(target)
    os.replace(staged, link)


@contextlib.contextmanager
def _locked(store: Path, commit: str) -> Iterator[None]:
    store.mkdir(exist_ok=True)
    fd = os.open(store / f"{commit}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _failing_as_launch_error(store: Path, commit: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise LaunchError(
            f"cannot extract the code of commit {commit[:12]} under {store}: {exc.strerror}; "
            "check that the runs root is writable and has space"
        ) from None
