"""Security properties, end to end and at the unit level.

1. Storage and Firestore paths are built only from validated IDs: no crafted ID, in any event
   shape, in either ID position, reads or writes anything outside ``users/{u}/sessions/{s}/``.
   Proven by comparing the complete set of objects (with generations and MD5s) and of documents
   before and after, and by ``SessionRef`` refusing every such ID.
2. Size limits (event body, input bytes, pixels, prompt length) are configurable and enforced
   before the expensive work: a dedicated server with small limits refuses each input with a
   message naming the limit, and the model never runs (no denoising step is ever reported,
   ``progress`` stays 0 and no stage ``timings`` are recorded), while a job within the limits
   completes on the same server.
"""

from __future__ import annotations

import io
import json
import uuid

import numpy as np
import pytest
import requests
from PIL import Image

from inpaint.events import SESSION_FILES, InvalidEventError, SessionRef, validate_id
from tests.e2e.conftest import (
    blob_versions,
    bucket_state,
    ellipse_mask,
    firestore_state,
    inference_count,
    photo_jpeg,
)
from tools import eventlib
from tools.server import claims_by_session, log_records

NASTY_IDS = [
    "../x",
    "..",
    ".",
    "a/b",
    "/abs",
    "a\\b",
    "..\\..\\x",
    "%2e%2e",
    "%2F",
    "a%2Fb",
    "a%00b",
    "a\x00b",
    "a\nb",
    "a\rb",
    "a\tb",
    "a b",
    " ",
    "*",
    "?",
    "#",
    "[",
    "]",
    "a*",
    "a?b",
    "a#b",
    "[a]",
    "x" * 129,
    "\u0430dmin",  # Cyrillic a
    "\uff41b",  # fullwidth a
    "a\u2215b",  # division slash
    "a\u2044b",  # fraction slash
    "\u2024\u2024",  # one dot leaders: ".." lookalike
    "a\u200bb",  # zero-width space
    "caf\u00e9",
    "",
]


def _firestore_crafted(user: str, session: str) -> tuple[dict, bytes]:
    """A Firestore event whose document name carries the crafted IDs. Only the protobuf body
    does: HTTP headers cannot carry control characters (gunicorn answers 400 before any app
    code runs), and the function reads the name from the body, never from ``ce-subject``."""
    from google.events.cloud.firestore import DocumentEventData

    headers, body = eventlib.firestore_event("placeholder", "placeholder")
    decoded = DocumentEventData.deserialize(body)
    for part in ("value", "old_value"):
        if part in decoded:
            doc = getattr(decoded, part)
            doc.name = doc.name.replace(
                "users/placeholder/sessions/placeholder", f"users/{user}/sessions/{session}"
            )
    return headers, DocumentEventData.serialize(decoded)


SHAPES = {
    "binary": eventlib.pubsub_binary,
    "structured": eventlib.pubsub_structured,
    "push": eventlib.pubsub_push,
    "firestore": _firestore_crafted,
}


# --------------------------------------------------------------------------- unit level


@pytest.mark.parametrize("nasty", NASTY_IDS, ids=lambda v: repr(v)[:24])
def test_session_ref_refuses_every_crafted_id(nasty):
    with pytest.raises(InvalidEventError):
        SessionRef(nasty, "s1")
    with pytest.raises(InvalidEventError):
        SessionRef("u1", nasty)
    with pytest.raises(InvalidEventError):
        validate_id("userId", nasty)


def test_session_paths_stay_inside_the_session_and_only_name_contract_files():
    ref = SessionRef("u_1-A", "s-9_z")
    for name in sorted(SESSION_FILES):
        assert ref.storage_path(name) == f"users/u_1-A/sessions/s-9_z/{name}"
    for name in ("../original.jpg", "x.jpg", "", "sub/edited.jpg", "EDITED.JPG"):
        with pytest.raises(ValueError):
            ref.storage_path(name)
    assert SessionRef("a" * 128, "b").document_path == f"users/{'a' * 128}/sessions/b"


# --------------------------------------------------------------------------- end to end


def _crafted(victim_user: str, victim_session: str) -> list[tuple[str, str]]:
    """(userId, sessionId) pairs: every nasty ID in both positions, plus IDs crafted to reach the
    victim session (or escape it) if they were ever concatenated into a path."""
    pairs = [(nasty, victim_session) for nasty in NASTY_IDS]
    pairs += [(victim_user, nasty) for nasty in NASTY_IDS]
    pairs += [
        (f"{victim_user}/sessions/{victim_session}", "x"),
        (victim_user, f"{victim_session}/../{victim_session}"),
        (victim_user, f"{victim_session}/edited.jpg"),
        (f"..%2F{victim_user}", victim_session),
        (f"{victim_user}\x00", victim_session),
        ("users", f"{victim_user}/sessions/{victim_session}"),
    ]
    return pairs


