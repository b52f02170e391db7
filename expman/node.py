"""``python -m expman.node RUNS_FILE``: a Slurm task runs one prepared run on its node.

RUNS_FILE lists run directories, one per line; the task takes line SLURM_ARRAY_TASK_ID
(0 without an array). The run's image is built on the node's engine (its layer cache),
then the run executes under the same contract as ``expman submit`` here. Each attempt
(SLURM_RESTART_COUNT after a requeue) is recorded; an earlier attempt's logs move to
logs/attempt-N/. The configured signal (SIGUSR1) is passed on to the experiment; SIGTERM
from Slurm ends the run as a timeout, a cancel, or an interruption awaiting its requeue.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from .backends.base import execute
from .backends.slurm import parse_signal, runtime_backend
from .errors import ExpmanError
from .hostinfo import hostname
from .progress import Reporter
from .record import CANCELLED, FAILED, QUEUED, RunRecord, load_record, save_record
from .rundir import RunDir, utc_now

# Less than Slurm's KillWait (30 s by default), so the run is recorded before SIGKILL.
STOP_GRACE_S = 5.0
TIME_LIMIT_SLACK_S = 5.0


def main(argv: list[str]) -> int:
    lines = Path(argv[0]).read_text().splitlines()
    run = RunDir(Path(lines[int(os.environ.get("SLURM_ARRAY_TASK_ID") or 0)]))
    record = load_record(run)
    forwarded, _ = parse_signal((record.slurm or {}).get("signal") or "USR1")
    # Before the program runs there is nothing to checkpoint (Slurm may signal up to 60 s early).
    signal.signal(forwarded, signal.SIG_IGN)
    if record.final:
        print(f"run {record.run_id} is already {record.status}; nothing to do", file=sys.stderr)
        return 0
    begun = time.monotonic()
    _begin_attempt(run, record)
    backend = runtime_backend(record, os.environ)

    def interpret(current: RunRecord) -> tuple[str, str]:
        return _interpret_termination(run, current, time.monotonic() - begun)

    try:
        backend.prepare(run, record, Reporter(quiet=True))
        save_record(run, record)
        execute(
            backend,
            run,
            record,
            utc_now,
            echo=False,
            forward=[forwarded],
            interpret=interpret,
            stop_grace_s=STOP_GRACE_S,
        )
    except ExpmanError as exc:
        if not record.final:
            record.mark_ended(FAILED, utc_now(), reason=exc.message)
        print(exc.message, file=sys.stderr)
    finally:
        _end_attempt(run, record)
    return 0 if record.status in ("succeeded", QUEUED) else 1


def _begin_attempt(run: RunDir, record: RunRecord) -> None:
    """Record this attempt; an earlier attempt's logs move to logs/attempt-N/."""
    if record.attempts:
        previous = run.logs / f"attempt-{len(record.attempts) - 1}"
        previous.mkdir(exist_ok=True)
        for name in ("stdout.log", "stderr.log", "build.log"):
            if (run.logs / name).exists():
                (run.logs / name).rename(previous / name)
    record.attempts.append(
        {
            "attempt": int(os.environ.get("SLURM_RESTART_COUNT") or 0),
            "job_id": os.environ.get("SLURM_JOB_ID"),
            "node": hostname(),
            "started_at": datetime.now(UTC).isoformat(),
        }
    )
    record.status, record.reason, record.ended_at, record.duration_s, record.exit_code = QUEUED, None, None, None, None
    save_record(run, record)


def _end_attempt(run: RunDir, record: RunRecord) -> None:
    record.attempts[-1].update(
        ended_at=datetime.now(UTC).isoformat(), status=record.status, reason=record.reason, exit_code=record.exit_code
    )
    save_record(run, record)


def _interpret_termination(run: RunDir, record: RunRecord, elapsed_s: float) -> tuple[str, str]:
    """SIGTERM from Slurm: a cancel asked for by ``expman cancel``, the time limit, or (for a
    requeueable job) an interruption after which Slurm starts the job again."""
    slurm = record.slurm or {}
    if load_record(run).cancel_requested_at:
        return CANCELLED, "cancelled by user"
    limit = slurm.get("time_limit_s")
    if limit and elapsed_s >= limit - TIME_LIMIT_SLACK_S:
        return FAILED, "timeout"
    if slurm.get("requeue"):
        return QUEUED, f"attempt {len(record.attempts) - 1} interrupted by Slurm; waiting for the requeue"
    return CANCELLED, "cancelled in Slurm"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
