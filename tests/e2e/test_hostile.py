"""Hostile and broken input against a real server process and the real stack: one case per
failure class of ``tests/hostile_cases.py`` (every case runs in-process in ``tests/test_main.py``).

The events: a body that is not JSON, a crafted ID, a protobuf that is not a document event, and
bodies the framework itself refuses (too deep to parse, over the size limit sent chunked): each
acknowledged, logged with its reason, nothing changed. The sessions: a file missing in Storage, a
file the decoding child refuses, a decompression bomb refused from its header, a bad document
field, and an unusual photo that completes: each ends in the expected state, acknowledged, with
the inputs untouched (same generation and MD5) and the server healthy.
"""

from __future__ import annotations

import time
import uuid

import pytest
import requests

from tests.e2e.conftest import blob_versions, bucket_state, firestore_state
from tests.hostile_cases import (
    EVENT_CASES,
    PUBSUB_HEADERS,
    SESSION_CASES,
    assert_session_outcome,
)
from tools import eventlib
from tools.server import log_records

REAL_SERVER_EVENTS = [
    "body-not-json",
    "id-with-slash",
    "firestore-garbage-protobuf",
    "structured-json-100000-deep",
    "chunked-10MB-no-length",
]
REAL_SERVER_SESSIONS = [
    "photo-missing",
    "photo-truncated-jpeg",
    "photo-bomb-30000x30000-header",
    "seed-float",
    "photo-exif-rotated",
]


@pytest.fixture(scope="module")
def bystander(sessions):
    """A queued session with inputs: valid-looking hostile events name it; it must not move."""
    return sessions.create()


@pytest.mark.parametrize("name", REAL_SERVER_EVENTS)
def test_hostile_events_are_acknowledged_and_change_nothing(
    name, shared_server, sessions, bystander
):
    case = EVENT_CASES[name]
    event_id = f"hostile-{name}-{uuid.uuid4().hex[:8]}"
    headers, body = case.build(*bystander)
    headers = headers | {"ce-id": event_id} if "ce-id" in headers else headers
    objects, documents = bucket_state(sessions.bucket), firestore_state(sessions.db)
    if name.startswith("chunked"):  # a generator body is sent with Transfer-Encoding: chunked
        step = 1 << 20
        chunks = (body[i : i + step] for i in range(0, len(body), step))
        response = requests.post(shared_server.url + "/", headers=headers, data=chunks, timeout=60)
    else:
        response = shared_server.post(headers, body)

    assert response.status_code == 200, response.text  # acknowledged: no redelivery storm
    if case.wsgi:
        assert case.expect in response.text
    else:
        reasons = [r["message"] for r in log_records(shared_server) if r.get("eventId") == event_id]
        assert len(reasons) == 1 and reasons[0].startswith(("event rejected:", "event ignored:"))
        assert case.expect in reasons[0], reasons
        assert len(reasons[0]) < 300  # hostile input is not echoed back at length
    assert bucket_state(sessions.bucket) == objects
    assert firestore_state(sessions.db) == documents
    assert sessions.doc(*bystander)["processingStatus"] == "queued"
    assert shared_server.get("/health").status_code == 200


@pytest.mark.parametrize("name", REAL_SERVER_SESSIONS)
def test_broken_sessions_end_in_the_expected_state(name, shared_server, sessions):
    case = SESSION_CASES[name]
    user, session = case.create(sessions)
    inputs = blob_versions(sessions, user, session)
    response = shared_server.post(*eventlib.pubsub_binary(user, session))

    assert response.status_code == 200, response.text  # acknowledged either way
    assert_session_outcome(
        case,
        sessions.wait(user, session, timeout=120),
        inputs,
        blob_versions(sessions, user, session),
        lambda name: sessions.image(user, session, name),
    )
    assert shared_server.get("/health").status_code == 200


# --------------------------------------------------------------------------- the CLI's app


UNPARSEABLE = {
    "structured-json-100000-deep": (
        {"content-type": "application/cloudevents+json"},
        b"[" * 100_000 + b"]" * 100_000,
    ),
    "binary-json-100000-deep": (PUBSUB_HEADERS, b"[" * 100_000 + b"]" * 100_000),
    "push-json-100000-deep": (
        {"content-type": "application/json"},
        b'{"a":' * 100_000 + b"}" * 100_000,
    ),
}


def test_cli_event_target_acknowledges_unparseable_bodies(server_env, tmp_path):
    """`functions-framework --target handle_session` (main.py's own app) acknowledges what its
    parsing would answer 500, like the production app; a valid event still reaches the
    function (answered 500 only until warm-up ends, as before)."""
    from tests.e2e.test_local_targets import start_target

    server = start_target(server_env, tmp_path, "handle_session")
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the CLI binds its port after importing main.py
            try:
                requests.get(server.url + "/", timeout=2)
                break
            except requests.ConnectionError:
                time.sleep(0.2)
        for name, (headers, body) in UNPARSEABLE.items():
            response = server.post(headers | {"ce-id": f"cli-{name}"}, body)
            assert response.status_code == 200, (name, response.text)
            assert "the body cannot be parsed" in response.text, name
    finally:
        server.stop()
