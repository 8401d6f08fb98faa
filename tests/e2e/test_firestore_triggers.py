"""Firestore trigger events that Google's Firestore emulator really sends, into the real server.

A second Firestore emulator runs with ``--functions_emulator`` pointing at a relay in this test;
it sends an event for every write to a session document, the function's own writes included.
Three triggers, one per delivery format, each on its own user ID:

- ``proto``: the Eventarc event as the emulator sends it (binary mode, ``application/protobuf``;
  the emulator base64-encodes the body, the relay decodes it as firebase-tools does);
- ``json``: the same event with its data in JSON, which Eventarc sends when a trigger was created
  without ``--event-data-content-type`` (gcloud's default is ``application/json``): the relay
  re-encodes the emulator's ``DocumentEventData`` with its JSON mapping;
- ``legacy``: the emulator's legacy background-function event
  (``providers/cloud.firestore/eventTypes/document.write``), forwarded unchanged.

Each must start the job when the app queues a session, ignore every write of the function
itself (no loop), and start the next edit when the app re-queues.
"""

from __future__ import annotations

import base64
import contextlib
import os
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import google.auth.credentials
import pytest
import requests
from google.cloud import firestore
from google.events.cloud.firestore import DocumentEventData

from tests.helpers import wait_for
from tests.samples import ellipse_mask, photo_jpeg
from tools.server import claims_by_session, log_records
from tools.stack.servers import HOST, find_firestore_jar, free_port

MODES = ("proto", "json", "legacy")
PATTERN = "users/fs-{mode}/sessions/{{sessionId}}"


class Relay:
    """Receives the emulator's trigger events and delivers them to the function."""

    def __init__(self) -> None:
        self.target = ""
        self.delivered: list[dict] = []  # {"mode", "document", "status", "code"}
        self._lock = threading.Lock()
        relay = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                self.send_response(200)
                self.end_headers()
                relay.deliver(self.path.rsplit("/", 1)[-1], dict(self.headers), body)

            def log_message(self, *_args: object) -> None:
                pass

        self._server = ThreadingHTTPServer((HOST, 0), Handler)
        self.address = f"{HOST}:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def deliver(self, mode: str, headers: dict, body: bytes) -> None:
        if mode == "legacy":
            document = _legacy_document(body)
            out_headers, out_body = {"content-type": "application/json"}, body
        else:
            data = DocumentEventData.deserialize(base64.b64decode(body))
            document = data.value
            out_headers = {k: v for k, v in headers.items() if k.lower().startswith("ce-")}
            out_headers.pop("ce-datacontenttype", None)
            if mode == "json":
                out_headers["content-type"] = "application/json"
                out_body = DocumentEventData.to_json(data).encode()
            else:
                out_headers["content-type"] = "application/protobuf"
                out_body = DocumentEventData.serialize(data)
        code = requests.post(self.target, headers=out_headers, data=out_body, timeout=300)
        status = _status_of(document)
        with self._lock:
            self.delivered.append(
                {"mode": mode, "document": _name_of(document), "status": status, "code": code}
            )

    def for_session(self, session: str) -> list[dict]:
        with self._lock:
            return [d for d in self.delivered if d["document"].endswith(f"/sessions/{session}")]

    def close(self) -> None:
        self._server.shutdown()


def _legacy_document(body: bytes) -> dict:
    import json

    return json.loads(body)["data"].get("value") or {}


def _name_of(document) -> str:
    return document.get("name", "") if isinstance(document, dict) else document.name


def _status_of(document) -> str | None:
    if isinstance(document, dict):
        return document.get("fields", {}).get("processingStatus", {}).get("stringValue")
    field = document.fields.get("processingStatus")
    return field.string_value if field is not None else None


