"""The runs index: every run of a runs root as one row of a SQLite table, so that listings,
tables and SQL over 10,000 runs read one file instead of 10,000 directories.

The file is ``<runs_root>/.expman-index/v<FORMAT>-<host>.sqlite``: one per host, because
SQLite's locks cannot be trusted across the hosts of a network filesystem, so each host keeps
its own copy of what the shared run directories say. A runs root this user cannot write keeps
its index in the user's cache directory instead.

The run directories stay the truth: deleting the index loses nothing. A refresh stats each
run's files and rereads only the runs whose files changed; a quick refresh, enough for
listings, stats only each run's directory and run.json (expman's writers of run.json and
annotations.json rename a new file into place, which changes the directory). Refreshers
take turns through a lock file, so that one reads and the others then find nothing left to
do; the lock is only a courtesy: a row is written only while the index still holds what its
writer saw before reading the run (compare and set), so a refresher that waited too long, or
that went on without the lock, never puts an older state over a newer one.

The table ``runs`` has a column per key of ``rows.run_row`` (``config.<key>``,
``results.<key>``, ``tb:<tag>:<stat>``, ``tag.<key>``, record fields), added as keys first
appear; ``expman query`` reads it as it is.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import orjson

from ..errors import RunsIndexError

FORMAT = 3  # in the file's name: a new format starts a new file
INDEX_DIR = ".expman-index"
LOCK_WAIT_S = 30.0
# Column flags. SQLite keeps a bool as 0/1 and a NaN as NULL: which cells were which is noted
# per run (files.typed); a column whose every value is a bool is read back without that.
_BOOL = 1  # a bool was stored in it
_NAN = 2  # a NaN was
_OTHER = 4  # a value that is no bool was
_BUSY_TIMEOUT_MS = 60_000
_PARALLEL_FROM = 1000
_MAX_READERS = 4
_BATCH = 250  # runs read, then written in one transaction: memory and lock time stay bounded
_EVENT_FILE_MARKER = "tfevents"
# Every row has these (None where they do not apply); other columns appear with their keys.
ALWAYS = (
    "run_id",
    *("status", "reason", "backend", "host", "queued_at", "started_at", "ended_at", "duration_s"),
    *("exit_code", "oom_killed", "peak_memory_bytes", "config_hash", "commit", "branch", "subject", "sweep"),
    *("search.study", "search.trial", "search.segment", "search.member", "search.generation", "search.parent"),
    *("rerun_of", "notes"),
)
# Kept in every selection too, though not fixed in place: they follow a run's first results.
_KEPT = {*ALWAYS, "partial", "problems", "reproduction"}

Progress = Callable[[int, int], None]


class Seen(NamedTuple):
    """What a refresh saw of one run before reading it: the signatures to compare and set
    (a tuple, so that the index's own rows compare equal to it without being made into one)."""

    quick: str
    full: str
    watched: str


_BOUND_AS_IS = {str, int, float, bool, type(None)}
Kinds = tuple[list[str], list[str]]  # the keys of a row whose values are bools, and NaNs


def _kinds(row: dict[str, Any] | None) -> Kinds:
    """Which cells of a row are bools and which NaN (SQLite keeps them as 0/1 and NULL). A
    row's values are plain Python (read from JSON, or summaries made floats)."""
    if not row:
        return [], []
    return [k for k, v in row.items() if v is True or v is False], [k for k, v in row.items() if v != v]


def _typed(kinds: Kinds) -> str | None:
    bools, nans = kinds
    return orjson.dumps({"bool": bools, "nan": nans}).decode() if bools or nans else None


def _retype(values: list[Any], keys: list[str], positions: list[int], typed: dict[str, list[str]]) -> None:
    bools, nans = set(typed.get("bool", ())), set(typed.get("nan", ()))
    for j in positions:
        if keys[j] in bools and values[j] is not None:
            values[j] = bool(values[j])
        elif keys[j] in nans and values[j] is None:
            values[j] = math.nan


def _clean(text: str) -> str:
    """Text SQLite can hold: a lone surrogate escaped (\\ud800), NUL written out (\\x00)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode()
    return text.replace("\x00", "\\x00")


def _plain(value: Any) -> bool:
    """SQLite keeps this value as it is (the common case, checked first for speed)."""
    kind = type(value)
    return kind is str or value is None or kind is float and value == value or kind is int and -(2**63) <= value < 2**63


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


T = TypeVar("T")


def _guarded(method: Callable[..., T]) -> Callable[..., T]:
    """The method with SQLite's failures as ``_errors`` words them."""

    @functools.wraps(method)
    def guarded(self: RunsIndex, *args: Any, **kwargs: Any) -> T:
        with _errors(self.path):
            return method(self, *args, **kwargs)

    return guarded


class RunsIndex:
    """The index of ``root``; ``refresh()`` before reading. Closes with ``close()`` or ``with``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = _index_path(root)
        with _errors(self.path):
            self.db = _connect(self.path)
            self._columns: dict[str, str] = {}
            self._flags: dict[str, int] = {}
            self._load_columns()

    def __enter__(self) -> RunsIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    # -- refreshing -------------------------------------------------------------------------

    @_guarded
    def refresh(self, full: bool = True, progress: Progress | None = None, only: Sequence[str] | None = None) -> int:
        """Brings the index up to date with the run directories; returns how many runs were
        reread or dropped. ``full=False`` looks only at records (enough for a listing);
        ``only`` looks only at those runs."""
        known = self._known(None if only is None else list(only), full)
        names = _run_names(self.root) if only is None else {n for n in only if os.path.isdir(f"{self.root}/{n}")}
        stale = self._changed(names, known, full)
        gone = [n for n in known if n not in names]
        if not stale and not gone:
            return 0
        with self._refresh_lock():
            known = self._known()
            stale = self._changed(stale, known, full)
            # a run is gone with its run.json, even while its directory is still there
            gone = [n for n in [*gone, *stale] if n in known and not os.path.exists(f"{self.root}/{n}/run.json")]
            stale = [n for n in stale if n not in set(gone)]
            if gone:
                self._write([], {n: known[n] for n in gone})
            stale.sort()
            done = 0
            for batch in _read_batches(str(self.root), stale):
                self._write([(name, known.get(name), *read) for name, *read in batch], {})
                done += len(batch)
                if progress:
                    progress(done, len(stale))
        return len(stale) + len(gone)

    def _known(self, names: list[str] | None = None, full: bool = True) -> dict[str, Seen]:
        """What the index saw of every run, or of the runs ``names``; with ``full=False`` only
        the quick signatures (the rest None), all a listing compares."""
        sql = f"SELECT run_id, quick, {'full, watched' if full else 'NULL, NULL'} FROM files"
        if names is None:
            return {row[0]: row[1:] for row in self.db.execute(sql)}
        known: dict[str, Seen] = {}
        for start in range(0, len(names), 500):  # SQLite's limit on parameters is well above this
            part = names[start : start + 500]
            rows = self.db.execute(f"{sql} WHERE run_id IN ({', '.join('?' * len(part))})", part)
            known.update({row[0]: row[1:] for row in rows})
        return known

    def _changed(self, names: Iterable[str], known: dict[str, Seen], full: bool) -> list[str]:
        """The runs among ``names`` whose files differ from what the index saw (all their
        files, or with ``full=False`` their directory and run.json). Many runs are looked at
        by a thread per core: the compiled signatures stat without holding the GIL."""
        names = list(names)
        workers = min(os.cpu_count() or 1, _MAX_READERS) if _COMPILED and len(names) >= _PARALLEL_FROM else 1
        if workers == 1:
            return _changed(f"{self.root}/", names, known, full)
        parts = [names[i::workers] for i in range(workers)]
        import concurrent.futures  # here: a listing of few runs starts without it

        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            found = pool.map(lambda part: _changed(f"{self.root}/", part, known, full), parts)
        return sorted(name for part in found for name in part)

    def _write(self, rows: list[tuple], gone: dict[str, Seen]) -> None:
        with self._transaction():
            current = self._known([r[0] for r in rows] + list(gone))
            # a run another refresher got to first is left as it wrote it: it saw the files as
            # late as this one did, or later
            fresh = [r for r in rows if current.get(r[0]) == r[1]]
            self.db.executemany(
                "INSERT OR REPLACE INTO files (run_id, quick, full, watched, record, typed) VALUES (?, ?, ?, ?, ?, ?)",
                [(name, *seen, record, _typed(kinds)) for name, _, seen, record, _, kinds in fresh],
            )
            removed = [(name,) for name, before in gone.items() if current.get(name) == before]
            self.db.executemany("DELETE FROM files WHERE run_id = ?", removed)
            # run.json unreadable: the run is known (not reread until it changes) but has no row
            unreadable = [(name,) for name, _, _, _, row, _ in fresh if row is None]
            self.db.executemany("DELETE FROM runs WHERE run_id = ?", removed + unreadable)
            self._put([(name, row, kinds) for name, _, _, _, row, kinds in fresh if row is not None])

    def _put(self, rows: list[tuple[str, dict[str, Any], Kinds]]) -> None:
        """Rows into ``runs``, one statement for all: a column per key, added as keys appear.
        A key the index cannot take (past SQLite's limit on columns) is left out of its row,
        which is flagged partial: one run's odd results never stop the others."""
        if not rows:
            return
        rows = [(name, self._fit(row), kinds) for name, row, kinds in rows]
        self._note_kinds(rows)
        keys = list(self._columns)
        names = ", ".join(quote(self._columns[k]) for k in keys)
        sql = f"INSERT OR REPLACE INTO runs ({names}) VALUES ({', '.join('?' * len(keys))})"
        # SQLite binds these as they are (a bool as 1/0, a NaN as NULL); a numpy integer it would
        # take for bytes, so a batch holding anything else goes the long way
        if all(_BOUND_AS_IS.issuperset(map(type, row.values())) for _, row, _ in rows):
            try:
                self.db.executemany(sql, [[row.get(k) for k in keys] for _, row, _ in rows])
                return
            except (OverflowError, UnicodeEncodeError):
                pass  # a big integer or a lone surrogate somewhere in the batch
        convert = self._value
        values = [[v if _plain(v) else convert(k, v) for k, v in ((k, row.get(k)) for k in keys)] for _, row, _ in rows]
        try:
            self.db.executemany(sql, values)
        except UnicodeEncodeError:  # a lone surrogate in some text: kept escaped, as \ud800
            self.db.executemany(sql, [[_clean(v) if type(v) is str else v for v in row] for row in values])

    def _fit(self, row: dict[str, Any]) -> dict[str, Any]:
        """``row`` with its keys as the index can name columns, and a column for each."""
        if not row.keys() <= self._columns.keys():
            row = {_clean(k): v for k, v in row.items()}
        left_out = [k for k in row if k not in self._columns and not self._column(k)]
        if not left_out:
            return row
        problem = f"{len(left_out)} keys left out of the runs index (it takes at most {len(self._columns)} columns)"
        row = {k: v for k, v in row.items() if k not in left_out}
        row["partial"], row["problems"] = True, "; ".join(filter(None, [row.get("problems"), problem]))
        return row

    @staticmethod
    def _value(key: str, value: Any) -> Any:
        """A value as SQLite keeps it."""
        if type(value).__module__ == "numpy":
            value = value.item()
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, float) and value != value:
            return None
        if isinstance(value, int) and not -(2**63) <= value < 2**63:
            return str(value)
        if isinstance(value, (list, dict)):
            return orjson.dumps(value).decode()
        return value

    def _note_kinds(self, rows: list[tuple[str, dict[str, Any], Kinds]]) -> None:
        """Flags each column for the kinds of value ``rows`` bring to it (see _BOOL)."""
        for key in {k for _, _, (bools, _) in rows for k in bools}:
            if key in self._columns and not self._flags.get(key, 0) & _BOOL:
                self._flag(key, _BOOL)
                if self.db.execute(f"SELECT 1 FROM runs WHERE {quote(self._columns[key])} IS NOT NULL").fetchone():
                    self._flag(key, _OTHER)
        for key in [k for k, flags in self._flags.items() if flags & _BOOL and not flags & _OTHER]:
            if any((v := row.get(key)) is not None and v is not True and v is not False for _, row, _ in rows):
                self._flag(key, _OTHER)
        for key in {k for _, _, (_, nans) in rows for k in nans}:
            if not self._flags.get(key, 0) & _NAN:
                self._flag(key, _NAN)

    def _flag(self, key: str, flag: int) -> None:
        self._flags[key] = self._flags.get(key, 0) | flag
        self.db.execute(
            "INSERT INTO columns (name, sql, flags) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET flags = flags | excluded.flags",
            (key, self._columns.get(key, key), flag),
        )

    def _column(self, key: str) -> str | None:
        """The SQL column of ``key``, added on first use; None past SQLite's limit on columns.
        SQLite's names ignore case, so a key differing from another only in case is given a
        numbered name."""
        if key in self._columns:
            return self._columns[key]
        taken = {name.lower() for name in self._columns.values()}
        name, n = key, 1
        while name.lower() in taken:
            n += 1
            name = f"{key}#{n}"
        try:
            self.db.execute(f"ALTER TABLE runs ADD COLUMN {quote(name)}")
        except sqlite3.OperationalError as exc:
            if "too many columns" in str(exc):
                return None
            raise
        self.db.execute(
            "INSERT INTO columns (name, sql, flags) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET sql = excluded.sql",
            (key, name, self._flags.get(key, 0)),
        )
        self._columns[key] = name
        return name

    def _load_columns(self) -> None:
        self._columns, self._flags = {}, {}
        for name, sql, flags in self.db.execute("SELECT name, sql, flags FROM columns ORDER BY rowid"):
            self._columns[name], self._flags[name] = sql, flags

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self._load_columns()  # another process may have added columns
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            self._load_columns()
            raise
        self.db.execute("COMMIT")

    @contextlib.contextmanager
    def _refresh_lock(self) -> Iterator[None]:
        """One refresher at a time on this host; after LOCK_WAIT_S of waiting (a holder
        stopped, say) this one goes on without: compare and set keeps the rows right."""
        with open(self.path.with_suffix(".lock"), "a+b") as lock:
            deadline = time.monotonic() + LOCK_WAIT_S
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.02)
            yield

    # -- reading ----------------------------------------------------------------------------

    @_guarded
    def keys(self) -> list[str]:
        """Every column's key, in the order the columns were made."""
        self._load_columns()
        return list(self._columns)

    @_guarded
    def select(
        self,
        where: str = "",
        params: Sequence[Any] = (),
        wanted: Callable[[str], bool] | None = None,
        order: str = "run_id",
    ) -> tuple[list[str], list[list[Any]]]:
        """Columns (keys, as ``load_runs`` names them) and rows of ``runs`` matching the SQL
        condition ``where``: the columns whose key ``wanted`` accepts (default all), less
        those empty for every selected run."""
        self._load_columns()  # another process may have added some since this one opened
        condition = f"WHERE {where}" if where else ""
        keys = [k for k in self._columns if wanted is None or k in _KEPT or wanted(k)]
        counts = self.db.execute(
            f"SELECT {', '.join(f'count({quote(self._columns[k])})' for k in keys)} FROM runs {condition}", list(params)
        ).fetchone()
        keys = [k for k, n in zip(keys, counts, strict=True) if n or k in _KEPT or self._flags.get(k, 0) & _NAN]
        flags = [self._flags.get(k, 0) for k in keys]
        bools = [j for j, f in enumerate(flags) if f & _BOOL and not f & _OTHER]  # every value a bool
        typed = [j for j, f in enumerate(flags) if f & _NAN or f & _BOOL and f & _OTHER]  # as each run noted
        columns = ", ".join(quote(self._columns[k]) for k in keys)
        if typed:
            columns += ", (SELECT typed FROM files WHERE files.run_id = runs.run_id)"
        rows = self.db.execute(f"SELECT {columns} FROM runs {condition} ORDER BY {order}", list(params)).fetchall()
        if not bools and not typed:
            return keys, [list(row) for row in rows]
        out = []
        for row in rows:
            values = list(row[: len(keys)])
            for j in bools:
                if values[j] is not None:
                    values[j] = bool(values[j])
            if typed and row[-1]:
                _retype(values, keys, typed, orjson.loads(row[-1]))
            out.append(values)
        return keys, out

    @_guarded
    def event_files(self, where: str = "", params: Sequence[Any] = ()) -> list[tuple[str, list[str]]]:
        """Each run matching ``where`` (oldest first) with its event files, relative to the
        run, as the last refresh found them."""
        self._load_columns()  # another process may have added some since this one opened
        condition = f"WHERE {where}" if where else ""
        sql = f"SELECT run_id, f.watched FROM runs JOIN files f USING (run_id) {condition} ORDER BY run_id"
        return [(run_id, _event_paths(watched)) for run_id, watched in self.db.execute(sql, list(params))]

    @_guarded
    def records(
        self, where: str = "", params: Sequence[Any] = (), limit: int | None = None
    ) -> tuple[list[tuple[bytes, dict[str, Any]]], int]:
        """run.json and the tags of each run matching ``where`` (newest first, at most
        ``limit``), and how many match in all."""
        self._load_columns()  # another process may have added some since this one opened
        condition = f"WHERE {where}" if where else ""
        (total,) = self.db.execute(f"SELECT count(*) FROM runs {condition}", list(params)).fetchone()
        tags = [k for k in self._columns if k.startswith("tag.")]
        columns = "".join(f", {quote(self._columns[k])}" for k in tags)
        sql = f"SELECT f.record{columns} FROM runs JOIN files f USING (run_id) {condition} ORDER BY run_id DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [
            (row[0], {k[4:]: v for k, v in zip(tags, row[1:], strict=True) if v is not None})
            for row in self.db.execute(sql, list(params))
        ], total


