"""Precomputed prompt embeddings against the real stack: the production serving command, real
CloudEvents, Google's emulators and fake-gcs-server, weights written by the real weights command.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_function import assert_completed
from tools import eventlib
from tools.server import ROOT, log_records

CUSTOM = "a tabby cat wearing a hat"


def encoder_loads(server) -> int:
    return sum(r.get("message") == "text encoders loaded" for r in log_records(server))


def run_job(server, sessions, doc=None) -> tuple[str, str, dict]:
    user, session = sessions.create(doc=doc)
    assert server.post(*eventlib.pubsub_binary(user, session)).status_code == 200
    return user, session, sessions.wait(user, session)


def test_ready_without_text_encoders_and_they_load_once_for_custom_prompts(start_server, sessions):
    server = start_server()
    assert server.get("/ready").status_code == 200 and encoder_loads(server) == 0
    assert "model warmed up" in [r.get("message") for r in log_records(server)]
    user, session, _ = run_job(server, sessions)  # the default prompt: precomputed
    assert_completed(sessions, user, session)
    assert encoder_loads(server) == 0
    for prompt in (CUSTOM, "a dog on a sofa", CUSTOM):
        user, session, doc = run_job(server, sessions, {"prompt": prompt})
        assert_completed(sessions, user, session)
        assert doc["promptUsed"] == prompt
    assert encoder_loads(server) == 1


@pytest.fixture(scope="module")
def no_encoder_weights(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model through ``python -m inpaint weights --no-text-encoders`` (no download)."""
    dest = tmp_path_factory.mktemp("no-encoders") / "weights"
    shutil.copytree(tiny_model_dir, dest, ignore=shutil.ignore_patterns(".random-model.lock"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "inpaint",
            "weights",
            "--dest",
            str(dest),
            "--embeddings-only",
            "--embeddings-dtype",
            "float32",
            "--no-text-encoders",
        ],
        cwd=ROOT,
        check=True,
    )
    assert not (dest / "base" / "text_encoder_2").exists()
    return dest


def test_image_without_text_encoders_refuses_other_prompts_clearly(
    start_server, sessions, no_encoder_weights
):
    # Also INPAINT_WARMUP_STEPS=0: ready once loaded, without a warm-up inference.
    server = start_server(INPAINT_MODEL_DIR=str(no_encoder_weights), INPAINT_WARMUP_STEPS="0")
    assert server.get("/ready").status_code == 200
    messages = [r.get("message") for r in log_records(server)]
    # "model loaded" and "model warmed up" are both logged before /ready can say 200.
    assert "model loaded" in messages and "model warmed up" not in messages
    user, session, _ = run_job(server, sessions)
    assert_completed(sessions, user, session)
    user, session, doc = run_job(server, sessions, {"prompt": CUSTOM})
    assert doc["processingStatus"] == "failed" and doc["errorCode"] == "prompt_unavailable"
    assert doc["errorMessage"].startswith("This prompt cannot be used")
    assert "preset prompts" in doc["errorMessage"]
    assert not {"edited.jpg", "preview.jpg"} & sessions.files(user, session)
    # Permanent: a redelivery of the same event is acknowledged without another attempt.
    assert server.post(*eventlib.pubsub_binary(user, session)).status_code == 200
    assert sessions.doc(user, session)["attempts"] == 1
