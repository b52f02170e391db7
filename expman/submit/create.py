"""Run directories for a plan: one per sweep combination, sharing one archive, each with its
effective config and its first record (queued). What every run records alike is gathered
once."""

from __future__ import annotations

import dataclasses
import getpass
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..backends.base import Backend
from ..backends.engine import dockerfile_hash
from ..errors import ExpmanError, RunCancelledError
from ..experiment import git
from ..experiment.archive import write_archive
from ..experiment.config import hash_config
from ..experiment.plan import Plan
from ..experiment.sweep import Combination, effective_config
from ..hostinfo import host_facts
from ..progress import Reporter
from ..redact import strip_url_credentials
from ..rundir import lifecycle
from ..rundir.files import json_bytes, link_or_copy, sync_paths
from ..rundir.layout import Clock, RunDir, create_run_dir
from ..rundir.lifecycle import Recorder
from ..rundir.record import GitInfo, ImageInfo, RunRecord, RunStatus, Submitter

MAX_LISTED_RUNS = 20  # a larger sweep is reported in one line


@dataclass(frozen=True)
class RunSpec:
    """One combination of a plan, with its effective config and that config's hash."""

    combination: Combination
    document: dict[str, Any]
    config_hash: str


def run_specs(plan: Plan) -> list[RunSpec]:
    """One spec per combination; without a sweep, the committed config as it is."""
    if not plan.sweep.swept:
        return [RunSpec(plan.combinations[0], plan.config.document, plan.config.config_hash)]
    documents = [effective_config(plan.config.document, c) for c in plan.combinations]
    return [RunSpec(c, d, hash_config(d)) for c, d in zip(plan.combinations, documents, strict=True)]


def sweep_id(plan: Plan) -> str:
    """The same sweep of the same commit has the same id, however often it is submitted."""
    return f"{plan.commit[:8]}-{plan.config.config_hash[:8]}"


def create_runs(
    plan: Plan,
    backend: Backend,
    argv: list[str],
    clock: Clock,
    reporter: Reporter,
    specs: list[RunSpec] | None = None,
    annotate: Callable[[RunSpec, RunRecord], None] | None = None,
    archive_of: RunDir | None = None,
    claiming: Callable[[Path], None] | None = None,
) -> list[tuple[RunDir, RunRecord]]:
    """One queued run directory per spec (default: all of the plan's), sharing one archive
    (``archive_of``'s, when given: a search adds its points one call at a time).
    ``annotate`` adds to a record before it is first written; ``claiming`` hears each run
    directory's path before it is made. Only the archive and the runs
    root's directory are synced (once), not each run's files: a crash may lose a queued run,
    as any passing state, but syncing the whole filesystem would make a schedule wait for
    everyone else's writes too."""
    specs = run_specs(plan) if specs is None else specs
    _say_collapsed(plan, reporter)
    template = new_record(plan, backend, argv, clock)
    runs: list[tuple[RunDir, RunRecord]] = []
    for spec in specs:
        run = create_run_dir(plan.runs_root, clock, claiming)
        record = dataclasses.replace(
            template, run_id=run.run_id, config_hash=spec.config_hash, queued_at=clock().isoformat(), warnings=[]
        )
        record.sweep = _sweep_entry(plan, spec.combination)
        if annotate is not None:
            annotate(spec, record)
        try:
            _write_new_run(plan, run, record, runs[0][0] if runs else archive_of, spec, clock)
        except ExpmanError as exc:
            end_unstarted(runs, clock, exc)
            raise
        runs.append((run, record))
        if len(specs) <= MAX_LISTED_RUNS:
            where = f"run {run.run_id} at {run.path}"
            reporter.info(where if record.sweep is None else f"{where} ({spec.combination.label})")
    if runs and archive_of is None:  # the shared archive and the new entries on disk; queued records stay unsynced
        sync_paths(runs[0][0].code_tar, plan.runs_root)
    if len(specs) > MAX_LISTED_RUNS:
        reporter.info(f"{len(specs)} runs under {plan.runs_root} (sweep {sweep_id(plan)})")
    return runs


