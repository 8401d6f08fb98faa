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
import json
import threading
import time
import uuid

import pytest
import requests
import torch

from tests.e2e.conftest import (
    blob_versions,
    inference_count,
    wait_for,
)
from tools import eventlib
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


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _post_quietly(server, headers, body):
    """A delivery whose connection may die with the server: the status, or None."""
    try:
        return server.post(headers, body).status_code
    except requests.ConnectionError:
        return None


def _redeliver(server, headers, body, tries: int = 20) -> list[int]:
    """Pub/Sub's part after a fault: deliver again (about once a second) until acknowledged.

    After an outage gRPC reconnects with its own backoff (seconds), so the first redelivery can
    still fail at the claim, before anything is written; production redelivers the same way.
    """
    codes = []
    for _ in range(tries):
        codes.append(server.post(headers, body).status_code)
        if codes[-1] == 200:
            break
        time.sleep(1.0)
    return codes


def _denoising(sessions, user, session):
    doc = sessions.doc(user, session)
    if doc and doc.get("processingStatus") == "processing" and doc.get("progress", 0) > 0:
        return doc
    return None


def _written_during(version: tuple, doc: dict) -> bool:
    """The object's generation (its write time in us) lies within the job's last attempt."""
    written = version[0] / 1e6
    return doc["startedAt"].timestamp() - 1 <= written <= doc["completedAt"].timestamp() + 1


def _outcomes(server, session_id: str) -> list[str]:
    return [
        r["message"]
        for r in log_records(server)
        if r.get("sessionId") == session_id and r.get("logger") == "inpaint.jobs"
    ]


# --------------------------------------------------------------------------- duplicates


def test_ten_concurrent_duplicates_and_late_redeliveries_do_one_job(shared_server, sessions):
    user, session = sessions.create()
    headers, body = eventlib.pubsub_binary(user, session, f"dup10-{uuid.uuid4().hex}")
    claims_before = inference_count(shared_server)
    with cf.ThreadPoolExecutor(10) as pool:
        codes = list(pool.map(lambda _: shared_server.post(headers, body).status_code, range(10)))
    assert codes == [200] * 10
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
    assert _outcomes(shared_server, session).count("job not started: already completed") >= 6


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
    with cf.ThreadPoolExecutor(len(builds)) as pool:
        codes = list(
            pool.map(lambda build: shared_server.post(*build(user, session)).status_code, builds)
        )
    assert codes == [200] * len(builds)
    doc = sessions.wait(user, session)
    assert doc["processingStatus"] == "completed" and doc["attempts"] == 1
    assert inference_count(shared_server) - claims_before == 1
    assert set(blob_versions(sessions, user, session)) == ALL_FILES


# --------------------------------------------------------------------------- crash


def test_killed_worker_job_is_finished_by_a_new_process_after_the_lease(slow_pair, sessions):
    doomed, fresh = slow_pair
    user, session = sessions.create()
    inputs = blob_versions(sessions, user, session)
    headers, body = eventlib.pubsub_binary(user, session, f"crash-{uuid.uuid4().hex}")
    with cf.ThreadPoolExecutor(1) as pool:
        first = pool.submit(_post_quietly, doomed, headers, body)
        running = wait_for(lambda: _denoising(sessions, user, session), timeout=300)
        doomed.kill()  # SIGKILL master and worker mid-denoising: no cleanup of any kind
        assert first.result(timeout=10) is None  # the delivery died with the process
    assert doomed.proc.poll() is not None
    assert 0 < running["progress"] < 0.95 and running["attempts"] == 1

    # Nothing half-written: the inputs as they were, no outputs, the lease still the dead one's.
    assert blob_versions(sessions, user, session) == inputs
    orphan = sessions.doc(user, session)
    assert orphan["processingStatus"] == "processing" and orphan["attempts"] == 1
    assert orphan["leaseOwner"] == running["leaseOwner"]
    assert (orphan["leaseExpiresAt"] - _now()).total_seconds() > 60  # long after the next step

    # A redelivery before the lease expires is acknowledged without work (Pub/Sub retries later).
    claims_before = inference_count(fresh)
    assert fresh.post(headers, body).status_code == 200
    assert inference_count(fresh) == claims_before
    assert sessions.doc(user, session) == orphan
    assert "job not started: processing elsewhere under an unexpired lease" in _outcomes(
        fresh, session
    )

    # After the lease expires the redelivery takes over and completes the job. Time passing is
    # written, not waited for: the lease's expiry moves to the past.
    expired = _now() - dt.timedelta(seconds=1)
    sessions.db.document(f"users/{user}/sessions/{session}").update({"leaseExpiresAt": expired})
    assert fresh.post(headers, body).status_code == 200
    assert inference_count(fresh) - claims_before == 1
    doc = sessions.doc(user, session)
    assert doc["processingStatus"] == "completed" and doc["attempts"] == 2
    assert doc["leaseOwner"] is None and doc["progress"] == 1.0 and doc["errorMessage"] is None
    versions = blob_versions(sessions, user, session)
    assert set(versions) == ALL_FILES
    assert {k: versions[k] for k in INPUTS} == inputs
    for name in ("edited.jpg", "preview.jpg"):  # written once, by the attempt that completed
        assert versions[name][1] == 1 and _written_during(versions[name], doc)


