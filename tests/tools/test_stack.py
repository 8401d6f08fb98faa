"""The local stack runs the real Google emulators and behaves like production where we rely on it.

One stack serves the whole module (the two JVMs take ~2-3 s to start on two cores). Each test uses
its own document/object/topic names, so the order of the tests does not matter.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest
import requests
from google.api_core import exceptions as gexc

from tools.stack import LocalStack, StackError, decode_push

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def app(stack: LocalStack):
    return stack.firebase_app("tools-stack-test")


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------------------------
# environment
# --------------------------------------------------------------------------------------------


def test_env_is_well_formed_and_applied(stack: LocalStack) -> None:
    env = stack.env
    assert re.fullmatch(r"127\.0\.0\.1:\d+", env["FIRESTORE_EMULATOR_HOST"])
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", env["STORAGE_EMULATOR_HOST"])
    assert re.fullmatch(r"127\.0\.0\.1:\d+", env["PUBSUB_EMULATOR_HOST"])
    assert env["GOOGLE_CLOUD_PROJECT"] == env["INPAINT_PROJECT_ID"] == "demo-inpaint"
    assert env["INPAINT_BUCKET"] == env["FIREBASE_STORAGE_BUCKET"]
    assert env["INPAINT_BUCKET"] == "demo-inpaint.firebasestorage.app"
    ports = {
        env["FIRESTORE_EMULATOR_HOST"],
        env["STORAGE_EMULATOR_HOST"].removeprefix("http://"),
        env["PUBSUB_EMULATOR_HOST"],
    }
    assert len(ports) == 3
    for key, value in env.items():
        assert os.environ[key] == value
    # The addresses answer (through the proxies) and the bucket exists.
    fs = requests.get(f"http://{env['FIRESTORE_EMULATOR_HOST']}/", timeout=5)
    assert fs.status_code == 200
    bucket = requests.get(f"{env['STORAGE_EMULATOR_HOST']}/storage/v1/b/{stack.bucket}", timeout=5)
    assert bucket.status_code == 200
    assert bucket.json()["name"] == stack.bucket
    # exports() is shell-sourceable and round-trips.
    parsed = dict(
        shlex.split(line)[1].split("=", 1) for line in stack.exports().splitlines() if line
    )
    assert parsed == env
    # Logs go to files in the work dir.
    assert set(stack.log_paths) == {"firestore", "storage", "pubsub"}
    assert all(p.parent == stack.workdir and p.is_file() for p in stack.log_paths.values())


# --------------------------------------------------------------------------------------------
# Firestore
# --------------------------------------------------------------------------------------------


def test_firestore_write_read_transaction_and_contended_compare_and_set(app) -> None:
    """The emulator enforces the write precondition the product's claims rely on
    (``inpaint.session.firebase``): of 4 writers that read the same version, exactly one wins.

    (The claims do not use transactions: the emulator's pessimistic transaction locks make
    contending transactions wait for lock timeouts and abort together, which made a contended
    transaction test flaky on a loaded machine. An uncontended transaction is checked here.)
    """
    from firebase_admin import firestore

    db = firestore.client(app)
    assert db._emulator_host == os.environ["FIRESTORE_EMULATOR_HOST"]
    ref = db.collection(uid("jobs")).document("job-1")
    ref.set({"state": "queued", "owner": None, "n": 1})
    assert ref.get().to_dict() == {"state": "queued", "owner": None, "n": 1}

    @firestore.transactional
    def bump(transaction) -> int:
        n = ref.get(transaction=transaction).get("n") + 1
        transaction.update(ref, {"n": n})
        return n

    assert bump(db.transaction()) == 2

    snap = ref.get()
    barrier = threading.Barrier(4)

    def claim(worker: int) -> bool:
        option = db.write_option(last_update_time=snap.update_time)
        barrier.wait()
        try:
            ref.update({"owner": worker, "state": "running"}, option=option)
            return True
        except gexc.FailedPrecondition:
            return False

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(claim, range(4)))
    assert results.count(True) == 1
    winner = results.index(True)
    assert ref.get().to_dict() == {"state": "running", "owner": winner, "n": 2}


def test_firestore_outage_fails_fast_and_keeps_data(stack: LocalStack, app) -> None:
    from firebase_admin import firestore

    db = firestore.client(app)
    ref = db.collection(uid("outage")).document("d")
    ref.set({"kept": True})
    with stack.outage("firestore"):
        t0 = time.monotonic()
        with pytest.raises((gexc.ServiceUnavailable, gexc.DeadlineExceeded)):
            ref.get(retry=None, timeout=3)
        with pytest.raises((gexc.ServiceUnavailable, gexc.DeadlineExceeded)):
            ref.set({"kept": False}, retry=None, timeout=3)
        assert time.monotonic() - t0 < 6.5
    # The client's own retry rides out gRPC's reconnect backoff; the data is intact.
    assert ref.get(timeout=30).to_dict() == {"kept": True}


# --------------------------------------------------------------------------------------------
# Cloud Storage
# --------------------------------------------------------------------------------------------


def test_storage_roundtrip_metadata_and_preconditions(stack: LocalStack, app) -> None:
    from firebase_admin import storage

    bucket = storage.bucket(app=app)
    assert bucket.name == stack.bucket
    name = f"{uid('results')}/out.png"
    blob = bucket.blob(name)
    assert not blob.exists()
    blob.cache_control = "public, max-age=3600"
    blob.upload_from_string(b"\x89PNG-bytes", content_type="image/png", if_generation_match=0)
    assert blob.exists()

    fetched = bucket.get_blob(name)
    assert fetched is not None
    assert fetched.content_type == "image/png"
    assert fetched.cache_control == "public, max-age=3600"
    assert fetched.size == len(b"\x89PNG-bytes")
    assert fetched.download_as_bytes() == b"\x89PNG-bytes"

    # Preconditions behave like GCS: "create only if absent" fails once it exists ...
    with pytest.raises(gexc.PreconditionFailed):
        bucket.blob(name).upload_from_string(b"other", if_generation_match=0)
    # ... and a stale generation is refused while the current one is accepted.
    generation = fetched.generation
    bucket.blob(name).upload_from_string(b"v2", if_generation_match=generation)
    with pytest.raises(gexc.PreconditionFailed):
        bucket.blob(name).upload_from_string(b"v3", if_generation_match=generation)
    assert bucket.blob(name).download_as_bytes() == b"v2"


def test_storage_outage_fails_fast_and_keeps_data(stack: LocalStack, app) -> None:
    from firebase_admin import storage

    bucket = storage.bucket(app=app)
    name = f"{uid('outage')}/in.jpg"
    bucket.blob(name).upload_from_string(b"before", content_type="image/jpeg")
    with stack.outage("storage"):
        t0 = time.monotonic()
        with pytest.raises(requests.exceptions.ConnectionError):
            bucket.blob(name).download_as_bytes(retry=None, timeout=3)
        with pytest.raises(requests.exceptions.ConnectionError):
            bucket.blob(f"{name}.new").upload_from_string(b"x", retry=None, timeout=3)
        assert time.monotonic() - t0 < 6.5
        # The server itself still holds the object (the outage is in the network only).
        assert name in stack.list_objects()
    assert bucket.blob(name).download_as_bytes(retry=None, timeout=10) == b"before"
    assert not bucket.blob(f"{name}.new").exists()


def test_outage_of_unknown_service_is_an_error(stack: LocalStack) -> None:
    with pytest.raises(StackError, match="unknown service"), stack.outage("bigquery"):
        pass


# --------------------------------------------------------------------------------------------
# Pub/Sub push
# --------------------------------------------------------------------------------------------


class PushSink:
    """A tiny HTTP endpoint that records pushes and answers with scripted status codes."""

    def __init__(self, codes: list[int]) -> None:
        self.codes = codes
        self.requests: list[tuple[float, dict[str, str], dict]] = []
        self.cond = threading.Condition()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with sink.cond:
                    n = len(sink.requests)
                    sink.requests.append((time.monotonic(), dict(self.headers), json.loads(body)))
                    sink.cond.notify_all()
                code = sink.codes[min(n, len(sink.codes) - 1)]
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/events"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float) -> None:
        with self.cond:
            self.cond.wait_for(lambda: len(self.requests) >= count, timeout)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_push_envelope_and_redelivery_after_500(stack: LocalStack) -> None:
    sink = PushSink([500, 204])
    topic, name = uid("jobs"), uid("push")
    try:
        topic_path = stack.create_topic(topic)
        assert topic_path == f"projects/demo-inpaint/topics/{topic}"
        sub_path = stack.create_push_subscription(
            topic, name, sink.url, min_backoff_s=1, max_backoff_s=2
        )
        payload = {"uid": "u1", "session": "s1", "n": 3}
        message_id = stack.publish(topic, payload)
        assert message_id

        sink.wait_for(2, timeout=15)
        assert len(sink.requests) >= 2, sink.requests
        (t1, headers, first), (t2, _, second) = sink.requests[:2]
        # The production push envelope, camelCase and snake_case both present.
        assert first["subscription"] == sub_path
        msg = first["message"]
        assert msg["messageId"] == msg["message_id"] == message_id
        assert msg["publishTime"] == msg["publish_time"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", msg["publishTime"])
        assert msg["attributes"] == {}
        assert json.loads(base64.b64decode(msg["data"])) == payload
        assert decode_push(first) == payload
        assert headers["Content-Type"] == "application/json"
        assert "Authorization" not in headers  # no OIDC token locally
        # A 500 is redelivered: same message, after the retry policy's backoff.
        assert second["message"]["messageId"] == message_id
        assert second == first
        assert 0.5 <= t2 - t1 <= 8

        # 204 acknowledged it: nothing more arrives. (Unacked, the next attempt would come
        # ~3 s later: the emulator's push loop adds about a second to the backoff.)
        time.sleep(4)
        assert len(sink.requests) == 2
    finally:
        stack.delete_subscription(name)
        sink.close()


# --------------------------------------------------------------------------------------------
# reset
# --------------------------------------------------------------------------------------------


def test_reset_empties_firestore_and_bucket_but_keeps_bucket(stack: LocalStack, app) -> None:
    from firebase_admin import firestore, storage

    db = firestore.client(app)
    coll = db.collection(uid("users"))
    coll.document("a").set({"x": 1})
    coll.document("b").collection("sessions").document("s").set({"y": 2})
    bucket = storage.bucket(app=app)
    bucket.blob("a/b/c.png").upload_from_string(b"1")
    bucket.blob("name with spaces & ünïcode.txt").upload_from_string(b"2")
    assert len(stack.list_objects()) >= 2

    stack.reset()

    assert list(coll.stream()) == []
    assert not coll.document("b").collection("sessions").document("s").get().exists
    assert stack.list_objects() == []
    assert list(bucket.list_blobs()) == []
    assert bucket.exists()
    # Still usable afterwards.
    bucket.blob("after.txt").upload_from_string(b"ok")
    assert bucket.blob("after.txt").download_as_bytes() == b"ok"


# --------------------------------------------------------------------------------------------
# errors and the CLI
# --------------------------------------------------------------------------------------------


def test_missing_jar_binary_or_java_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "cloud-firestore-emulator.jar"
    with pytest.raises(StackError) as err:
        LocalStack(services=("firestore",), firestore_jar=missing, workdir=tmp_path).start()
    assert str(missing) in str(err.value)
    assert "google-cloud-cli-firestore-emulator" in str(err.value)

    with pytest.raises(StackError, match="fake-gcs-server binary not found at /nonexistent/fgs"):
        LocalStack(services=("storage",), gcs_binary=Path("/nonexistent/fgs")).start()

    with pytest.raises(StackError, match="java not found"):
        LocalStack(services=("pubsub",), java="/nonexistent/java").start()

    with pytest.raises(StackError, match="unknown service"):
        LocalStack(services=("spanner",))
    # Nothing was started: no log files were written.
    assert not list(tmp_path.glob("*.log"))


def test_server_that_dies_or_never_answers_fails_with_its_log_tail(tmp_path: Path) -> None:
    dies = tmp_path / "dies.sh"
    dies.write_text("#!/bin/sh\necho 'fatal: cannot open data dir' >&2\nexit 3\n")
    dies.chmod(0o755)
    with pytest.raises(StackError, match="exited with status 3") as err:
        LocalStack(services=("storage",), gcs_binary=dies, workdir=tmp_path / "a").start()
    assert "fatal: cannot open data dir" in str(err.value)

    hangs = tmp_path / "hangs.sh"
    hangs.write_text("#!/bin/sh\necho 'still warming up'\nsleep 30 & sleep 30\n")
    hangs.chmod(0o755)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    t0 = time.monotonic()
    with pytest.raises(StackError, match="did not answer") as err:
        LocalStack(
            services=("storage",), gcs_binary=hangs, workdir=tmp_path / "b", start_timeout_s=0.5
        ).start()
    assert time.monotonic() - t0 < 8
    assert "still warming up" in str(err.value)
    assert str(tmp_path / "b" / "storage.log") in str(err.value)
    # The whole process group (the script and its background sleep) is gone.
    leftovers = [
        p
        for p in psutil.Process().children(recursive=True)
        if p.pid not in before and p.status() != psutil.STATUS_ZOMBIE
    ]
    assert leftovers == []


def test_cli_up_prints_exports_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    env_file = tmp_path / "stack.env"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "tools.stack", "up", "--project", "demo-cli"),
            *("--services", "storage", "--env-file", str(env_file), "--workdir", str(tmp_path)),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines: list[str] = []
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.strip() == "ready":
                break
        assert lines and lines[-1] == "ready", (lines, proc.stderr.read() if proc.stderr else "")
        exports = [line for line in lines if line.startswith("export ")]
        env = dict(shlex.split(line)[1].split("=", 1) for line in exports)
        assert env["GOOGLE_CLOUD_PROJECT"] == "demo-cli"
        assert env["INPAINT_BUCKET"] == "demo-cli.firebasestorage.app"
        assert "FIRESTORE_EMULATOR_HOST" not in env
        assert env_file.read_text().splitlines() == exports
        listing = requests.get(f"{env['STORAGE_EMULATOR_HOST']}/storage/v1/b", timeout=5).json()
        assert [b["name"] for b in listing["items"]] == ["demo-cli.firebasestorage.app"]

        children = psutil.Process(proc.pid).children(recursive=True)
        assert any("fake-gcs-server" in c.name() for c in children)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        _, alive = psutil.wait_procs(children, timeout=5)
        assert alive == []
        assert (tmp_path / "storage.log").is_file()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
