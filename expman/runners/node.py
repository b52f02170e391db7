"""``python -m expman.runners.node RUNS_FILE``: a Slurm task runs one prepared run on its node.

RUNS_FILE lists run directories, one per line; the task takes line SLURM_ARRAY_TASK_ID
(0 without an array). The run's image is built on the node's engine (its layer cache),
then the run executes under the same contract as ``expman submit`` here. Each attempt
(a new one after every requeue) is recorded; an earlier attempt's logs move to
logs/attempt-N/. The configured signal (SIGUSR1) is passed on to the experiment; SIGTERM
from Slurm ends the run as a timeout, a cancel, or an interruption awaiting its requeue.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from ..backends import make_backend
from ..backends.base import Backend
from ..backends.flow import execute
from ..backends.slurm import parse_signal
from ..errors import ExpmanError
from ..hostinfo import hostname
from ..progress import Reporter
from ..rundir import lifecycle
from ..rundir.layout import RunDir, utc_now
from ..rundir.lifecycle import Recorder
from ..rundir.record import RunRecord, RunStatus, load_record

TIME_LIMIT_SLACK_S = 5.0
DEFAULT_KILL_WAIT_S = 30.0  # Slurm's KillWait, when scontrol does not tell
# A stop must end (the program asked, then killed, the run recorded) within Slurm's KillWait,
# after which Slurm kills this task with SIGKILL.
RECORD_MARGIN_S = 5.0


def main(argv: list[str]) -> int:
    lines = Path(argv[0]).read_text().splitlines()
    run = RunDir(Path(lines[int(os.environ.get("SLURM_ARRAY_TASK_ID") or 0)]))
    record = load_record(run)
    forwarded, _ = parse_signal((record.slurm or {}).get("signal") or "USR1")
    # Before the program runs there is nothing to checkpoint (Slurm may signal up to 60 s early).
    # A handler that does nothing, not SIG_IGN: an ignored signal stays ignored in the program.
    signal.signal(forwarded, lambda signum, frame: None)
    if record.final:
        print(f"run {record.run_id} is already {record.status}; nothing to do", file=sys.stderr)
        return 0
    record = lifecycle.begin_attempt(
        run,
        utc_now(),
        unfinished="its node stopped before recording the end",
        job_id=os.environ.get("SLURM_JOB_ID"),
        restart_count=int(os.environ.get("SLURM_RESTART_COUNT") or 0),
        node=hostname(),
    )
    _run_attempt(run, record, forwarded)
    return 0 if record.status in (RunStatus.SUCCEEDED, RunStatus.QUEUED) else 1


def _run_attempt(run: RunDir, record: RunRecord, forwarded: int) -> None:
    """Prepare and execute this attempt; a failure is recorded and said on stderr."""
    begun = time.monotonic()
    backend = runtime_backend(record, os.environ)

    def interpret(current: RunRecord) -> tuple[RunStatus, str]:
        return _interpret_termination(run, current, time.monotonic() - begun)

    try:
        backend.prepare(run, record, Reporter(quiet=True))
        lifecycle.save(run, record)
        execute(
            backend,
            run,
            record,
            utc_now,
            echo=False,
            forward=[forwarded],
            interpret=interpret,
            max_grace_s=max(1.0, kill_wait_s() - RECORD_MARGIN_S),
            checkpoint_signal=forwarded,
        )
    except ExpmanError as exc:
        if not record.final:
            Recorder(run).end(record, RunStatus.FAILED, utc_now(), reason=exc.message)
        print(exc.message, file=sys.stderr)


def kill_wait_s() -> float:
    """Slurm's KillWait: how long after SIGTERM Slurm sends SIGKILL to a stopped job."""
    try:
        config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return DEFAULT_KILL_WAIT_S
    match = re.search(r"^KillWait\s*=\s*(\d+)", config, re.MULTILINE)
    return float(match[1]) if match else DEFAULT_KILL_WAIT_S


def runtime_backend(record: RunRecord, environ: Mapping[str, str]) -> Backend:
    """The backend a Slurm task runs its run with on the node."""
    return make_backend("process" if (record.slurm or {}).get("runtime") == "process" else "local", environ)


def _interpret_termination(run: RunDir, record: RunRecord, elapsed_s: float) -> tuple[RunStatus, str]:
    """SIGTERM from Slurm: a cancel asked for by ``expman cancel``, the time limit, or (for a
    requeueable job) an interruption after which Slurm starts the job again."""
    slurm = record.slurm or {}
    if load_record(run).cancel_requested_at:
        return RunStatus.CANCELLED, "cancelled by user"
    limit = slurm.get("time_limit_s")
    if limit and elapsed_s >= limit - TIME_LIMIT_SLACK_S:
        return RunStatus.FAILED, "timeout"
    if slurm.get("requeue"):
        return RunStatus.QUEUED, f"attempt {record.attempt} interrupted by Slurm; waiting for the requeue"
    return RunStatus.CANCELLED, "cancelled in Slurm"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
