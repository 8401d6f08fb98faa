"""One contract, two backends: the in-memory fakes the simulation runs on (``tests/sim/fakes``)
behave like Google's Firestore emulator and fake-gcs-server where the session store relies on
them (versions and update preconditions; generations and generation preconditions)."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from google.api_core.retry import Retry

from inpaint.session.firebase import FirestoreDocuments, GcsBlobs
from inpaint.session.store import Blobs, Documents
from tests.sim.fakes import MemoryBlobs, MemoryDocuments


@dataclass
class Backend:
    docs: Documents
    blobs: Blobs
    app_set: Any  # (path, fields): the app's plain write
    app_put: Any  # (path, data): the app's plain upload


@pytest.fixture(params=["memory", "emulators"])
def backend(request) -> Backend:
    if request.param == "memory":
        docs = MemoryDocuments(lambda: dt.datetime.now(dt.UTC))
        blobs = MemoryBlobs()
        return Backend(docs, blobs, docs.set, blobs.put)
    db, bucket = request.getfixturevalue("fb")
    retry = Retry(initial=0.1, maximum=1, timeout=10)

    def app_put(path: str, data: bytes) -> int:
        blob = bucket.blob(path)
        blob.upload_from_string(data)
        return int(blob.generation)

    return Backend(
        FirestoreDocuments(db, retry, 10),
        GcsBlobs(bucket, retry, 10),
        lambda path, fields: db.document(path).set(fields),
        app_put,
    )


def _path() -> str:
    return f"contract/{uuid.uuid4().hex}"


def test_a_missing_document_reads_as_none(backend):
    assert backend.docs.get(_path())[0] is None


def test_an_update_at_the_version_read_lands_and_moves_the_version(backend):
    path = _path()
    backend.app_set(path, {"status": "queued", "n": 1})
    doc, version = backend.docs.get(path)
    assert doc == {"status": "queued", "n": 1}
    backend.docs.update(path, {"status": "processing"}, version)
    doc2, version2 = backend.docs.get(path)
    assert doc2 == {"status": "processing", "n": 1}  # merged, like Firestore's update
    assert version2 != version and isinstance(version2, dt.datetime)
    assert version2 > version  # versions are update times: the request age relies on it


def test_an_update_at_a_stale_version_is_refused(backend):
    path = _path()
    backend.app_set(path, {"n": 1})
    _, stale = backend.docs.get(path)
    backend.app_set(path, {"n": 2})  # the app wrote meanwhile
    with pytest.raises(gexc.FailedPrecondition):
        backend.docs.update(path, {"n": 3}, stale)
    assert backend.docs.get(path)[0] == {"n": 2}


def test_an_update_of_a_deleted_document_is_refused_and_creates_nothing(backend):
    path = _path()
    backend.app_set(path, {"n": 1})
    _, version = backend.docs.get(path)
    if isinstance(backend.docs, MemoryDocuments):
        backend.docs.delete(path)
    else:
        backend.docs._db.document(path).delete()
    with pytest.raises((gexc.FailedPrecondition, gexc.NotFound)):
        backend.docs.update(path, {"n": 2}, version)
    assert backend.docs.get(path)[0] is None


def test_of_four_writers_that_read_the_same_version_exactly_one_wins(backend):
    path = _path()
    backend.app_set(path, {"owner": None})
    _, version = backend.docs.get(path)
    barrier = threading.Barrier(4)

    def claim(worker: int) -> bool:
        barrier.wait()
        try:
            backend.docs.update(path, {"owner": worker}, version)
            return True
        except gexc.FailedPrecondition:
            return False

    with ThreadPoolExecutor(4) as pool:
        assert sorted(pool.map(claim, range(4))) == [False, False, False, True]


def test_generations_guard_writes_reads_and_deletes(backend):
    path = f"{_path()}/edited.jpg"
    blobs = backend.blobs
    assert blobs.stat(path) is None
    first = blobs.write(path, b"one", 0)
    assert blobs.stat(path).generation == first and blobs.stat(path).size == 3
    with pytest.raises(gexc.PreconditionFailed):
        blobs.write(path, b"two", 0)  # "only if absent" while it exists
    second = blobs.write(path, b"two", first)
    assert second != first
    with pytest.raises(gexc.PreconditionFailed):
        blobs.write(path, b"three", first)  # a stale generation
    assert blobs.read(path, second) == b"two"
    blobs.delete(path, second)
    assert blobs.stat(path) is None
    with pytest.raises(gexc.NotFound):
        blobs.delete(path, None)


def test_a_read_of_a_replaced_generation_is_refused(backend, request):
    """Cloud Storage answers 412 to a download whose ifGenerationMatch no longer holds (the
    store then retries the job: the app replaced its photo while it was read)."""
    if "emulators" in request.node.name:
        pytest.xfail("fake-gcs-server v1.54 ignores ifGenerationMatch on downloads")
    path = f"{_path()}/original.jpg"
    first = backend.blobs.write(path, b"one", 0)
    backend.blobs.write(path, b"two", first)
    with pytest.raises((gexc.PreconditionFailed, gexc.NotFound)):
        backend.blobs.read(path, first)


def test_a_delete_of_a_replaced_generation_is_refused(backend, request):
    """What keeps a job that lost its lease from taking back a newer job's files."""
    if "emulators" in request.node.name:
        pytest.xfail("fake-gcs-server v1.54 ignores ifGenerationMatch on deletes")
    path = f"{_path()}/edited.jpg"
    first = backend.blobs.write(path, b"old job", 0)
    second = backend.blobs.write(path, b"new job", first)
    with pytest.raises(gexc.PreconditionFailed):
        backend.blobs.delete(path, first)
    assert backend.blobs.read(path, second) == b"new job"


def test_an_unconditional_delete_removes_whatever_is_there(backend):
    path = f"{_path()}/preview.jpg"
    backend.app_put(path, b"x")
    backend.blobs.delete(path, None)
    assert backend.blobs.stat(path) is None