@contextlib.contextmanager
def triggering_stack(stack, start_server, logdir, modes, **server_env):
    """(server, db, relay): a Firestore emulator sending trigger events for ``modes`` through a
    relay to a server started on it (with ``server_env``); everything stopped on exit."""
    jar = find_firestore_jar()
    if jar is None:
        pytest.fail("Google's Firestore emulator is not installed")
    relay = Relay()
    port = free_port()
    log = open(logdir / "firestore.log", "wb")  # noqa: SIM115
    main_class = "com.google.cloud.datastore.emulator.firestore.CloudFirestore"
    argv = ["java", "-cp", str(jar), main_class, "--host", HOST, "--port", str(port)]
    emulator = subprocess.Popen(
        [*argv, "--functions_emulator", relay.address],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://{HOST}:{port}"
    try:
        wait_for(lambda: _answers(base), timeout=120, interval=0.2)
        for mode in modes:
            _register(base, stack.project, mode)
        server = start_server(FIRESTORE_EMULATOR_HOST=f"{HOST}:{port}", **server_env)
        relay.target = server.url + "/"
        with _env(FIRESTORE_EMULATOR_HOST=f"{HOST}:{port}"):
            db = firestore.Client(
                project=stack.project, credentials=google.auth.credentials.AnonymousCredentials()
            )
        yield server, db, relay
    finally:
        relay.close()
        os.killpg(emulator.pid, 15)
        emulator.wait(30)
        log.close()


@pytest.fixture(scope="module")
def triggered(stack, start_server, tmp_path_factory):
    """(server, db, relay): a Firestore emulator sending trigger events, and a server on it."""
    with triggering_stack(
        stack, start_server, tmp_path_factory.mktemp("fs-triggers"), MODES
    ) as running:
        yield running


def _answers(base: str) -> bool:
    try:
        return requests.get(base + "/", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _register(base: str, project: str, mode: str) -> None:
    pattern = PATTERN.format(mode=mode)
    if mode == "legacy":
        resource = f"projects/{project}/databases/(default)/documents/{pattern}"
        response = requests.put(
            f"{base}/emulator/v1/projects/{project}/triggers/{mode}",
            json={
                "eventTrigger": {
                    "eventType": "providers/cloud.firestore/eventTypes/document.write",
                    "resource": resource,
                    "service": "firestore.googleapis.com",
                }
            },
            timeout=120,
        )
    else:
        response = requests.post(
            f"{base}/emulator/v1/projects/{project}/eventarcTrigger",
            params={"eventarcTriggerId": mode},
            json={
                "eventType": "google.cloud.firestore.document.v1.written",
                "database": "(default)",
                "namespace": "(default)",
                "document": {"value": pattern, "matchType": "PATH_PATTERN"},
            },
            timeout=120,
        )
    assert response.status_code == 200, response.text


@contextlib.contextmanager
def _env(**values: str):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.mark.parametrize("mode", MODES)
def test_firestore_trigger_events_start_each_edit_once_and_ignore_own_writes(triggered, fb, mode):
    server, db, relay = triggered
    bucket = fb[1]
    user, session = f"fs-{mode}", f"s{uuid.uuid4().hex[:10]}"
    base = f"users/{user}/sessions/{session}"
    bucket.blob(f"{base}/original.jpg").upload_from_string(photo_jpeg(), content_type="image/jpeg")
    bucket.blob(f"{base}/mask_auto.png").upload_from_string(
        ellipse_mask(), content_type="image/png"
    )
    ref = db.document(base)

    def finished_edit(prompt: str) -> dict:
        """Waits for the edit's completion *and* for the event of that completion write, so
        every event the function's own writes caused has been answered."""
        doc = wait_for(lambda: _completed(ref, prompt), timeout=300)
        wait_for(
            lambda: any(
                d["status"] == "completed" and d["code"].status_code == 200
                for d in relay.for_session(session)[seen:]
            ),
            timeout=60,
        )
        return doc

    seen = 0
    ref.set({"processingStatus": "queued", "prompt": "edit one"})  # what the app does
    first = finished_edit("edit one")
    assert first["attempts"] == 1
    seen = len(relay.for_session(session))
    ref.update({"processingStatus": "queued", "prompt": "edit two"})  # the app re-queues
    second = finished_edit("edit two")
    assert second["attempts"] == 1

    events = relay.for_session(session)
    assert {d["mode"] for d in events} == {mode}
    assert all(d["code"].status_code == 200 for d in events), [d["code"].text for d in events]
    statuses = [d["status"] for d in events]
    assert statuses.count("queued") == 2 and statuses.count("completed") >= 2
    assert "processing" in statuses  # the function's own writes came back as events
    assert claims_by_session(server)[session] == 2  # one job per edit, no loop
    ignored = [
        r["message"]
        for r in log_records(server)
        if r.get("message", "").startswith("event ignored: processingStatus")
    ]
    assert ignored, "the function's own writes should have been ignored"
    assert {b.name.rsplit("/", 1)[-1] for b in bucket.list_blobs(prefix=base + "/")} >= {
        "edited.jpg",
        "preview.jpg",
    }


def _completed(ref, prompt: str) -> dict | None:
    snap = ref.get()
    doc = snap.to_dict() if snap.exists else None
    if doc and doc.get("processingStatus") == "completed" and doc.get("promptUsed") == prompt:
        return doc
    time.sleep(0.05)
    return None
