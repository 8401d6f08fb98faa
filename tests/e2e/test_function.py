"""The event function end to end: real CloudEvents over HTTP to the production serving command,
with Google's Firestore and Pub/Sub emulators, fake-gcs-server and the tiny model."""

from __future__ import annotations

import concurrent.futures as cf
import io
import time

import numpy as np
import pytest
import requests
from PIL import Image

from tests.samples import ellipse_mask, pixels
from tools import eventlib
from tools.server import log_records

SIZE = (1200, 800)


def outside_band(mask_png: bytes, margin: int = 24) -> np.ndarray:
    """Pixels far enough from the mask that paste-back must leave them as they were."""
    from scipy import ndimage

    mask = np.asarray(Image.open(io.BytesIO(mask_png)).convert("L")) > 127
    return ~ndimage.binary_dilation(mask, iterations=margin)


def assert_completed(sessions, user, session, mask_png=None):
    doc = sessions.doc(user, session)
    base = f"users/{user}/sessions/{session}"
    assert doc["processingStatus"] == "completed", doc
    assert doc["editedImagePath"] == f"{base}/edited.jpg"
    assert doc["previewImagePath"] == f"{base}/preview.jpg"
    assert doc["errorMessage"] is None
    assert isinstance(doc["cost"], float) and 0 < doc["cost"] < 1
    assert doc["progress"] == 1.0 and doc["attempts"] >= 1
    assert {"download", "prepare", "inference", "postprocess", "upload", "total"} <= set(
        doc["timings"]
    )
    edited = sessions.image(user, session, "edited.jpg")
    preview = sessions.image(user, session, "preview.jpg")
    assert edited.format == "JPEG" and edited.size == SIZE
    assert preview.format == "JPEG" and max(preview.size) == 512
    assert abs(preview.size[0] / preview.size[1] - SIZE[0] / SIZE[1]) < 0.01
    blob = sessions.blob(user, session, "edited.jpg")
    assert blob.content_type == "image/jpeg" and blob.cache_control
    original = pixels(sessions.image(user, session, "original.jpg"))
    out = pixels(edited)
    keep = outside_band(mask_png or ellipse_mask(SIZE))
    # Outside the mask only JPEG re-encoding error remains; inside, the (noise) model painted.
    assert np.abs(out - original)[keep].mean() < 2.0
    inside = np.asarray(Image.open(io.BytesIO(mask_png or ellipse_mask(SIZE))).convert("L")) > 127
    assert np.abs(out - original)[inside].mean() > 10
    return doc


@pytest.mark.parametrize("shape", ["binary", "structured", "push", "firestore"])
def test_every_event_shape_completes_the_job(server, sessions, shape):
    user, session = sessions.create()
    build = {
        "binary": eventlib.pubsub_binary,
        "structured": eventlib.pubsub_structured,
        "push": eventlib.pubsub_push,
        "firestore": eventlib.firestore_event,
    }[shape]
    response = server.post(*build(user, session))
    assert response.status_code == 200, response.text
    assert_completed(sessions, user, session)
    assert sessions.files(user, session) == {
        "original.jpg",
        "mask_auto.png",
        "edited.jpg",
        "preview.jpg",
    }


def test_inputs_are_never_modified(server, sessions):
    user, session = sessions.create()
    before = {n: sessions.blob(user, session, n) for n in ("original.jpg", "mask_auto.png")}
    assert server.post(*eventlib.pubsub_binary(user, session)).status_code == 200
    for name, blob in before.items():
        after = sessions.blob(user, session, name)
        assert (after.generation, after.md5_hash) == (blob.generation, blob.md5_hash)


def test_prompt_and_seed_from_document_are_used(server, sessions):
    user, session = sessions.create(doc={"prompt": "a tabby cat wearing a hat", "seed": 1234})
    assert server.post(*eventlib.pubsub_binary(user, session)).status_code == 200
    doc = sessions.wait(user, session)
    assert (doc["promptUsed"], doc["seedUsed"]) == ("a tabby cat wearing a hat", 1234)
    # Same inputs and seed in another session: identical pixels.
    user2, session2 = sessions.create(doc={"prompt": "a tabby cat wearing a hat", "seed": 1234})
    assert server.post(*eventlib.pubsub_binary(user2, session2)).status_code == 200
    a = pixels(sessions.image(user, session, "edited.jpg"))
    b = pixels(sessions.image(user2, session2, "edited.jpg"))
    assert np.array_equal(a, b)


