"""Queue clients run as separate processes by the queue contract tests.

queue_clients.py claim URL OUT PAUSE_S      claim until nothing is left; each claimed job id goes to OUT
queue_clients.py claim-once URL MARKER PAUSE_S HOOK
    one claim that stops at HOOK (claim_pause: between its SELECT and UPDATE; claim_before_commit:
    between its UPDATE and COMMIT), writes to MARKER the job's attempt as its own transaction sees
    it there, and then waits PAUSE_S (the test kills the connection or the process meanwhile);
    prints "job-id attempt"
queue_clients.py worker URL BUSY_TIMEOUT_S RETRY_FOR_S
    ``expman worker`` on a SQLite queue whose connections (its own and its heartbeat's) wait for a
    held lock BUSY_TIMEOUT_S per statement and RETRY_FOR_S in all: expman has no setting for either
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from expman.queue import JobState, Queue, open_queue
from expman.queue.dialects import SQLiteDialect, dialect_for
from expman.runners import heartbeat as heartbeat_module
from expman.runners import worker as worker_module


def claim_all(url: str, out: str, pause_s: str) -> None:
    queue = open_queue(url, application_name=f"claimer {os.getpid()}")
    queue.claim_pause = lambda: time.sleep(float(pause_s))
    worker = f"claimer-{os.getpid()}"
    with open(out, "w") as f:
        while True:
            job = queue.claim(worker)
            if job is None:
                if not queue.waiting():
                    return
                time.sleep(0.01)
                continue
            f.write(f"{job.id}\n")
            f.flush()
            assert queue.finish(job, JobState.SUCCEEDED)


def claim_once(url: str, marker: str, pause_s: str, hook: str) -> None:
    queue = open_queue(url, application_name=f"claim-once {os.getpid()}")
    pauses = iter([float(pause_s)])

    def pause() -> None:
        (seen,) = queue._execute(f"SELECT attempt FROM {queue.jobs}").fetchone()
        staged = Path(f"{marker}.tmp")
        staged.write_text(str(seen))
        staged.replace(marker)
        time.sleep(next(pauses, 0.0))  # only the first try waits; the retry after a reconnect goes on

    setattr(queue, hook, pause)
    job = queue.claim(f"claim-once-{os.getpid()}")
    print(f"{job.id} {job.attempt}" if job else "none", flush=True)


def run_worker(url: str, busy_timeout_s: str, retry_for_s: str) -> None:
    def open_short_queue(url: str, application_name: str = "expman", create: bool = True) -> Queue:
        dialect = dialect_for(url)
        assert isinstance(dialect, SQLiteDialect)
        dialect.busy_timeout_s = float(busy_timeout_s)
        return Queue(dialect, application_name, create=create, retry_for_s=float(retry_for_s))

    worker_module.open_queue = heartbeat_module.open_queue = open_short_queue
    worker_module.Worker(url, os.environ).run()


if __name__ == "__main__":
    commands = {"claim": claim_all, "claim-once": claim_once, "worker": run_worker}
    commands[sys.argv[1]](*sys.argv[2:])