@contextlib.contextmanager
def _errors(path: Path) -> Iterator[None]:
    """SQLite's failures as one line that says what to do: the index is only a cache."""
    try:
        yield
    except (sqlite3.Error, UnicodeError) as exc:
        message = " ".join(str(exc).split())
        if "locked" in message or "busy" in message:
            hint = "another process held it for over a minute; try again"
        else:
            hint = "free space, or delete it: it is rebuilt from the run directories"
        raise RunsIndexError(f"the runs index {path}: {message}; {hint}") from None


def runs_condition(
    statuses: set[str], commit: str | None, branch: str | None, reruns: bool = True
) -> tuple[str, list[Any]]:
    """The SQL condition on ``runs`` for the usual selectors: statuses, a commit prefix, a
    branch, and whether reruns (``expman rerun``'s runs) count."""
    parts: list[str] = [] if reruns else ["rerun_of IS NULL"]
    params: list[Any] = []
    if statuses:
        parts.append(f"status IN ({', '.join('?' * len(statuses))})")
        params.extend(sorted(statuses))
    if commit:
        parts.append('substr("commit", 1, ?) = ?')
        params.extend([len(commit), commit])
    if branch:
        parts.append("branch = ?")
        params.append(branch)
    return " AND ".join(parts), params


def _index_path(root: Path) -> Path:
    name = f"v{FORMAT}-{_host()}.sqlite"
    directory = root / INDEX_DIR
    try:
        directory.mkdir(exist_ok=True)
        if os.access(directory, os.W_OK):
            return directory / name
    except OSError:
        pass
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "expman" / "index"
    cache.mkdir(parents=True, exist_ok=True)
    import hashlib

    return cache / f"{hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]}-{name}"


