"""Searching instead of enumerating: ask-and-tell steering (``steer``) and population-based
training (``pbt``) over the job queue, each point an ordinary run; ``summary`` and
``lineage`` read a study back."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...backends import make_backend
from ...experiment import git
from ...experiment.plan import Plan
from ...experiment.search import SearchSpec, parse_search
from ...queue import Queue
from .pbt import PbtSteering
from .points import check_backend
from .steer import Say, Steering, steer


def search_of(repo: Path, commit: str, document: dict[str, Any]) -> SearchSpec:
    """The search of ``document`` (config.json at ``commit``), its space read from the commit
    when a file holds it."""
    with git.open_repository(repo) as handle:
        return parse_search(document, lambda name: git.read_file_at(handle, commit, name))


def studies(
    plan: Plan,
    spec: SearchSpec,
    queue: Queue,
    queue_url: str,
    environ: Mapping[str, str],
    argv: list[str],
    say: Say,
) -> list[Steering]:
    """One steering per segment of the plan's search ``spec`` (one when it has no segments)."""
    kind = PbtSteering if spec.pbt is not None else Steering
    return [kind(plan, spec, segment, queue, queue_url, environ, argv, say) for segment in spec.segments]


def check(plan: Plan, environ: Mapping[str, str]) -> SearchSpec:
    """Every check of a search before anything is written: its section, its backend."""
    spec = search_of(plan.repo, plan.commit, plan.config.document)
    check_backend(plan, make_backend(plan.backend, environ))
    return spec


__all__ = ["Steering", "check", "search_of", "steer", "studies"]
