"""A point of a search is an ordinary run: a run directory with its effective config, and a
queue job that any ``expman worker`` claims. This module makes them and reads how they
ended; both kinds of steering (ask-and-tell, population-based training) use it.

Each point's job key is derived from the study and the trial number, so two points with
equal params are two jobs, and a steering process restarted after it was killed finds the
job of every point it already made (the run directory's path is noted in the trial before the
directory is made, so a restart reuses the run, or removes what was half made, instead of
leaving a directory behind).
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...backends import make_backend
from ...backends.base import Backend
from ...errors import ExpmanError, UsageError
from ...experiment.config import hash_config
from ...experiment.plan import Plan
from ...experiment.search import SearchSpec
from ...experiment.sweep import Combination, effective_config
from ...progress import Reporter
from ...queue import Job, JobState, NewJob, Queue
from ...results.rows import run_value
from ...rundir.layout import Clock, RunDir
from ...rundir.record import RunRecord
from ...submit.create import RunSpec, create_runs
from .study import finite

RUN_ID, RUN_DIR = "expman_run_id", "expman_run_dir"  # trial user attributes


def check_backend(plan: Plan, backend: Backend) -> None:
    """The points of a search are queue jobs: their backend must be one a worker runs."""
    if backend.hands_off:
        raise UsageError(
            f"the {plan.backend} backend hands runs to its own scheduler; a search's points are queue jobs: use "
            "--backend local, process or ssh, and start the workers as Slurm jobs"
        )
    backend.check(plan)


def point_key(study: str, number: int) -> str:
    return hashlib.sha256(f"search\n{study}\n{number}".encode()).hexdigest()


@dataclass
class Point:
    """A trial with its run: asked, queued or running, not yet told."""

    trial_id: int
    number: int
    params: dict[str, Any]
    key: str
    run_id: str | None = None
    run_dir: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # segment, member, generation, parent
    seen: str | None = None  # the state of its job at the steering's last look


@dataclass(frozen=True)
class Outcome:
    """How a point's run ended, for the sampler: a value, or a failure with its reason."""

    value: float | None
    state: str  # succeeded, failed, cancelled
    reason: str | None = None


class PointMaker:
    """Makes the run directory and queue job of each point of one study."""

    def __init__(
        self,
        plan: Plan,
        spec: SearchSpec,
        study: str,
        queue: Queue,
        environ: Mapping[str, str],
        argv: list[str],
        clock: Clock,
        note: Callable[[int, str, str], None],
    ) -> None:
        self.plan, self.spec, self.study, self.queue = plan, spec, study, queue
        self.argv, self.clock = argv, clock
        self.note = note  # (trial id, attribute, value): a trial user attribute, written at once
        self.backend = make_backend(plan.backend, environ)
        self.archive_of: RunDir | None = None  # the study's first run, whose code.tar the others link
        self.prepare: Callable[[Point, RunDir], None] | None = None  # on the run directory, before the job

    def check(self) -> None:
        check_backend(self.plan, self.backend)

    def values(self, point: Point) -> dict[str, Any]:
        """The config values this point sets: its params, its segment, its fidelity."""
        return {**point.params, **point.extra.get("sets", {})}

    def make(self, point: Point) -> None:
        """The point's run directory (unless a killed steering made it already) and its job."""
        if point.run_dir is None or not RunDir(Path(point.run_dir)).record.exists():
            if point.run_dir is not None:  # made up to its record when the steering was killed
                shutil.rmtree(point.run_dir, ignore_errors=True)
            self._create_run(point)
        assert point.run_id is not None and point.run_dir is not None
        run = RunDir(Path(point.run_dir))
        self.archive_of = self.archive_of or run
        if self.prepare is not None:
            self.prepare(point, run)
        settings = self.plan.config.settings.queue
        label = f"trial {point.number} " + " ".join(f"{k}={v!r}" for k, v in point.params.items())
        job = NewJob(
            key=point.key,
            run_id=point.run_id,
            run_dir=point.run_dir,
            label=label[:500],
            sweep_id=self.study,
            priority=settings.priority,
            max_attempts=settings.max_attempts,
            lease_s=settings.lease_s,
            backoff_s=settings.backoff_s,
        )
        self.queue.add([job])

    def _create_run(self, point: Point) -> None:
        values = self.values(point)
        document = effective_config(self.plan.config.document, Combination(point.number, values))
        spec = RunSpec(Combination(point.number, values), document, hash_config(document))

        def claiming(path: Path) -> None:  # noted before the directory exists: a kill never orphans one
            point.run_id, point.run_dir = path.name, str(path)
            self.note(point.trial_id, RUN_ID, point.run_id)
            self.note(point.trial_id, RUN_DIR, point.run_dir)

        def annotate(spec: RunSpec, record: RunRecord) -> None:
            record.search = {"study": self.study, "trial": point.number, "params": point.params}
            record.search.update({k: v for k, v in point.extra.items() if k not in ("sets", "parent_dir")})
            record.queue = {"url": self.queue.shown, "key": point.key}

        archive = self.archive_of if self.archive_of and self.archive_of.code_tar.exists() else None
        quiet = Reporter(quiet=True)
        create_runs(self.plan, self.backend, self.argv, self.clock, quiet, [spec], annotate, archive, claiming)

    def outcome(self, job: Job) -> Outcome:
        """How the final ``job`` ended, with the objective read from its run."""
        if job.state == JobState.CANCELLED:
            return Outcome(None, "cancelled", job.error or "cancelled")
        if job.state == JobState.FAILED:
            return Outcome(None, "failed", job.error or "failed")
        try:
            raw = run_value(RunDir(Path(job.run_dir)), self.spec.objective)
        except (ExpmanError, OSError, ValueError) as exc:
            reason = exc.message if isinstance(exc, ExpmanError) else str(exc)
            return Outcome(None, "failed", f"no objective {self.spec.objective!r}: {reason}")
        value = finite(raw)
        if value is None:
            return Outcome(None, "failed", f"objective {self.spec.objective!r} is {raw!r}, not a finite number")
        return Outcome(value, "succeeded")
