"""The one GPU of an instance, shared fairly by the jobs admitted to it.

Cloud Run admits up to ``--concurrency`` deliveries at once. Each admitted job claims its
session, downloads and decodes its inputs at once, then waits here for the GPU, so the GPU goes
from one job straight to the next instead of idling while Pub/Sub retries refused pushes.

The order is fair across users (start-time fair queueing by rounds): a user's k-th job is in
round k, and a user who comes back starts one round past the last round the instance gave them
(remembered after their jobs left: a user who sends the next job as soon as the last ended does
not re-enter at the front), so one user's ten jobs do not starve another's one. Within a round,
first come first served. On top of the fair order, a hard bound: a job that a later-admitted
job has passed ``MAX_PASSES`` times goes next (the oldest such first). So from the moment a job
is ready, at most ``turn_bound(capacity)`` = capacity - 1 + ``MAX_PASSES`` other model calls start
before its own, for any arrival pattern: the jobs admitted before it (at most capacity - 1) and
the passes. ``inpaint.config`` checks that this many jobs plus its own fit in the ack deadline;
the simulation (``tests/sim``) checks the bound under every schedule it explores.

Admission is bounded (``INPAINT_MAX_QUEUED_JOBS``): a delivery beyond it is refused before it
claims anything, so memory (each admitted job holds its decoded photo) and the time a job can
wait stay bounded even if the platform sends more than the concurrency it was given.

The holder of the GPU reports each denoising step (``progress``). A holder silent for longer
than ``INPAINT_GPU_STALL_SECONDS`` is a hung model call (driver or lock): ``stalled_for`` says so,
and the instance reports itself unhealthy so that Cloud Run replaces it.

``FairQueue`` is the decision code without threads or clocks of its own (the deterministic
simulation in ``tests/sim`` drives it); ``GpuQueue`` adds the lock and the blocking wait.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from inpaint.config import MAX_PASSES, turn_bound
from inpaint.errors import DeliverLaterError

__all__ = ["MAX_PASSES", "FairQueue", "GpuQueue", "Ticket", "turn_bound"]


def fair_round(current: int, users_last: int | None) -> int:
    """The round of a newly admitted job: the current round, or one past the user's last.

    ``current`` is the round of the job that last got the GPU; ``users_last`` the highest round
    the instance gave this user and that is not behind ``current`` (None: none).
    """
    return current if users_last is None else max(current, users_last + 1)


@dataclass(eq=False)
class Ticket:
    """One admitted job's place; ``running`` while it holds the GPU."""

    user: str
    round: int
    seq: int
    ready: bool = False  # inputs decoded, waiting for the GPU
    running: bool = False  # holds the GPU
    finished: bool = False  # done with the GPU (encoding, uploading): still admitted
    passed: int = 0  # model calls of later-admitted jobs started while this one was admitted
    waited: bool = field(default=False, repr=False)

    @property
    def key(self) -> tuple[int, int]:
        return (self.round, self.seq)


def ahead_of(ticket: Ticket, tickets: Iterable[Ticket], max_passes: int | None = None) -> int:
    """Jobs ahead of ``ticket``: the one on the GPU plus the ready ones before it in the order
    (one still downloading, or a duplicate about to be refused, is not counted yet)."""
    pool = list(tickets)
    waiting = [t for t in pool if t.ready and not t.running and not t.finished]
    order = sorted(waiting, key=lambda t: _priority(t, max_passes))
    before = order.index(ticket) if ticket in order else len(order)
    return sum(1 for t in pool if t.running and t is not ticket) + before


def _priority(ticket: Ticket, max_passes: int | None) -> tuple[int, int, int]:
    """Overdue jobs first (oldest first), then the fair order."""
    if max_passes is not None and ticket.passed >= max_passes:
        return (0, ticket.seq, 0)
    return (1, ticket.round, ticket.seq)


def next_up(tickets: Iterable[Ticket], max_passes: int | None = None) -> Ticket | None:
    """Who gets the free GPU: the first ready ticket in the order (None while one runs).

    A job still downloading does not hold the GPU back: the first one ready goes. A ticket
    passed ``max_passes`` times by later-admitted jobs is overdue and goes before the fair order.
    """
    pool = list(tickets)
    if any(t.running for t in pool):
        return None
    ready = [t for t in pool if t.ready and not t.finished]
    return min(ready, key=lambda t: _priority(t, max_passes)) if ready else None


