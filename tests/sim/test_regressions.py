"""Named schedules: each defect the simulation found (or was shown to find when its fix was
reverted), replayed as its shortest schedule. Each fails with its fix reverted (checked with
``python -m tests.sim.mutants``, which reverts one fix at a time)."""

from __future__ import annotations

from tests.sim.world import Config, World


def _settled(world: World) -> None:
    world.settle()
    world.check_settled()
    assert not world.oracle.violations, world.oracle.violations


def test_a_users_second_job_is_not_starved_by_users_who_come_straight_back():
    """Defect 1: other users re-entered at the current round, so a user's second job (round 1)
    waited while they kept coming; the bound is turn_bound(admitted) model calls."""
    world = World(Config(instances=1, concurrency=4))
    for user in ("u2", "u3"):
        world.eager(user, 8)  # each sends the next job as soon as the last one ended
    world.advance(0.5)
    world.create("u1")  # waits behind them
    world.advance(31.0)
    world.create("u1")  # its second job, admitted while the first still waits
    _settled(world)


def test_a_hung_model_call_does_not_hold_the_jobs_behind_it():
    """Defect 2: with a hung model call the jobs behind it waited until their heartbeat gave
    up (1200 s, past the ack deadline) and the instance was never replaced."""
    world = World(Config(instances=1, concurrency=4))
    world.hang(0)
    world.create("u1")
    world.create("u2")
    world.create("u3")
    _settled(world)
    assert world.oracle.hangs == 1


def test_a_deleted_session_stays_deleted_when_its_message_comes_again():
    """Defect 3: a duplicate of a completed session's message, after the user deleted the
    session, created a ``failed`` / not-found document."""
    world = World()
    world.create("u1")
    world.advance(60.0)
    world.delete(0)
    world.redeliver(0)
    _settled(world)


def test_a_slow_upload_of_a_cancelled_job_never_replaces_the_new_requests_files():
    """Defect 4: the outputs were uploaded unconditionally after a plain lease check, so a slow
    upload of a job whose request was cancelled and re-queued landed over the new request's
    files (and its clean-up then deleted them)."""
    world = World(Config(instances=2, concurrency=4))
    world.slow_upload(300.0)
    world.create("u1")
    world.advance(35.0)  # the job is uploading, slowly
    world.reedit(0)  # cancel + re-queue: the new request runs on the other instance
    world.advance(100.0)
    _settled(world)


def test_a_sigterm_does_not_spend_an_attempt():
    """Defect 5: SIGTERM released the lease with the attempt spent; with two real faults after
    it, the request was failed as attempts exhausted (budget 3) with only two of its own."""
    world = World()
    world.create("u1")
    world.advance(0.1)
    world.stop(0)
    world.faults.fail_next("write", "before")
    world.faults.fail_next("write", "before")
    _settled(world)


def test_a_stale_copy_of_an_old_event_does_not_expire_the_new_request():
    """Defect 6: a copy of the previous request's event, older than the event age limit,
    arriving after a re-queue failed the new request as expired."""
    world = World()
    world.create("u1")
    world.advance(2000.0)  # completed; its message is now older than the 1800 s limit
    world.faults.fail_next("get", "before")  # the new request's own delivery fails once
    world.requeue(0)
    world.redeliver(0)
    _settled(world)


def test_a_crash_while_only_waiting_does_not_spend_an_attempt():
    """A crash of the instance while a job only waited for the GPU counted toward its
    attempts (found while building the simulation): ``queuePosition`` says it was waiting."""
    world = World(Config(instances=1, concurrency=4, max_attempts=2))
    world.create("u1")
    world.create("u2")  # waits behind u1's job
    world.advance(10.0)
    world.crash(0)  # u1's job dies on the GPU, u2's while waiting
    world.advance(205.0)  # both taken over (after the 180 s lease) on the replacement: one runs,
    # one waits (its queuePosition written)
    world.crash(0)
    _settled(world)
