"""How many Firestore trigger events one job produces at the production intervals, measured with
the Firestore emulator's real trigger (the machinery of test_firestore_triggers.py).

With the optional Firestore trigger enabled (docs/runbook.md 3.5), every write of a session
document is an event that Eventarc delivers to the service: the app's queued write starts the
job; the function's own writes (claim, a heartbeat/progress write every
``min(INPAINT_PROGRESS_INTERVAL_SECONDS, INPAINT_LEASE_SECONDS / 3)`` = 3 s while the job is
admitted, queue positions, the result) each come back as an event that the service ignores.
Each is a request that needs a Cloud Run request slot: the deploy keeps slots that long jobs
cannot hold (each GPU profile's request slots > its admitted jobs,
tests/deploy/test_delivery_settings.py).

Here three jobs are queued at once on one server with the production intervals (lease 180 s,
progress interval 3 s; the tiny model, so the jobs are short): the test records, per job, the
events and the seconds the job was admitted, and checks that the function's writes stay
within the bound ``3 + queue positions + ceil(admitted seconds / 3)`` and that every event was
answered 200 (none refused, so none retried or dead-lettered). The figures are written to
``build/trigger-events.json`` and quoted in docs/delivery.md.
"""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import pytest

from tests.e2e.test_firestore_triggers import _completed, triggering_stack
from tests.helpers import wait_for
from tests.samples import ellipse_mask, photo_jpeg

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION_INTERVALS = {
    "INPAINT_PROGRESS_INTERVAL_SECONDS": "3",
    "INPAINT_LEASE_SECONDS": "180",
    "INPAINT_MAX_QUEUED_JOBS": "4",
    "THREADS": "8",
    "INPAINT_WORK_MEGAPIXELS": "0.25",
}
HEARTBEAT_S = min(3.0, 180.0 / 3)
JOBS = 3
STEPS = 60


@pytest.fixture(scope="module")
def production_triggered(stack, start_server, tmp_path_factory):
    with triggering_stack(
        stack,
        start_server,
        tmp_path_factory.mktemp("fs-events"),
        ["proto"],
        **PRODUCTION_INTERVALS,
    ) as running:
        yield running


def test_trigger_events_per_job_at_the_production_intervals(production_triggered, fb):
    _server, db, relay = production_triggered
    bucket = fb[1]
    sessions = [f"s{uuid.uuid4().hex[:10]}" for _ in range(JOBS)]
    refs = []
    for session in sessions:
        base = f"users/fs-proto/sessions/{session}"
        bucket.blob(f"{base}/original.jpg").upload_from_string(
            photo_jpeg(), content_type="image/jpeg"
        )
        bucket.blob(f"{base}/mask_auto.png").upload_from_string(
            ellipse_mask(), content_type="image/png"
        )
        refs.append(db.document(base))
    for ref in refs:  # what the app does, three users' jobs arriving together
        ref.set({"processingStatus": "queued", "prompt": "events", "steps": STEPS})
    docs = [wait_for(lambda ref=ref: _completed(ref, "events"), timeout=600) for ref in refs]
    for session in sessions:  # the event of each completion write has been answered too
        wait_for(
            lambda session=session: any(
                d["status"] == "completed" and d["code"].status_code == 200
                for d in relay.for_session(session)
            ),
            timeout=60,
        )

    figures = []
    for session, doc in zip(sessions, docs, strict=True):
        events = relay.for_session(session)
        assert all(d["code"].status_code == 200 for d in events), [d["code"].text for d in events]
        own = [d for d in events if d["status"] != "queued"]
        admitted_s = (doc["updatedAt"] - doc["startedAt"]).total_seconds()
        bound = 3 + (JOBS - 1) + math.ceil(admitted_s / HEARTBEAT_S)
        assert len(own) <= bound, (len(own), admitted_s)
        figures.append(
            {
                "events": len(events),
                "own_writes": len(own),
                "admitted_s": round(admitted_s, 1),
                "bound": bound,
            }
        )
    out = ROOT / "build" / "trigger-events.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"heartbeat_s": HEARTBEAT_S, "jobs": figures}, indent=1))
    print(json.dumps(figures))
