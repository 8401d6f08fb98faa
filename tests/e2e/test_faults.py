"""Faults against the real stack: duplicate and concurrent deliveries, a worker killed mid-job,
Storage and Firestore outages, a fault that never heals, two instances, and Pub/Sub push while the
function is down. Every test runs real server processes (the production serving command, tiny
model) against Google's emulators and fake-gcs-server, and checks the session document and the
objects in the bucket, never the function's own word for what happened.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import datetime as dt
import time
import uuid

import pytest
import requests
import torch

from inpaint.session.store import utcnow
from tests.e2e.conftest import blob_versions, inference_count
from tests.helpers import denoising, wait_for
from tools import eventlib
from tools.front import CloudRunFront
from tools.server import claims_by_session, log_records

INPUTS = {"original.jpg", "mask_auto.png"}
ALL_FILES = INPUTS | {"edited.jpg", "preview.jpg"}
# Jobs a test acts on mid-denoising: 50 tiny steps take ~2.5 s on two CPU cores; where CUDA runs
# them in milliseconds, 200, so the job is still denoising when the test reacts.
MID_JOB_STEPS = 200 if torch.cuda.is_available() else 50
# Two more instances with a budget of 3 attempts. Their lease is long on purpose: tests expire a
# lease by writing ``leaseExpiresAt`` (the clock the test owns), never by waiting for it.
SLOW = {
    "INPAINT_STEPS": str(MID_JOB_STEPS),
    "INPAINT_LEASE_SECONDS": "120",
    "INPAINT_MAX_ATTEMPTS": "3",
    "INPAINT_IO_DEADLINE_SECONDS": "1.5",
}
LONG_JOB = {"steps": MID_JOB_STEPS}


@pytest.fixture(scope="module")
def slow_pair(start_server):
    """Two more instances with a budget of 3 attempts (started in parallel)."""
    a = start_server(wait=False, **SLOW)
    b = start_server(wait=False, **SLOW)
    a.wait_ready()
    b.wait_ready()
    return a, b


def _post_quietly(server, headers, body):
    """A delivery whose connection may die with the server: the status, or None."""
    try:
        return server.post(headers, body).status_code
    except requests.ConnectionError:
        return None


def _redeliver(server, headers, body, tries: int = 20, until: int = 200) -> list[int]:
    """Pub/Sub's part after a fault: deliver again (about once a second) until acknowledged
    (or answered ``until``).

    After an outage gRPC reconnects with its own backoff (seconds), so the first redelivery can
    still fail at the claim, before anything is written; production redelivers the same way.
    """
    codes = []
    for _ in range(tries):
        codes.append(server.post(headers, body).status_code)
        if codes[-1] == until:
            break
        time.sleep(1.0)
    return codes


def _written_during(version: tuple, doc: dict) -> bool:
    """The object's generation (its write time in us) lies within the job's last attempt."""
    written = version[0] / 1e6
    return doc["startedAt"].timestamp() - 1 <= written <= doc["completedAt"].timestamp() + 1


def _outcomes(server, session_id: str) -> list[str]:
    return [
        r["message"]
        for r in log_records(server)
        if r.get("sessionId") == session_id and r.get("logger") == "inpaint.session.jobs"
    ]


# --------------------------------------------------------------------------- duplicates


def test_ten_concurrent_duplicates_and_late_redeliveries_do_one_job(shared_server, sessions):
    user, session = sessions.create()
    headers, body = eventlib.pubsub_binary(user, session, f"dup10-{uuid.uuid4().hex}")
    claims_before = inference_count(shared_server)
    with cf.ThreadPoolExecutor(10) as pool:
        codes = list(pool.map(lambda _: shared_server.post(headers, body).status_code, range(10)))
    # One ran the job (200); a copy that came while it ran was kept (503: it might have been
    # the only live copy), one that came after it was acknowledged as completed (200).
    assert 200 in codes and set(codes) <= {200, 503}, codes
    for _ in range(codes.count(503)):  # Pub/Sub's redeliveries of the kept copies
        assert shared_server.post(headers, body).status_code == 200
    doc = sessions.wait(user, session)
    assert doc["processingStatus"] == "completed" and doc["attempts"] == 1
    assert inference_count(shared_server) - claims_before == 1
    versions = blob_versions(sessions, user, session)
    assert set(versions) == ALL_FILES
    # Each output was written once, by the one job: metageneration 1, written inside its window.
    for name in ("edited.jpg", "preview.jpg"):
        assert versions[name][1] == 1 and _written_during(versions[name], doc), versions[name]

    # Late redeliveries: the same event again, a re-publish (new event id) and a Firestore
    # trigger for the same session. None may run or write anything.
    late = [(headers, body)] * 3 + [
        eventlib.pubsub_binary(user, session),
        eventlib.pubsub_push(user, session),
        eventlib.firestore_event(user, session),
    ]
    for h, b in late:
        assert shared_server.post(h, b).status_code == 200
    assert inference_count(shared_server) - claims_before == 1
    assert sessions.doc(user, session) == doc  # completedAt, updatedAt, ...: all unchanged
    assert blob_versions(sessions, user, session) == versions
    assert _outcomes(shared_server, session).count("job not started: already completed") >= 9


def test_concurrent_deliveries_of_one_session_in_every_event_shape_do_one_job(
    shared_server, sessions
):
    """Eventarc Pub/Sub (binary, structured), raw push and a Firestore trigger, with distinct
    event IDs, all at once for one session (a deployment with both triggers, plus retries)."""
    user, session = sessions.create()
    builds = [
        eventlib.pubsub_binary,
        eventlib.pubsub_structured,
        eventlib.pubsub_push,
        eventlib.firestore_event,
    ] * 3
    claims_before = inference_count(shared_server)
    events = [build(user, session) for build in builds]
    with cf.ThreadPoolExecutor(len(builds)) as pool:
        codes = list(pool.map(lambda event: shared_server.post(*event).status_code, events))
    assert 200 in codes and set(codes) <= {200, 503}, codes
    for event, code in zip(events, codes, strict=True):
        if code == 503:  # kept while the job ran; its redelivery finds it completed
            assert shared_server.post(*event).status_code == 200
    doc = sessions.wait(user, session)
    assert doc["processingStatus"] == "completed" and doc["attempts"] == 1
    assert inference_count(shared_server) - claims_before == 1
    assert set(blob_versions(sessions, user, session)) == ALL_FILES


# --------------------------------------------------------------------------- crash
# Pub/Sub itself delivers and redelivers in these tests: a push subscription on Google's
# emulator into a CloudRunFront (tools/front.py), which forwards to the current instance and
# records every answer the subscription got. No delivery is posted by hand. The subscription has
# no retry policy: the emulator then redelivers a refused push about once a second, while with a
# policy it stops pushing a message refused a few times for minutes (measured; production honours
# the policy). The ack deadline is production's 600 s.


@contextlib.contextmanager
def _pushed(stack):
    """(front, topic): a topic whose push subscription goes through a fresh front."""
    front = CloudRunFront()
    tag = uuid.uuid4().hex[:8]
    topic, subscription = f"faults-{tag}", f"faults-push-{tag}"
    stack.create_push_subscription(
        topic, subscription, front.url, ack_deadline_s=600, retry_policy=False
    )
    try:
        yield front, topic
    finally:
        stack.delete_subscription(subscription)
        front.close()


def _answered(front, message_id, by, status):
    return lambda answers: any(
        a.message_id == message_id and a.by == by and a.status == status for a in answers
    )


def _crash_middenoising(stack, front, topic, doomed, fresh, sessions):
    """Publishes a long job, kills its instance mid-denoising, routes the rest to ``fresh``."""
    user, session = sessions.create(doc=LONG_JOB)
    inputs = blob_versions(sessions, user, session)
    front.target = doomed.url + "/"
    message_id = stack.publish(topic, {"userId": user, "sessionId": session})
    running = wait_for(lambda: denoising(sessions, user, session), timeout=300)
    front.target = fresh.url + "/"  # the next instance Cloud Run routes to
    doomed.kill()  # SIGKILL master and worker mid-denoising: no cleanup of any kind
    assert doomed.proc.poll() is not None
    assert 0 < running["progress"] < 0.95 and running["attempts"] == 1
    return user, session, inputs, message_id, running


def _assert_acknowledged_once_by_the_job(front, message_id, doomed, fresh):
    """The crashed push failed, and Pub/Sub got exactly one 2xx: the last, for the finished
    job; everything in between was a 503 that kept the message."""
    front.wait_for(_answered(front, message_id, fresh.url + "/", 200), timeout=300)
    answers = front.answers_for(message_id)
    assert (answers[0].by, answers[0].status) == (doomed.url + "/", 503)
    assert [a.status for a in answers[1:]] == [503] * (len(answers) - 2) + [200]
    assert all(a.by == fresh.url + "/" for a in answers[1:])


def _assert_completed_by_the_second_attempt(sessions, user, session, inputs):
    doc = sessions.wait(user, session)
    assert doc["processingStatus"] == "completed" and doc["attempts"] == 2, doc
    assert doc["leaseOwner"] is None and doc["progress"] == 1.0 and doc["errorMessage"] is None
    versions = blob_versions(sessions, user, session)
    assert set(versions) == ALL_FILES
    assert {k: versions[k] for k in INPUTS} == inputs
    for name in ("edited.jpg", "preview.jpg"):  # written once, by the attempt that completed
        assert versions[name][1] == 1 and _written_during(versions[name], doc)


def test_a_crashed_instances_job_is_kept_by_pubsub_while_its_lease_lives_then_completed(
    slow_pair, sessions, stack
):
    """Issue 19: the redelivery of a dead instance's job, arriving while its lease (120 s) still
    lives, must not be acknowledged. The emulator's redeliveries are answered 503 until the
    test moves the lease's expiry to the past (time is written, not waited for); the next
    redelivery takes the job over and completes it."""
    doomed, fresh = slow_pair
    with _pushed(stack) as (front, topic):
        user, session, inputs, message_id, running = _crash_middenoising(
            stack, front, topic, doomed, fresh, sessions
        )
        front.wait_for(_answered(front, message_id, fresh.url + "/", 503), timeout=120)
        # Kept, not acknowledged, and nothing changed: no claim, no write, no output.
        orphan = sessions.doc(user, session)
        assert orphan["processingStatus"] == "processing" and orphan["attempts"] == 1
        assert orphan["leaseOwner"] == running["leaseOwner"]
        assert (orphan["leaseExpiresAt"] - utcnow()).total_seconds() > 60
        assert blob_versions(sessions, user, session) == inputs
        assert inference_count(fresh) == 0
        assert any(
            "this event's job runs under an unexpired lease" in m for m in _outcomes(fresh, session)
        )

        expired = utcnow() - dt.timedelta(seconds=1)
        sessions.db.document(f"users/{user}/sessions/{session}").update({"leaseExpiresAt": expired})
        _assert_completed_by_the_second_attempt(sessions, user, session, inputs)
        _assert_acknowledged_once_by_the_job(front, message_id, doomed, fresh)
    assert claims_by_session(fresh).get(session) == 1


# --------------------------------------------------------------------------- outages


def test_storage_outage_mid_job_answers_500_and_the_redelivery_completes(
    shared_server, sessions, stack
):
    user, session = sessions.create(doc=LONG_JOB)
    inputs = blob_versions(sessions, user, session)
    headers, body = eventlib.pubsub_binary(user, session, f"st-mid-{uuid.uuid4().hex}")
    with cf.ThreadPoolExecutor(1) as pool:
        delivery = pool.submit(shared_server.post, headers, body)
        wait_for(lambda: denoising(sessions, user, session), timeout=300)
        with stack.outage("storage"):  # from mid-denoising until the delivery has answered
            response = delivery.result(timeout=300)
    assert response.status_code == 500
    doc = sessions.doc(user, session)
    assert doc["processingStatus"] == "processing" and doc["attempts"] == 1
    assert doc["errorMessage"] is None and doc["lastError"]  # transient: not shown as failed
    assert doc["leaseExpiresAt"] <= utcnow()  # released for the redelivery
    assert blob_versions(sessions, user, session) == inputs  # the upload never happened

    codes = _redeliver(shared_server, headers, body)
    assert codes[-1] == 200 and set(codes[:-1]) <= {500}, codes
    doc = sessions.doc(user, session)
    assert doc["processingStatus"] == "completed" and doc["attempts"] == 2
    assert doc["lastError"] is None and doc["errorMessage"] is None
    assert set(blob_versions(sessions, user, session)) == ALL_FILES


def test_firestore_outage_mid_job_then_the_same_instance_retakes_its_own_lease(
    shared_server, slow_pair, sessions, stack
):
    """Firestore goes away mid-denoising: the heartbeat, the completion and the lease release
    all fail, so the lease stays recorded as alive for minutes. Another instance must keep off
    it, but the instance that owns it knows the job is no longer running and retakes it."""
    _, other = slow_pair
    user, session = sessions.create(doc=LONG_JOB)
    headers, body = eventlib.pubsub_binary(user, session, f"fs-mid-{uuid.uuid4().hex}")
    with cf.ThreadPoolExecutor(1) as pool:
        delivery = pool.submit(shared_server.post, headers, body)
        running = wait_for(lambda: denoising(sessions, user, session), timeout=300)
        with stack.outage("firestore"):
            response = delivery.result(timeout=90)
    assert response.status_code == 500
    stuck = sessions.doc(user, session)
    assert stuck["processingStatus"] == "processing" and stuck["attempts"] == 1
    assert stuck["leaseOwner"] == running["leaseOwner"]
    assert (stuck["leaseExpiresAt"] - utcnow()).total_seconds() > 60  # the release was blocked
    assert stuck.get("errorMessage") is None
    logs = _outcomes(shared_server, session)
    assert "could not release the lease; it will expire on its own" in logs

    # Another instance sees a live lease: no work, and not acknowledged (503: the holder might
    # be dead). Its first delivery may still fail at the read while its gRPC channel reconnects
    # after the outage: a 500, which Pub/Sub redelivers too.
    claims_other = inference_count(other)
    codes = _redeliver(other, headers, body, until=503)
    assert codes[-1] == 503 and set(codes[:-1]) <= {500}, codes
    assert inference_count(other) == claims_other
    assert sessions.doc(user, session) == stuck

    # The owner retakes its stale lease at once instead of waiting minutes for it to expire.
    codes = _redeliver(shared_server, headers, body)
    assert codes[-1] == 200 and set(codes[:-1]) <= {500}, codes
    doc = sessions.doc(user, session)
    assert doc["processingStatus"] == "completed" and doc["attempts"] == 2
    assert doc["leaseOwner"] is None and doc["errorMessage"] is None
    assert set(blob_versions(sessions, user, session)) == ALL_FILES


def test_firestore_outage_before_the_claim_leaves_the_session_untouched(
    shared_server, sessions, stack
):
    user, session = sessions.create()
    before = sessions.doc(user, session)
    headers, body = eventlib.pubsub_binary(user, session, f"fs-pre-{uuid.uuid4().hex}")
    with stack.outage("firestore"):
        assert shared_server.post(headers, body).status_code == 500
    assert sessions.doc(user, session) == before  # still queued: no claim, no attempt counted
    codes = _redeliver(shared_server, headers, body)
    assert codes[-1] == 200 and set(codes[:-1]) <= {500}, codes
    doc = sessions.doc(user, session)
    assert doc["processingStatus"] == "completed" and doc["attempts"] == 1
    assert set(blob_versions(sessions, user, session)) == ALL_FILES


# --------------------------------------------------------------------------- retry budget


def test_a_fault_that_never_heals_fails_the_job_after_the_attempt_budget(
    slow_pair, sessions, stack
):
    _, server = slow_pair  # INPAINT_MAX_ATTEMPTS=3
    user, session = sessions.create(doc={"steps": 2})
    headers, body = eventlib.pubsub_binary(user, session, f"budget-{uuid.uuid4().hex}")
    with stack.outage("storage"):
        seen = []
        for _ in range(3):
            code = server.post(headers, body).status_code
            seen.append((code, sessions.doc(user, session)))
        assert [code for code, _ in seen] == [500, 500, 200]
        for attempt, (_, doc) in enumerate(seen[:2], start=1):
            assert doc["processingStatus"] == "processing" and doc["attempts"] == attempt
            assert doc["errorMessage"] is None and doc["lastError"]
        failed = seen[2][1]
        assert failed["processingStatus"] == "failed" and failed["attempts"] == 3
        assert failed["errorCode"] == "attempts_exhausted"
        message = failed["errorMessage"]
        assert "Processing failed after 3 attempts because of a temporary problem" in message
        assert "Please try again later" in message
        # Further deliveries of that event are acknowledged: no retry storm, nothing changes.
        for _ in range(2):
            assert server.post(headers, body).status_code == 200
        assert sessions.doc(user, session) == failed
    assert sessions.files(user, session) == INPUTS

    # Once the fault is gone, the user's retry (a new event) starts a fresh budget and succeeds.
    assert server.post(*eventlib.pubsub_binary(user, session)).status_code == 200
    doc = sessions.doc(user, session)
    assert doc["processingStatus"] == "completed" and doc["attempts"] == 1
    assert doc["errorMessage"] is None and doc["errorCode"] is None


# --------------------------------------------------------------------------- two instances


def test_two_instances_share_a_burst_and_each_job_runs_exactly_once(
    shared_server, slow_pair, sessions
):
    _, second = slow_pair
    instances = (shared_server, second)
    jobs = [sessions.create(doc={"steps": 2}) for _ in range(12)]
    deliveries = [
        (instance, eventlib.pubsub_binary(user, session, f"pair-{session}"))
        for user, session in jobs
        for instance in instances  # every event reaches both instances
    ]
    with cf.ThreadPoolExecutor(len(deliveries)) as pool:
        codes = list(pool.map(lambda d: d[0].post(*d[1]).status_code, deliveries))
    assert set(codes) <= {200, 503}, codes
    for (instance, event), code in zip(deliveries, codes, strict=True):
        if code == 503:  # the copy that came while the other instance ran it: kept
            assert instance.post(*event).status_code == 200
    claims = [claims_by_session(instance) for instance in instances]
    for user, session in jobs:
        doc = sessions.doc(user, session)
        assert doc["processingStatus"] == "completed" and doc["attempts"] == 1, doc
        assert sum(c.get(session, 0) for c in claims) == 1
        assert set(blob_versions(sessions, user, session)) == ALL_FILES
    assert sum(c.get(s, 0) for c in claims for _, s in jobs) == len(jobs)


# --------------------------------------------------------------------------- Pub/Sub push


def test_pubsub_messages_published_while_the_function_is_down_complete_after_restart(
    server_factory, sessions, stack
):
    """Deterministic: the outage lasts until every queued message has been pushed and refused
    (observed, not slept); the subscription has the emulator's default redelivery (about every
    second: with a retry policy the emulator stops pushing refused messages for minutes), the
    ack deadline is production's 600 s (a slow answer on a busy machine is not a failed push),
    and the end is waited for as an event, with a generous bound."""
    with _pushed(stack) as (front, topic):
        before = server_factory()
        before.start().wait_ready()
        front.target = before.url + "/"
        warm = [sessions.create() for _ in range(2)]
        for user, session in warm:
            stack.publish(topic, {"userId": user, "sessionId": session})
        for user, session in warm:
            assert sessions.wait(user, session)["processingStatus"] == "completed"
        front.target = None  # no instance: the front end answers 503
        before.stop()  # SIGTERM: the function is gone

        queued = [sessions.create() for _ in range(6)]
        ids = {stack.publish(topic, {"userId": u, "sessionId": s}) for u, s in queued}
        front.wait_for(
            lambda answers: ids <= {a.message_id for a in answers if a.by is None}, timeout=300
        )
        assert all(sessions.doc(u, s)["processingStatus"] == "queued" for u, s in queued)

        after = server_factory()  # a new process; the front end routes to it
        after.start().wait_ready()
        front.target = after.url + "/"
        for user, session in queued:
            doc = sessions.wait(user, session)
            assert doc["processingStatus"] == "completed" and doc["attempts"] == 1, doc
            assert set(blob_versions(sessions, user, session)) == ALL_FILES
        claims = claims_by_session(after)
        assert [claims.get(s, 0) for _, s in queued] == [1] * len(queued)
