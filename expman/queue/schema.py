"""The queue's tables, as SQL for a dialect. The table names are the only names that reach
SQL text (validated in ``dialects``); every value is a bound parameter."""

from __future__ import annotations

from .dialects import Dialect
from .model import JobState

LIVE_STATES = (JobState.PENDING, JobState.RUNNING, JobState.SUCCEEDED)  # a key in one of these is not scheduled again


def statements(dialect: Dialect, jobs: str, workers: str) -> list[str]:
    """CREATE statements for the jobs and workers tables and their indexes, idempotent."""
    live = ", ".join(f"'{s}'" for s in LIVE_STATES)
    return [
        f"""CREATE TABLE IF NOT EXISTS {jobs} (
            id {dialect.id_column},
            key TEXT NOT NULL,
            sweep_id TEXT,
            run_id TEXT NOT NULL,
            run_dir TEXT NOT NULL,
            label TEXT NOT NULL,
            priority INTEGER NOT NULL,
            state TEXT NOT NULL,
            attempt INTEGER NOT NULL DEFAULT 0,
            max_attempts INTEGER NOT NULL,
            lease_s DOUBLE PRECISION NOT NULL,
            backoff_s DOUBLE PRECISION NOT NULL,
            not_before DOUBLE PRECISION,
            created_at DOUBLE PRECISION NOT NULL,
            claimed_at DOUBLE PRECISION,
            ended_at DOUBLE PRECISION,
            lease_until DOUBLE PRECISION,
            worker TEXT,
            cancel_requested INTEGER NOT NULL DEFAULT 0,
            error TEXT)""",
        f"CREATE UNIQUE INDEX IF NOT EXISTS {jobs}_live_key ON {jobs} (key) WHERE state IN ({live})",
        f"CREATE INDEX IF NOT EXISTS {jobs}_claim ON {jobs} (state, priority DESC, id)",
        f"CREATE INDEX IF NOT EXISTS {jobs}_sweep ON {jobs} (sweep_id)",
        f"""CREATE TABLE IF NOT EXISTS {workers} (
            id TEXT PRIMARY KEY,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            started_at DOUBLE PRECISION NOT NULL,
            heartbeat_at DOUBLE PRECISION NOT NULL,
            alive_until DOUBLE PRECISION NOT NULL,
            job_id BIGINT,
            jobs_done INTEGER NOT NULL DEFAULT 0)""",
    ]