def _say_collapsed(plan: Plan, reporter: Reporter) -> None:
    if plan.sweep.collapsed:
        shown = ", ".join(plan.sweep.duplicates[:5]) + (", ..." if len(plan.sweep.duplicates) > 5 else "")
        reporter.info(f"sweep: {plan.sweep.collapsed} duplicate combinations collapsed into the first ({shown})")


def _sweep_entry(plan: Plan, combination: Combination) -> dict[str, Any] | None:
    if not plan.sweep.swept:
        return None
    return {
        "id": sweep_id(plan),
        "index": combination.index,
        "count": len(plan.combinations),
        "repeat": combination.repeat,
        "values": combination.values,
        "label": combination.label,
    }


def _write_new_run(
    plan: Plan, run: RunDir, record: RunRecord, first: RunDir | None, spec: RunSpec, clock: Clock
) -> None:
    """code.tar (a link to the first run's), config.json, then run.json."""

    def write() -> None:
        if first is not None:
            link_or_copy(first.code_tar, run.code_tar)
        else:
            write_archive(plan.repo, plan.commit, run.code_tar)
        committed = spec.document is plan.config.document
        config = plan.config_bytes if committed else json_bytes(spec.document, sort_keys=False)
        try:
            run.config.write_bytes(config)
        except OSError as exc:
            raise lifecycle.unwritable(run.config, exc) from None

    fill_new_run(run, record, clock, write)


def fill_new_run(run: RunDir, record: RunRecord, clock: Clock, write: Callable[[], None]) -> None:
    """A new run's files (``write``), then its first record (a run is listed once it has
    one). A failure is recorded in the run and raised."""
    try:
        write()
        lifecycle.create(run, record)
    except ExpmanError as exc:
        Recorder(run).end(record, RunStatus.FAILED, clock(), reason=exc.message)
        raise


def end_unstarted(runs: list[tuple[RunDir, RunRecord]], clock: Clock, exc: BaseException) -> list[RunRecord]:
    """Runs that will not start now: failed with the error, or cancelled on Ctrl-C (those that
    ended meanwhile stay as they are); their records."""
    if isinstance(exc, ExpmanError) and not isinstance(exc, RunCancelledError):
        decision = (RunStatus.FAILED, exc.message)
    else:
        decision = (RunStatus.CANCELLED, "cancelled by user before start")
    return [lifecycle.end_if_not_final(run, clock(), lambda current: decision) for run, _ in runs]


def new_record(plan: Plan, backend: Backend, argv: list[str], clock: Clock) -> RunRecord:
    """The record every run of ``plan`` starts from (run id and config hash are filled per run)."""
    redactor = backend.redactor
    url = git.remote_url(plan.repo, plan.config.settings.remote)
    info = plan.commit_info
    return RunRecord(
        run_id="",
        status=RunStatus.QUEUED,
        git=GitInfo(
            commit=plan.commit,
            branch=plan.config.settings.branch,
            subject=redactor.text(info.subject),
            author=info.author,
            author_email=info.author_email,
            commit_date=info.commit_date,
            remote_url=redactor.text(strip_url_credentials(url)) if url else None,
            repository=str(plan.repo),
            export_attributes=plan.export_attributes,
        ),
        config_hash=plan.config.config_hash,
        command=list(plan.config.settings.command),
        resources=dataclasses.asdict(plan.config.settings.resources),
        backend=plan.backend,
        ssh_host=plan.host.name if plan.host is not None else None,
        submitter=submitter_of(redactor.argv(argv)),
        host_facts=host_facts(),
        environment=redactor.environment(backend.environ),
        queued_at=clock().isoformat(),
        checkpoint=checkpoint.record_fields() if (checkpoint := plan.config.settings.checkpoint) else None,
        image=ImageInfo(
            dockerfile=plan.config.settings.dockerfile,
            dockerfile_hash=dockerfile_hash(plan.dockerfile) if plan.dockerfile is not None else None,
            image_tag=plan.image_tag,
        ),
    )


def submitter_of(argv: list[str]) -> Submitter:
    """Who submits, with what, by which command line (redacted)."""
    return Submitter(
        user=_user_name(),
        uid=os.getuid(),
        gid=os.getgid(),
        expman_version=__version__,
        python_version=platform.python_version(),
        argv=argv,
    )


def _user_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())
