"""The instance's GPU queue against the real stack: jobs admitted while another holds the GPU
wait in a fair order, publish their place (``queuePosition``), stop at once when cancelled,
are not billed for waiting, and a delivery beyond the admission limit is kept (503) untouched.

The job that holds the GPU is a long one (200 steps; on CUDA at 4 MP, so that it still runs when
the test reacts), released by the test itself (the app's cancel), never by waiting for time.
"""

from __future__ import annotations

import concurrent.futures as cf

import pytest
import torch

from tests.helpers import wait_for
from tools import eventlib
from tools.server import log_records

INPUTS = {"original.jpg", "mask_auto.png"}
ALL_FILES = INPUTS | {"edited.jpg", "preview.jpg"}
HOLDER = {"steps": 200}
QUEUE_SETTINGS = {
    "INPAINT_MAX_QUEUED_JOBS": "4",
    **({"INPAINT_WORK_MEGAPIXELS": "4.0"} if torch.cuda.is_available() else {}),
}


@pytest.fixture(scope="module")
def queue_server(start_server):
    return start_server(**QUEUE_SETTINGS)


def _position(sessions, job, expected):
    doc = sessions.doc(*job)
    return doc if doc and doc.get("queuePosition") == expected else None


def _messages(server, session_id):
    return [r["message"] for r in log_records(server) if r.get("sessionId") == session_id]


def test_jobs_wait_for_the_gpu_in_a_fair_order_and_see_their_place(queue_server, sessions):
    a1 = sessions.create(doc=HOLDER)
    a2 = sessions.create(user=a1[0])  # user a's second job
    b1, c1, d1 = (sessions.create() for _ in range(3))

    def ref(job):
        return sessions.db.document(f"users/{job[0]}/sessions/{job[1]}")

    def post(job):
        return queue_server.post(*eventlib.pubsub_binary(*job)).status_code

    with cf.ThreadPoolExecutor(4) as pool:
        holder = pool.submit(post, a1)
        wait_for(lambda: (sessions.doc(*a1) or {}).get("progress", 0) > 0, timeout=300)
        # User a's second job waits behind a1 (on the GPU): one job ahead.
        second = pool.submit(post, a2)
        wait_for(lambda: _position(sessions, a2, 1), timeout=60)
        # User b's first job goes ahead of a's second (fair across users): a2 moves back.
        first_b = pool.submit(post, b1)
        wait_for(lambda: _position(sessions, b1, 1), timeout=60)
        wait_for(lambda: _position(sessions, a2, 2), timeout=60)
        first_c = pool.submit(post, c1)
        wait_for(lambda: _position(sessions, c1, 2), timeout=60)
        wait_for(lambda: _position(sessions, a2, 3), timeout=60)

        # Four jobs admitted, the limit: the fifth delivery is kept (503) and nothing is written.
        before = sessions.doc(*d1)
        assert post(d1) == 503
        assert sessions.doc(*d1) == before

        # The app cancels a2 while it waits: it stops at once, not at its turn (a1 still runs).
        ref(a2).update({"processingStatus": "cancelled"})
        assert second.result(timeout=60) == 200
        assert sessions.doc(*a1)["processingStatus"] == "processing"
        assert sessions.files(*a2) == INPUTS
        assert "job left the queue" not in _messages(queue_server, a2[1])
        assert "job stopped: the app cancelled the job" in _messages(queue_server, a2[1])

        # The holder is cancelled: the GPU goes to b1, then c1.
        ref(a1).update({"processingStatus": "cancelled"})
        assert holder.result(timeout=300) == 200
        assert first_b.result(timeout=300) == 200 and first_c.result(timeout=300) == 200

    for job in (b1, c1):
        doc = sessions.doc(*job)
        assert doc["processingStatus"] == "completed" and doc["queuePosition"] is None
        assert sessions.files(*job) == ALL_FILES
        timings = doc["timings"]
        assert timings["queue"] > 0
        # Billed for its own work only: the wall time from claim to completion, less the wait.
        wall = (doc["completedAt"] - doc["startedAt"]).total_seconds()
        assert abs(doc["busySeconds"] + timings["queue"] - wall) < 1.0
        assert timings["total"] == pytest.approx(doc["busySeconds"], abs=0.01)
    order = [
        r["sessionId"] for r in log_records(queue_server) if r["message"] == "job left the queue"
    ]
    assert [s for s in order if s in (b1[1], c1[1])] == [b1[1], c1[1]]

    # The kept delivery, delivered again once there is room, completes.
    assert post(d1) == 200
    assert sessions.doc(*d1)["processingStatus"] == "completed"


def test_a_burst_through_pubsub_and_a_cloud_run_like_front_runs_every_job_once(
    queue_server, stack, fb
):
    """The local burst benchmark at a small size (benchmarks/burst_local.py): the emulator's push
    subscription, a front with 2 request slots and a 10 s pending window, 12 jobs of 7 users."""
    from benchmarks.burst_local import run_burst

    db, bucket = fb
    report = run_burst(stack, queue_server, db, bucket, jobs=12, concurrency=2, steps=2)
    assert report.completed == 12 and report.lost == 0 and report.run_twice == 0, report
    assert report.answers >= 12 and report.makespan_s > 0 and 0 < report.gpu_busy <= 1
