"""The job lifecycle against the real stack: re-edits (a fresh attempt budget per request), lost
replies of conditional writes, the heartbeat owning the lease, cancel by the app, and SIGTERM.

Real server processes (the production serving command, tiny model) against Google's Firestore
emulator and fake-gcs-server; faults are injected by the stack's TCP proxy, "mid-job" means
after the first progress write, and outcomes are read back from Firestore and Storage.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import threading
import uuid

import torch

from inpaint.session.store import utcnow
from tests.e2e.conftest import blob_versions, inference_count
from tests.helpers import denoising, wait_for
from tools import eventlib
from tools.server import claims_by_session, log_records

INPUTS = {"original.jpg", "mask_auto.png"}
ALL_FILES = INPUTS | {"edited.jpg", "preview.jpg"}
# Jobs the test stops mid-denoising ask for 200 steps (the test servers allow them): even where
# the tiny model's steps take milliseconds (a GPU), the job is still denoising when the test
# reacts to its first progress write; stopped, it costs a few steps.
STOPPABLE = {"steps": 200}
# A job that runs to its end with several heartbeats (every 0.2 s): 50 tiny steps take ~2.5 s on
# two CPU cores; where CUDA runs them in milliseconds, 200.
LONG_JOB = {"steps": 200 if torch.cuda.is_available() else 50}


def _messages(server, session_id: str) -> list[str]:
    return [r["message"] for r in log_records(server) if r.get("sessionId") == session_id]


def _one_more_job(server, sessions) -> None:
    """A whole job on ``server``: when its delivery has answered, every earlier job's threads
    on that server have long finished (a barrier instead of a sleep), and the model is free."""
    user, session = sessions.create()
    assert server.post(*eventlib.pubsub_binary(user, session)).status_code == 200
    assert sessions.doc(user, session)["processingStatus"] == "completed"


class DocumentHistory:
    """Every version of one document, from a real Firestore listener (on_snapshot)."""

    def __init__(self, db, path: str) -> None:
        self.versions: list[dict] = []
        self._lock = threading.Lock()
        self._watch = db.document(path).on_snapshot(self._on)

    def _on(self, snapshots, _changes, _read_time) -> None:
        with self._lock:
            self.versions.extend(s.to_dict() for s in snapshots if s.exists)

    def snapshot(self) -> list[dict]:
        with self._lock:
            return list(self.versions)

    def close(self) -> None:
        self._watch.unsubscribe()


# ------------------------------------------------------------------------- per-request budget


def test_one_session_re_edited_ten_times_completes_every_edit_once(shared_server, sessions):
    """The app re-queues a completed session with a new prompt and a new message, ten times
    (twice the attempt budget): each edit completes with its own prompt, with 1 attempt."""
    user, session = sessions.create()
    ref = sessions.db.document(f"users/{user}/sessions/{session}")
    for edit in range(10):
        prompt = f"edit {edit}: a cat in a party hat"
        ref.update({"processingStatus": "queued", "prompt": prompt})
        assert shared_server.post(*eventlib.pubsub_binary(user, session)).status_code == 200
        doc = sessions.doc(user, session)
        assert doc["processingStatus"] == "completed", doc
        assert doc["promptUsed"] == prompt and doc["attempts"] == 1
        assert doc["errorMessage"] is None
    assert claims_by_session(shared_server)[session] == 10  # each edit ran exactly once


# ----------------------------------------------------------------------------- lost replies


def test_lost_replies_of_the_claim_and_the_completion_are_harmless(shared_server, sessions, stack):
    """The proxy forwards the claim's conditional write and the completion's, lets Firestore
    apply them, and drops each reply (connection reset). The function must recognise its own
    writes: the job completes, runs once, and is never marked stuck or lost."""
    user, session = sessions.create()
    claims_before = inference_count(shared_server)
    proxy = stack.drop_reply_once("firestore", b"processing")  # the claim's write
    stack.drop_reply_once("firestore", b"completed")  # the completion's write
    dropped_before = proxy.replies_dropped
    try:
        code = shared_server.post(*eventlib.pubsub_binary(user, session)).status_code
        assert proxy.drops_pending == 0
    finally:
        proxy.disarm()  # never leave the proxy armed for other tests
    assert code == 200
    assert proxy.replies_dropped - dropped_before == 2
    doc = sessions.doc(user, session)
    assert doc["processingStatus"] == "completed" and doc["attempts"] == 1
    assert doc["leaseOwner"] is None and doc["errorMessage"] is None
    assert inference_count(shared_server) - claims_before == 1
    assert set(blob_versions(sessions, user, session)) == ALL_FILES
    messages = _messages(shared_server, session)
    assert "the claim's reply was lost; the lease it wrote is ours" in messages
    assert "job completed" in messages
    assert "job finished after its lease was lost" not in messages


# ------------------------------------------------------------------------------ heartbeat


def test_a_completed_document_never_changes_afterwards(shared_server, sessions, fb):
    """A long job (many heartbeats every 0.2 s): the completion is the last write, forever."""
    user, session = sessions.create(doc=LONG_JOB)
    history = DocumentHistory(fb[0], f"users/{user}/sessions/{session}")
    try:
        assert shared_server.post(*eventlib.pubsub_binary(user, session)).status_code == 200
        completed = sessions.doc(user, session)
        assert completed["processingStatus"] == "completed"
        _one_more_job(shared_server, sessions)
        wait_for(lambda: completed in history.snapshot(), timeout=300)
        versions = history.snapshot()
    finally:
        history.close()
    assert sessions.doc(user, session) == completed
    assert versions[-1] == completed  # no heartbeat (progress, lease) landed after it
    assert any(0 < v.get("progress", 0) < 0.95 for v in versions)  # heartbeats did happen


def test_a_job_whose_lease_was_taken_over_stops_before_writing_outputs(shared_server, sessions):
    """Another instance took the lease (ours looked dead to it): our heartbeat finds the lease
    gone, the job stops at its next step, writes nothing and acknowledges."""
    user, session = sessions.create(doc=STOPPABLE)
    ref = sessions.db.document(f"users/{user}/sessions/{session}")
    with cf.ThreadPoolExecutor(1) as pool:
        delivery = pool.submit(shared_server.post, *eventlib.pubsub_binary(user, session))
        wait_for(lambda: denoising(sessions, user, session), timeout=300)
        ref.update({"leaseOwner": "another-instance:token"})  # what a takeover writes
        assert delivery.result(timeout=300).status_code == 200
    assert sessions.files(user, session) == INPUTS
    doc = sessions.doc(user, session)
    assert doc["processingStatus"] == "processing"
    assert doc["leaseOwner"] == "another-instance:token"
    assert any(m.startswith("job stopped: ") for m in _messages(shared_server, session))


# --------------------------------------------------------------------------------- cancel


def test_the_app_cancels_a_running_job(shared_server, sessions):
    user, session = sessions.create(doc=STOPPABLE)
    ref = sessions.db.document(f"users/{user}/sessions/{session}")
    claims_before = inference_count(shared_server)
    with cf.ThreadPoolExecutor(1) as pool:
        delivery = pool.submit(shared_server.post, *eventlib.pubsub_binary(user, session))
        wait_for(lambda: denoising(sessions, user, session), timeout=300)
        ref.update({"processingStatus": "cancelled"})  # what the app writes
        assert delivery.result(timeout=300).status_code == 200  # acknowledged, not retried
    stopped = sessions.doc(user, session)
    assert stopped["processingStatus"] == "cancelled"
    assert sessions.files(user, session) == INPUTS  # no outputs
    assert "job stopped: the app cancelled the job" in _messages(shared_server, session)

    _one_more_job(shared_server, sessions)  # the model is free for the next job
    assert sessions.doc(user, session) == stopped  # progress frozen: nothing written since

    # A later re-queue runs normally.
    ref.update({"processingStatus": "queued", "steps": 2})
    assert shared_server.post(*eventlib.pubsub_binary(user, session)).status_code == 200
    doc = sessions.doc(user, session)
    assert doc["processingStatus"] == "completed" and doc["attempts"] == 1
    assert set(blob_versions(sessions, user, session)) == ALL_FILES
    assert inference_count(shared_server) - claims_before == 3  # cancelled, barrier, re-queue


def test_a_cancelled_queued_session_is_not_started(shared_server, sessions):
    user, session = sessions.create(doc={"processingStatus": "cancelled"})
    before = sessions.doc(user, session)
    claims_before = inference_count(shared_server)
    assert shared_server.post(*eventlib.pubsub_binary(user, session)).status_code == 200
    assert inference_count(shared_server) == claims_before
    assert sessions.doc(user, session) == before
    assert sessions.files(user, session) == INPUTS


def test_cancelling_a_completed_session_changes_nothing(shared_server, sessions):
    user, session = sessions.create()
    headers, body = eventlib.pubsub_binary(user, session)
    assert shared_server.post(headers, body).status_code == 200
    outputs = blob_versions(sessions, user, session)
    assert set(outputs) == ALL_FILES
    sessions.db.document(f"users/{user}/sessions/{session}").update(
        {"processingStatus": "cancelled"}
    )
    cancelled = sessions.doc(user, session)
    claims_before = inference_count(shared_server)
    assert shared_server.post(headers, body).status_code == 200  # a late redelivery
    assert inference_count(shared_server) == claims_before
    assert sessions.doc(user, session) == cancelled
    assert blob_versions(sessions, user, session) == outputs  # the outputs stay


# ------------------------------------------------------------------------------- shutdown


def test_sigterm_releases_the_lease_of_a_running_job_for_its_redelivery(
    start_server, shared_server, sessions
):
    """Cloud Run sends SIGTERM before it stops an instance. The running job gives its lease
    back (the lease is 10 minutes long here, so a lease left behind would block the
    redelivery), the delivery answers 500, and the redelivery to another instance completes
    it at once."""
    doomed = start_server(INPAINT_LEASE_SECONDS="600")
    user, session = sessions.create(doc=STOPPABLE)
    headers, body = eventlib.pubsub_binary(user, session, f"term-{uuid.uuid4().hex}")
    with cf.ThreadPoolExecutor(1) as pool:
        delivery = pool.submit(doomed.post, headers, body)
        running = wait_for(lambda: denoising(sessions, user, session), timeout=300)
        os.killpg(doomed.proc.pid, signal.SIGTERM)
        assert delivery.result(timeout=300).status_code == 500  # redeliver it elsewhere
    assert doomed.proc.wait(30) == 0
    released = sessions.doc(user, session)
    # The stop was not the job's fault: the attempt is given back (issue 27, defect 5).
    assert released["processingStatus"] == "processing" and released["attempts"] == 0
    assert released["leaseOwner"] == running["leaseOwner"]
    assert released["leaseExpiresAt"] <= utcnow()
    assert "shutting down" in released["lastError"]
    assert sessions.files(user, session) == INPUTS
    assert "SIGTERM: taking no new jobs; a running job releases its lease" in [
        r["message"] for r in log_records(doomed)
    ]

    sessions.db.document(f"users/{user}/sessions/{session}").update({"steps": 2})
    assert shared_server.post(headers, body).status_code == 200
    doc = sessions.doc(user, session)
    assert doc["processingStatus"] == "completed" and doc["attempts"] == 1
    assert set(blob_versions(sessions, user, session)) == ALL_FILES
