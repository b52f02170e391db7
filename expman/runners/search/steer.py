"""``expman search``: ask-and-tell steering of a study over the job queue.

The steering keeps min(parallel, points left) points queued or running: it asks the
sampler for a point, makes its run and job, and tells the sampler each point's objective
once its job is final. All of its state is in the queue's database (Optuna's study and the
jobs), so a steering process killed at any moment and started again continues the same
study: a trial still running in the study is matched to its job by key (made now if the
kill came between the ask and the job), no trial is told twice (a told trial is final in
the study) and no more than the study's points are asked.

A trial stays "running" in the study exactly as long as its job is pending or running in
the queue: a worker killed or preempted loses its lease and the job runs again (optuna#913:
trials of killed processes stay running forever). A job that fails its max_attempts is told
``failed_value`` (or failed, when there is none), and the search goes on.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ...errors import UsageError
from ...experiment.plan import Plan
from ...experiment.search import SearchSpec
from ...hostinfo import hostname
from ...queue import Queue
from ...rundir.layout import Clock, utc_now
from .points import RUN_DIR, RUN_ID, Outcome, Point, PointMaker, point_key
from .study import open_storage, optuna_module, sampler, study_name, suggest_all

FIRST_POLL_S = 0.02  # the shortest wait between looks at the queue
POLL_FRACTION = 0.1  # of the time since the last change: the wait between looks
LOCK_S = 30.0  # a steering process that stops renewing its hold on a study for this long lost it
RENEW_S = 5.0

Say = Callable[[str], None]


@dataclass
class Progress:
    """Where a study stands: its points told, in flight, and the best so far."""

    study: str
    points: int
    told: int = 0
    failed: int = 0
    best: float | None = None
    best_trial: int | None = None
    stopped: str | None = None  # why the search stopped asking before its end (a cancel)
    in_flight: int = 0

    @property
    def done(self) -> bool:
        return self.told >= self.points or (self.stopped is not None and not self.in_flight)


class StudyLock:
    """One steering process per study at a time: a hold in the queue's database, renewed as
    the steering goes on. A holder on this host whose process is gone is taken over at once;
    one on another host after LOCK_S."""

    def __init__(self, queue: Queue, study: str) -> None:
        self.queue, self.name = queue, f"search:{study}"
        self.me = f"{hostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._renewed = 0.0

    def take(self) -> None:
        holder = self.queue.hold(self.name, self.me, LOCK_S)
        if holder != self.me and _gone(holder):
            holder = self.queue.hold(self.name, self.me, LOCK_S, take_from=holder)
        if holder != self.me:
            raise UsageError(
                f"{self.name[7:]} is being steered by {holder}; let it finish or stop it (a steering process "
                f"on another host that died is taken over {LOCK_S:.0f} s after it stopped)"
            )
        self._renewed = time.monotonic()

    def renew(self) -> None:
        if time.monotonic() - self._renewed >= RENEW_S:
            self.take()

    def release(self) -> None:
        self.queue.release(self.name, self.me)


def _gone(holder: str) -> bool:
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != hostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Steering:
    """Ask-and-tell over one study (one segment of a search)."""

    def __init__(
        self,
        plan: Plan,
        spec: SearchSpec,
        segment: Any,
        queue: Queue,
        queue_url: str,
        environ: Mapping[str, str],
        argv: list[str],
        say: Say,
        clock: Clock = utc_now,
    ) -> None:
        self.spec, self.segment, self.queue, self.say = spec, segment, queue, say
        self.name = study_name(plan.commit, spec, segment, queue_url)
        self.optuna = optuna_module()
        self.storage = open_storage(queue_url)
        self.lock = StudyLock(queue, self.name)
        self.maker = PointMaker(plan, spec, self.name, queue, environ, argv, clock, self.storage.set_trial_user_attr)
        self.progress = Progress(self.name, spec.points)
        self.in_flight: dict[int, Point] = {}
        self.study: Any = None
        self._setup()

    def _setup(self) -> None:
        """What a kind of steering adds to its state."""

    def start(self) -> None:
        """Take the study (made now, or found again) and pick up where it was left."""
        self.maker.check()
        self.lock.take()
        direction = "maximize" if self.spec.direction == "maximize" else "minimize"
        self.study = self.optuna.create_study(
            study_name=self.name, storage=self.storage, direction=direction, load_if_exists=True
        )
        trials = self.study.get_trials(deepcopy=False)
        seed = None if self.spec.seed is None else self.spec.seed + len(trials)
        self.study.sampler = sampler(self.spec, seed)
        self.study.set_user_attr("segment", self.segment)
        self.study.set_user_attr("objective", self.spec.objective)
        self.study.set_user_attr("points", self.spec.points)
        running = self.optuna.trial.TrialState.RUNNING
        for trial in trials:
            if trial.state == running:
                self._resume(trial)
            elif trial.state.is_finished():
                self._count(trial)
        self.progress.in_flight = len(self.in_flight)
        resumed = f", {len(self.in_flight)} in flight" if self.in_flight else ""
        self.say(f"{self.name}: {self.progress.told} of {self.progress.points} points evaluated{resumed}")

    def _resume(self, trial: Any) -> None:
        """A trial asked before this steering started: its job is found, or made now."""
        params = trial.params
        if len(params) < len(self.spec.space):  # killed while the point was being asked
            params = suggest_all(self.optuna.Trial(self.study, trial._trial_id), self.spec.space)
        point = self._point(trial._trial_id, trial.number, params, trial.user_attrs)
        point.run_id, point.run_dir = trial.user_attrs.get(RUN_ID), trial.user_attrs.get(RUN_DIR)
        self.in_flight[trial.number] = point

    def _point(self, trial_id: int, number: int, params: dict[str, Any], attrs: Mapping[str, Any]) -> Point:
        """The point of a trial; ``attrs`` are the trial's user attributes."""
        extra: dict[str, Any] = {}
        if self.spec.segment_key is not None:
            extra = {"segment": self.segment, "sets": {self.spec.segment_key: self.segment}}
        return Point(trial_id, number, dict(params), point_key(self.name, number), extra=extra)

    def step(self) -> bool:
        """Tell what ended, fill the free places; whether anything changed."""
        self.lock.renew()
        changed = self._tell_ended()
        while len(self.in_flight) < self.spec.parallel and self._asked() < self.progress.points and self._may_ask():
            self._ask()
            changed = True
        self.progress.in_flight = len(self.in_flight)
        return changed

    def _may_ask(self) -> bool:
        """Whether a new point may be asked: the search was not stopped, and this process still
        holds the study (checked each time: a process stalled past its hold lost the study)."""
        if self.progress.stopped is not None:
            return False
        self.lock.take()
        return True

    def _asked(self) -> int:
        return self.progress.told + len(self.in_flight)

    def _tell_ended(self) -> bool:
        jobs = self.queue.jobs_with_keys([p.key for p in self.in_flight.values()])
        changed = False
        for number, point in list(self.in_flight.items()):
            job = jobs.get(point.key)
            if job is None:
                self.maker.make(point)  # the steering was killed between the ask and the job
                continue
            if job.state in ("pending", "running"):
                # A point that starts to run is a change: the look for its end starts soon after.
                changed = changed or point.seen not in (None, job.state)
                point.seen = job.state
                continue
            self._tell(point, self.maker.outcome(job))
            del self.in_flight[number]
            changed = True
        return changed

    def _ask(self) -> None:
        trial = self.study.ask()
        point = self._point(trial._trial_id, trial.number, suggest_all(trial, self.spec.space), {})
        self.in_flight[trial.number] = point
        self.maker.make(point)
        shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v!r}" for k, v in point.params.items())
        self.say(f"{self.name}: trial {trial.number} queued as run {point.run_id} ({shown})")

    def _tell(self, point: Point, outcome: Outcome) -> None:
        # One write per attribute: a point that succeeded has no reason to note.
        self.storage.set_trial_user_attr(point.trial_id, "outcome", outcome.state)
        if outcome.reason is not None:
            self.storage.set_trial_user_attr(point.trial_id, "reason", outcome.reason)
        state = self.optuna.trial.TrialState
        if outcome.state == "cancelled":  # a user's cancel: no new points, and nothing for the sampler to learn
            self.progress.stopped = f"trial {point.number} (run {point.run_id}) was cancelled"
            told = self.study.tell(point.number, state=state.FAIL, skip_if_finished=True)
        elif outcome.value is not None:
            told = self.study.tell(point.number, outcome.value, skip_if_finished=True)
        elif self.spec.failed_value is not None:
            told = self.study.tell(point.number, self.spec.failed_value, skip_if_finished=True)
        else:
            told = self.study.tell(point.number, state=state.FAIL, skip_if_finished=True)
        self._count(told)
        what = f"{self.spec.objective} = {outcome.value:.6g}" if outcome.value is not None else outcome.reason
        self.say(f"{self.name}: trial {point.number} (run {point.run_id}) {what}; {self._standing()}")

    def _count(self, trial: Any) -> None:
        self.progress.told += 1
        if trial.user_attrs.get("outcome", "succeeded") != "succeeded":
            self.progress.failed += 1
            return
        value = trial.value
        if value is None:
            return
        best = self.progress.best
        better = best is None or (value > best if self.spec.direction == "maximize" else value < best)
        if better:
            self.progress.best, self.progress.best_trial = value, trial.number

    def _standing(self) -> str:
        p = self.progress
        best = f"best {p.best:.6g} (trial {p.best_trial})" if p.best is not None else "no result yet"
        return f"{p.told}/{p.points} evaluated, {best}"


def steer(steerings: list[Steering], poll_s: float = 1.0, sleep: Callable[[float], None] = time.sleep) -> None:
    """Step every study until all are done. The wait between looks is a tenth of the time since
    the last change (a point told, asked or started to run), at least FIRST_POLL_S and at most
    ``poll_s``: a point's end is seen within a tenth of its run time, short or long."""
    try:
        for steering in steerings:
            steering.start()
        changed_at = time.monotonic()
        while True:
            changed = False
            for steering in steerings:
                if not steering.progress.done:
                    changed = steering.step() or changed
            if all(s.progress.done for s in steerings):
                return
            now = time.monotonic()
            changed_at = now if changed else changed_at
            sleep(min(max((now - changed_at) * POLL_FRACTION, FIRST_POLL_S), poll_s))
    finally:
        for steering in steerings:
            steering.lock.release()
