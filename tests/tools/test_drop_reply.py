"""The outage proxy's drop-reply-once mode, against Google's Firestore emulator: the write whose
message contains the pattern is applied, its reply is lost, and only that one."""

from __future__ import annotations

import os
import uuid

import google.auth.credentials
import pytest
from google.api_core import exceptions as gexc
from google.cloud import firestore

from tools.stack import LocalStack
from tools.stack.proxy import _H2_PREFACE, _H2Frames


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    with LocalStack(workdir=tmp_path_factory.mktemp("drop"), services=("firestore",)) as stack:
        old = os.environ.get("FIRESTORE_EMULATOR_HOST")
        os.environ["FIRESTORE_EMULATOR_HOST"] = stack.host("firestore")
        try:
            client = firestore.Client(
                project=stack.project, credentials=google.auth.credentials.AnonymousCredentials()
            )
        finally:
            if old is None:
                os.environ.pop("FIRESTORE_EMULATOR_HOST", None)
            else:
                os.environ["FIRESTORE_EMULATOR_HOST"] = old
        yield stack, client


def test_the_write_lands_its_reply_is_lost_and_only_once(db):
    stack, client = db
    ref = client.document(f"drop/{uuid.uuid4().hex}")
    ref.set({"status": "queued"})
    proxy = stack.drop_reply_once("firestore", b"claimed-by-me")
    dropped = proxy.replies_dropped
    with pytest.raises((gexc.ServiceUnavailable, gexc.DeadlineExceeded, gexc.Unknown)):
        ref.update({"status": "claimed-by-me"}, retry=None, timeout=10)
    assert proxy.replies_dropped == dropped + 1 and proxy.drops_pending == 0
    assert ref.get().to_dict() == {"status": "claimed-by-me"}  # the write was applied
    ref.update({"status": "claimed-by-me", "again": True}, retry=None, timeout=10)  # once only
    assert proxy.replies_dropped == dropped + 1


def test_unmatched_traffic_passes_and_disarm_forgets_the_pattern(db):
    stack, client = db
    ref = client.document(f"drop/{uuid.uuid4().hex}")
    proxy = stack.drop_reply_once("firestore", b"never-written")
    ref.set({"status": "queued"}, retry=None, timeout=10)
    assert ref.get().to_dict() == {"status": "queued"}
    assert proxy.drops_pending == 1
    proxy.disarm()
    assert proxy.drops_pending == 0


def test_frames_are_cut_at_their_boundaries_whatever_the_chunks():
    frame = (3).to_bytes(3, "big") + bytes([0, 1]) + (5).to_bytes(4, "big") + b"abc"
    stream = _H2_PREFACE + frame * 2
    for size in (1, 7, 9, 40, len(stream)):
        frames = _H2Frames(preface=True)
        got = []
        for i in range(0, len(stream), size):
            got += frames.feed(stream[i : i + size])
        assert got == [(0, 1, 5, b"abc")] * 2, size
