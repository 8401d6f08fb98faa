"""Unit tests of the job parameter rules and the job's stop signals (whole jobs run in
tests/e2e, on real servers)."""

from __future__ import annotations

import itertools
import threading

import pytest

from inpaint.config import Settings
from inpaint.errors import (
    DeviceStalledError,
    InvalidRequestError,
    LeaseLostError,
    OutputsRaceError,
    PermanentError,
    ShutdownError,
    TransientError,
    describe_error,
)
from inpaint.session.document import UNCHANGED
from inpaint.session.events import SessionRef
from inpaint.session.heartbeat import Heartbeat, Tick, heartbeat_tick
from inpaint.session.jobs import MAX_SEED, Phase, handle_event, job_params, spends_attempt
from inpaint.session.store import Claim, ClaimOutcome

SETTINGS = Settings(default_prompt="default prompt", steps=28, max_steps=50, guidance=30.0)


def test_defaults_when_the_document_has_no_parameters():
    p = job_params({}, "session-1", SETTINGS)
    assert (p.prompt, p.steps, p.guidance) == ("default prompt", 28, 30.0)
    assert 0 <= p.seed <= MAX_SEED


def test_seed_derived_from_session_is_stable_and_differs_between_sessions():
    assert job_params({}, "a", SETTINGS).seed == job_params({}, "a", SETTINGS).seed
    assert job_params({}, "a", SETTINGS).seed != job_params({}, "b", SETTINGS).seed


def test_document_values_are_used():
    doc = {"prompt": "  a corgi  ", "seed": 7, "steps": 4, "guidance": 12}
    p = job_params(doc, "s", SETTINGS)
    assert (p.prompt, p.seed, p.steps, p.guidance) == ("a corgi", 7, 4, 12.0)


def test_blank_prompt_falls_back_to_default():
    assert job_params({"prompt": "   "}, "s", SETTINGS).prompt == "default prompt"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"prompt": 42}, "The prompt must be text."),
        ({"prompt": "x" * 100_000}, "The prompt is 100000 characters long; the limit is 2000."),
        ({"seed": "12"}, "The seed must be a whole number"),
        ({"seed": 1.5}, "The seed must be a whole number"),
        ({"seed": True}, "The seed must be a whole number"),
        ({"seed": -1}, "The seed must be a whole number"),
        ({"seed": MAX_SEED + 1}, "The seed must be a whole number"),
        ({"steps": 0}, "The steps must be a whole number from 1 to 50."),
        ({"steps": 51}, "The steps must be a whole number from 1 to 50."),
        ({"guidance": "high"}, "The guidance must be a number"),
        ({"guidance": 101}, "The guidance must be a number"),
        ({"guidance": 10**400}, "The guidance must be a number"),  # was OverflowError
        ({"guidance": -(10**400)}, "The guidance must be a number"),
        ({"guidance": float("nan")}, "The guidance must be a number"),
        ({"guidance": float("inf")}, "The guidance must be a number"),
    ],
)
def test_bad_parameters_are_permanent_errors_with_specific_messages(doc, message):
    with pytest.raises(InvalidRequestError) as info:
        job_params(doc, "s", SETTINGS)
    assert info.value.message.startswith(message)
    assert isinstance(info.value, PermanentError)
    assert not isinstance(info.value, TransientError)


def test_describe_is_one_short_line():
    text = describe_error(RuntimeError("first line\nsecond line " + "x" * 1000))
    assert text.startswith("RuntimeError: first line") and "second" not in text
    assert describe_error(TimeoutError()) == "TimeoutError"


# --- lifecycle pieces that need no servers (the real-stack proofs are in tests/e2e) ------------


class _LostLeaseStore:
    """A store double whose heartbeat finds the lease gone."""

    def __init__(self) -> None:
        self.heartbeats = 0

    def heartbeat(self, claim, progress, queue_position=UNCHANGED) -> None:
        self.heartbeats += 1
        raise LeaseLostError("the app cancelled the job")


def _claim() -> Claim:
    return Claim(ClaimOutcome.ACQUIRED, SessionRef("u", "s"), owner="i:t", attempt=1)


def test_a_lost_lease_stops_the_job_at_its_next_step_and_the_heartbeat_is_joined():
    store = _LostLeaseStore()
    settings = Settings(progress_interval_seconds=0.0)
    heartbeat = Heartbeat(store, _claim(), settings)  # type: ignore[arg-type]
    with pytest.raises(LeaseLostError, match="cancelled"), heartbeat:
        for step in itertools.count(1):  # a denoising loop that only the heartbeat can stop
            heartbeat.progress(step % 50, 50)
    assert not heartbeat._thread.is_alive()  # joined: nothing can be written after the job
    assert store.heartbeats == 1  # it stopped writing once the lease was gone


