"""``main.py``'s event target in this process, through functions-framework's own test client.

The production app (``inpaint.serving.app.create_app`` loading ``main.py``) over the real session
store on the in-memory Firebase backends and the tiny model (``tests/inprocess.py``). Every branch
of a delivery's answer: the hostile events and sessions of ``tests/hostile_cases.py``, the input
limits, and each way a claimed job ends (a permanent error, a transient one, the last attempt, a
lease lost while writing, a missing or busy session, a duplicate, a stale or expired request,
shutdown). ``tests/e2e`` proves the same wiring against the real servers once per failure class.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import uuid

import pytest
from PIL import Image

from tests.hostile_cases import (
    EVENT_CASES,
    SESSION_CASES,
    assert_session_outcome,
)
from tests.inprocess import InProcess, age, inprocess_app
from tests.samples import ellipse_mask, photo_jpeg
from tools import eventlib

OUTPUTS = {"edited.jpg", "preview.jpg"}


@pytest.fixture(scope="module")
def app(tiny_model_dir):
    with inprocess_app(tiny_model_dir) as running:
        yield running


def _reasons(caplog: pytest.LogCaptureFixture, event_id: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if getattr(r, "eventId", None) == event_id]


def _records(caplog: pytest.LogCaptureFixture, session: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "sessionId", None) == session]


# --------------------------------------------------------------------------- hostile input


@pytest.fixture(scope="module")
def bystander(app):
    """A queued session with inputs: valid-looking hostile events name it; it must not move."""
    return app.create()


def _post_chunked(app: InProcess, headers: dict, body: bytes):
    """A body without Content-Length (Transfer-Encoding: chunked), as a WSGI server hands it."""
    return app.client.post(
        "/",
        headers=headers | {"Transfer-Encoding": "chunked"},
        input_stream=io.BytesIO(body),
        environ_overrides={"wsgi.input_terminated": True},
    )


@pytest.mark.parametrize("name", list(EVENT_CASES))
def test_hostile_events_are_acknowledged_and_change_nothing(name, app, bystander, caplog):
    case = EVENT_CASES[name]
    event_id = f"hostile-{name}-{uuid.uuid4().hex[:8]}"
    headers, body = case.build(*bystander)
    headers = headers | {"ce-id": event_id} if "ce-id" in headers else headers
    before = app.everything()
    with caplog.at_level(logging.INFO):
        if name.startswith("chunked"):
            response = _post_chunked(app, headers, body)
        else:
            response = app.post(headers, body)

    assert response.status_code == 200, response.text  # acknowledged: no redelivery storm
    if case.wsgi:
        assert case.expect in response.text
    else:
        reasons = _reasons(caplog, event_id)
        assert len(reasons) == 1 and reasons[0].startswith(("event rejected:", "event ignored:"))
        assert case.expect in reasons[0], reasons
        assert len(reasons[0]) < 300  # hostile input is not echoed back at length
    assert app.everything() == before
    assert app.doc(*bystander)["processingStatus"] == "queued"
    assert app.client.get("/health").status_code == 200


@pytest.mark.parametrize("name", list(SESSION_CASES))
def test_broken_sessions_end_in_the_expected_state(name, app):
    case = SESSION_CASES[name]
    user, session = case.create(app)
    inputs = app.versions(user, session)
    response = app.post(*eventlib.pubsub_binary(user, session))

    assert response.status_code == 200, response.text  # acknowledged either way
    assert_session_outcome(
        case,
        app.doc(user, session),
        inputs,
        app.versions(user, session),
        lambda name: app.image(user, session, name),
    )
    assert app.client.get("/health").status_code == 200


# --------------------------------------------------------------------------- limits


LIMITS = {
    "INPAINT_MAX_INPUT_BYTES": "65536",
    "INPAINT_MAX_INPUT_PIXELS": "200000",
    "INPAINT_MAX_PROMPT_CHARS": "120",  # the default prompt (98) must fit: see test_config
    "INPAINT_MAX_EVENT_BYTES": "4096",
}
SMALL = (360, 240)  # 86 400 pixels, ~20 KB as JPEG: within every limit above


def _jpeg(size, quality=90) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(photo_jpeg(size))).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _noise_png(size) -> bytes:
    """A mask PNG that does not compress: ~100 KB for 360x240."""
    import numpy as np

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


LIMIT_CASES = {
    "photo-bytes": (
        {"photo": photo_jpeg((1200, 800)), "mask": ellipse_mask((1200, 800))},
        ("The photo is 0.", "MB, above the limit of 0.1 MB."),
    ),
    "mask-bytes": (
        {"photo": _jpeg(SMALL), "mask": _noise_png(SMALL)},
        ("The mask is 0.", "MB, above the limit of 0.1 MB."),
    ),
    "photo-pixels": (
        {"photo": _jpeg((600, 400), quality=30), "mask": ellipse_mask((600, 400))},
        ("The photo is 600x400 = 0.24 MP, above the limit of 0.2 MP.",),
    ),
    "prompt-chars": (
        {"photo": _jpeg(SMALL), "mask": ellipse_mask(SMALL), "doc": {"prompt": "c" * 121}},
        ("The prompt is 121 characters long; the limit is 120.",),
    ),
}


@pytest.fixture
def limited(app, tiny_model_dir):
    """The app with small limits, for one test (on top of ``app``, restored after)."""
    with inprocess_app(tiny_model_dir, **LIMITS) as running:
        yield running


def test_a_job_within_the_limits_completes(limited):
    user, session = limited.create(photo=_jpeg(SMALL), mask=ellipse_mask(SMALL))
    assert len(_jpeg(SMALL)) < 65536
    assert limited.post(*eventlib.pubsub_binary(user, session)).status_code == 200
    doc = limited.doc(user, session)
    assert doc["processingStatus"] == "completed" and doc["timings"]["inference"] > 0


@pytest.mark.parametrize("name", list(LIMIT_CASES))
def test_input_limits_refuse_before_the_model_runs(name, limited, caplog):
    setup, expected = LIMIT_CASES[name]
    user, session = limited.create(**setup)
    inputs = limited.versions(user, session)
    with caplog.at_level(logging.INFO):
        assert limited.post(*eventlib.pubsub_binary(user, session)).status_code == 200
    doc = limited.doc(user, session)
    assert doc["processingStatus"] == "failed", doc
    assert all(part in doc["errorMessage"] for part in expected), doc["errorMessage"]
    assert doc["progress"] == 0.0 and "timings" not in doc and "busySeconds" not in doc
    assert limited.versions(user, session) == inputs  # no outputs, inputs untouched
    messages = [r.getMessage() for r in _records(caplog, session)]
    assert messages == ["job claimed", f"job failed: {doc['errorMessage']}"]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_event_body_limit_acknowledges_without_processing(chunked, limited):
    user, session = limited.create(photo=_jpeg(SMALL), mask=ellipse_mask(SMALL))
    headers, body = eventlib.pubsub_binary(user, session, extra={"pad": "x" * 5000})
    assert len(body) > 4096
    json.loads(body)  # a valid event, only too long
    before = limited.everything()
    response = _post_chunked(limited, headers, body) if chunked else limited.post(headers, body)
    assert response.status_code == 200
    assert "not processed: Request Entity Too Large" in response.text
    assert limited.everything() == before
    # The same event within the limit is processed by the same app.
    small_headers, small_body = eventlib.pubsub_binary(user, session, f"small-{uuid.uuid4()}")
    assert len(small_body) <= 4096
    assert limited.post(small_headers, small_body).status_code == 200
    assert limited.doc(user, session)["processingStatus"] == "completed"


# --------------------------------------------------------------------------- how a job ends


def test_a_transient_error_answers_500_and_the_redelivery_completes(app):
    """8c: the lease is released (the next delivery need not wait it out), the attempt is
    counted, nothing is left in Storage, and the redelivery completes the job."""
    user, session = app.create()
    event = eventlib.pubsub_binary(user, session, f"transient-{uuid.uuid4().hex}")
    app.faults.fail_next("write", "before")  # the first output upload is lost
    response = app.post(*event)
    assert response.status_code == 500
    doc = app.doc(user, session)
    assert doc["processingStatus"] == "processing" and doc["attempts"] == 1
    assert "injected: the upload was lost" in doc["lastError"] and doc["errorMessage"] is None
    assert doc["leaseExpiresAt"] <= dt.datetime.now(dt.UTC)  # released
    assert not OUTPUTS & set(app.versions(user, session))  # its own upload taken back
    assert app.post(*event).status_code == 200
    doc = app.doc(user, session)
    assert doc["processingStatus"] == "completed" and doc["attempts"] == 2
    assert set(app.versions(user, session)) >= OUTPUTS


def test_the_last_attempt_records_the_failure_and_acknowledges(app, caplog):
    """8c on the last attempt the budget allows: failed as attempts_exhausted, answered 200."""
    last = app.settings.max_attempts
    event_id = f"last-{uuid.uuid4().hex}"
    user, session = app.create(
        doc={
            "processingStatus": "processing",
            "eventId": event_id,
            "attempts": last - 1,
            "leaseOwner": "crashed:instance",
            "leaseExpiresAt": age(1),
            "queuePosition": None,
        }
    )
    app.faults.fail_next("write", "before")
    with caplog.at_level(logging.INFO):
        response = app.post(*eventlib.pubsub_binary(user, session, event_id))
    assert response.status_code == 200, response.text
    doc = app.doc(user, session)
    assert doc["processingStatus"] == "failed" and doc["errorCode"] == "attempts_exhausted"
    assert doc["attempts"] == last and f"after {last} attempts" in doc["errorMessage"]
    assert not OUTPUTS & set(app.versions(user, session))
    codes = [getattr(r, "errorCode", None) for r in _records(caplog, session)]
    assert "attempts_exhausted" in codes  # counted by the failed-jobs metric


def test_a_job_cancelled_while_its_outputs_upload_takes_them_back(app, monkeypatch):
    """8a with defect 4's wiring: the app cancels between the uploads; the completion cannot be
    recorded, the job's own files are deleted, the delivery is acknowledged."""
    user, session = app.create()
    path = f"users/{user}/sessions/{session}"
    write = app.blobs.write

    def write_then_cancel(target: str, data: bytes, if_generation_match: int) -> int:
        generation = write(target, data, if_generation_match)
        app.docs.patch(path, {"processingStatus": "cancelled"})  # the app, meanwhile
        return generation

    monkeypatch.setattr(app.blobs, "write", write_then_cancel)
    response = app.post(*eventlib.pubsub_binary(user, session))
    assert response.status_code == 200
    assert app.doc(user, session)["processingStatus"] == "cancelled"
    assert set(app.versions(user, session)) == {"original.jpg", "mask_auto.png"}


