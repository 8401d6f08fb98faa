"""The one GPU of an instance, shared fairly by the jobs admitted to it.

Cloud Run admits up to ``--concurrency`` deliveries at once. Each admitted job claims its
session, downloads and decodes its inputs at once, then waits here for the GPU, so the GPU goes
from one job straight to the next instead of idling while Pub/Sub retries refused pushes. The
order is fair across users (start-time fair queueing by rounds): a user's k-th waiting job is in
round k, and a user who comes back later starts at the current round, so one user's ten jobs do
not starve another's one. Within a round, first come first served.

Admission is bounded (``INPAINT_MAX_QUEUED_JOBS``): a delivery beyond it is refused before it
claims anything, so memory (each admitted job holds its decoded photo) and the time a job can
wait (jobs ahead x job time, within the ack deadline) stay bounded even if the platform sends
more than the concurrency it was given.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from inpaint.errors import DeliverLaterError


def fair_round(current: int, users_last: int | None) -> int:
    """The round of a newly admitted job: the current round, or one past the user's last.

    ``current`` is the round of the job that last got the GPU; ``users_last`` the highest round
    of this user's jobs still on the instance (None when it has none).
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
    waited: bool = field(default=False, repr=False)

    @property
    def key(self) -> tuple[int, int]:
        return (self.round, self.seq)


def ahead_of(ticket: Ticket, tickets: Iterable[Ticket]) -> int:
    """Jobs ahead of ``ticket``: the one on the GPU plus the ready ones before it in the fair
    order (one still downloading, or a duplicate about to be refused, is not counted yet)."""
    return sum(
        1 for t in tickets if t is not ticket and (t.running or (t.ready and t.key < ticket.key))
    )


def next_up(tickets: Iterable[Ticket]) -> Ticket | None:
    """Who gets the free GPU: the first ready ticket in the fair order (None while one runs).

    A job still downloading does not hold the GPU back: the first one ready goes.
    """
    pool = list(tickets)
    if any(t.running for t in pool):
        return None
    ready = [t for t in pool if t.ready and not t.finished]
    return min(ready, key=lambda t: t.key) if ready else None


class GpuQueue:
    """Admission, fair order and the GPU turn; thread-safe, one per process."""

    def __init__(self, poll_seconds: float = 0.25) -> None:
        self._cond = threading.Condition()
        self._tickets: list[Ticket] = []
        self._seq = itertools.count()
        self._round = 0
        self._poll = poll_seconds

    def admit(self, user: str, capacity: int) -> Ticket:
        """A place on this instance, or ``DeliverLaterError`` (503) when ``capacity`` is full."""
        with self._cond:
            if len(self._tickets) >= capacity:
                raise DeliverLaterError(
                    f"this instance already has {len(self._tickets)} jobs (the limit is "
                    f"{capacity}); deliver again later"
                )
            rounds = [t.round for t in self._tickets if t.user == user]
            last = max(rounds, default=None)
            ticket = Ticket(user, fair_round(self._round, last), next(self._seq))
            self._tickets.append(ticket)
            return ticket

    def wait_turn(
        self,
        ticket: Ticket,
        check: Callable[[], None],
        on_position: Callable[[int], None] | None = None,
    ) -> None:
        """Blocks until ``ticket`` holds the GPU.

        ``check`` raises to stop waiting (lease lost, shutdown); it runs on every wake-up, at
        least every ``poll_seconds``. ``on_position`` hears the number of jobs ahead whenever it
        changes while waiting.
        """
        told: int | None = None
        with self._cond:
            ticket.ready = True
            self._cond.notify_all()
            while next_up(self._tickets) is not ticket:
                position = ahead_of(ticket, self._tickets)
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
            ticket.running = True
            self._round = max(self._round, ticket.round)

    def release_gpu(self, ticket: Ticket) -> None:
        """Done with the GPU: the next job starts while this one encodes and uploads."""
        with self._cond:
            ticket.running, ticket.ready, ticket.finished = False, False, True
            self._cond.notify_all()

    def leave(self, ticket: Ticket) -> None:
        """Gives back the GPU turn (if held) and the place (idempotent)."""
        with self._cond:
            if ticket in self._tickets:
                self._tickets.remove(ticket)
            ticket.running = ticket.ready = False
            self._cond.notify_all()

    def wake(self) -> None:
        """Wakes the waiters so that they run their ``check`` now (a lease was lost)."""
        with self._cond:
            self._cond.notify_all()

    def snapshot(self) -> dict[str, int]:
        """Counts of the tickets by state (admitted, waiting, finishing, running)."""
        with self._cond:
            return {
                "admitted": len(self._tickets),
                "waiting": sum(1 for t in self._tickets if t.ready and not t.running),
                "finishing": sum(1 for t in self._tickets if t.finished),
                "running": sum(1 for t in self._tickets if t.running),
            }
