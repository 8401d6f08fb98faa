"""The session store's output protocol on the in-memory backends (the same contract as the real
servers: tests/e2e/test_store_backends.py): a job that lost its lease never replaces a newer
request's files and takes its own back (issue 27, defect 4)."""

from __future__ import annotations

import datetime as dt

import pytest

from inpaint.config import Settings
from inpaint.errors import LeaseLostError
from inpaint.session.document import output_paths
from inpaint.session.events import JobRequest, SessionRef
from inpaint.session.store import (
    ClaimOutcome,
    SessionStore,
    run_steps,
    write_outputs,
    write_outputs_steps,
)
from tests.sim.fakes import MemoryBlobs, MemoryDocuments

SESSION = SessionRef("u1", "s1")
EDITED, PREVIEW = output_paths(SESSION).values()
NOW = dt.datetime(2026, 12, 7, tzinfo=dt.UTC)


class World:
    def __init__(self) -> None:
        self.now = NOW
        self.docs = MemoryDocuments(lambda: self.now)
        self.blobs = MemoryBlobs()
        self.settings = Settings()

    def store(self, instance: str) -> SessionStore:
        return SessionStore(
            self.settings, self.docs, self.blobs, instance=instance, clock=lambda: self.now
        )

    def queue_request(self, n: int) -> None:
        self.docs.set(SESSION.document_path, {"processingStatus": "queued", "request": n})

    def claim(self, store: SessionStore, event: str):
        claim = store.claim(JobRequest(SESSION, event, "t", self.now))
        assert claim.outcome is ClaimOutcome.ACQUIRED
        return claim

    def files(self) -> dict[str, bytes]:
        return self.blobs.listing(SESSION.document_path + "/")


def _advance_to(steps, name: str) -> None:
    while next(steps) != name:
        pass


def test_a_job_that_lost_its_lease_cannot_replace_the_newer_requests_outputs():
    world = World()
    world.queue_request(1)
    old_store, new_store = world.store("a"), world.store("b")
    old = world.claim(old_store, "e1")
    steps = write_outputs_steps(old_store, old, b"old edited", b"old preview")
    _advance_to(steps, "upload edited.jpg")  # generations read, lease checked: still ours
    # The user re-queues; the new request's job runs and completes meanwhile.
    world.queue_request(2)
    new = world.claim(new_store, "e2")
    write_outputs(new_store, new, b"new edited", b"new preview")
    assert new_store.complete(new, {})
    # The old job's upload now fails its precondition; it finds its lease gone and stops.
    with pytest.raises(LeaseLostError, match="lease is no longer ours"):
        run_steps(steps)
    assert world.files() == {EDITED: b"new edited", PREVIEW: b"new preview"}


def test_a_job_whose_session_was_deleted_takes_its_files_back():
    world = World()
    world.queue_request(1)
    store = world.store("a")
    claim = world.claim(store, "e1")
    written = write_outputs(store, claim, b"edited", b"preview")
    world.docs.delete(SESSION.document_path)  # the user deletes the session (and its files)
    world.blobs.remove_prefix(SESSION.document_path + "/")
    world.blobs.put(EDITED, b"x")  # not possible for the app, but: only our generations go
    assert not store.complete(claim, {})
    store.delete_outputs(SESSION, written)
    assert world.files() == {EDITED: b"x"}


def test_a_stray_upload_while_the_lease_is_ours_is_overwritten_after_a_fresh_check():
    world = World()
    world.queue_request(1)
    store = world.store("a")
    claim = world.claim(store, "e1")
    steps = write_outputs_steps(store, claim, b"mine", b"mine too")
    _advance_to(steps, "upload edited.jpg")
    world.blobs.put(EDITED, b"a stale job's")  # an older job's upload lands meanwhile
    assert set(run_steps(steps)) == {EDITED, PREVIEW}
    assert world.files() == {EDITED: b"mine", PREVIEW: b"mine too"}


def test_a_job_stopped_between_its_two_uploads_takes_the_first_back():
    world = World()
    world.queue_request(1)
    store = world.store("a")
    claim = world.claim(store, "e1")
    steps = write_outputs_steps(store, claim, b"edited", b"preview")
    _advance_to(steps, "upload preview.jpg")  # edited.jpg is written
    world.docs.delete(SESSION.document_path)
    world.blobs.put(PREVIEW, b"in the way")  # makes the preview's upload fail
    with pytest.raises(LeaseLostError, match="deleted"):
        run_steps(steps)
    assert world.files() == {PREVIEW: b"in the way"}  # our edited.jpg was taken back