def test_a_session_without_a_document_is_acknowledged_and_nothing_comes_back(app, caplog):
    """Defect 3: no delivery creates a session document; a crashed job's leftover output of the
    deleted session is taken back; the reason is logged for the ignored-deliveries metric."""
    user, session = app.create(create_doc=False)
    app.blobs.put(f"users/{user}/sessions/{session}/edited.jpg", b"left by a crashed job")
    with caplog.at_level(logging.INFO):
        assert app.post(*eventlib.pubsub_binary(user, session)).status_code == 200
    assert app.doc(user, session) is None
    assert set(app.versions(user, session)) == {"original.jpg", "mask_auto.png"}
    reasons = [getattr(r, "ignoredReason", None) for r in _records(caplog, session)]
    assert "session_missing" in reasons


def test_a_session_leased_by_another_live_instance_is_kept_for_later(app):
    """Not acknowledged (503): this copy may be the only live one if that instance dies."""
    user, session = app.create(
        doc={
            "processingStatus": "processing",
            "eventId": "other-event",
            "attempts": 1,
            "leaseOwner": "other:instance",
            "leaseExpiresAt": age(-600),
            "requestedAt": age(5),
        }
    )
    before = app.everything()
    response = app.post(*eventlib.pubsub_binary(user, session, "other-event"))
    assert response.status_code == 503
    assert response.json["acknowledged"] is False
    assert app.everything() == before


