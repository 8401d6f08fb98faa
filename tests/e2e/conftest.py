"""Fixtures for tests against the real stack: Google's emulators, fake-gcs-server, a gunicorn
process started with the production serving command, and the tiny model through the production
loading code."""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from firebase_admin import firestore, storage
from PIL import Image

from tests.helpers import create_session
from tools.server import FAST_SETTINGS, ServerProcess


@pytest.fixture(scope="session")
def server_env(stack, tiny_model_dir) -> dict[str, str]:
    return stack.env | FAST_SETTINGS | {"INPAINT_MODEL_DIR": str(tiny_model_dir)}


@contextlib.contextmanager
def _servers(server_env: dict[str, str], logs: Path) -> Iterator[Callable[..., ServerProcess]]:
    """A starter of servers with extra settings (waits for /ready by default); on exit every
    server it started is stopped, all at once (each takes a second or two to shut down)."""
    started: list[ServerProcess] = []

    def start(wait: bool = True, **env: str) -> ServerProcess:
        server = ServerProcess(server_env | env, logs / f"server-{len(started)}.log")
        started.append(server.start())
        if wait:
            server.wait_ready()
        return server

    try:
        yield start
    finally:
        stop_all(started)


def stop_all(servers: list[ServerProcess]) -> None:
    """Stops the servers in parallel."""
    threads = [threading.Thread(target=s.stop, name="stop-server") for s in servers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@pytest.fixture(scope="module")
def start_server(server_env, tmp_path_factory) -> Iterator[Callable[..., ServerProcess]]:
    """Starts servers for one test module; they are stopped when the module is done, so idle
    servers of earlier modules do not hold memory for the rest of the session."""
    with _servers(server_env, tmp_path_factory.mktemp("server-logs")) as start:
        yield start


@pytest.fixture(scope="module")
def server(start_server) -> ServerProcess:
    return start_server()


@pytest.fixture(scope="session")
def fb(stack):
    app = stack.firebase_app("tests")
    return firestore.client(app), storage.bucket(app=app)


class Sessions:
    """Creates sessions the way the app does and reads back what the function wrote."""

    def __init__(self, db, bucket):
        self.db, self.bucket = db, bucket

    def create(
        self,
        *,
        photo: bytes | None = None,
        mask: bytes | None = None,
        doc: dict | None = None,
        upload_photo: bool = True,
        upload_mask: bool = True,
        create_doc: bool = True,
        user: str | None = None,
    ) -> tuple[str, str]:
        """A session as the app creates it (``tests.helpers.create_session``)."""
        return create_session(
            lambda path, data, kind: self.bucket.blob(path).upload_from_string(
                data, content_type=kind
            ),
            lambda path, fields: self.db.document(path).set(fields),
            firestore.SERVER_TIMESTAMP,
            photo=photo,
            mask=mask,
            doc=doc,
            upload_photo=upload_photo,
            upload_mask=upload_mask,
            create_doc=create_doc,
            user=user,
        )

    def doc(self, user: str, session: str) -> dict | None:
        snap = self.db.document(f"users/{user}/sessions/{session}").get()
        return snap.to_dict() if snap.exists else None

    def wait(self, user, session, statuses=("completed", "failed"), timeout=300.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            doc = self.doc(user, session)
            if doc and doc.get("processingStatus") in statuses:
                return doc
            time.sleep(0.1)
        raise TimeoutError(f"{user}/{session} not in {statuses}: {self.doc(user, session)}")

    def blob(self, user, session, name):
        return self.bucket.get_blob(f"users/{user}/sessions/{session}/{name}")

    def image(self, user, session, name) -> Image.Image:
        blob = self.blob(user, session, name)
        assert blob is not None, f"{name} missing"
        return Image.open(io.BytesIO(blob.download_as_bytes()))

    def files(self, user, session) -> set[str]:
        prefix = f"users/{user}/sessions/{session}/"
        return {b.name.removeprefix(prefix) for b in self.bucket.list_blobs(prefix=prefix)}


@pytest.fixture(scope="session")
def sessions(fb) -> Sessions:
    return Sessions(*fb)


def inference_count(server: ServerProcess) -> int:
    """Inferences the server ran for jobs (the log line the job writes when it claims)."""
    return server.log_text().count('"message": "job claimed"')


# --- shared by the fault, hostile-input, security and soak tests -------------------------------


@pytest.fixture(scope="session")
def shared_server(server_env, tmp_path_factory) -> Iterator[ServerProcess]:
    """One default-settings server for every module that needs nothing special (saves a start
    per module); tests that change its state restore it or use a dedicated server."""
    with _servers(server_env, tmp_path_factory.mktemp("shared-server-logs")) as start:
        yield start()


@pytest.fixture(scope="module")
def server_factory(server_env, tmp_path_factory) -> Iterator[Callable[..., ServerProcess]]:
    """Creates servers *without starting them*: the port is fixed at creation, so a test can
    point a push subscription at it first. All are stopped at the end of the module."""
    made: list[ServerProcess] = []
    logs = tmp_path_factory.mktemp("factory-server-logs")

    def make(port: int | None = None, **env: str) -> ServerProcess:
        server = ServerProcess(server_env | env, logs / f"server-{len(made)}.log")
        if port is not None:  # e.g. a restart behind a push subscription's fixed endpoint
            server.port, server.url = port, f"http://127.0.0.1:{port}"
            server.env["PORT"] = str(port)
        made.append(server)
        return server

    yield make
    stop_all(made)


def bucket_state(bucket) -> dict[str, tuple]:
    """Every object in the bucket -> (generation, md5): any write, anywhere, changes this."""
    return {b.name: (b.generation, b.md5_hash) for b in bucket.list_blobs()}


def firestore_state(db) -> dict[str, str]:
    """Every session document (collection group) and every ``users/*`` document, by path, as
    canonical JSON (so that a stored NaN compares equal to itself)."""
    import json

    def canonical(data: dict | None) -> str:
        return json.dumps(data, sort_keys=True, default=repr)

    docs = {
        s.reference.path: canonical(s.to_dict()) for s in db.collection_group("sessions").stream()
    }
    for ref in db.collection("users").list_documents():
        snap = ref.get()
        docs[ref.path] = canonical(snap.to_dict() if snap.exists else None)
    return docs


def blob_versions(sessions: Sessions, user: str, session: str) -> dict[str, tuple]:
    """Each of the session's files -> (generation, metageneration, md5). A GCS generation is the
    write time in microseconds and changes on every write, so equal tuples mean "not rewritten"."""
    prefix = f"users/{user}/sessions/{session}/"
    return {
        b.name.removeprefix(prefix): (b.generation, b.metageneration, b.md5_hash)
        for b in sessions.bucket.list_blobs(prefix=prefix)
    }
