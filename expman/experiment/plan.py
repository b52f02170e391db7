"""Everything decided about a submission before anything is written: every git and
configuration check runs here, and a refusal raises before a file exists."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..rundir.layout import resolve_runs_root
from . import content, git
from .config import (
    CONFIG_FILE,
    PROJECT_SCHEMA_FILE,
    ExperimentConfig,
    ExpmanSettings,
    HostSettings,
    SlurmSettings,
    load_config,
)
from .sweep import Combination, Sweep, expand


@dataclass(frozen=True)
class Plan:
    """Everything decided before anything is written."""

    repo: Path
    commit: str
    commit_info: git.CommitInfo
    config: ExperimentConfig
    config_bytes: bytes
    backend: str
    runs_root: Path
    dockerfile: bytes | None
    image_tag: str
    sweep: Sweep
    host: HostSettings | None = None
    slurm: SlurmSettings = SlurmSettings()
    # Paths git archive leaves out or rewrites, allowed by "allow_export_attributes"; for the record.
    export_attributes: dict[str, list[str]] | None = None

    @property
    def combinations(self) -> list[Combination]:
        return self.sweep.combinations


def plan_submission(
    path: Path,
    ref: str | None,
    backend: str | None,
    environ: Mapping[str, str],
    host: str | None = None,
    slurm_overrides: Mapping[str, Any] | None = None,
) -> Plan:
    """Run every git and configuration check; refuse (raise) before anything is written."""
    top = git.find_repository(path)
    with git.open_repository(top) as repo:
        head_config = _config_in(repo, "HEAD")
        commit = checked_commit(repo, ref, head_config.settings)
        entries = content.list_tree(top, commit)
        content.ensure_plain_content(top, commit, entries)
        config = head_config if ref is None else _config_in(repo, commit)
        exported = content.export_attributes(top, commit, entries)
        content.ensure_export_allowed(exported, commit, config.settings.allow_export_attributes)
        config_bytes = git.read_file_at(repo, commit, CONFIG_FILE) or b""
        dockerfile = git.read_file_at(repo, commit, config.settings.dockerfile)
        info = git.commit_info(repo, commit)
    backend = backend or config.settings.backend
    return Plan(
        repo=top,
        commit=commit,
        commit_info=info,
        config=config,
        config_bytes=config_bytes,
        backend=backend,
        runs_root=resolve_runs_root(config.settings.runs_root, top, environ),
        dockerfile=dockerfile,
        image_tag=f"{image_repository(config.settings.image, top)}:{commit[:12]}",
        sweep=expand(config.document),
        host=config.settings.host_settings(host) if backend == "ssh" else None,
        slurm=dataclasses.replace(config.settings.slurm, **(slurm_overrides or {})),
        export_attributes=exported,
    )


def checked_commit(repo: git.Repo, ref: str | None, settings: ExpmanSettings) -> str:
    """The commit to run, once the work tree, the branch and the remote allow it."""
    git.ensure_branch(repo, settings.branch, explicit_ref=ref is not None)
    git.ensure_clean_tree(repo, settings.allow_untracked)
    commit = git.resolve_commit(repo, ref or "HEAD")
    git.ensure_reachable(repo, commit, settings.branch)
    if settings.require_pushed:
        git.ensure_pushed(repo, commit, settings.branch, settings.remote)
    return commit


def config_at(repo: Path, commit: str) -> ExperimentConfig:
    """config.json as committed in ``commit`` (any name git resolves), validated."""
    with git.open_repository(repo) as handle:
        return _config_in(handle, commit)


def _config_in(repo: git.Repo, commit: str) -> ExperimentConfig:
    text = git.read_file_at(repo, commit, CONFIG_FILE)
    where = f"{CONFIG_FILE} at {commit if commit == 'HEAD' else commit[:12]}"
    if text is None:
        raise ConfigError(f'{where}: no such file; commit a {CONFIG_FILE} with an "expman" section')
    return load_config(text, where, git.read_file_at(repo, commit, PROJECT_SCHEMA_FILE))


def image_repository(configured: str | None, repo: Path) -> str:
    """The image name: "image" from config, else expman/<repository directory name>."""
    if configured:
        return configured
    name = re.sub(r"[^a-z0-9]+", "-", repo.name.lower()).strip("-") or "experiment"
    return f"expman/{name}"
