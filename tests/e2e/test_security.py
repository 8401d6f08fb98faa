"""Security properties, end to end and at the unit level.

1. Storage and Firestore paths are built only from validated IDs: no crafted ID, in any event
   shape, in either ID position, reads or writes anything outside ``users/{u}/sessions/{s}/``.
   Proven by comparing the complete set of objects (with generations and MD5s) and of documents
   before and after, and by ``SessionRef`` refusing every such ID.
2. Size limits (event body, input bytes, pixels, prompt length) are configurable and enforced
   before the expensive work: proven in-process, through functions-framework's test client, by
   ``tests/test_main.py`` (an app with small limits refuses each input with a message naming the
   limit before the model runs, and completes a job within them); the shared server's default
   body limit, sent chunked, by ``tests/e2e/test_hostile.py``.
"""

from __future__ import annotations

import pytest

from inpaint.errors import InvalidEventError
from inpaint.session.events import SESSION_FILES, SessionRef, validate_id
from tests.e2e.conftest import bucket_state, firestore_state, inference_count
from tools import eventlib
from tools.server import log_records

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
