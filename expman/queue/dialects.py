"""The two databases a queue lives in: a SQLite file (one machine, the default) and
PostgreSQL (many machines). A dialect connects, names the SQL that differs, tells which
errors mean "try again" (a lock held too long, a dropped connection), and puts any other
database error into one line for the user.

Queue URLs:

    sqlite:///abs/path/queue.sqlite          (or a plain path)
    postgresql://user@host:5432/dbname       (password from PGPASSWORD or ~/.pgpass)

``?table=NAME`` picks the tables' name prefix (default ``expman``); it is validated, as
it is the only name that reaches SQL text. Every value is a bound parameter.
``?busy_timeout=S`` (SQLite, default 30) is how long one statement waits for a lock held by
another process; ``?retry_for=S`` (default 120) how long a held lock or a lost connection
is waited out, in all, before one line says so.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, parse_qsl, quote, urlencode, urlsplit, urlunsplit

from ..errors import QueueError
from .filesystems import network_filesystem

DEFAULT_PREFIX = "expman"
_PREFIX = re.compile(r"[a-z][a-z0-9_]{0,39}")
SQLITE_BUSY_TIMEOUT_S = 30.0
RETRY_FOR_S = 120.0
PG_CONNECT_TIMEOUT_S = 10


class Dialect:
    name = ""
    id_column = ""
    lock_rows = ""  # appended to the claim's SELECT
    begin_write = "BEGIN"
    now = ""  # SQL: seconds since the epoch, from the database's clock

    def __init__(self, shown: str, prefix: str) -> None:
        # The URL without any password, for messages and records (enough to open it again).
        self.shown = shown if prefix == DEFAULT_PREFIX else f"{shown}?table={prefix}"
        self.prefix = prefix
        # how long a lost connection is reopened, or a held lock waited for, before giving up
        self.retry_for_s = RETRY_FOR_S

    def connect(self, application_name: str, create: bool = True) -> Any:
        """A connection; with ``create`` false, one that makes no database file."""
        raise NotImplementedError

    def present(self) -> bool:
        """Whether the database may hold a queue (a SQLite file exists); looking makes nothing."""
        return True

    def sql(self, text: str) -> str:
        """``?`` placeholders and the NOW token in this dialect."""
        return text.replace("NOW", self.now)

    def disconnected(self, exc: BaseException) -> bool:
        """The connection is gone: reconnect and try again."""
        return False

    def busy(self, exc: BaseException) -> bool:
        """Someone else holds the lock longer than we wait: try again later."""
        return False

    def failure(self, exc: BaseException) -> str | None:
        """Any other error of the database, as one line for the user; None for an exception
        that is not the database's (a bug, which keeps its traceback)."""
        return None


class SQLiteDialect(Dialect):
    name = "sqlite"
    id_column = "INTEGER PRIMARY KEY AUTOINCREMENT"
    begin_write = "BEGIN IMMEDIATE"  # take the write lock before reading: claims never race
    now = "((julianday('now') - 2440587.5) * 86400.0)"

    def __init__(self, path: Path, prefix: str, busy_timeout_s: float = SQLITE_BUSY_TIMEOUT_S) -> None:
        super().__init__(f"sqlite://{path}", prefix)
        self.path = path
        self.busy_timeout_s = busy_timeout_s

    def connect(self, application_name: str, create: bool = True) -> sqlite3.Connection:
        self._refuse_network_filesystem()
        # mode=rw fails on a missing file instead of making an empty one
        target = f"file:{quote(str(self.path), safe='/')}?mode={'rwc' if create else 'rw'}"
        try:
            if create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(target, timeout=self.busy_timeout_s, isolation_level=None, uri=True)
        except (OSError, sqlite3.Error) as exc:
            raise QueueError(f"cannot open the queue {self.shown}: {exc}; check the path and its permissions") from None
        try:  # errors here (a lock, a damaged file) are the caller's to retry or report
            if create:
                conn.execute("PRAGMA journal_mode=WAL")  # readers (status) never wait for writers
            conn.execute("PRAGMA synchronous=NORMAL")
        except BaseException:
            conn.close()
            raise
        return conn

    def _refuse_network_filesystem(self) -> None:
        filesystem = network_filesystem(self.path.parent)
        if filesystem is not None:
            raise QueueError(
                f"the queue {self.shown} is on a network filesystem ({filesystem}), where SQLite's locks and "
                "WAL mode corrupt it silently; use PostgreSQL for workers on several machines: --queue "
                "postgresql://user@host/dbname or EXPMAN_QUEUE, or a queue file on a local disk"
            )

    def present(self) -> bool:
        return self.path.is_file()

    def busy(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc))

    def failure(self, exc: BaseException) -> str | None:
        if not isinstance(exc, sqlite3.Error):
            return None
        if getattr(exc, "sqlite_errorname", "") == "SQLITE_FULL":
            return (
                f"the queue {self.shown} could not be written: database or disk is full (disk full at "
                f"{self.path.parent}); nothing was changed, free space there and start again"
            )
        return f"the queue {self.shown} failed: {exc}; check the file and its filesystem"


