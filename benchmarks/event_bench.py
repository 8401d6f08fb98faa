"""Event-to-``completed`` latency with the tiny model: everything a job costs except the model.

One server process (the production serving command) against the local emulators; for each job a
session is created the way the app does it, then an Eventarc Pub/Sub event (binary mode) is posted
and the clock runs until the session document says ``completed`` (the function answers only after
writing it; the document is read back to confirm). ``timings.inference`` from the document is the
model's share; total minus that is the time spent outside the model: event parsing, the claim
(Firestore compare-and-set), Storage download, decoding and checks, paste-back, JPEG encoding,
uploads, the completion write, HTTP.

Prints the median and p95 over ``--jobs`` (default 30) after ``--warmup`` (default 3) uncounted
jobs. Target: under 1 s median event-to-completed with the tiny model.

Run: ``.venv/bin/python benchmarks/event_bench.py`` (or ``make bench``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid

from benchmarks.soak import local_service, percentile, photo_and_mask
from tools import eventlib

TARGET_S = 1.0


def one_job(server, db, bucket, photo: bytes, mask: bytes) -> dict[str, float]:
    from firebase_admin.firestore import SERVER_TIMESTAMP

    user, session = f"bench{uuid.uuid4().hex[:8]}", f"s{uuid.uuid4().hex[:10]}"
    base = f"users/{user}/sessions/{session}"
    bucket.blob(f"{base}/original.jpg").upload_from_string(photo, "image/jpeg")
    bucket.blob(f"{base}/mask_auto.png").upload_from_string(mask, "image/png")
    db.document(base).set({"processingStatus": "queued", "createdAt": SERVER_TIMESTAMP})
    headers, body = eventlib.pubsub_binary(user, session)
    t0 = time.perf_counter()
    response = server.post(headers, body)
    answered = time.perf_counter() - t0
    doc = db.document(base).get().to_dict()
    if response.status_code != 200 or doc.get("processingStatus") != "completed":
        raise RuntimeError(f"job did not complete: {response.status_code} {doc}")
    inference = float(doc["timings"]["inference"])
    return {
        "total": answered,
        "inference": inference,
        "outside_model": answered - inference,
        "in_function": float(doc["timings"]["total"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    photo, mask = photo_and_mask()
    with local_service() as (_stack, server, db, bucket):
        for _ in range(args.warmup):
            one_job(server, db, bucket, photo, mask)
        runs = [one_job(server, db, bucket, photo, mask) for _ in range(args.jobs)]
    summary = {
        key: {
            "median_s": round(statistics.median(r[key] for r in runs), 3),
            "p95_s": round(percentile([r[key] for r in runs], 95), 3),
        }
        for key in ("total", "inference", "outside_model", "in_function")
    }
    print(f"{args.jobs} jobs, photo 1200x800, tiny model, 2 steps at 0.0625 MP (median / p95):")
    labels = {
        "total": "event -> completed",
        "inference": "model (timings.inference)",
        "outside_model": "outside the model",
        "in_function": "inside the job (timings.total)",
    }
    for key, label in labels.items():
        print(f"  {label:32s} {summary[key]['median_s']:.3f} s / {summary[key]['p95_s']:.3f} s")
    verdict = "met" if summary["total"]["median_s"] < TARGET_S else "NOT met"
    print(f"target: median event -> completed under {TARGET_S:.0f} s: {verdict}")
    if args.json:
        print(json.dumps(summary))
    return 0 if verdict == "met" else 1


if __name__ == "__main__":
    raise SystemExit(main())
