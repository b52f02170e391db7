"""``expman submit``: a plan's runs created, prepared (the image), then executed: followed
here, handed to a detached supervisor, or handed to a scheduler."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..backends import make_backend
from ..backends.base import Backend
from ..backends.flow import execute
from ..errors import ExpmanError, RunCancelledError
from ..experiment.plan import Plan
from ..progress import Reporter
from ..rundir import lifecycle
from ..rundir.layout import Clock, RunDir, utc_now
from ..rundir.record import RunRecord, RunStatus, load_record
from .create import create_runs, end_unstarted


def describe_plan(plan: Plan, backend: Backend) -> dict[str, Any]:
    """What would run, for --dry-run."""
    return {
        "commit": plan.commit,
        "subject": plan.commit_info.subject,
        "backend": plan.backend,
        "runs_root": str(plan.runs_root),
        "config_hash": plan.config.config_hash,
        "runs": len(plan.combinations),
        **({"sweep": [c.values for c in plan.combinations]} if len(plan.combinations) > 1 else {}),
        **backend.describe(plan),
    }


def submit(
    plan: Plan,
    environ: Mapping[str, str],
    reporter: Reporter,
    argv: list[str],
    detach: bool = False,
    clock: Clock = utc_now,
) -> list[RunRecord]:
    """Create the runs and execute them; returns the records as they stand when this returns.

    A sweep makes one run per combination; they share one archive (hard links) and one image.
    """
    backend = make_backend(plan.backend, environ)
    backend.check(plan)
    runs = create_runs(plan, backend, argv, clock, reporter)
    return execute_runs(backend, runs, reporter, detach, clock)


def execute_runs(
    backend: Backend, runs: list[tuple[RunDir, RunRecord]], reporter: Reporter, detach: bool, clock: Clock
) -> list[RunRecord]:
    """Prepare runs just created, then follow them here, detach them, or hand them to the
    backend's scheduler; the records as they stand when this returns."""
    _prepare(backend, runs, reporter, clock)
    if backend.hands_off:
        return backend.hand_off(runs, reporter)
    if detach:
        return _detach(backend, runs, clock)
    return _follow(backend, runs, reporter, clock)


def _detach(backend: Backend, runs: list[tuple[RunDir, RunRecord]], clock: Clock) -> list[RunRecord]:
    records: list[RunRecord] = []
    for index, (run, record) in enumerate(runs):
        try:
            records.append(backend.detach(run, record))
        except (ExpmanError, KeyboardInterrupt) as exc:
            end_unstarted(runs[index + 1 :], clock, exc)
            raise
    return records


def _prepare(backend: Backend, runs: list[tuple[RunDir, RunRecord]], reporter: Reporter, clock: Clock) -> None:
    for index, (run, record) in enumerate(runs):
        try:
            backend.prepare(run, record, reporter)
            lifecycle.save(run, record)
        except (ExpmanError, KeyboardInterrupt) as exc:
            end_unstarted(runs[index:], clock, exc)
            raise


def _follow(
    backend: Backend, runs: list[tuple[RunDir, RunRecord]], reporter: Reporter, clock: Clock
) -> list[RunRecord]:
    """Execute the runs one after the other here. A run cancelled while it waited (``expman
    cancel``) is passed over; Ctrl-C, or an error that stops the command, ends the rest
    unstarted, so no run is left queued with nothing to run it."""
    records: list[RunRecord] = []
    for index, (run, record) in enumerate(runs):
        if (current := load_record(run)).final:
            records.append(current)
            continue
        if len(runs) > 1:
            reporter.info(f"run {index + 1}/{len(runs)}: {run.run_id} {record.sweep['label'] if record.sweep else ''}")
        try:
            records.append(execute(backend, run, record, clock, echo=True))
        except (ExpmanError, KeyboardInterrupt) as exc:
            end_unstarted(runs[index + 1 :], clock, exc)
            raise
        if records[-1].status == RunStatus.CANCELLED:
            records.extend(end_unstarted(runs[index + 1 :], clock, RunCancelledError("cancelled by user before start")))
            break
    return records