# --------------------------------------------------------------------------- outages


def test_storage_outage_mid_job_answers_500_and_the_redelivery_completes(
    shared_server, sessions, stack
):
    user, session = sessions.create(doc=LONG_JOB)
    inputs = blob_versions(sessions, user, session)
    headers, body = eventlib.pubsub_binary(user, session, f"st-mid-{uuid.uuid4().hex}")
    with cf.ThreadPoolExecutor(1) as pool:
        delivery = pool.submit(shared_server.post, headers, body)
        wait_for(lambda: _denoising(sessions, user, session), timeout=300)
        with stack.outage("storage"):  # from mid-denoising until the delivery has answered
            response = delivery.result(timeout=300)
    assert response.status_code == 500
    doc = sessions.doc(user, session)
    assert doc["processingStatus"] == "processing" and doc["attempts"] == 1
    assert doc["errorMessage"] is None and doc["lastError"]  # transient: not shown as failed
    assert doc["leaseExpiresAt"] <= _now()  # released for the redelivery
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
        running = wait_for(lambda: _denoising(sessions, user, session), timeout=300)
        with stack.outage("firestore"):
            response = delivery.result(timeout=90)
    assert response.status_code == 500
    stuck = sessions.doc(user, session)
    assert stuck["processingStatus"] == "processing" and stuck["attempts"] == 1
    assert stuck["leaseOwner"] == running["leaseOwner"]
    assert (stuck["leaseExpiresAt"] - _now()).total_seconds() > 60  # the release was blocked
    assert stuck.get("errorMessage") is None
    logs = _outcomes(shared_server, session)
    assert "could not release the lease; it will expire on its own" in logs

    # Another instance sees a live lease: acknowledged without work. (Its first delivery may
    # still fail at the read while its gRPC channel reconnects after the outage: a 500, which
    # Pub/Sub redelivers.)
    claims_other = inference_count(other)
    codes = _redeliver(other, headers, body)
    assert codes[-1] == 200 and set(codes[:-1]) <= {500}, codes
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
    assert codes == [200] * len(deliveries)
    claims = [claims_by_session(instance) for instance in instances]
    for user, session in jobs:
        doc = sessions.doc(user, session)
        assert doc["processingStatus"] == "completed" and doc["attempts"] == 1, doc
        assert sum(c.get(session, 0) for c in claims) == 1
        assert set(blob_versions(sessions, user, session)) == ALL_FILES
    assert sum(c.get(s, 0) for c in claims for _, s in jobs) == len(jobs)


# --------------------------------------------------------------------------- Pub/Sub push


class _FrontEnd:
    """The push endpoint, standing where Cloud Run's front end stands: while no instance is up
    it answers 503 (recording which messages the emulator pushed), else it forwards the push to
    the current instance. The endpoint's port never closes, so no push can hang in the backlog
    of a listener that is going away."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        front = self
        self.target: str | None = None
        self.refused: set[str] = set()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                code, answer = front.forward(dict(self.headers), body)
                self.send_response(code)
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def forward(self, headers: dict, body: bytes) -> tuple[int, bytes]:
        target = self.target
        if target is None:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                self.refused.add(json.loads(body)["message"]["messageId"])
            return 503, b""
        try:
            response = requests.post(target, headers=headers, data=body, timeout=600)
        except requests.RequestException:
            return 503, b""
        return response.status_code, response.content

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_pubsub_messages_published_while_the_function_is_down_complete_after_restart(
    server_factory, sessions, stack
):
    """Deterministic: the outage lasts until every queued message has been pushed and refused
    (observed, not slept); the subscription has the emulator's default redelivery (about every
    second: with a retry policy the emulator stops pushing refused messages for minutes), the
    ack deadline is production's 600 s (a slow answer on a busy machine is not a failed push),
    and the end is waited for as an event, with a generous bound."""
    front = _FrontEnd()
    topic, subscription = f"faults-{uuid.uuid4().hex[:8]}", f"faults-push-{uuid.uuid4().hex[:8]}"
    stack.create_push_subscription(
        topic, subscription, front.url, ack_deadline_s=600, retry_policy=False
    )
    try:
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
        wait_for(lambda: ids <= front.refused, timeout=300, interval=0.2)
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
    finally:
        stack.delete_subscription(subscription)
        front.close()
