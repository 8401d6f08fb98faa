"""The log fields monitoring.yaml's metric and alerts filter on, as the real server writes them:
a recorded failure is a WARNING (or worse) with ``errorCode``; a completed job's line is
``message: "job completed"`` with a numeric ``busySeconds``. (Cloud Logging's filter language
itself cannot run here; its field names and values are checked against real log lines.)"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import yaml

from tools import eventlib
from tools.server import log_records

ROOT = Path(__file__).resolve().parents[2]
SEVERE = {"WARNING", "ERROR", "CRITICAL"}


def _records(server, session):
    return [r for r in log_records(server) if r.get("sessionId") == session]


def test_recorded_failures_carry_severity_and_error_code(shared_server, sessions):
    bad_photo = sessions.create(photo=b"not an image")
    assert shared_server.post(*eventlib.pubsub_binary(*bad_photo)).status_code == 200
    assert sessions.doc(*bad_photo)["errorCode"] == "invalid_image"
    # A request whose job died two days ago (its lease long expired), its event back only now.
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    dead = {"leaseOwner": "gone:lease", "leaseExpiresAt": old, "attempts": 1}
    expired = sessions.create(doc={"processingStatus": "processing", "eventId": "old"} | dead)
    event = eventlib.pubsub_binary(*expired, "old", time=old.isoformat().replace("+00:00", "Z"))
    assert shared_server.post(*event).status_code == 200
    assert sessions.doc(*expired)["errorCode"] == "expired"
    for (_, session), code in ((bad_photo, "invalid_image"), (expired, "expired")):
        counted = [
            r
            for r in _records(shared_server, session)
            if r.get("severity") in SEVERE and r.get("errorCode") == code
        ]
        assert len(counted) == 1, _records(shared_server, session)


def test_a_delivery_without_a_session_logs_its_reason_for_the_metric(shared_server, sessions):
    user, session = sessions.create(create_doc=False)
    assert shared_server.post(*eventlib.pubsub_binary(user, session)).status_code == 200
    (ignored,) = [r for r in _records(shared_server, session) if r.get("ignoredReason")]
    assert ignored["ignoredReason"] == "session_missing" and "errorCode" not in ignored
    metric = next(
        d
        for d in yaml.safe_load_all((ROOT / "monitoring.yaml").read_text())
        if d and d["metadata"]["name"] == "inpaint-ignored-deliveries"
    )
    assert "jsonPayload.ignoredReason:*" in metric["spec"]["filter"]


def test_a_completed_job_logs_its_busy_seconds(shared_server, sessions):
    user, session = sessions.create()
    assert shared_server.post(*eventlib.pubsub_binary(user, session)).status_code == 200
    (done,) = [r for r in _records(shared_server, session) if r["message"] == "job completed"]
    assert isinstance(done["busySeconds"], float) and "errorCode" not in done
    policy = next(
        d
        for d in yaml.safe_load_all((ROOT / "monitoring.yaml").read_text())
        if d and d["metadata"]["name"] == "inpaint-slow-jobs"
    )
    log_filter = policy["spec"]["conditions"][0]["conditionMatchedLog"]["filter"]
    assert 'jsonPayload.message="job completed"' in log_filter
    assert "jsonPayload.busySeconds>" in log_filter
