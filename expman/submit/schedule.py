"""The job queue's side of runs: ``expman schedule`` puts the runs of a submit into the queue
instead of running them here; ``cancel`` and ``retry`` change queued jobs and their records.

Every check of ``expman submit`` happens first. Then each combination of the sweep gets a
job key, and only combinations whose key is not already pending, running or succeeded in the
queue get a run directory and a job, so scheduling the same sweep twice adds nothing.

The job key is sha256 of the commit, the canonical form of the run's effective config and
the repeat index. The canonical form is JSON with sorted keys, so key order never matters;
numbers compare by value as JSON parses them (0.1 and 1e-1 are one value), but 1 and 1.0
differ (an int and a float are different to the program) and "0.1" is a string, not a
number.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..backends import make_backend
from ..errors import ExpmanError, UsageError
from ..experiment.plan import Plan
from ..progress import Reporter
from ..queue import Job, NewJob, Queue
from ..rundir import lifecycle
from ..rundir.layout import Clock, RunDir, utc_now
from ..rundir.record import RunRecord, RunStatus
from .create import RunSpec, create_runs, run_specs, sweep_id


@dataclass
class Scheduled:
    sweep_id: str | None
    added: list[RunRecord]
    skipped: int


def job_key(commit: str, config_hash: str, repeat: int) -> str:
    """``config_hash`` is ``config.hash_config`` of the run's effective config."""
    return hashlib.sha256(f"{commit}\n{config_hash}\n{repeat}".encode()).hexdigest()


def schedule(
    plan: Plan,
    queue: Queue,
    environ: Mapping[str, str],
    reporter: Reporter,
    argv: list[str],
    clock: Clock = utc_now,
) -> Scheduled:
    backend = make_backend(plan.backend, environ)
    if backend.hands_off:
        raise UsageError(
            f"the {plan.backend} backend hands runs to its own scheduler; queue workers run jobs themselves: "
            "schedule with --backend local, process or ssh, and start the workers as Slurm jobs"
        )
    backend.check(plan)
    the_sweep = sweep_id(plan) if plan.sweep.swept else None
    keys, fresh = _fresh_specs(plan, queue)

    def annotate(spec: RunSpec, record: RunRecord) -> None:
        record.queue = {"url": queue.shown, "key": keys[spec.combination.index]}

    runs = create_runs(plan, backend, argv, clock, reporter, fresh, annotate) if fresh else []
    jobs = [
        _new_job(plan, run, spec, keys[spec.combination.index], the_sweep)
        for spec, (run, _) in zip(fresh, runs, strict=True)
    ]
    added = queue.add(jobs) if jobs else set()
    records = []
    for job, (run, record) in zip(jobs, runs, strict=True):
        if job.key in added:
            records.append(record)
        else:  # scheduled by someone else between our look and our insert
            shutil.rmtree(run.path, ignore_errors=True)
    return Scheduled(the_sweep, records, len(plan.combinations) - len(records))


def _fresh_specs(plan: Plan, queue: Queue) -> tuple[dict[int, str], list[RunSpec]]:
    """Each combination's job key, and the specs whose key is not live in the queue yet."""
    specs = run_specs(plan)
    keys = {s.combination.index: job_key(plan.commit, s.config_hash, s.combination.repeat) for s in specs}
    live = queue.live_keys(list(keys.values()))
    return keys, [s for s in specs if keys[s.combination.index] not in live]


def _new_job(plan: Plan, run: RunDir, spec: RunSpec, key: str, sweep: str | None) -> NewJob:
    settings = plan.config.settings.queue
    return NewJob(
        key=key,
        run_id=run.run_id,
        run_dir=str(run.path),
        label=spec.combination.label,
        sweep_id=sweep,
        priority=settings.priority,
        max_attempts=settings.max_attempts,
        lease_s=settings.lease_s,
        backoff_s=settings.backoff_s,
    )


def cancel_jobs(queue: Queue, sweep_id: str | None = None, run_id: str | None = None) -> tuple[int, int]:
    """Cancel the pending jobs (of a sweep, or one run's) and record their runs cancelled; ask
    the running ones to stop (their workers stop them). Returns (cancelled, asked)."""
    cancelled, asked = queue.cancel(sweep_id=sweep_id, run_id=run_id)
    for job in cancelled:
        _change_record(job, lambda run: lifecycle.end_if_not_final(run, utc_now(), _cancelled_before_start))
    return len(cancelled), len(asked)


def retry_failed(queue: Queue, sweep_id: str | None, tries: int) -> list[Job]:
    """Failed jobs go back to the queue with ``tries`` more attempts; their runs are queued again."""
    jobs = queue.retry_failed(sweep_id, tries)
    for job in jobs:
        _change_record(job, lambda run: lifecycle.requeue(run, "retry requested"))
    return jobs


def _cancelled_before_start(record: RunRecord) -> tuple[RunStatus, str]:
    return RunStatus.CANCELLED, "cancelled by user before start"


def _change_record(job: Job, change: Callable[[RunDir], RunRecord]) -> None:
    try:
        change(RunDir(Path(job.run_dir)))
    except (OSError, ExpmanError):
        pass  # the run directory lives on another machine; the queue is the truth
