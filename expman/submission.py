"""From a commit to a run: every check first, then the run directory, archive, record and
image, then the backend's execution (followed here, or handed to a detached supervisor)."""

from __future__ import annotations

import dataclasses
import getpass
import os
import platform
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__, gitguard
from .archive import write_archive
from .backends import make_backend
from .backends.base import Backend, execute
from .config import CONFIG_FILE, PROJECT_SCHEMA_FILE, ExperimentConfig, load_config
from .errors import ConfigError, ExpmanError, LaunchError
from .hostinfo import host_facts
from .image import dockerfile_hash, image_repository
from .progress import Reporter
from .record import CANCELLED, FAILED, QUEUED, GitInfo, ImageInfo, RunRecord, Submitter, load_record, save_record
from .redact import strip_url_credentials
from .rundir import Clock, RunDir, create_run_dir, resolve_runs_root, utc_now, write_bytes_atomic

DETACH_START_TIMEOUT_S = 120.0


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


def plan_submission(path: Path, ref: str | None, backend: str | None, environ: Mapping[str, str]) -> Plan:
    """Run every git and configuration check; refuse (raise) before anything is written."""
    repo = gitguard.find_repository(path)
    head_config = _config_at(repo, "HEAD")
    settings = head_config.settings
    gitguard.ensure_branch(repo, settings.branch, explicit_ref=ref is not None)
    gitguard.ensure_clean_tree(repo, settings.allow_untracked)
    commit = gitguard.resolve_commit(repo, ref or "HEAD")
    gitguard.ensure_reachable(repo, commit, settings.branch)
    if settings.require_pushed:
        gitguard.ensure_pushed(repo, commit, settings.branch, settings.remote)
    gitguard.ensure_plain_content(repo, commit)
    config = head_config if ref is None else _config_at(repo, commit)
    config_bytes = gitguard.read_file_at(repo, commit, CONFIG_FILE) or b""
    dockerfile = gitguard.read_file_at(repo, commit, config.settings.dockerfile)
    return Plan(
        repo=repo,
        commit=commit,
        commit_info=gitguard.commit_info(repo, commit),
        config=config,
        config_bytes=config_bytes,
        backend=backend or config.settings.backend,
        runs_root=resolve_runs_root(config.settings.runs_root, repo, environ),
        dockerfile=dockerfile,
        image_tag=f"{image_repository(config.settings.image, repo)}:{commit[:12]}",
    )


def describe_plan(plan: Plan, backend: Backend) -> dict[str, Any]:
    return {
        "commit": plan.commit,
        "subject": plan.commit_info.subject,
        "backend": plan.backend,
        "runs_root": str(plan.runs_root),
        "config_hash": plan.config.config_hash,
        **backend.describe(plan),
    }


def submit(
    plan: Plan,
    environ: Mapping[str, str],
    reporter: Reporter,
    argv: list[str],
    detach: bool = False,
    clock: Clock = utc_now,
) -> RunRecord:
    """Create the run and execute it; returns the record as it stands when this returns."""
    backend = make_backend(plan.backend, environ)
    backend.check(plan)
    run = create_run_dir(plan.runs_root, clock)
    record = new_record(plan, run, backend, argv, clock)
    reporter.info(f"run {run.run_id} at {run.path}")
    try:
        write_archive(plan.repo, plan.commit, run.code_tar)
        write_bytes_atomic(run.config, plan.config_bytes)
        save_record(run, record)
        backend.prepare(plan, run, record, reporter)
        save_record(run, record)
    except ExpmanError as exc:
        record.mark_ended(FAILED, clock(), reason=exc.message)
        save_record(run, record)
        raise
    except KeyboardInterrupt:
        record.mark_ended(CANCELLED, clock(), reason="cancelled by user before start")
        save_record(run, record)
        raise
    if detach:
        return start_detached(run, environ)
    return execute(backend, run, record, clock, echo=True)


def new_record(plan: Plan, run: RunDir, backend: Backend, argv: list[str], clock: Clock) -> RunRecord:
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
        config_hash=plan.config.config_hash,
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
        image=ImageInfo(dockerfile_hash=dockerfile_hash(plan.dockerfile) if plan.dockerfile is not None else None),
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


def _config_at(repo: Path, commit: str) -> ExperimentConfig:
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