def test_no_crafted_id_in_any_event_shape_touches_anything(shared_server, sessions, stack):
    victim = sessions.create()
    objects, documents = bucket_state(sessions.bucket), firestore_state(sessions.db)
    listed = set(stack.list_objects())  # straight from the server, bypassing the client library
    claims = inference_count(shared_server)
    pairs = _crafted(*victim)
    for user, session in pairs:
        for shape, build in SHAPES.items():
            response = shared_server.post(*build(user, session))
            assert response.status_code == 200, (shape, user, session, response.text)

    assert bucket_state(sessions.bucket) == objects
    assert set(stack.list_objects()) == listed
    assert firestore_state(sessions.db) == documents
    assert sessions.doc(*victim)["processingStatus"] == "queued"
    assert sessions.files(*victim) == {"original.jpg", "mask_auto.png"}
    assert inference_count(shared_server) == claims  # not one job was claimed
    outcomes = [r["message"] for r in log_records(shared_server)[-4 * len(pairs) :]]
    assert all(m.startswith(("event rejected:", "event ignored:")) for m in outcomes), outcomes
    assert shared_server.get("/health").status_code == 200


# --------------------------------------------------------------------------- limits


LIMITS = {
    "INPAINT_MAX_INPUT_BYTES": "65536",
    "INPAINT_MAX_INPUT_PIXELS": "200000",
    "INPAINT_MAX_PROMPT_CHARS": "120",  # the default prompt (98) must fit: see test_config
    "INPAINT_MAX_EVENT_BYTES": "4096",
}
SMALL = (360, 240)  # 86 400 pixels, ~20 KB as JPEG: within every limit above


@pytest.fixture(scope="module")
def limited(start_server):
    return start_server(**LIMITS)


def _jpeg(size, quality=90) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(photo_jpeg(size))).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _noise_png(size) -> bytes:
    """A mask PNG that does not compress: ~100 KB for 360x240."""
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


def test_limits_server_completes_a_job_within_its_limits(limited, sessions):
    user, session = sessions.create(photo=_jpeg(SMALL), mask=ellipse_mask(SMALL))
    assert len(_jpeg(SMALL)) < 65536
    assert limited.post(*eventlib.pubsub_binary(user, session)).status_code == 200
    doc = sessions.wait(user, session)
    assert doc["processingStatus"] == "completed" and doc["timings"]["inference"] > 0


@pytest.mark.parametrize("name", list(LIMIT_CASES))
def test_input_limits_refuse_before_the_model_runs(name, limited, sessions):
    setup, expected = LIMIT_CASES[name]
    user, session = sessions.create(**setup)
    inputs = blob_versions(sessions, user, session)
    assert limited.post(*eventlib.pubsub_binary(user, session)).status_code == 200
    doc = sessions.wait(user, session)
    assert doc["processingStatus"] == "failed", doc
    assert all(part in doc["errorMessage"] for part in expected), doc["errorMessage"]
    assert doc["progress"] == 0.0 and "timings" not in doc and "busySeconds" not in doc
    assert blob_versions(sessions, user, session) == inputs  # no outputs, inputs untouched
    messages = [r["message"] for r in log_records(limited) if r.get("sessionId") == session]
    assert messages == ["job claimed", f"job failed: {doc['errorMessage']}"]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_event_body_limit_acknowledges_without_processing(chunked, limited, sessions):
    user, session = sessions.create(photo=_jpeg(SMALL), mask=ellipse_mask(SMALL))
    headers, body = eventlib.pubsub_binary(user, session, extra={"pad": "x" * 5000})
    assert len(body) > 4096
    json.loads(body)  # a valid event, only too long
    claims = claims_by_session(limited).get(session, 0)
    data = (body[i : i + 1000] for i in range(0, len(body), 1000)) if chunked else body
    response = requests.post(limited.url + "/", headers=headers, data=data, timeout=120)
    assert response.status_code == 200
    assert "not processed: Request Entity Too Large" in response.text
    assert sessions.doc(user, session)["processingStatus"] == "queued"
    assert claims_by_session(limited).get(session, 0) == claims == 0
    # The same event within the limit is processed by the same server.
    small_headers, small_body = eventlib.pubsub_binary(user, session, f"small-{uuid.uuid4()}")
    assert len(small_body) <= 4096
    assert limited.post(small_headers, small_body).status_code == 200
    assert sessions.wait(user, session)["processingStatus"] == "completed"
