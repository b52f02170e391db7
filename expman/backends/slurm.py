"""Runs as Slurm batch jobs; a sweep is one job array.

The submitter renders a batch script (``render_sbatch``, a pure function), submits it held,
records the job ids in every run's record (queued), then releases it. On the node,
``python -m expman.node`` runs the same container contract on the node's Docker engine (or
the process backend, "runtime": "process") and updates the record: running, each attempt
after a requeue, how it ended. runs_root must be on a filesystem the nodes share.

Status is polled with one squeue call for all runs, at most every ``POLL_INTERVAL_S``.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import SlurmSettings
from ..errors import ConfigError, SlurmError
from ..logsink import LogSink
from ..record import CANCELLED, FAILED, LOST, RunRecord, load_record, record_lock, save_record
from ..rundir import RunDir, write_bytes_atomic, write_json_atomic
from .base import Backend, Execution

if TYPE_CHECKING:
    from ..progress import Reporter
    from ..submission import Plan

POLL_INTERVAL_S = 2.0
CANCEL_WAIT_S = 60.0
JOBS_DIR = ".expman-slurm"
_ENDED_STATES = {
    "COMPLETED",
    "FAILED",
    "TIMEOUT",
    "CANCELLED",
    "NODE_FAIL",
    "PREEMPTED",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
}


def parse_signal(text: str) -> tuple[signal.Signals, int]:
    """'USR1@60' -> (SIGUSR1, 60): the signal and how long before the time limit it comes."""
    match = re.fullmatch(r"(?:SIG)?([A-Z0-9]+)(?:@(\d+))?", text)
    name = f"SIG{match[1]}" if match else ""
    if match is None or name not in signal.Signals.__members__:
        raise ConfigError(f"signal {text!r} is not a signal; write e.g. USR1@60 (USR1, sixty seconds before the limit)")
    return signal.Signals[name], int(match[2] or 60)


def render_sbatch(settings: SlurmSettings, job_name: str, count: int, python: str) -> str:
    """The batch script: sbatch options as #SBATCH lines, then the node runner.

    Every value was checked by the config schema (no whitespace); paths with arbitrary
    characters (output file, working directory, the runs file) go on sbatch's argv instead.
    """
    signum, seconds = parse_signal(settings.signal)
    options: list[tuple[str, Any]] = [
        ("job-name", job_name),
        ("partition", settings.partition),
        ("time", settings.time),
        ("gres", settings.gres),
        ("cpus-per-task", settings.cpus_per_task),
        ("mem", settings.mem),
        ("account", settings.account),
        ("qos", settings.qos),
        ("signal", f"B:{signum.name[3:]}@{seconds}"),
        ("requeue" if settings.requeue else "no-requeue", True),
    ]
    if count > 1:
        throttle = f"%{settings.array_throttle}" if settings.array_throttle else ""
        options.append(("array", f"0-{count - 1}{throttle}"))
    options.extend(sorted(settings.extra.items()))
    lines = ["#!/bin/sh", "# Written by expman: each task runs one prepared run directory (see expman.node)."]
    for name, value in options:
        if value is None or value is False:
            continue
        lines.append(f"#SBATCH --{name}" if value is True else f"#SBATCH --{name}={value}")
    lines.append(f'exec {shlex.quote(python)} -m expman.node "$1"')
    return "\n".join(lines) + "\n"


def job_name(record: RunRecord) -> str:
    tag = (record.image.image_tag or "expman").rsplit(":", 1)[0].rsplit("/", 1)[-1]
    return "expman-" + re.sub(r"[^a-z0-9-]+", "-", tag.lower())


class SlurmBackend(Backend):
    name = "slurm"
    hands_off = True

    def __init__(self, environ: Mapping[str, str]) -> None:
        super().__init__(environ)
        self._settings = SlurmSettings()

    def check(self, plan: Plan) -> None:
        if shutil.which("sbatch", path=self.environ.get("PATH")) is None:
            raise SlurmError("sbatch is not on PATH; run expman on a Slurm login node or use another --backend")
        parse_signal(plan.slurm.signal)
        if plan.slurm.runtime == "docker" and plan.dockerfile is None:
            raise ConfigError(
                f'commit {plan.commit[:12]} has no {plan.config.settings.dockerfile}; commit one or set "slurm": '
                '{"runtime": "process"}'
            )
        self._settings = plan.slurm

    def describe(self, plan: Plan) -> dict[str, Any]:
        script = render_sbatch(plan.slurm, "expman-job", len(plan.combinations), sys.executable)
        return {**super().describe(plan), "runtime": plan.slurm.runtime, "sbatch_script": script}

    def start(self, run: RunDir, record: RunRecord, sink: LogSink) -> Execution:
        raise NotImplementedError("Slurm runs start on their node (expman.node)")

    def hand_off(self, runs: list[tuple[RunDir, RunRecord]], reporter: Reporter) -> list[RunRecord]:
        first_run, first = runs[0]
        jobs_dir = first_run.path.parent / JOBS_DIR / first_run.run_id
        jobs_dir.mkdir(parents=True, exist_ok=True)
        script = jobs_dir / "job.sbatch"
        runs_file = jobs_dir / "runs.txt"
        write_bytes_atomic(script, render_sbatch(self._settings, job_name(first), len(runs), sys.executable).encode())
        write_bytes_atomic(runs_file, "".join(f"{run.path}\n" for run, _ in runs).encode())
        pattern = "slurm-%A_%a.out" if len(runs) > 1 else "slurm-%j.out"
        argv = [
            "sbatch",
            "--parsable",
            "--hold",
            f"--output={jobs_dir / pattern}",
            f"--chdir={jobs_dir}",
            str(script),
            str(runs_file),
        ]
        try:
            job_id = self._slurm(argv).strip().split(";")[0]
            for index, (run, record) in enumerate(runs):
                record.job_id = f"{job_id}_{index}" if len(runs) > 1 else job_id
                record.slurm = {
                    "job_id": job_id,
                    "array_index": index if len(runs) > 1 else None,
                    "script": str(script),
                    "sbatch_argv": argv,
                    "runtime": self._settings.runtime,
                    "signal": self._settings.signal,
                    "requeue": self._settings.requeue,
                    "time_limit_s": self._settings.time_limit_s,
                    "partition": self._settings.partition,
                }
                save_record(run, record)
            self._slurm(["scontrol", "release", job_id])
        except SlurmError as exc:
            for run, record in runs:
                record.mark_ended(FAILED, datetime.now(UTC), reason=exc.message)
                save_record(run, record)
            raise
        array = f" (array of {len(runs)})" if len(runs) > 1 else ""
        reporter.info(f"Slurm job {job_id}{array} submitted; script {script}")
        return [record for _, record in runs]

    def reconcile(self, runs: list[tuple[RunDir, RunRecord]]) -> list[str]:
        try:
            states = self.job_states(runs[0][0].path.parent)
        except SlurmError as exc:
            return [f"Slurm status unknown, showing the last recorded status: {exc.message}"]
        for run, record in runs:
            if record.job_id is not None:
                self._reconcile_one(run, record, states.get(record.job_id))
        return []

    def _reconcile_one(self, run: RunDir, record: RunRecord, state: str | None) -> None:
        """Only where the node could not record the end itself (killed, never started)."""
        with record_lock(run):
            record = load_record(run)
            if record.final:
                return
            now = datetime.now(UTC)
            if state is None:
                status, reason = LOST, f"Slurm no longer knows job {record.job_id}"
            elif state not in _ENDED_STATES:
                return
            elif state == "TIMEOUT":
                status, reason = FAILED, "timeout"
            elif state == "CANCELLED":
                status, reason = CANCELLED, "cancelled" + (" by user" if record.cancel_requested_at else " in Slurm")
            elif state == "OUT_OF_MEMORY":
                status, reason = FAILED, "out of memory"
            elif state in ("NODE_FAIL", "BOOT_FAIL"):
                status, reason = LOST, f"Slurm job {state}"
            else:
                status, reason = FAILED, f"Slurm job {state} before the run recorded its end"
            record.mark_ended(status, now, reason=reason)
            write_json_atomic(run.record, record.to_dict())

    def job_states(self, runs_root: Path) -> dict[str, str]:
        """job id (array tasks as 12_3) -> Slurm state, from one squeue call at most every
        POLL_INTERVAL_S (shared by every expman process through a file under runs_root)."""
        cache = runs_root / ".expman-cache" / "squeue.json"
        try:
            cached = json.loads(cache.read_text())
            if time.time() - cached["at"] < POLL_INTERVAL_S:
                return dict(cached["states"])
        except (OSError, ValueError, KeyError):
            pass
        output = self._slurm(["squeue", "--noheader", "--states=all", "--array", "--format=%i|%T"])
        states = {}
        for line in output.splitlines():
            job, _, state = line.strip().partition("|")
            if job:
                states[job] = state
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(cache, {"at": time.time(), "states": states})
        except OSError:
            pass
        return states

    def cancel(self, run: RunDir, record: RunRecord) -> RunRecord:
        """scancel; the node stops the run and records it cancelled (or, if the job never
        started, this records it)."""
        with record_lock(run):
            record = load_record(run)
            record.cancel_requested_at = datetime.now(UTC).isoformat()
            write_json_atomic(run.record, record.to_dict())
        if record.job_id is not None:
            self._slurm(["scancel", record.job_id])
        deadline = time.monotonic() + CANCEL_WAIT_S
        while time.monotonic() < deadline:
            record = load_record(run)
            if record.final:
                return record
            cache = run.path.parent / ".expman-cache" / "squeue.json"
            cache.unlink(missing_ok=True)
            self.reconcile([(run, record)])
            time.sleep(0.5)
        return load_record(run)

    def _slurm(self, argv: Sequence[str]) -> str:
        try:
            proc = subprocess.run(list(argv), capture_output=True, text=True, env=dict(self.environ), timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SlurmError(f"{argv[0]} failed: {exc}; is Slurm installed and slurmctld up?") from None
        if proc.returncode != 0:
            detail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise SlurmError(f"{argv[0]} failed (exit {proc.returncode}): {self.redactor.text(detail)}")
        return proc.stdout


def runtime_backend(record: RunRecord, environ: Mapping[str, str]) -> Backend:
    """The backend a Slurm task runs its run with on the node."""
    from . import make_backend

    return make_backend("process" if (record.slurm or {}).get("runtime") == "process" else "local", environ)
