"""The instance's GPU queue (``inpaint.session.gpuqueue``): the fair order as pure functions,
table-tested, then the blocking turn with threads (waiting on events, never on sleeps)."""

from __future__ import annotations

import threading

import pytest

from inpaint.errors import DeliverLaterError, TransientError
from inpaint.session.gpuqueue import (
    FairQueue,
    GpuQueue,
    Ticket,
    ahead_of,
    fair_round,
    next_up,
    turn_bound,
)


@pytest.mark.parametrize(
    ("current", "users_last", "expected"),
    [
        (0, None, 0),  # a user with nothing on the instance starts at the current round
        (7, None, 7),
        (0, 0, 1),  # a user's second job waits a round behind its first
        (0, 4, 5),
        (3, 1, 3),  # a user whose jobs lag behind the current round catches up, never ahead
        (3, 3, 4),
    ],
)
def test_fair_round(current, users_last, expected):
    assert fair_round(current, users_last) == expected


def _order(queue: GpuQueue, tickets: list[Ticket]) -> list[str]:
    return [t.user for t in sorted(tickets, key=lambda t: t.key)]


def test_one_users_ten_jobs_do_not_starve_anothers_one():
    queue = GpuQueue()
    heavy = [queue.admit("heavy", 64) for _ in range(10)]
    light = queue.admit("light", 64)
    for ticket in [*heavy, light]:
        ticket.ready = True
    order = _order(queue, [*heavy, light])
    assert order[:3] == ["heavy", "light", "heavy"]
    assert ahead_of(light, [*heavy, light]) == 1


def test_three_users_are_served_round_robin_in_arrival_order():
    queue = GpuQueue()
    tickets = [queue.admit(u, 64) for u in ["a", "a", "a", "b", "b", "c"]]
    assert _order(queue, tickets) == ["a", "b", "c", "a", "b", "a"]


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        # (ready, running, finished) per ticket in fair order -> index of the next one up
        ([(True, False, False), (True, False, False)], 0),
        ([(False, False, False), (True, False, False)], 1),  # still downloading: skipped
        ([(True, True, False), (True, False, False)], None),  # the GPU is taken
        ([(False, False, True), (True, False, False)], 1),  # finished: encoding, GPU free
        ([(False, False, False), (False, False, False)], None),  # nobody ready
    ],
)
def test_next_up(states, expected):
    tickets = [
        Ticket("u", i, i, ready=r, running=run, finished=f) for i, (r, run, f) in enumerate(states)
    ]
    chosen = next_up(tickets)
    assert chosen is (None if expected is None else tickets[expected])


def test_jobs_ahead_count_the_running_one_and_the_ready_ones_before():
    running = Ticket("a", 5, 9, ready=True, running=True)  # later key, but on the GPU
    finished = Ticket("b", 0, 0, finished=True)
    before = Ticket("c", 0, 1, ready=True)
    downloading = Ticket("f", 0, 4)  # before in the order, not ready yet: not counted
    me = Ticket("d", 1, 2, ready=True)
    after = Ticket("e", 1, 3, ready=True)
    assert ahead_of(me, [running, finished, before, downloading, me, after]) == 2


def test_admission_beyond_capacity_is_refused_without_a_place():
    queue = GpuQueue()
    first = queue.admit("a", 2)
    queue.admit("b", 2)
    with pytest.raises(DeliverLaterError, match="already has 2 jobs"):
        queue.admit("c", 2)
    assert isinstance(DeliverLaterError("x"), TransientError)  # not acknowledged
    queue.leave(first)
    queue.admit("c", 2)
    assert queue.snapshot()["admitted"] == 2


def test_a_waiting_job_hears_its_position_and_gets_the_gpu_when_the_holder_releases_it():
    queue = GpuQueue()
    holder, waiter = queue.admit("a", 4), queue.admit("b", 4)
    queue.wait_turn(holder, check=lambda: None)
    positions: list[int] = []
    told = threading.Event()
    started = threading.Event()

    def on_position(n: int) -> None:
        positions.append(n)
        told.set()

    def job() -> None:
        queue.wait_turn(waiter, check=lambda: None, on_position=on_position)
        started.set()

    thread = threading.Thread(target=job)
    thread.start()
    assert told.wait(10)
    assert not started.is_set() and positions == [1]
    assert queue.snapshot() == {"admitted": 2, "waiting": 1, "finishing": 0, "running": 1}
    queue.release_gpu(holder)  # the holder encodes and uploads; the GPU goes on at once
    assert started.wait(10)
    thread.join(10)
    assert waiter.running and waiter.waited and not holder.running
    queue.leave(holder)
    queue.leave(waiter)
    assert queue.snapshot()["admitted"] == 0