def test_empty_mask_returns_the_original_without_the_model(server, sessions):
    empty = io.BytesIO()
    Image.new("L", SIZE, 0).save(empty, "PNG")
    user, session = sessions.create(mask=empty.getvalue())
    assert server.post(*eventlib.pubsub_binary(user, session)).status_code == 200
    doc = sessions.wait(user, session)
    assert doc["processingStatus"] == "completed" and doc["maskEmpty"] is True
    assert doc["timings"]["inference"] < 0.05
    original = pixels(sessions.image(user, session, "original.jpg"))
    assert np.abs(pixels(sessions.image(user, session, "edited.jpg")) - original).mean() < 2.0


def test_no_delivery_creates_a_session_document(server, sessions):
    """Issue 27, defect 3: a message for a missing session is acknowledged and logged with its
    reason; nothing is written (before: a ``failed`` / "not found" document was created)."""
    user, session = sessions.create(create_doc=False)
    event = eventlib.pubsub_binary(user, session)
    assert server.post(*event).status_code == 200
    assert sessions.doc(user, session) is None
    assert sessions.files(user, session) == {"original.jpg", "mask_auto.png"}
    ignored = [
        r
        for r in log_records(server)
        if r.get("sessionId") == session and r.get("ignoredReason") == "session_missing"
    ]
    assert ignored and ignored[0]["severity"] == "INFO", ignored


def test_a_session_the_user_deleted_stays_deleted_when_its_message_comes_again(server, sessions):
    """Issue 27, defect 3: complete, the user deletes the document and the files, a duplicate of
    the message arrives (Pub/Sub may deliver again after an acknowledgement): nothing returns."""
    user, session = sessions.create()
    event = eventlib.pubsub_binary(user, session)
    assert server.post(*event).status_code == 200
    assert sessions.wait(user, session)["processingStatus"] == "completed"
    sessions.db.document(f"users/{user}/sessions/{session}").delete()
    for name in sorted(sessions.files(user, session)):
        sessions.blob(user, session, name).delete()
    assert server.post(*event).status_code == 200
    assert sessions.doc(user, session) is None
    assert sessions.files(user, session) == set()


def test_health_and_ready_answer_during_a_job(server, sessions):
    user, session = sessions.create()
    with cf.ThreadPoolExecutor(1) as pool:
        job = pool.submit(server.post, *eventlib.pubsub_binary(user, session))
        codes = []
        while not job.done():
            codes.append((server.get("/health").status_code, server.get("/ready").status_code))
        assert job.result().status_code == 200
    assert codes and set(codes) == {(200, 200)}
    assert server.get("/health").json()["model"] == "ready"


def test_ready_is_503_until_warm_then_200(start_server):
    server = start_server(wait=False)
    seen = []
    deadline = time.monotonic() + 300  # a bound on a hang, not a speed requirement
    while time.monotonic() < deadline:
        try:
            ready = server.get("/ready", timeout=30).status_code
            seen.append((server.get("/health", timeout=30).status_code, ready))
        except (requests.ConnectionError, requests.Timeout):  # not listening / still starting
            continue
        if ready == 200:
            break
        time.sleep(0.05)
    assert seen[0] == (200, 503) and seen[-1] == (200, 200)


def test_warmup_failure_makes_health_503_with_the_missing_file(start_server, tmp_path):
    server = start_server(wait=False, INPAINT_MODEL_DIR=str(tmp_path / "no-weights"))
    deadline = time.monotonic() + 300  # a bound on a hang, not a speed requirement
    while time.monotonic() < deadline:
        try:
            if server.get("/health", timeout=30).status_code == 503:
                break
        except (requests.ConnectionError, requests.Timeout):  # not listening / still starting
            pass
        time.sleep(0.1)
    health, ready = server.get("/health", timeout=30), server.get("/ready", timeout=30)
    assert health.status_code == 503 and ready.status_code == 503
    assert "flux1-fill-dev-Q8_0.gguf" in ready.json()["error"]
    assert "python -m inpaint weights" in ready.json()["error"]
    # Events meanwhile are not acknowledged: they go to a healthy instance later.
    response = server.post(*eventlib.pubsub_binary("u", "s"))
    assert response.status_code == 500


def test_pubsub_push_subscription_reaches_the_function(server, sessions, stack):
    topic = stack.create_topic("session-processing")
    stack.create_push_subscription("session-processing", "push-to-function", server.url + "/")
    user, session = sessions.create()
    stack.publish("session-processing", {"userId": user, "sessionId": session})
    sessions.wait(user, session, timeout=300)
    assert_completed(sessions, user, session)
    assert topic.endswith("/topics/session-processing")
