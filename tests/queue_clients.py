"""Queue clients run as separate processes by the queue contract tests.

queue_clients.py claim URL OUT PAUSE_S      claim until nothing is left; each claimed job id goes to OUT
queue_clients.py claim-once URL MARKER PAUSE_S
    one claim whose SELECT-to-UPDATE gap first touches MARKER and then lasts PAUSE_S
    (the test kills the connection or the process meanwhile); prints "job-id attempt"
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from expman.queue import JobState, open_queue


def claim_all(url: str, out: Path, pause_s: float) -> None:
    queue = open_queue(url, application_name=f"claimer {os.getpid()}")
    queue.claim_pause = lambda: time.sleep(pause_s)
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


def claim_once(url: str, marker: Path, pause_s: float) -> None:
    queue = open_queue(url, application_name=f"claim-once {os.getpid()}")
    pauses = iter([pause_s])

    def pause() -> None:
        marker.touch()
        time.sleep(next(pauses, 0.0))  # only the first try waits; the retry after a reconnect goes on

    queue.claim_pause = pause
    job = queue.claim(f"claim-once-{os.getpid()}")
    print(f"{job.id} {job.attempt}" if job else "none", flush=True)


if __name__ == "__main__":
    command, url, path, pause = sys.argv[1], sys.argv[2], Path(sys.argv[3]), float(sys.argv[4])
    {"claim": claim_all, "claim-once": claim_once}[command](url, path, pause)
