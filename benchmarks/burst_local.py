"""A burst of jobs, for real: the Pub/Sub emulator's push subscription into the production server,
behind a front that admits like Cloud Run (``tools.front.CloudRunFront``: C request slots, a
~10 s pending window, then 429), with the tiny model asked for enough steps that a job takes
about 2 s of real compute.

Per burst size N and concurrency C (the server's ``INPAINT_MAX_QUEUED_JOBS`` = C, gunicorn
threads = C + 4) it prints: makespan (first publish -> last completion) / ideal (N x the median
job time, a job's own work from its document's ``busySeconds``), the GPU's busy fraction (the
sum of the jobs' ``inference`` stages over the makespan), the wait of a job (publish ->
completion, less its own work) p50/p95, 429s, jobs run twice (claimed more than once or
``attempts`` > 1: must be 0) and jobs lost (not completed: must be 0).

The emulator redelivers a refused push about once a second (no retry policy: see
tests/e2e/test_faults.py) and has no push backoff or window, so C = 1 looks better here than in
production; ``benchmarks/burst_sim.py`` models production's rules. Figures: docs/delivery.md.

Run: ``.venv/bin/python -m benchmarks.burst_local`` (N = 20 and 50 at C = 1 and 4; ``--help``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from benchmarks.soak import local_service, percentile, photo_and_mask
from tools.front import CloudRunFront
from tools.server import claims_by_session

STEPS = 20  # the tiny model at 0.0625 MP: about 2 s per job on two CPU cores


@dataclass
class BurstReport:
    jobs: int
    concurrency: int
    completed: int
    lost: int
    run_twice: int
    makespan_s: float
    job_s: float
    ratio: float
    gpu_busy: float
    wait_p50_s: float
    wait_p95_s: float
    answers_429: int
    answers: int

    def line(self) -> str:
        return (
            f"N={self.jobs:3d} C={self.concurrency}: makespan {self.makespan_s:6.1f} s = "
            f"{self.ratio:.2f} x ideal (N x {self.job_s:.2f} s), GPU busy {self.gpu_busy:.0%}, "
            f"wait p50 {self.wait_p50_s:.1f} s p95 {self.wait_p95_s:.1f} s, "
            f"429s {self.answers_429} of {self.answers} pushes, run twice {self.run_twice}, "
            f"lost {self.lost}"
        )


def run_burst(
    stack: Any,
    server: Any,
    db: Any,
    bucket: Any,
    jobs: int,
    concurrency: int,
    *,
    steps: int = STEPS,
    pending_s: float = 10.0,
    timeout: float = 1800.0,
) -> BurstReport:
    """Creates ``jobs`` sessions, publishes them at once, waits for all (or ``timeout``)."""
    from firebase_admin.firestore import SERVER_TIMESTAMP

    photo, mask = photo_and_mask()
    run = uuid.uuid4().hex[:8]
    sessions = []
    for i in range(jobs):
        user, session = f"burst{run}u{i % 7}", f"burst{run}s{i}"  # 7 users, several jobs each
        base = f"users/{user}/sessions/{session}"
        bucket.blob(f"{base}/original.jpg").upload_from_string(photo, "image/jpeg")
        bucket.blob(f"{base}/mask_auto.png").upload_from_string(mask, "image/png")
        db.document(base).set(
            {"processingStatus": "queued", "steps": steps, "createdAt": SERVER_TIMESTAMP}
        )
        sessions.append((user, session))
    claims_before = claims_by_session(server)
    topic, subscription = f"burst-{run}", f"burst-push-{run}"
    with CloudRunFront(slots=concurrency, pending_s=pending_s) as front:
        front.target = server.url + "/"
        stack.create_push_subscription(
            topic, subscription, front.url, ack_deadline_s=600, retry_policy=False
        )
        try:
            t0 = time.time()
            for user, session in sessions:
                stack.publish(topic, {"userId": user, "sessionId": session})
            docs = _wait_done(db, sessions, timeout)
        finally:
            stack.delete_subscription(subscription)
        answers = list(front.answers)
    claims = claims_by_session(server)
    done = [d for d in docs.values() if d.get("processingStatus") == "completed"]
    end = max((d["completedAt"].timestamp() for d in done), default=time.time())
    makespan = end - t0
    busy = [d["busySeconds"] for d in done]
    job_s = statistics.median(busy) if busy else 0.0
    waits = [d["completedAt"].timestamp() - t0 - d["busySeconds"] for d in done]
    gpu = sum(d["timings"].get("inference", 0.0) for d in done)
    run_twice = sum(
        1
        for _, s in sessions
        if claims.get(s, 0) - claims_before.get(s, 0) > 1 or docs.get(s, {}).get("attempts", 1) > 1
    )
    return BurstReport(
        jobs=jobs,
        concurrency=concurrency,
        completed=len(done),
        lost=jobs - len(done),
        run_twice=run_twice,
        makespan_s=round(makespan, 2),
        job_s=round(job_s, 3),
        ratio=round(makespan / (jobs * job_s), 3) if job_s else 0.0,
        gpu_busy=round(gpu / makespan, 3) if makespan > 0 else 0.0,
        wait_p50_s=round(statistics.median(waits), 2) if waits else 0.0,
        wait_p95_s=round(percentile(waits, 95), 2) if waits else 0.0,
        answers_429=sum(1 for a in answers if a.status == 429),
        answers=len(answers),
    )


def _wait_done(db: Any, sessions: list[tuple[str, str]], timeout: float) -> dict[str, dict]:
    refs = {s: db.document(f"users/{u}/sessions/{s}") for u, s in sessions}
    docs: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    while len(docs) < len(refs) and time.monotonic() < deadline:
        for snap in db.get_all([r for s, r in refs.items() if s not in docs]):
            doc = snap.to_dict() or {}
            if doc.get("processingStatus") in ("completed", "failed"):
                docs[snap.id] = doc
        time.sleep(0.2)
    return docs


def server_settings(concurrency: int) -> dict[str, str]:
    """The production pairing: C admitted jobs, C + 4 threads (probes always answer)."""
    return {"INPAINT_MAX_QUEUED_JOBS": str(concurrency), "THREADS": str(concurrency + 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[20, 50])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    reports = []
    for concurrency in args.concurrency:
        with local_service(server_settings(concurrency)) as (stack, server, db, bucket):
            for jobs in args.jobs:
                report = run_burst(stack, server, db, bucket, jobs, concurrency, steps=args.steps)
                reports.append(report)
                print(json.dumps(asdict(report)) if args.json else report.line(), flush=True)
    ok = all(r.lost == 0 and r.run_twice == 0 for r in reports)
    if not ok:
        print("FAILED: jobs lost or run twice", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
