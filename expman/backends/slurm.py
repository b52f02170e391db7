"""Runs as Slurm batch jobs; a sweep is one job array.

The submitter renders a batch script (``render_sbatch``, a pure function), submits it held,
records the job ids in every run's record (queued), then releases it. On the node,
``python -m expman.runners.node`` runs the same container contract on the node's Docker engine (or
the process backend, "runtime": "process") and updates the record: running, each attempt
after a requeue, how it ended. runs_root must be on a filesystem the nodes share.

Status comes from one squeue call for all runs, shared by every expman process through a
file under runs_root and made at most every ``POLL_INTERVAL_S`` (``SqueuePoller``).
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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, SlurmError
from ..experiment.config import SlurmSettings
from ..rundir import lifecycle
from ..rundir.files import write_json_atomic
from ..rundir.layout import RunDir, utc_now
from ..rundir.logs import LogSink
from ..rundir.record import RunRecord, RunStatus, load_record
from .base import Accepted, Backend, Execution, Submission

if TYPE_CHECKING:
    from ..experiment.plan import Plan

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
    lines = ["#!/bin/sh", "# Written by expman: each task runs one prepared run directory (see expman.runners.node)."]
    for name, value in options:
        if value is None or value is False:
            continue
        lines.append(f"#SBATCH --{name}" if value is True else f"#SBATCH --{name}={value}")
    lines.append(f'exec {shlex.quote(python)} -m expman.runners.node "$1"')
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
        self._poller = SqueuePoller(self.command)

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
        raise NotImplementedError("Slurm runs start on their node (expman.runners.node)")

    def submission(self, runs: Sequence[tuple[RunDir, RunRecord]]) -> Submission:
        """A batch script and a runs file under <runs_root>/.expman-slurm/<first run>/, submitted held."""
        first_run, first = runs[0]
        jobs_dir = first_run.path.parent / JOBS_DIR / first_run.run_id
        script, runs_file = jobs_dir / "job.sbatch", jobs_dir / "runs.txt"
        pattern = "slurm-%A_%a.out" if len(runs) > 1 else "slurm-%j.out"
        argv = ["sbatch", "--parsable", "--hold", f"--output={jobs_dir / pattern}", f"--chdir={jobs_dir}"]
        argv.append("--open-mode=append")  # a requeued job's output follows its earlier attempts
        text = render_sbatch(self._settings, job_name(first), len(runs), sys.executable)
        array = f" (array of {len(runs)})" if len(runs) > 1 else ""
        return Submission(
            files={script: text.encode(), runs_file: "".join(f"{run.path}\n" for run, _ in runs).encode()},
            argv=[*argv, str(script), str(runs_file)],
            summary=f"Slurm job {{job_id}}{array} submitted; script {script}",
        )

    def accepted(self, submission: Submission, output: str, count: int) -> Accepted:
        job_id = output.strip().split(";")[0]
        settings = self._settings
        slurm = {
            "job_id": job_id,
            "script": str(submission.argv[-2]),
            "sbatch_argv": submission.argv,
            "runtime": settings.runtime,
            "signal": settings.signal,
            "requeue": settings.requeue,
            "time_limit_s": settings.time_limit_s,
            "partition": settings.partition,
        }
        fields = [
            {
                "job_id": f"{job_id}_{index}" if count > 1 else job_id,
                "slurm": {**slurm, "array_index": index if count > 1 else None},
            }
            for index in range(count)
        ]
        return Accepted(job_id, fields, release=["scontrol", "release", job_id], withdraw=["scancel", job_id])

    def reconcile(self, runs: list[tuple[RunDir, RunRecord]]) -> list[str]:
        """A job Slurm does not know in the shared answer (which may predate the job) is looked
        for again in a fresh one before its run is declared lost."""
        root = runs[0][0].path.parent
        try:
            states = self._poller.states(root)
            if any(record.job_id is not None and record.job_id not in states for _, record in runs):
                states = self._poller.states(root, fresh=True)
        except SlurmError as exc:
            return [f"Slurm status unknown, showing the last recorded status: {exc.message}"]
        for run, record in runs:
            if record.job_id is not None:
                state = states.get(record.job_id)
                lifecycle.end_if_not_final(run, utc_now(), lambda current, s=state: ended_as(s, current))  # type: ignore[misc]
        return []

    def cancel(self, run: RunDir, record: RunRecord) -> RunRecord:
        """scancel; the node stops the run and records it cancelled (or, if the job never
        started, this records it)."""
        record = lifecycle.request_cancel(run, utc_now())
        if record.job_id is not None:
            self.command(["scancel", record.job_id])
        deadline = time.monotonic() + CANCEL_WAIT_S
        while time.monotonic() < deadline:
            record = load_record(run)
            if record.final or record.job_id is None:
                return record
            try:
                state = self._poller.states(run.path.parent, fresh=True).get(record.job_id)
            except SlurmError:
                state = ""
            record = lifecycle.end_if_not_final(run, utc_now(), lambda current, s=state: ended_as(s, current))  # type: ignore[misc]
            if record.final:
                return record
            time.sleep(0.5)
        return load_record(run)

    def command(self, argv: Sequence[str]) -> str:
        try:
            proc = subprocess.run(list(argv), capture_output=True, text=True, env=dict(self.environ), timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SlurmError(f"{argv[0]} failed: {exc}; is Slurm installed and slurmctld up?") from None
        if proc.returncode != 0:
            detail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise SlurmError(f"{argv[0]} failed (exit {proc.returncode}): {self.redactor.text(detail)}")
        return proc.stdout


def ended_as(state: str | None, record: RunRecord) -> tuple[RunStatus, str] | None:
    """How a run whose node never recorded its end ended, from its job's Slurm state (None:
    the job is unknown to Slurm); None while the job has not ended."""
    if state is None:
        return RunStatus.LOST, f"Slurm no longer knows job {record.job_id}"
    if state not in _ENDED_STATES:
        return None
    if state == "TIMEOUT":
        return RunStatus.FAILED, "timeout"
    if state == "CANCELLED":
        return RunStatus.CANCELLED, "cancelled" + (" by user" if record.cancel_requested_at else " in Slurm")
    if state == "OUT_OF_MEMORY":
        return RunStatus.FAILED, "out of memory"
    if state in ("NODE_FAIL", "BOOT_FAIL"):
        return RunStatus.LOST, f"Slurm job {state}"
    return RunStatus.FAILED, f"Slurm job {state} before the run recorded its end"


class SqueuePoller:
    """job id (array tasks as 12_3) -> Slurm state, from one squeue call at most every
    POLL_INTERVAL_S, shared by every expman process through a file under runs_root."""

    def __init__(self, command: Callable[[Sequence[str]], str]) -> None:
        self._command = command

    def states(self, runs_root: Path, fresh: bool = False) -> dict[str, str]:
        cache = runs_root / ".expman-cache" / "squeue.json"
        if not fresh:
            try:
                cached = json.loads(cache.read_text())
                if time.time() - cached["at"] < POLL_INTERVAL_S:
                    return dict(cached["states"])
            except (OSError, ValueError, KeyError):
                pass
        output = self._command(["squeue", "--noheader", "--states=all", "--array", "--format=%i|%T"])
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
