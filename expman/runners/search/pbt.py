"""Population-based training over the job queue (``"algorithm": "pbt"``).

A population of members trains in generations; each generation of a member is a run of its
own that trains ``fidelity.step`` more (the fidelity key is set to step × (generation + 1))
and starts from a copy of its parent's newest snapshot (``rundir.checkpoint.fork``: never
a shared directory). When a generation has ended, the bottom quantile exploits: a member
there continues from a top-quantile member instead of itself, with that member's params
explored (multiplied by one of the factors, or drawn afresh with the resample
probability). The others continue from themselves with their params unchanged.

A member whose run has no verified snapshot is never exploited, and a parent without one
(removed, damaged, never written) is replaced by its member's true ancestor: the newest
run of the member's own line that has one (Orion's "true ancestor": its own tree, not the
one it jumped to; origin "ancestor"). A child that fails its max_attempts is made again
from the true ancestor, its params explored (origin "replace"), so the population keeps its
size; a member whose generation fails MAX_FALLBACKS + 1 times leaves the population.

The decisions are a function of the study's results and the seed, and every child is put
in the study (``enqueue_trial``, with its member, generation and parent) before its run is
made: a steering process killed at any moment and started again makes the same decisions
and finds what it had made.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import CheckpointError
from ...experiment.search import Dimension
from ...rundir import checkpoint, lifecycle
from ...rundir.layout import RunDir, utc_now
from ...rundir.record import RunStatus
from .points import RUN_DIR, RUN_ID, Outcome, Point, point_key
from .steer import Steering
from .study import suggest_all

MAX_FALLBACKS = 2


@dataclass
class Member:
    """One run of a member's line: a (member, generation) trial and how it ended."""

    number: int
    member: int
    generation: int
    params: dict[str, Any]
    run_id: str | None
    run_dir: str | None
    parent: str | None  # the run this one started from (None: from scratch)
    origin: str  # start, continue, exploit, fallback
    value: float | None = None
    outcome: str | None = None  # None while it runs


@dataclass(frozen=True)
class Child:
    """A decided, not yet made, run of a member."""

    member: int
    generation: int
    params: dict[str, Any]
    parent: Member | None
    origin: str


