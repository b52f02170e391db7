"""A worker's heartbeat thread: its row in the queue (``expman status``), the lease of the
running attempt, and a prompt ear for a cancel.

While an attempt runs, the thread looks every CANCEL_POLL_S for a cancel request (one
cheap read) and extends the lease every third of it; while idle it only keeps the worker's
row alive. On a lost lease or a cancel it stops the program: SIGTERM to this process,
which the execution flow turns into a stop. The thread never dies of a database error (a
lock held too long, a dropped connection, a full disk): it says so once and tries again at
the next beat, as the lease may still hold when the database returns.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..queue import Job, Queue, open_queue
from ..queue.store import WORKER_TTL_S

WORKER_BEAT_S = WORKER_TTL_S / 3
CANCEL_POLL_S = 1.0
SIGNAL_LATENCY_S = 2.0  # a signal this thread sends arrives well within this


@dataclass
class Attempt:
    """What the heartbeat thread learned about the running attempt."""

    job: Job
    lost: bool = False
    cancel: bool = False
    settled: bool = False
    claimed: float = field(default_factory=time.monotonic)
    lease_due: float = 0.0  # when the lease is extended next (monotonic)

    def __post_init__(self) -> None:
        self.lease_due = self.claimed + lease_interval(self.job)

    def fresh(self) -> bool:
        """Claimed less than half a lease ago: the lease surely still holds."""
        return time.monotonic() - self.claimed < self.job.lease_s / 2


def lease_interval(job: Job) -> float:
    """A third of the lease (so two extensions may fail before it runs out), at most WORKER_BEAT_S."""
    return max(min(job.lease_s / 3, WORKER_BEAT_S), 0.05)


class Heartbeat:
    """The thread; ``attempt`` is the running attempt (None while idle), read at each beat."""

    def __init__(self, url: str, worker_id: str, say: Callable[[str], None]) -> None:
        self.url, self.worker_id, self._say = url, worker_id, say
        self.attempt: Attempt | None = None
        self.stopping: tuple[Attempt, float] | None = None  # the attempt it last sent SIGTERM to stop, and when
        self._sent = self._taken = 0  # its SIGTERMs sent, and those the worker has taken for its own
        self._wake, self._closing = threading.Event(), threading.Event()
        self._next_look = 0.0
        self._worker_due = 0.0
        self._failing = False
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._closing.set()
        self._wake.set()
        self._thread.join()

    def attempt_started(self, attempt: Attempt) -> None:
        """Wake the thread if it sleeps longer than a running attempt allows (it sleeps up to
        WORKER_BEAT_S while idle); not at every job of a sweep of short ones."""
        self.attempt = attempt
        if time.monotonic() + CANCEL_POLL_S < self._next_look:
            self._wake.set()

    def attempt_ended(self) -> None:
        """The SIGTERMs sent for an attempt before it ended have all arrived (the flow took
        them to stop it); only one sent from now on is still on its way."""
        self._taken = self._sent

    def _run(self) -> None:
        queue: Queue | None = None
        try:
            while not self._closing.is_set():
                interval = (
                    WORKER_BEAT_S if self.attempt is None else min(CANCEL_POLL_S, lease_interval(self.attempt.job))
                )
                self._next_look = time.monotonic() + interval
                if self._wake.wait(interval):
                    self._wake.clear()
                    continue
                try:
                    queue = queue or open_queue(self.url, application_name=f"expman-heartbeat {self.worker_id}")
                    self._beat(queue, self.attempt)
                    self._recovered()
                except Exception as exc:  # noqa: BLE001 - never die: the lease may hold when the database returns
                    self._failed(exc)
        finally:
            if queue is not None:
                queue.close()

    def _beat(self, queue: Queue, attempt: Attempt | None) -> None:
        now = time.monotonic()
        if now >= self._worker_due:
            queue.worker_beat(self.worker_id)
            self._worker_due = now + WORKER_BEAT_S
        if attempt is None or attempt.settled:
            return
        if not (attempt.lost or attempt.cancel):
            if now >= attempt.lease_due:
                state = queue.heartbeat(attempt.job)
                attempt.lease_due = now + lease_interval(attempt.job)
            else:
                state = "cancel" if queue.cancel_requested(attempt.job) else "ok"
            attempt.lost, attempt.cancel = state == "lost", state == "cancel"
        if attempt.lost or attempt.cancel:
            self.stopping = (attempt, time.monotonic())  # so the worker tells this SIGTERM from a user's
            self._sent += 1
            os.kill(os.getpid(), signal.SIGTERM)  # again each beat until the attempt ends

    def sent(self, attempt: Attempt | None) -> bool:
        """Whether a SIGTERM arriving now is this thread's, for ``attempt`` (or for the
        attempt that has just ended): sent in the last SIGNAL_LATENCY_S."""
        if self.stopping is None or self._taken >= self._sent:  # every one it sent has arrived: a user's
            return False
        stopped, when = self.stopping
        mine = (attempt is None or attempt is stopped) and time.monotonic() - when < SIGNAL_LATENCY_S
        self._taken += mine
        return mine

    def _failed(self, exc: BaseException) -> None:
        if not self._failing:
            message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            self._say(f"heartbeat: {message}; trying again at every beat")
            self._failing = True

    def _recovered(self) -> None:
        if self._failing:
            self._say("heartbeat: the queue answers again")
            self._failing = False