class PostgresDialect(Dialect):
    name = "postgresql"
    id_column = "BIGSERIAL PRIMARY KEY"
    lock_rows = " FOR UPDATE SKIP LOCKED"  # rows another claim holds are passed over, not waited for
    now = "(extract(epoch from clock_timestamp())::double precision)"

    def __init__(self, conninfo: str, shown: str, prefix: str) -> None:
        super().__init__(shown, prefix)
        self.conninfo = conninfo

    def sql(self, text: str) -> str:
        return super().sql(text).replace("?", "%s")

    def connect(self, application_name: str, create: bool = True) -> Any:
        try:
            import psycopg
        except ImportError:
            raise QueueError("a PostgreSQL queue needs psycopg; pip install 'psycopg[binary]'") from None
        try:
            return psycopg.connect(
                self.conninfo,
                autocommit=True,
                application_name=application_name[:63],
                connect_timeout=PG_CONNECT_TIMEOUT_S,
            )
        except psycopg.Error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise QueueError(
                f"cannot connect to the queue {self.shown}: {first}; check the server, the user and "
                "PGPASSWORD or ~/.pgpass"
            ) from None

    def disconnected(self, exc: BaseException) -> bool:
        import psycopg

        return isinstance(exc, psycopg.OperationalError) and not self.busy(exc) and not _out_of_resources(exc)

    def busy(self, exc: BaseException) -> bool:
        import psycopg

        return isinstance(exc, psycopg.Error) and exc.sqlstate in _PG_TRY_AGAIN

    def failure(self, exc: BaseException) -> str | None:
        import psycopg

        if not isinstance(exc, psycopg.Error):
            return None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"the queue {self.shown} failed: {first}; check the database server and its disk"


# serialization failure, deadlock, lock not available: the transaction may simply be run again
_PG_TRY_AGAIN = {"40001", "40P01", "55P03"}


def _out_of_resources(exc: Any) -> bool:
    """Disk full, out of memory, too many connections (SQLSTATE class 53): not a lost link."""
    return (exc.sqlstate or "").startswith("53")


def dialect_for(url: str) -> Dialect:
    """The dialect of a queue URL; a bad URL or table name is refused here."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    prefix = query.pop("table", DEFAULT_PREFIX)
    if not _PREFIX.fullmatch(prefix):
        raise QueueError(
            f"queue table name {prefix!r} is not allowed; use 1-40 lowercase letters, digits and _, starting "
            "with a letter"
        )
    waits = {name: _seconds(name, query.pop(name)) for name in ("busy_timeout", "retry_for") if name in query}
    dialect = _dialect(url, parts, query, prefix)
    dialect.retry_for_s = waits.get("retry_for", dialect.retry_for_s)
    if isinstance(dialect, SQLiteDialect):
        dialect.busy_timeout_s = waits.get("busy_timeout", dialect.busy_timeout_s)
    return dialect


def _seconds(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < 1e6:
        raise QueueError(f"queue URL option {name}={text!r}: give a number of seconds, e.g. {name}=30")
    return value


def _dialect(url: str, parts: SplitResult, query: dict[str, str], prefix: str) -> Dialect:
    if parts.scheme in ("postgresql", "postgres"):
        if "password" in query or parts.password:
            raise QueueError(
                "the queue URL holds a password; remove it and set PGPASSWORD or use ~/.pgpass, so it is never "
                "printed or recorded"
            )
        conninfo = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))
        shown = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        return PostgresDialect(conninfo, shown, prefix)
    if parts.scheme == "sqlite":
        if parts.netloc not in ("", "localhost") or not parts.path:
            raise QueueError(f"queue URL {url!r}: write sqlite:///absolute/path/queue.sqlite")
        return SQLiteDialect(Path(parts.path), prefix)
    if parts.scheme == "" and url:
        return SQLiteDialect(Path(url).expanduser().absolute(), prefix)
    raise QueueError(f"queue URL {url!r}: use sqlite:///path/queue.sqlite or postgresql://user@host/dbname")