def _waiter(queue: GpuQueue, ticket: Ticket, check) -> tuple[threading.Thread, list]:
    """A started thread waiting for ``ticket``'s turn; the list gets what stopped it."""
    outcome: list[BaseException] = []

    def job() -> None:
        try:
            queue.wait_turn(ticket, check=check)
        except RuntimeError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=job)
    thread.start()
    return thread, outcome


def test_a_waiting_job_stops_at_once_when_its_check_raises_after_a_wake():
    queue = GpuQueue(poll_seconds=3600)  # only a wake can make it look again
    holder, waiter = queue.admit("a", 4), queue.admit("b", 4)
    queue.wait_turn(holder, check=lambda: None)
    lost = threading.Event()
    checked = threading.Event()

    def check() -> None:
        checked.set()
        if lost.is_set():
            raise RuntimeError("the app cancelled the job")

    thread, outcome = _waiter(queue, waiter, check)
    assert checked.wait(10)
    lost.set()
    queue.wake()  # what the heartbeat does when it finds the lease gone
    thread.join(10)
    assert not thread.is_alive() and str(outcome[0]) == "the app cancelled the job"
    assert not waiter.ready and not waiter.running and holder.running
    queue.leave(waiter)
    queue.release_gpu(holder)
    assert next_up([holder]) is None


def test_a_waiting_job_sees_sigterm_without_a_wake():
    """SIGTERM sets an event in a signal handler, which must not take locks: the waiter's
    periodic check is what notices it."""
    queue = GpuQueue(poll_seconds=0.05)
    holder, waiter = queue.admit("a", 4), queue.admit("b", 4)
    queue.wait_turn(holder, check=lambda: None)
    shutdown = threading.Event()

    def check() -> None:
        if shutdown.is_set():
            raise RuntimeError("the instance is shutting down")

    thread, outcome = _waiter(queue, waiter, check)
    shutdown.set()
    thread.join(30)
    assert not thread.is_alive() and outcome and not waiter.running


def _run_next(queue: FairQueue, now: float = 0.0) -> Ticket:
    """The next job takes the GPU, finishes its model call and leaves."""
    ticket = queue.next_up()
    assert ticket is not None
    queue.start(ticket, now)
    queue.release_gpu(ticket)
    queue.leave(ticket)
    return ticket


def test_regression_a_users_second_job_is_not_starved_by_users_who_come_straight_back():
    """Issue 27, defect 1: users re-entering at the current round kept round 0 busy forever."""
    queue = FairQueue()
    second = None
    for ticket in [queue.admit("a", 4), queue.admit("a", 4)]:
        ticket.ready = True
        second = ticket
    others = {}
    for user in ("b", "c"):
        others[user] = queue.admit(user, 4)
        others[user].ready = True
    ran: list[str] = []
    for _ in range(16):
        done = _run_next(queue)
        ran.append(done.user)
        if done is second:
            break
        if done.user != "a":  # that user sends the next job as soon as the last one ended
            nxt = queue.admit(done.user, 4)
            nxt.ready = True
    assert ran == ["a", "b", "a"]  # before: a, b, c, b, c, b, ... and "a" never again


def test_an_overdue_job_goes_before_the_fair_order():
    queue = FairQueue()
    first = queue.admit("a", 3)
    first.ready = True
    # Later-admitted jobs of new users keep entering ahead of "a"'s second round.
    second = queue.admit("a", 3)
    second.ready = True
    _run_next(queue)  # a's first job
    passes = 0
    while second.passed < queue.max_passes():
        newcomer = queue.admit(f"n{passes}", 3)
        newcomer.ready = True
        assert queue.next_up() is newcomer  # the fair order: round 0 before "a"'s round 1
        _run_next(queue)
        passes += 1
    newcomer = queue.admit("late", 3)
    newcomer.ready = True
    assert queue.next_up() is second  # overdue: no more passing


@pytest.mark.parametrize(("capacity", "bound"), [(1, 1), (2, 2), (4, 4), (8, 8)])
def test_turn_bound(capacity, bound):
    assert turn_bound(capacity) == bound  # the jobs admitted before, plus one pass


def test_the_stall_clock_runs_only_while_a_job_holds_the_gpu():
    queue = FairQueue()
    ticket = queue.admit("a", 2)
    ticket.ready = True
    assert queue.stalled_for(100.0) == 0.0
    queue.start(ticket, 100.0)
    assert queue.stalled_for(130.0) == 30.0
    queue.progress(ticket, 125.0)
    assert queue.stalled_for(130.0) == 5.0
    queue.release_gpu(ticket)
    assert queue.stalled_for(1000.0) == 0.0