def _host() -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in os.uname().nodename) or "host"


def _connect(path: Path) -> sqlite3.Connection:
    """The index's connection, its tables made if they are not there yet. A damaged or
    foreign file is replaced (it holds nothing that the run directories do not); a locked
    one is waited for, never replaced."""
    for attempt in range(2):
        db = sqlite3.connect(path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'columns'").fetchone():
                _create(db)
            return db
        except sqlite3.OperationalError:
            db.close()
            raise
        except sqlite3.DatabaseError:
            db.close()
            if attempt:
                raise
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
    raise AssertionError("unreachable")


def _create(db: sqlite3.Connection) -> None:
    """The tables, made once by whichever process gets there first (IF NOT EXISTS: the
    others find them made)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute(
            "CREATE TABLE IF NOT EXISTS files "
            "(run_id TEXT PRIMARY KEY, quick TEXT NOT NULL, full TEXT NOT NULL, watched TEXT NOT NULL, record BLOB, "
            "typed TEXT)"
        )
        fixed = ", ".join(quote(name) for name in ALWAYS[1:])
        db.execute(f"CREATE TABLE IF NOT EXISTS runs (run_id TEXT PRIMARY KEY, {fixed})")
        # made last: its presence tells a connection that the others are there
        db.execute("CREATE TABLE IF NOT EXISTS columns (name TEXT PRIMARY KEY, sql TEXT NOT NULL, flags INTEGER)")
        db.executemany(
            "INSERT OR IGNORE INTO columns (name, sql, flags) VALUES (?, ?, 0)", [(name, name) for name in ALWAYS]
        )
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _changed(prefix: str, names: list[str], known: dict[str, Seen], full: bool) -> list[str]:
    changed = []
    for name in names:
        seen = known.get(name)  # the index's row as it is: a plain tuple, by position
        base = prefix + name
        if seen is None or _quick_signature(base) != seen[0] or full and _signature(base, seen[2]) != seen[1]:
            changed.append(name)
    return changed


def _read_batches(root: str, names: list[str]) -> Iterator[list[tuple]]:
    """(run_id, Seen, record, row) of each run of ``names`` still there, in batches; read
    by a pool of processes when there are many (the first index of a big runs root)."""
    batches = [names[start : start + _BATCH] for start in range(0, len(names), _BATCH)]
    workers = min(os.cpu_count() or 1, _MAX_READERS)
    if len(names) < _PARALLEL_FROM or workers < 2:
        yield from (_read(root, batch) for batch in batches)
        return
    import multiprocessing  # here: only a first index of many runs needs it

    with multiprocessing.get_context("fork").Pool(workers) as pool:
        yield from pool.imap(functools.partial(_read, root), batches)


def _read(root: str, names: list[str]) -> list[tuple]:
    from .rows import read_run  # numpy and the parsers: only when a run must be read

    rows = []
    for name in names:
        run = f"{root}/{name}"
        quick = _quick_signature(run)
        if quick is not None:  # stat before reading: a change made meanwhile shows next time
            watched, full = _watch(run)
            record, row, parses_stdout = read_run(Path(run), _event_paths(watched))
            if not parses_stdout:  # stdout.log matters only to a run that parses metrics from it
                watched, full = _without_stdout(watched), _without_stdout(full)
            rows.append((name, Seen(quick, full, watched), record, row, _kinds(row)))
    return rows


def _event_paths(watched: str) -> list[str]:
    """The event files among ``_watch``'s paths (directories end in /)."""
    return [p for p in watched.split("\n") if not p.endswith("/") and _EVENT_FILE_MARKER in p.rpartition("/")[2]]


def _without_stdout(joined: str) -> str:
    """``_watch``'s list, or its signature, less the stdout.log entry (the fourth)."""
    separator = "\n" if "\n" in joined else "|"
    parts = joined.split(separator)
    return separator.join(parts[:3] + parts[4:])


def _run_names(root: Path) -> set[str]:
    """Directories under ``root`` that may be runs (the index's own and hidden ones are not)."""
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return set()
    return {e.name for e in entries if not e.name.startswith(".") and e.is_dir()}


def _stat(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return "-"
    return f"{st.st_mtime_ns}:{st.st_size}:{st.st_ino}"


def _py_quick_signature(run: str) -> str | None:
    """The run directory and its run.json; None when there is no run.json (not a run, or
    not yet one)."""
    record = _stat(run + "/run.json")
    return None if record == "-" else _stat(run) + "|" + record


def _watch(run: str) -> tuple[str, str]:
    """What a full refresh stats besides the quick signature, relative to the run, one per
    line, and their signature now: config, annotations (also when written in place),
    results, stdout (dropped after reading unless the run parses metrics from it), every
    directory under output (a new file changes its directory) and every event file. Each
    directory is stat'ed before it is listed, so that a file made meanwhile changes the
    signature from the one recorded and is found next time."""
    paths = ["config.json", "annotations.json", "output/results.json", "logs/stdout.log"]
    prefix = run + "/"
    stats = [_stat(prefix + p) for p in paths]
    pending = ["output"]
    while pending:
        relative = pending.pop()
        stat = _stat(prefix + relative)
        try:
            entries = sorted(os.scandir(prefix + relative), key=lambda e: e.name)
        except OSError:
            continue
        paths.append(relative + "/")  # a directory: never taken for an event file
        stats.append(stat)
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                pending.append(f"{relative}/{entry.name}")
            elif _EVENT_FILE_MARKER in entry.name:
                paths.append(f"{relative}/{entry.name}")
                stats.append(_stat(prefix + paths[-1]))
    return "\n".join(paths), "|".join(stats)


def _py_signature(run: str, watched: str) -> str:
    prefix = run + "/"
    return "|".join([_stat(prefix + relative) for relative in watched.split("\n")])


try:  # the same two functions, compiled (see _signatures.c): a refresh is mostly these
    from ._signatures import full as _signature
    from ._signatures import quick as _quick_signature

    _COMPILED = True
except ImportError:  # no C compiler at install time
    _signature, _quick_signature = _py_signature, _py_quick_signature
    _COMPILED = False
