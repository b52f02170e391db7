"""From a commit to runs: every check first, then one run directory per sweep combination
(archive, effective config, record), the backend's preparation (the image), then the
execution: followed here, handed to a detached supervisor, or handed to a scheduler."""

from __future__ import annotations

import dataclasses
import getpass
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__, gitguard
from .archive import write_archive
from .backends import make_backend
from .backends.base import Backend, execute
from .config import (
    CONFIG_FILE,
    PROJECT_SCHEMA_FILE,
    ExperimentConfig,
    HostSettings,
    SlurmSettings,
    hash_config,
    load_config,
)
from .errors import ConfigError, ExpmanError, LaunchError, RunCancelledError
from .hostinfo import host_facts
from .image import dockerfile_hash, image_repository
from .progress import Reporter
from .record import (
    CANCELLED,
    FAILED,
    QUEUED,
    GitInfo,
    ImageInfo,
    RunRecord,
    Submitter,
    load_record,
    save_record,
    unwritable,
)
from .redact import strip_url_credentials
from .rundir import (
    Clock,
    RunDir,
    create_run_dir,
    json_bytes,
    link_or_copy,
    resolve_runs_root,
    sync_paths,
    utc_now,
    write_json_atomic,
)
from .sweep import Combination, effective_config, expand_sweep

DETACH_START_TIMEOUT_S = 120.0
MAX_LISTED_RUNS = 20  # a larger sweep is reported in one line


@dataclass(frozen=True)
class Plan:
    """Everything decided before anything is written."""

    repo: Path
    commit: str
    commit_info: gitguard.CommitInfo
    config: ExperimentConfig
    config_bytes: bytes
    backend: str
    runs_root: Path
    dockerfile: bytes | None
    image_tag: str
    combinations: list[Combination]
    host: HostSettings | None = None
    slurm: SlurmSettings = SlurmSettings()


def plan_submission(
    path: Path,
    ref: str | None,
    backend: str | None,
    environ: Mapping[str, str],
    host: str | None = None,
    slurm_overrides: Mapping[str, Any] | None = None,
) -> Plan:
    """Run every git and configuration check; refuse (raise) before anything is written."""
    repo = gitguard.find_repository(path)
    head_config = config_at(repo, "HEAD")
    settings = head_config.settings
    gitguard.ensure_branch(repo, settings.branch, explicit_ref=ref is not None)
    gitguard.ensure_clean_tree(repo, settings.allow_untracked)
    commit = gitguard.resolve_commit(repo, ref or "HEAD")
    gitguard.ensure_reachable(repo, commit, settings.branch)
    if settings.require_pushed:
        gitguard.ensure_pushed(repo, commit, settings.branch, settings.remote)
    gitguard.ensure_plain_content(repo, commit)
    config = head_config if ref is None else config_at(repo, commit)
    config_bytes = gitguard.read_file_at(repo, commit, CONFIG_FILE) or b""
    dockerfile = gitguard.read_file_at(repo, commit, config.settings.dockerfile)
    backend = backend or config.settings.backend
    slurm = dataclasses.replace(config.settings.slurm, **(slurm_overrides or {}))
    return Plan(
        repo=repo,
        commit=commit,
        commit_info=gitguard.commit_info(repo, commit),
        config=config,
        config_bytes=config_bytes,
        backend=backend,
        runs_root=resolve_runs_root(config.settings.runs_root, repo, environ),
        dockerfile=dockerfile,
        image_tag=f"{image_repository(config.settings.image, repo)}:{commit[:12]}",
        combinations=expand_sweep(config.document),
        host=config.settings.host_settings(host) if backend == "ssh" else None,
        slurm=slurm,
    )


def describe_plan(plan: Plan, backend: Backend) -> dict[str, Any]:
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
    for index, (run, record) in enumerate(runs):
        try:
            backend.prepare(run, record, reporter)
            save_record(run, record)
        except (ExpmanError, KeyboardInterrupt) as exc:
            _end_unstarted(runs[index:], clock, exc)
            raise
    if backend.hands_off:
        return backend.hand_off(runs, reporter)
    if detach:
        return [backend.detach(run, record) for run, record in runs]
    records = []
    for index, (run, record) in enumerate(runs):
        if len(runs) > 1:
            reporter.info(f"run {index + 1}/{len(runs)}: {run.run_id} {record.sweep['label'] if record.sweep else ''}")
        records.append(execute(backend, run, record, clock, echo=True))
        if records[-1].status == CANCELLED:
            _end_unstarted(runs[index + 1 :], clock, RunCancelledError("cancelled by user before start"))
            records.extend(r for _, r in runs[index + 1 :])
            break
    return records


@dataclass(frozen=True)
class RunSpec:
    """One combination of a plan, with its effective config and that config's hash."""

    combination: Combination
    document: dict[str, Any]
    config_hash: str


def run_specs(plan: Plan) -> list[RunSpec]:
    if len(plan.combinations) == 1:
        return [RunSpec(plan.combinations[0], plan.config.document, plan.config.config_hash)]
    documents = [effective_config(plan.config.document, c) for c in plan.combinations]
    return [RunSpec(c, d, hash_config(d)) for c, d in zip(plan.combinations, documents, strict=True)]