def test_a_duplicate_of_a_completed_job_is_acknowledged_without_work(app):
    user, session = app.create()
    event = eventlib.pubsub_binary(user, session, f"dup-{uuid.uuid4().hex}")
    assert app.post(*event).status_code == 200
    done = app.everything()
    assert app.doc(user, session)["processingStatus"] == "completed"
    assert app.post(*event).status_code == 200
    assert app.everything() == done


def test_no_job_starts_while_the_instance_shuts_down(app):
    """SIGTERM came: 500 before any claim, so the copy is redelivered elsewhere."""
    from inpaint.serving import process

    user, session = app.create()
    before = app.everything()
    process.SHUTDOWN.set()
    try:
        assert app.post(*eventlib.pubsub_binary(user, session)).status_code == 500
    finally:
        process.SHUTDOWN.clear()
    assert app.everything() == before


def test_an_expired_request_is_marked_failed(app):
    """A request whose job died more than INPAINT_MAX_EVENT_AGE_SECONDS ago (its lease long
    expired) and whose event comes back only now is failed as expired."""
    old = "2020-01-01T00:00:00Z"
    user, session = app.create(
        doc={
            "processingStatus": "processing",
            "eventId": "old-event",
            "attempts": 1,
            "leaseOwner": "gone:lease",
            "leaseExpiresAt": dt.datetime(2020, 1, 1, 0, 10, tzinfo=dt.UTC),
        }
    )
    headers, body = eventlib.pubsub_binary(user, session, "old-event", time=old)
    assert app.post(headers, body).status_code == 200
    doc = app.doc(user, session)
    assert doc["processingStatus"] == "failed" and doc["errorCode"] == "expired"


def test_a_stale_copy_of_an_old_event_runs_the_new_request(app):
    """Defect 6: the age is the request's, not the delivered copy's."""
    user, session = app.create()  # queued just now (by the app)
    stale = eventlib.pubsub_binary(user, session, "previous-request", time="2020-01-01T00:00:00Z")
    assert app.post(*stale).status_code == 200
    assert app.doc(user, session)["processingStatus"] == "completed"
