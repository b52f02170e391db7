"""The job queue: one row per scheduled run, claimed atomically by workers.

States: pending -> running -> succeeded | failed | cancelled; a failed attempt that may be
tried again goes back to pending with a backoff. ``attempt`` counts claims and is the
fencing token: a worker holds a job only while the row still shows its attempt, so a
worker that lost its lease (stopped, partitioned) can neither extend it nor record a result.

A claim takes the write lock first (SQLite BEGIN IMMEDIATE; PostgreSQL SELECT ... FOR
UPDATE SKIP LOCKED), so two workers never claim one job. Order: jobs whose worker went
silent (lease expired) first, then pending jobs by priority (higher first), then age.

Every operation is one transaction. A dropped connection is reopened and a lock held by
someone else is waited out, both for a bounded time; whatever the database answers then is
a ``QueueError`` of one line, never the driver's own exception.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from ..errors import QueueError
from . import schema
from .dialects import Dialect
from .model import Job, JobState, NewJob, SweepSummary, WorkerInfo
from .schema import LIVE_STATES

WORKER_TTL_S = 30.0
CHANGE_LOOK_S = 0.01  # how often an idle worker asks SQLite whether anyone committed
DURATIONS_PER_SWEEP = 50  # the latest successes of a sweep that its ETA is taken from

T = TypeVar("T")

_JOB_COLUMNS = (
    "id, key, sweep_id, run_id, run_dir, label, priority, state, attempt, max_attempts, lease_s, backoff_s, "
    "not_before, created_at, claimed_at, ended_at, lease_until, worker, cancel_requested, error"
)


class Queue:
    """One connection to one queue. Not shared between threads: open one per thread.

    ``create`` false opens a queue only to look at it: no file or table is made
    (``exists`` tells whether there is a queue at all)."""

    def __init__(
        self,
        dialect: Dialect,
        application_name: str = "expman",
        create: bool = True,
    ) -> None:
        self.dialect = dialect
        self.application_name = application_name
        self.jobs = f"{dialect.prefix}_jobs"
        self.workers = f"{dialect.prefix}_workers"
        self.retry_for_s = dialect.retry_for_s
        # Called between a claim's SELECT and its UPDATE; tests widen the race window with it.
        self.claim_pause: Callable[[], None] | None = None
        self.claim_before_commit: Callable[[], None] = lambda: None  # tests cut a claim off after its UPDATE
        self._create = create
        self._conn: Any = None
        if create:
            self._run(self._create_tables)

    @property
    def shown(self) -> str:
        return self.dialect.shown

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def exists(self) -> bool:
        """Whether a queue was made here (looking makes nothing)."""
        return self.dialect.present() and self._run(self._table_exists)

    # --- plumbing ------------------------------------------------------------------

    def _connection(self) -> Any:
        if self._conn is None:
            self._conn = self.dialect.connect(self.application_name, create=self._create)
        return self._conn

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._connection().execute(self.dialect.sql(sql), tuple(params))

    @contextmanager
    def _transaction(self, write: bool = True) -> Iterator[None]:
        self._execute(self.dialect.begin_write if write else "BEGIN")
        try:
            yield
        except BaseException:
            try:
                self._execute("ROLLBACK")
            except Exception:  # the connection is gone: the server rolled back for us
                self.close()
            raise
        self._execute("COMMIT")

    def _run(self, operation: Callable[[], T], on_busy: Callable[[], T] | None = None) -> T:
        """Run ``operation``; a dropped connection is reopened and a lock held by someone
        else waited for, and the operation run again, for up to ``retry_for_s`` (each
        operation is one transaction, so a retry never applies half of one). With
        ``on_busy``, a held lock returns its answer at once instead."""
        deadline = time.monotonic() + self.retry_for_s
        delay = 0.1
        while True:
            try:
                return operation()
            except QueueError:
                raise
            except Exception as exc:
                if on_busy is not None and self.dialect.busy(exc):
                    return on_busy()
                self._give_up_unless_transient(exc, deadline)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _give_up_unless_transient(self, exc: Exception, deadline: float) -> None:
        """Return if ``exc`` is worth another try before ``deadline``; else raise it as a
        QueueError (or as it is, if it is not the database's)."""
        lost, busy = self.dialect.disconnected(exc), self.dialect.busy(exc)
        if lost:
            self.close()
        if (lost or busy) and time.monotonic() < deadline:
            return
        if lost:
            raise QueueError(
                f"lost the connection to the queue {self.shown} and could not reconnect for "
                f"{self.retry_for_s:.0f}s; check the database server"
            ) from None
        if busy:
            raise QueueError(
                f"the queue {self.shown} stayed locked by another process for {self.retry_for_s:.0f}s; "
                "look for a stuck expman process holding it and stop it"
            ) from None
        message = self.dialect.failure(exc)
        if message is None:
            raise exc
        self.close()  # a failed write may leave the connection in any state: start afresh
        raise QueueError(message) from None

    def _create_tables(self) -> None:
        if self._table_exists():
            return
        with self._transaction():
            if self.dialect.name == "postgresql":  # concurrent CREATE IF NOT EXISTS can collide in the catalog
                self._execute("SELECT pg_advisory_xact_lock(hashtext(?))", (self.jobs,))
            for statement in schema.statements(self.dialect, self.jobs, self.workers):
                self._execute(statement)

    def _table_exists(self) -> bool:
        if self.dialect.name == "sqlite":
            sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
            return self._execute(sql, (self.workers,)).fetchone() is not None
        return self._execute("SELECT to_regclass(?)", (self.workers,)).fetchone()[0] is not None

    # --- scheduling ----------------------------------------------------------------

    def live_keys(self, keys: Sequence[str]) -> set[str]:
        """The keys among ``keys`` that are pending, running or succeeded."""

        def query() -> set[str]:
            found: set[str] = set()
            states = ", ".join("?" for _ in LIVE_STATES)
            for start in range(0, len(keys), 500):
                chunk = list(keys[start : start + 500])
                marks = ", ".join("?" for _ in chunk)
                rows = self._execute(
                    f"SELECT key FROM {self.jobs} WHERE key IN ({marks}) AND state IN ({states})",
                    [*chunk, *LIVE_STATES],
                ).fetchall()
                found.update(row[0] for row in rows)
            return found

        return self._run(query)

    def add(self, jobs: Sequence[NewJob]) -> set[str]:
        """Insert ``jobs`` in one transaction; a key already live is skipped. Returns the
        keys inserted."""

        def insert() -> set[str]:
            added = set()
            with self._transaction():
                for job in jobs:
                    row = self._execute(
                        f"""INSERT INTO {self.jobs} (key, sweep_id, run_id, run_dir, label, priority, state,
                            max_attempts, lease_s, backoff_s, not_before, created_at)
                            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NOW, NOW)
                            ON CONFLICT DO NOTHING RETURNING key""",
                        (
                            job.key,
                            job.sweep_id,
                            job.run_id,
                            job.run_dir,
                            job.label,
                            job.priority,
                            JobState.PENDING,
                            job.max_attempts,
                            job.lease_s,
                            job.backoff_s,
                        ),
                    ).fetchone()
                    if row is not None:
                        added.add(row[0])
            return added

        return self._run(insert)

    # --- claiming ------------------------------------------------------------------

    def claim(self, worker: str) -> Job | None:
        """The next job, now running as this worker's attempt (and shown on its row in
        ``expman status``); None when no job can be claimed right now (none waiting, all of
        them held by other claims, or the database locked by another writer)."""

        def attempt() -> Job | None:
            with self._transaction():
                row = (
                    self._execute(
                        f"""SELECT id FROM {self.jobs} WHERE state = ? AND lease_until < NOW
                        ORDER BY priority DESC, id LIMIT 1{self.dialect.lock_rows}""",
                        (JobState.RUNNING,),
                    ).fetchone()
                    or self._execute(
                        f"""SELECT id FROM {self.jobs} WHERE state = ? AND not_before <= NOW
                        ORDER BY priority DESC, id LIMIT 1{self.dialect.lock_rows}""",
                        (JobState.PENDING,),
                    ).fetchone()
                )
                if self.claim_pause is not None:
                    self.claim_pause()
                if row is None:
                    return None
                claimed = self._execute(
                    f"""UPDATE {self.jobs} SET state = ?, attempt = attempt + 1, worker = ?, claimed_at = NOW,
                        ended_at = NULL, lease_until = NOW + lease_s WHERE id = ? RETURNING {_JOB_COLUMNS}""",
                    (JobState.RUNNING, worker, row[0]),
                ).fetchone()
                self._execute(f"UPDATE {self.workers} SET job_id = ? WHERE id = ?", (row[0], worker))
                self.claim_before_commit()
            return Job.from_row(claimed)

        return self._run(attempt, on_busy=lambda: None)

    def waiting(self) -> bool:
        """Whether any job may still become claimable: pending (maybe in backoff or held by
        another claim), or running under a worker that could go silent."""

        def query() -> bool:
            row = self._execute(
                f"SELECT 1 FROM {self.jobs} WHERE state IN (?, ?) LIMIT 1", (JobState.PENDING, JobState.RUNNING)
            ).fetchone()
            return row is not None

        return self._run(query)

    def wait_for_work(self, seconds: float) -> None:
        """Return once a job may be claimable, at the latest after ``seconds``. On SQLite a
        commit by another process (a job added, requeued or given up) is seen within
        CHANGE_LOOK_S, and only then is the queue read; a server database is not watched."""
        deadline = time.monotonic() + seconds
        if self.dialect.name != "sqlite":
            time.sleep(seconds)
            return
        version = self._run(self._data_version)
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(CHANGE_LOOK_S, left))
            seen, version = version, self._run(self._data_version)
            if seen != version and self._run(self._claimable):
                return

    def _data_version(self) -> int:
        return int(self._execute("PRAGMA data_version").fetchone()[0])

    def _claimable(self) -> bool:
        """Whether a job can be claimed now: a read, without the claim's write lock."""
        row = self._execute(
            f"""SELECT 1 FROM {self.jobs} WHERE (state = ? AND lease_until < NOW)
                OR (state = ? AND not_before <= NOW) LIMIT 1""",
            (JobState.RUNNING, JobState.PENDING),
        ).fetchone()
        return row is not None

    def heartbeat(self, job: Job) -> str:
        """Extend the lease of this worker's attempt. Returns "ok", "cancel" (``expman cancel``
        asked to stop it) or "lost" (a newer attempt owns the job, or it ended)."""

        def beat() -> str:
            row = self._execute(
                f"""UPDATE {self.jobs} SET lease_until = NOW + lease_s
                    WHERE id = ? AND attempt = ? AND state = ? RETURNING cancel_requested""",
                (job.id, job.attempt, JobState.RUNNING),
            ).fetchone()
            if row is None:
                return "lost"
            return "cancel" if row[0] else "ok"

        return self._run(beat)

    def cancel_requested(self, job: Job) -> bool:
        """Whether ``expman cancel`` asked to stop this attempt (a read: cheap to ask often)."""

        def query() -> bool:
            row = self._execute(
                f"SELECT cancel_requested FROM {self.jobs} WHERE id = ? AND attempt = ?", (job.id, job.attempt)
            ).fetchone()
            return bool(row and row[0])

        return self._run(query)

    def finish(
        self, job: Job, state: str, error: str | None = None, retry_in_s: float = 0.0, extra_tries: int = 0
    ) -> bool:
        """Record how this attempt ended, and count it on its worker's row; False (nothing
        written) if the attempt no longer holds the job. ``state`` pending puts the job
        back, claimable after ``retry_in_s``."""

        def update() -> bool:
            with self._transaction():
                row = self._execute(
                    f"""UPDATE {self.jobs} SET state = ?, error = ?, ended_at = NOW, lease_until = NULL,
                        not_before = NOW + ?, max_attempts = max_attempts + ?
                        WHERE id = ? AND attempt = ? AND state = ? RETURNING id""",
                    (state, error, retry_in_s, extra_tries, job.id, job.attempt, JobState.RUNNING),
                ).fetchone()
                if row is not None:
                    self._execute(
                        f"""UPDATE {self.workers} SET jobs_done = jobs_done + 1,
                            job_id = CASE WHEN job_id = ? THEN NULL ELSE job_id END WHERE id = ?""",
                        (job.id, job.worker),
                    )
            return row is not None

        return self._run(update)

    # --- workers -------------------------------------------------------------------

    def register_worker(self, worker: str, host: str, pid: int) -> None:
        self._run(
            lambda: self._execute(
                f"""INSERT INTO {self.workers} (id, host, pid, started_at, heartbeat_at, alive_until)
                    VALUES (?, ?, ?, NOW, NOW, NOW + ?)""",
                (worker, host, pid, WORKER_TTL_S),
            )
        )

    def worker_beat(self, worker: str) -> None:
        """The worker is alive (its job and count are kept by its claims and finishes)."""
        self._run(
            lambda: self._execute(
                f"UPDATE {self.workers} SET heartbeat_at = NOW, alive_until = NOW + ? WHERE id = ?",
                (WORKER_TTL_S, worker),
            )
        )

    def unregister_worker(self, worker: str) -> None:
        self._run(lambda: self._execute(f"DELETE FROM {self.workers} WHERE id = ?", (worker,)))

    def live_workers(self) -> list[WorkerInfo]:
        def query() -> list[WorkerInfo]:
            rows = self._execute(
                f"""SELECT id, host, pid, started_at, heartbeat_at, job_id, jobs_done FROM {self.workers}
                    WHERE alive_until > NOW ORDER BY started_at, id"""
            ).fetchall()
            return [WorkerInfo(*row) for row in rows]

        return self._run(query)

    # --- looking and steering ------------------------------------------------------

    def counts(self, sweep_id: str | None = None) -> dict[str, int]:
        where, params = self._sweep_filter(sweep_id)
        rows = self._run(
            lambda: self._execute(f"SELECT state, COUNT(*) FROM {self.jobs}{where} GROUP BY state", params).fetchall()
        )
        return {state: count for state, count in rows}

    def sweeps(self) -> list[SweepSummary]:
        """Every sweep's job counts and latest durations, newest sweep first; the runs
        scheduled on their own are one more entry, with ``sweep_id`` None."""
        count_rows = self._run(
            lambda: self._execute(
                f"SELECT sweep_id, state, COUNT(*), MAX(id) FROM {self.jobs} GROUP BY sweep_id, state"
            ).fetchall()
        )
        duration_rows = self._run(
            lambda: self._execute(
                f"""SELECT sweep_id, ended_at - claimed_at FROM (
                    SELECT sweep_id, ended_at, claimed_at,
                        ROW_NUMBER() OVER (PARTITION BY sweep_id ORDER BY ended_at DESC) AS newness
                    FROM {self.jobs} WHERE state = ?) latest
                    WHERE newness <= ? AND claimed_at IS NOT NULL""",
                (JobState.SUCCEEDED, DURATIONS_PER_SWEEP),
            ).fetchall()
        )
        counts: dict[str | None, dict[str, int]] = {}
        newest: dict[str | None, int] = {}
        durations: dict[str | None, list[float]] = {}
        for sweep_id, state, count, last_id in count_rows:
            counts.setdefault(sweep_id, {})[state] = count
            newest[sweep_id] = max(newest.get(sweep_id, 0), last_id)
        for sweep_id, seconds in duration_rows:
            durations.setdefault(sweep_id, []).append(seconds)
        summaries = [SweepSummary(s, counts[s], newest[s], durations.get(s, [])) for s in counts]
        return sorted(summaries, key=lambda s: s.newest_job, reverse=True)

    def jobs_of(self, sweep_id: str | None = None, states: Sequence[str] = tuple(JobState)) -> list[Job]:
        marks = ", ".join("?" for _ in states)
        where, params = self._sweep_filter(sweep_id, f"state IN ({marks})")
        rows = self._run(
            lambda: self._execute(
                f"SELECT {_JOB_COLUMNS} FROM {self.jobs}{where} ORDER BY id", [*states, *params]
            ).fetchall()
        )
        return [Job.from_row(row) for row in rows]

    def jobs_with_keys(self, keys: Sequence[str]) -> dict[str, Job]:
        """The newest job of each key among ``keys`` that has one (a key cancelled and
        scheduled again has several)."""

        def query() -> dict[str, Job]:
            found: dict[str, Job] = {}
            for start in range(0, len(keys), 500):
                chunk = list(keys[start : start + 500])
                marks = ", ".join("?" for _ in chunk)
                rows = self._execute(
                    f"SELECT {_JOB_COLUMNS} FROM {self.jobs} WHERE key IN ({marks}) ORDER BY id", chunk
                ).fetchall()
                found.update((job.key, job) for job in map(Job.from_row, rows))
            return found

        return self._run(query) if keys else {}

    def hold(self, name: str, holder: str, seconds: float, take_from: str | None = None) -> str:
        """Hold the named lock for ``seconds`` (again, if ``holder`` has it; or taken over from
        ``take_from``, a holder known to be gone). Returns the holder after the attempt: ours
        when we hold it."""
        holds = f"{self.dialect.prefix}_holds"

        def update() -> str:
            self._execute(
                f"""CREATE TABLE IF NOT EXISTS {holds} (
                    name TEXT PRIMARY KEY, holder TEXT NOT NULL, until DOUBLE PRECISION NOT NULL)"""
            )
            with self._transaction():
                row = self._execute(
                    f"""INSERT INTO {holds} (name, holder, until) VALUES (?, ?, NOW + ?)
                        ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until
                        WHERE {holds}.until < NOW OR {holds}.holder = excluded.holder OR {holds}.holder = ?
                        RETURNING holder""",
                    (name, holder, seconds, take_from or holder),
                ).fetchone()
                if row is not None:
                    return str(row[0])
                return str(self._execute(f"SELECT holder FROM {holds} WHERE name = ?", (name,)).fetchone()[0])

        return self._run(update)

    def release(self, name: str, holder: str) -> None:
        holds = f"{self.dialect.prefix}_holds"
        self._run(lambda: self._execute(f"DELETE FROM {holds} WHERE name = ? AND holder = ?", (name, holder)))

    def cancel(self, sweep_id: str | None = None, run_id: str | None = None) -> tuple[list[Job], list[Job]]:
        """Pending jobs (of a sweep, or one run's) become cancelled; running ones are asked to
        stop (their worker sees it at its next heartbeat). Returns (cancelled, asked)."""
        where, params = self._sweep_filter(sweep_id, "state = ?", run_id)

        def update() -> tuple[list[Job], list[Job]]:
            with self._transaction():
                cancelled = self._execute(
                    f"UPDATE {self.jobs} SET state = ?, ended_at = NOW, error = ?{where} RETURNING {_JOB_COLUMNS}",
                    [JobState.CANCELLED, "cancelled by user", JobState.PENDING, *params],
                ).fetchall()
                asked = self._execute(
                    f"UPDATE {self.jobs} SET cancel_requested = 1{where} RETURNING {_JOB_COLUMNS}",
                    [JobState.RUNNING, *params],
                ).fetchall()
            return [Job.from_row(r) for r in cancelled], [Job.from_row(r) for r in asked]

        return self._run(update)

    def remove_jobs_of(self, run_id: str) -> bool:
        """Delete the finished jobs of run ``run_id`` (``expman gc`` removes the run); whether
        it has no job left. A pending or running job stays, and so should the run: a retry or
        a claim got there first. Rows being changed are waited for and looked at again, so a
        job is never deleted while it becomes live."""
        finished = [s for s in JobState if s.is_finished]
        marks = ", ".join("?" for _ in finished)

        def delete() -> bool:
            with self._transaction():
                self._execute(f"DELETE FROM {self.jobs} WHERE run_id = ? AND state IN ({marks})", [run_id, *finished])
                live = self._execute(f"SELECT 1 FROM {self.jobs} WHERE run_id = ? LIMIT 1", (run_id,)).fetchone()
            return live is None

        return self._run(delete)

    def retry_failed(self, sweep_id: str | None, tries: int) -> list[Job]:
        """Failed jobs go back to pending with ``tries`` more attempts, unless the same key
        was scheduled again meanwhile; a cancel asked of an earlier attempt no longer stands."""
        where, params = self._sweep_filter(sweep_id, "state = ?")
        live = ", ".join("?" for _ in LIVE_STATES)

        def update() -> list[Job]:
            rows = self._execute(
                f"""UPDATE {self.jobs} SET state = ?, not_before = NOW, ended_at = NULL, error = NULL,
                    cancel_requested = 0, max_attempts = attempt + ?{where}
                    AND NOT EXISTS (SELECT 1 FROM {self.jobs} other WHERE other.key = {self.jobs}.key
                                    AND other.state IN ({live}))
                    RETURNING {_JOB_COLUMNS}""",
                [JobState.PENDING, tries, JobState.FAILED, *params, *LIVE_STATES],
            ).fetchall()
            return [Job.from_row(r) for r in rows]

        return self._run(update)

    def _sweep_filter(
        self, sweep_id: str | None, condition: str | None = None, run_id: str | None = None
    ) -> tuple[str, list[Any]]:
        conditions = [condition] if condition else []
        params: list[Any] = []
        for column, value in (("sweep_id", sweep_id), ("run_id", run_id)):
            if value is not None:
                conditions.append(f"{column} = ?")
                params.append(value)
        return (" WHERE " + " AND ".join(conditions) if conditions else ""), params
