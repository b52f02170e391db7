"""Queue clients run as separate processes by the queue contract tests.

queue_clients.py claim URL OUT PAUSE_S      claim until nothing is left; each claimed job id goes to OUT
queue_clients.py claim-once URL MARKER PAUSE_S HOOK
    one claim that stops at HOOK (claim_pause: between its SELECT and UPDATE; claim_before_commit:
    between its UPDATE and COMMIT), writes to MARKER the job's attempt as its own transaction sees
    it there, and then waits PAUSE_S (the test kills the connection or the process meanwhile);
    prints "job-id attempt"
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from expman.queue import JobState, open_queue


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


if __name__ == "__main__":
    commands = {"claim": claim_all, "claim-once": claim_once}
    commands[sys.argv[1]](*sys.argv[2:])