def test_sigterm_stops_the_job_at_its_next_step():
    shutdown = threading.Event()
    heartbeat = Heartbeat(_LostLeaseStore(), _claim(), SETTINGS, shutdown)  # type: ignore[arg-type]
    heartbeat.progress(1, 10)
    shutdown.set()
    with pytest.raises(ShutdownError):
        heartbeat.progress(2, 10)
    assert isinstance(ShutdownError("x"), TransientError)  # answered 500: redelivered


def test_no_new_job_starts_once_the_instance_is_shutting_down():
    from cloudevents.http import from_http

    from tools import eventlib

    shutdown = threading.Event()
    shutdown.set()

    def no_store():
        raise AssertionError("no claim may be attempted during shutdown")

    event = from_http(*eventlib.pubsub_binary("u", "s"))
    with pytest.raises(ShutdownError):
        handle_event(event, no_store, no_store, SETTINGS, shutdown=shutdown)


class _RecordingStore:
    def __init__(self) -> None:
        self.heartbeats = 0
        self.beat = threading.Event()

    def heartbeat(self, claim, progress, queue_position=UNCHANGED) -> None:
        self.heartbeats += 1
        self.beat.set()


def test_a_job_past_its_maximum_time_stops_renewing_its_lease():
    """A hung job must not hold its session forever: once past INPAINT_MAX_JOB_SECONDS the
    heartbeat stops (the lease expires, a redelivery takes over) and the job stops if it wakes."""
    now = [0.0]
    store = _RecordingStore()
    settings = Settings(progress_interval_seconds=0.0, max_job_seconds=100.0)
    heartbeat = Heartbeat(store, _claim(), settings, clock=lambda: now[0])  # type: ignore[arg-type]
    with heartbeat:
        assert store.beat.wait(10)  # renewing while within the time (the test's clock)
        now[0] = 101.0  # the job has run for 101 s
        heartbeat._thread.join(10)
        assert not heartbeat._thread.is_alive()
        renewals = store.heartbeats
        with pytest.raises(LeaseLostError, match="INPAINT_MAX_JOB_SECONDS"):
            heartbeat.progress(5, 10)
    assert store.heartbeats == renewals


# --- which stops spend an attempt (issue 27, defect 5) -----------------------------------------


@pytest.mark.parametrize(
    ("phase", "error", "spent"),
    [
        (Phase.INPUTS, RuntimeError("storage down"), True),  # it held its inputs
        (Phase.GPU, RuntimeError("CUDA error"), True),  # it held the GPU
        (Phase.OUTPUTS, RuntimeError("upload failed"), True),
        (Phase.QUEUE, RuntimeError("firestore down while waiting"), False),
        (Phase.INPUTS, ShutdownError("SIGTERM"), False),  # the platform's stop, in every phase
        (Phase.QUEUE, ShutdownError("SIGTERM"), False),
        (Phase.GPU, ShutdownError("SIGTERM"), False),
        (Phase.OUTPUTS, ShutdownError("SIGTERM"), False),
        (Phase.QUEUE, DeviceStalledError("another job hung the GPU"), False),
        (Phase.OUTPUTS, OutputsRaceError("stale jobs' uploads"), False),
    ],
)
def test_spends_attempt(phase, error, spent):
    assert spends_attempt(phase, error) is spent


@pytest.mark.parametrize(
    ("now", "stalled", "tick"),
    [(10.0, None, Tick.RENEW), (101.0, None, Tick.OVERRUN), (10.0, "hung", Tick.STALLED)],
)
def test_heartbeat_tick(now, stalled, tick):
    assert heartbeat_tick(now, 100.0, stalled) is tick


class _ReleasingStore(_RecordingStore):
    def __init__(self) -> None:
        super().__init__()
        self.released: list[tuple[str, bool]] = []
        self.done = threading.Event()

    def release(self, claim, error, *, refund=False) -> bool:
        self.released.append((error, refund))
        self.done.set()
        return True


def test_a_hung_model_call_gives_its_lease_back_with_the_attempt_spent():
    """Issue 27, defect 2: the holder's heartbeat sees the stall and releases at once."""
    store = _ReleasingStore()
    stalled: list[str | None] = [None]
    settings = Settings(progress_interval_seconds=0.0)
    heartbeat = Heartbeat(
        store,  # type: ignore[arg-type]
        _claim(),
        settings,
        stalled=lambda: stalled[0],
    )
    with heartbeat:
        assert store.beat.wait(10)
        stalled[0] = "no progress for 301 s"
        assert store.done.wait(10)
        with pytest.raises(LeaseLostError, match="hung"):
            heartbeat.progress(1, 10)
    assert store.released == [("the job's model call hung: no progress for 301 s", False)]