class PbtSteering(Steering):
    """Generations of a population, each member-generation a point of the study."""

    def _setup(self) -> None:
        assert self.spec.pbt is not None
        self.pbt = self.spec.pbt
        self.lines: dict[int, list[Member]] = {m: [] for m in range(self.pbt.population)}
        self.members: dict[int, Member] = {}  # by trial number
        self.pending: list[Child] = []
        self.maker.prepare = self._fork

    # --- state, from the study -----------------------------------------------------

    def _resume(self, trial: Any) -> None:
        super()._resume(trial)
        self._track(trial, None)

    def _point(self, trial_id: int, number: int, params: dict[str, Any], attrs: Mapping[str, Any]) -> Point:
        point = Point(trial_id, number, dict(params), point_key(self.name, number))
        point.extra = self._extra(attrs["member"], attrs["generation"], attrs.get("parent"))
        point.extra["parent_dir"] = attrs.get("parent_dir")
        return point

    def _count(self, trial: Any) -> None:
        super()._count(trial)
        if trial.number not in self.members:
            self._track(trial, trial.user_attrs.get("outcome", "failed"))

    def _track(self, trial: Any, outcome: str | None) -> None:
        attrs = trial.user_attrs
        if "member" not in attrs:
            return
        member = Member(
            number=trial.number,
            member=attrs["member"],
            generation=attrs["generation"],
            params=dict(trial.params),
            run_id=attrs.get(RUN_ID),
            run_dir=attrs.get(RUN_DIR),
            parent=attrs.get("parent"),
            origin=attrs.get("origin", "start"),
            value=trial.value if outcome == "succeeded" else None,
            outcome=outcome,
        )
        self.members[trial.number] = member
        self.lines[member.member].append(member)

    def start(self) -> None:
        super().start()
        waiting = self.optuna.trial.TrialState.WAITING
        for trial in self.study.get_trials(deepcopy=False, states=(waiting,)):
            self._ask_decided(trial.user_attrs)  # decided and put in the study before a kill
        self._update_points()

    # --- stepping --------------------------------------------------------------------

    def step(self) -> bool:
        self.lock.renew()
        changed = self.progress.stopped is None and self._decide()
        while self.pending and len(self.in_flight) < self.spec.parallel and self._may_ask():
            self._make(self.pending.pop(0))
            changed = True
        changed = self._tell_ended() or changed
        self.progress.in_flight = len(self.in_flight)
        return changed

    def _decide(self) -> bool:
        """Once nothing runs: the children of the newest generation not made yet (a kill came
        first), else replacements of its failed ones, else the next generation. Whether any
        was decided."""
        if self.pending or self.in_flight:
            return False
        generation = max((m.generation for m in self.members.values()), default=0)
        children = self._missing(generation) or self._replacements(generation)
        if not children and generation + 1 < self.pbt.fidelity.generations:
            children = self._next_generation(generation)
        self.pending.extend(children)
        self._update_points()
        return bool(children)

    def _missing(self, generation: int) -> list[Child]:
        if generation == 0:
            return [self._fresh(m, 0) for m in range(self.pbt.population) if not self.lines[m]]
        decided = self._next_generation(generation - 1)
        return [c for c in decided if self._latest(c.member, generation) is None]

    def _latest(self, member: int, generation: int) -> Member | None:
        runs = [m for m in self.lines[member] if m.generation == generation]
        return runs[-1] if runs else None

    def _replacements(self, generation: int) -> list[Child]:
        """A child for each member whose run of ``generation`` failed (within MAX_FALLBACKS)."""
        children = []
        for member in range(self.pbt.population):
            runs = [m for m in self.lines[member] if m.generation == generation]
            if runs and runs[-1].outcome not in ("succeeded", None) and len(runs) <= MAX_FALLBACKS:
                children.append(self._fallback(runs[-1]))
        return children

    def _fallback(self, failed: Member) -> Child:
        """A failed run again, from its member's true ancestor, its params explored."""
        ancestor = self._ancestor(failed.member, failed.generation - 1)
        rng = self._rng(failed.generation, failed.member, len(self.lines[failed.member]))
        params = self._explore(ancestor.params if ancestor else failed.params, rng)
        return Child(failed.member, failed.generation, params, ancestor, "replace")

    def _ancestor(self, member: int, generation: int) -> Member | None:
        """The newest successful run of ``member``'s own line up to ``generation`` whose
        snapshot verifies."""
        for run in reversed(self.lines[member]):
            if run.generation <= generation and run.outcome == "succeeded" and _snapshot_of(run):
                return run
        return None

    def _next_generation(self, generation: int) -> list[Child]:
        ranked = self._ranked(generation)
        cut = max(1, math.floor(len(ranked) * self.pbt.quantile)) if len(ranked) > 1 else 0
        bottom = {m.member for m in ranked[len(ranked) - cut :]} if cut else set()
        # the best with a verified snapshot: a member without one is never exploited
        top = [m for m in ranked[: len(ranked) - cut] if _snapshot_of(m)][:cut]
        children = []
        for member in range(self.pbt.population):
            rng = self._rng(generation + 1, member, 0)
            current = self._latest(member, generation)
            if current is None or current.outcome != "succeeded":
                continue  # fell back MAX_FALLBACKS times: the member is out
            if member in bottom and top:
                source = rng.choice(top)
                children.append(Child(member, generation + 1, self._explore(source.params, rng), source, "exploit"))
                continue
            parent = current if _snapshot_of(current) else self._ancestor(member, generation)
            origin = "continue" if parent is current else "ancestor"
            children.append(Child(member, generation + 1, dict(current.params), parent, origin))
        return children

    def _ranked(self, generation: int) -> list[Member]:
        """The generation's successful runs, best first."""
        runs = [self._latest(m, generation) for m in range(self.pbt.population)]
        done = [r for r in runs if r is not None and r.outcome == "succeeded" and r.value is not None]
        return sorted(done, key=lambda r: r.value or 0.0, reverse=self.spec.direction == "maximize")

    def _fresh(self, member: int, generation: int) -> Child:
        rng = self._rng(generation, member, 0)
        return Child(member, generation, {d.key: _sample(d, rng) for d in self.spec.space}, None, "start")

    def _explore(self, params: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        """Each value drawn afresh with the resample probability, else (a number) multiplied
        by one of the factors, within its bounds."""
        explored = dict(params)
        for d in self.spec.space:
            if rng.random() < self.pbt.resample:
                explored[d.key] = _sample(d, rng)
            elif d.method != "categorical":
                explored[d.key] = d.clip(params[d.key] * rng.choice(self.pbt.factors))
        return explored

    def _rng(self, generation: int, member: int, attempt: int) -> random.Random:
        return random.Random(f"{self.spec.seed}/{self.name}/{generation}/{member}/{attempt}")

    def _update_points(self) -> None:
        """Points told, in flight, and to come: each member's generations not made yet (and a
        remake of a failed run that may still fall back), unless it has left the population."""
        generations = self.pbt.fidelity.generations
        to_come = 0
        for line in self.lines.values():
            if not line:
                to_come += generations
                continue
            last = line[-1]
            failed = last.outcome not in ("succeeded", None)
            if failed and sum(1 for r in line if r.generation == last.generation) > MAX_FALLBACKS:
                continue
            to_come += generations - 1 - last.generation + (1 if failed else 0)
        self.progress.points = self.progress.told + len(self.in_flight) + to_come

    # --- making children -----------------------------------------------------------

    def _make(self, child: Child) -> None:
        if child.parent is not None and not _snapshot_of(child.parent):  # gone since the decision
            ancestor = self._ancestor(child.member, child.generation - 1)
            child = Child(child.member, child.generation, child.params, ancestor, "ancestor")
        attrs = {
            "member": child.member,
            "generation": child.generation,
            "origin": child.origin,
            "parent": child.parent.run_id if child.parent else None,
            "parent_trial": child.parent.number if child.parent else None,
            "parent_dir": child.parent.run_dir if child.parent else None,
        }
        self.study.enqueue_trial(child.params, user_attrs=attrs)
        self._ask_decided(attrs)

    def _ask_decided(self, attrs: dict[str, Any]) -> None:
        """Ask the trial decided (and put in the study) before: Optuna hands back the oldest
        waiting one, with its params fixed."""
        trial = self.study.ask()
        params = suggest_all(trial, self.spec.space)
        attrs = {**trial.user_attrs, **attrs} if trial.user_attrs else attrs
        point = self._point(trial._trial_id, trial.number, params, attrs)
        member = Member(
            trial.number, attrs["member"], attrs["generation"], params, None, None, attrs["parent"], attrs["origin"]
        )
        self.in_flight[trial.number] = point
        self.members[trial.number] = member
        self.lines[member.member].append(member)
        try:
            self.maker.make(point)
        except CheckpointError as exc:  # the parent's snapshot went away after it was checked
            member.run_id, member.run_dir = point.run_id, point.run_dir
            self._unforkable(point, exc.message)
            return
        member.run_id, member.run_dir = point.run_id, point.run_dir
        how = {
            "start": "from scratch",
            "continue": "continues",
            "exploit": "exploits",
            "ancestor": "continues from its true ancestor",
            "replace": "made again from its true ancestor",
        }
        source = f" {member.parent}" if member.parent else ""
        self.say(
            f"{self.name}: member {member.member} generation {member.generation} {how[member.origin]}{source}: "
            f"trial {trial.number}, run {point.run_id}"
        )

    def _extra(self, member: int, generation: int, parent: str | None) -> dict[str, Any]:
        """What a member's run records (member, generation, parent) and the values it sets."""
        sets: dict[str, Any] = {self.pbt.fidelity.key: self.pbt.fidelity.at(generation)}
        extra: dict[str, Any] = {"member": member, "generation": generation, "parent": parent}
        if self.spec.segment_key is not None:
            sets[self.spec.segment_key] = extra["segment"] = self.segment
        return extra | {"sets": sets}

    def _fork(self, point: Point, run: RunDir) -> None:
        """The child's output starts from a copy of its parent's newest snapshot."""
        parent_dir = point.extra.get("parent_dir")
        if parent_dir and checkpoint.newest(run) is None and checkpoint.fork(RunDir(Path(parent_dir)), run) is None:
            raise CheckpointError(f"the snapshot of parent run {Path(parent_dir).name} is gone or damaged")

    def _unforkable(self, point: Point, reason: str) -> None:
        """A child that cannot start from its parent fails before it runs; the member falls
        back to its true ancestor as for any failed child."""
        if point.run_dir is not None:
            failed = (RunStatus.FAILED, f"not started: {reason}")
            lifecycle.end_if_not_final(RunDir(Path(point.run_dir)), utc_now(), lambda record: failed)
        self._tell(point, Outcome(None, "failed", reason))
        del self.in_flight[point.number]

    def _tell(self, point: Point, outcome: Outcome) -> None:
        member = self.members.get(point.number)
        if member is not None:
            member.outcome, member.value = outcome.state, outcome.value
        self._update_points()  # a failed run adds its remake before the count is printed
        super()._tell(point, outcome)


def _snapshot_of(run: Member) -> bool:
    return run.run_dir is not None and checkpoint.newest(RunDir(Path(run.run_dir))) is not None


def _sample(d: Dimension, rng: random.Random) -> Any:
    if d.method == "categorical":
        return rng.choice(d.categories)
    if d.method == "uniformint":
        return rng.randint(int(d.low), int(d.high))
    if d.method == "loguniform":
        return math.exp(rng.uniform(math.log(d.low), math.log(d.high)))
    return rng.uniform(d.low, d.high)