class FairQueue:
    """Admission, order, turns and stall tracking; not thread-safe (``GpuQueue`` locks it)."""

    def __init__(self) -> None:
        self.tickets: list[Ticket] = []
        self._seq = itertools.count()
        self._round = 0
        self._users_last: dict[str, int] = {}
        self._holder: Ticket | None = None
        self._holder_seen = 0.0

    def admit(self, user: str, capacity: int) -> Ticket:
        """A place, or ``DeliverLaterError`` (503) when ``capacity`` is full."""
        if len(self.tickets) >= capacity:
            raise DeliverLaterError(
                f"this instance already has {len(self.tickets)} jobs (the limit is "
                f"{capacity}); deliver again later"
            )
        rounds = [t.round for t in self.tickets if t.user == user]
        if user in self._users_last:
            rounds.append(self._users_last[user])
        ticket = Ticket(user, fair_round(self._round, max(rounds, default=None)), next(self._seq))
        self._users_last[user] = max(ticket.round, self._users_last.get(user, ticket.round))
        self.tickets.append(ticket)
        return ticket

    def max_passes(self) -> int:
        """Passes after which a job is overdue."""
        return MAX_PASSES

    def next_up(self) -> Ticket | None:
        return next_up(self.tickets, self.max_passes())

    def ahead_of(self, ticket: Ticket) -> int:
        return ahead_of(ticket, self.tickets, self.max_passes())

    def start(self, ticket: Ticket, now: float) -> None:
        """``ticket`` takes the GPU: the round moves on, the jobs it overtakes count a pass."""
        for other in self.tickets:
            if other.seq < ticket.seq and not other.running and not other.finished:
                other.passed += 1
        ticket.running = True
        self._round = max(self._round, ticket.round)
        # Users whose last round is behind the current one gain nothing from being remembered.
        self._users_last = {u: r for u, r in self._users_last.items() if r >= self._round}
        self._holder, self._holder_seen = ticket, now

    def progress(self, ticket: Ticket, now: float) -> None:
        """The holder made progress (a denoising step)."""
        if ticket is self._holder:
            self._holder_seen = now

    def stalled_for(self, now: float) -> float:
        """Seconds the GPU holder has been silent (0 while nobody holds the GPU)."""
        return max(0.0, now - self._holder_seen) if self._holder is not None else 0.0

    def release_gpu(self, ticket: Ticket) -> None:
        """Done with the GPU: the next job starts while this one encodes and uploads."""
        ticket.running, ticket.ready, ticket.finished = False, False, True
        if ticket is self._holder:
            self._holder = None

    def leave(self, ticket: Ticket) -> None:
        """Gives back the GPU turn (if held) and the place (idempotent)."""
        if ticket in self.tickets:
            self.tickets.remove(ticket)
        if ticket is self._holder:
            self._holder = None
        ticket.running = ticket.ready = False

    def counts(self) -> dict[str, int]:
        """Counts of the tickets by state (admitted, waiting, finishing, running)."""
        return {
            "admitted": len(self.tickets),
            "waiting": sum(1 for t in self.tickets if t.ready and not t.running),
            "finishing": sum(1 for t in self.tickets if t.finished),
            "running": sum(1 for t in self.tickets if t.running),
        }


class GpuQueue:
    """``FairQueue`` behind a lock, with the blocking wait; thread-safe, one per process."""

    def __init__(
        self, poll_seconds: float = 0.25, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._cond = threading.Condition()
        self._fair = FairQueue()
        self._poll = poll_seconds
        self._clock = clock

    def admit(self, user: str, capacity: int) -> Ticket:
        """A place on this instance, or ``DeliverLaterError`` (503) when ``capacity`` is full."""
        with self._cond:
            return self._fair.admit(user, capacity)

    def wait_turn(
        self,
        ticket: Ticket,
        check: Callable[[], None],
        on_position: Callable[[int], None] | None = None,
    ) -> None:
        """Blocks until ``ticket`` holds the GPU.

        ``check`` raises to stop waiting (lease lost, shutdown, a stalled GPU); it runs on every
        wake-up, at least every ``poll_seconds``. ``on_position`` hears the number of jobs ahead
        whenever it changes while waiting.
        """
        told: int | None = None
        with self._cond:
            ticket.ready = True
            self._cond.notify_all()
            while self._fair.next_up() is not ticket:
                position = self._fair.ahead_of(ticket)
                if position != told and on_position is not None:
                    on_position(position)
                    told = position
                ticket.waited = True
                try:
                    check()
                except BaseException:
                    ticket.ready = False
                    self._cond.notify_all()
                    raise
                self._cond.wait(self._poll)
            self._fair.start(ticket, self._clock())

    def progress(self, ticket: Ticket) -> None:
        """The holder's denoising step: the GPU is not stalled."""
        with self._cond:
            self._fair.progress(ticket, self._clock())

    def stalled_for(self) -> float:
        """Seconds the GPU holder has been silent (0 while the GPU is free)."""
        with self._cond:
            return self._fair.stalled_for(self._clock())

    def release_gpu(self, ticket: Ticket) -> None:
        """Done with the GPU: the next job starts while this one encodes and uploads."""
        with self._cond:
            self._fair.release_gpu(ticket)
            self._cond.notify_all()

    def leave(self, ticket: Ticket) -> None:
        """Gives back the GPU turn (if held) and the place (idempotent)."""
        with self._cond:
            self._fair.leave(ticket)
            self._cond.notify_all()

    def wake(self) -> None:
        """Wakes the waiters so that they run their ``check`` now (a lease was lost)."""
        with self._cond:
            self._cond.notify_all()

    def snapshot(self) -> dict[str, int]:
        """Counts of the tickets by state (admitted, waiting, finishing, running)."""
        with self._cond:
            return self._fair.counts()