def create_runs(
    plan: Plan,
    backend: Backend,
    argv: list[str],
    clock: Clock,
    reporter: Reporter,
    specs: list[RunSpec] | None = None,
    annotate: Callable[[RunSpec, RunRecord], None] | None = None,
) -> list[tuple[RunDir, RunRecord]]:
    """One queued run directory per spec (default: all of the plan's), sharing one archive;
    what every run records alike is gathered once. ``annotate`` adds to a record before it
    is first written. Only the archive and the runs root's directory are synced (once), not
    each run's files: a crash may lose a queued run, as any passing state, but syncing the
    whole filesystem would make a schedule wait for everyone else's writes too."""
    specs = run_specs(plan) if specs is None else specs
    swept = len(plan.combinations) > 1
    template = new_record(plan, RunDir(plan.runs_root / "-"), backend, argv, clock, plan.config.document)
    runs: list[tuple[RunDir, RunRecord]] = []
    for spec in specs:
        combination = spec.combination
        run = create_run_dir(plan.runs_root, clock)
        record = dataclasses.replace(
            template,
            run_id=run.run_id,
            config_hash=spec.config_hash,
            queued_at=clock().isoformat(),
            attempts=[],
            warnings=[],
        )
        if swept:
            record.sweep = {
                "id": sweep_id(plan),
                "index": combination.index,
                "count": len(plan.combinations),
                "repeat": combination.repeat,
                "values": combination.values,
                "label": combination.label,
            }
        if annotate is not None:
            annotate(spec, record)
        try:
            if runs:
                link_or_copy(runs[0][0].code_tar, run.code_tar)
            else:
                write_archive(plan.repo, plan.commit, run.code_tar)
            _write_new_run(run, plan.config_bytes if not swept else _config_text(spec.document), record)
        except ExpmanError as exc:
            record.mark_ended(FAILED, clock(), reason=exc.message)
            save_record(run, record)
            raise
        runs.append((run, record))
        if len(specs) <= MAX_LISTED_RUNS:
            where = f"run {run.run_id} at {run.path}"
            reporter.info(where if not swept else f"{where} ({combination.label})")
    if runs:  # the shared archive and the new entries on disk; records stay unsynced, as queued states are
        sync_paths(runs[0][0].code_tar, plan.runs_root)
    if len(specs) > MAX_LISTED_RUNS:
        reporter.info(f"{len(specs)} runs under {plan.runs_root} (sweep {sweep_id(plan)})")
    return runs


def _write_new_run(run: RunDir, config: bytes, record: RunRecord) -> None:
    """config.json, then run.json renamed into place (a run is listed once it has one). No
    lock and no cancel request to keep: nobody knows of the run yet."""
    try:
        run.config.write_bytes(config)
        write_json_atomic(run.record, record.to_dict(), durable=False)
    except OSError as exc:
        raise unwritable(run.path, exc) from None


def sweep_id(plan: Plan) -> str:
    """The same sweep of the same commit has the same id, however often it is submitted."""
    return f"{plan.commit[:8]}-{plan.config.config_hash[:8]}"


def _end_unstarted(runs: list[tuple[RunDir, RunRecord]], clock: Clock, exc: BaseException) -> None:
    """Runs that will not start now: failed with the error, or cancelled on Ctrl-C."""
    for run, record in runs:
        if isinstance(exc, ExpmanError) and not isinstance(exc, RunCancelledError):
            record.mark_ended(FAILED, clock(), reason=exc.message)
        else:
            record.mark_ended(CANCELLED, clock(), reason="cancelled by user before start")
        save_record(run, record)


def _config_text(document: dict[str, Any]) -> bytes:
    return json_bytes(document, sort_keys=False)


def new_record(
    plan: Plan, run: RunDir, backend: Backend, argv: list[str], clock: Clock, document: dict[str, Any]
) -> RunRecord:
    redactor = backend.redactor
    url = gitguard.remote_url(plan.repo, plan.config.settings.remote)
    info = plan.commit_info
    return RunRecord(
        run_id=run.run_id,
        status=QUEUED,
        git=GitInfo(
            commit=plan.commit,
            branch=plan.config.settings.branch,
            subject=redactor.text(info.subject),
            author=info.author,
            author_email=info.author_email,
            commit_date=info.commit_date,
            remote_url=redactor.text(strip_url_credentials(url)) if url else None,
            repository=str(plan.repo),
        ),
        config_hash=hash_config(document),
        command=list(plan.config.settings.command),
        resources=dataclasses.asdict(plan.config.settings.resources),
        backend=plan.backend,
        submitter=Submitter(
            user=_user_name(),
            uid=os.getuid(),
            gid=os.getgid(),
            expman_version=__version__,
            python_version=platform.python_version(),
            argv=redactor.argv(argv),
        ),
        host_facts=host_facts(),
        environment=redactor.environment(backend.environ),
        queued_at=clock().isoformat(),
        image=ImageInfo(
            dockerfile=plan.config.settings.dockerfile,
            dockerfile_hash=dockerfile_hash(plan.dockerfile) if plan.dockerfile is not None else None,
            image_tag=plan.image_tag,
        ),
    )


def start_detached(run: RunDir, environ: Mapping[str, str]) -> RunRecord:
    """Hand the run to ``python -m expman.supervise`` and return once it runs (or ended)."""
    with open(run.logs / "supervisor.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "expman.supervise", str(run.path)],
            env=dict(environ),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    deadline = time.monotonic() + DETACH_START_TIMEOUT_S
    while time.monotonic() < deadline:
        record = load_record(run)
        if record.status != QUEUED:
            return record
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise LaunchError(f"run {run.run_id} did not start; see {run.logs / 'supervisor.log'}")


def config_at(repo: Path, commit: str) -> ExperimentConfig:
    text = gitguard.read_file_at(repo, commit, CONFIG_FILE)
    where = f"{CONFIG_FILE} at {commit if commit == 'HEAD' else commit[:12]}"
    if text is None:
        raise ConfigError(f'{where}: no such file; commit a {CONFIG_FILE} with an "expman" section')
    return load_config(text, where, gitguard.read_file_at(repo, commit, PROJECT_SCHEMA_FILE))


def _user_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())
