"""Soak: N jobs through the Pub/Sub emulator's push subscription into one server process.

The server is started with the production serving command (gunicorn,
``inpaint.serving.app:create_app()``) and the tiny model, against Google's Firestore and Pub/Sub
emulators and fake-gcs-server. Each job is created the way the app does it (photo + mask in Storage,
a ``queued`` session document) and then published as ``{"userId", "sessionId"}``; Pub/Sub pushes it
to the function and redelivers whatever is not acknowledged.

Reported: jobs completed, lost (not completed when the run ends), failed, duplicated (claimed
more than once according to the server's log, or ``attempts`` > 1), latency from publish to the
document's ``completedAt`` (median, p95, max), and the resident memory of the gunicorn master and
worker (psutil, children included) before the first job and after the last one.
Targets: all completed, 0 lost, 0 duplicated, memory growth under 10 %.

Run: ``.venv/bin/python benchmarks/soak.py`` (``--jobs 200`` by default; ``--help``). The test
suite runs a 20-job version of ``run_soak`` (tests/e2e/test_soak.py).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tools.server import FAST_SETTINGS, ServerProcess, claims_by_session

ROOT = Path(__file__).resolve().parents[1]

PHOTO_SIZE = (1200, 800)


def photo_and_mask(size: tuple[int, int] = PHOTO_SIZE) -> tuple[bytes, bytes]:
    """The cat from scikit-image as a JPEG, and an ellipse mask over part of it."""
    from PIL import Image, ImageDraw
    from skimage import data

    photo = io.BytesIO()
    Image.fromarray(data.chelsea()).resize(size).save(photo, "JPEG", quality=92)
    mask_image = Image.new("L", size, 0)
    w, h = size
    ImageDraw.Draw(mask_image).ellipse((0.3 * w, 0.2 * h, 0.6 * w, 0.6 * h), fill=255)
    mask = io.BytesIO()
    mask_image.save(mask, "PNG")
    return photo.getvalue(), mask.getvalue()


def server_rss(server: Any) -> int:
    """Resident memory of the server's process tree (gunicorn master + worker), in bytes."""
    import psutil

    root = psutil.Process(server.proc.pid)
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass
class SoakReport:
    jobs: int
    completed: int
    lost: int
    failed: int
    duplicated: int
    latency_median_s: float | None
    latency_p95_s: float | None
    latency_max_s: float | None
    wall_s: float
    rss_ready_mib: float
    rss_start_mib: float
    rss_end_mib: float
    rss_growth_pct: float

    def lines(self) -> list[str]:
        def s(v: float | None) -> str:
            return "-" if v is None else f"{v:.2f} s"

        return [
            f"jobs                  {self.jobs}",
            f"completed             {self.completed}",
            f"lost                  {self.lost}",
            f"failed                {self.failed}",
            f"duplicated            {self.duplicated}",
            f"latency median        {s(self.latency_median_s)}  (publish -> completedAt)",
            f"latency p95           {s(self.latency_p95_s)}",
            f"latency max           {s(self.latency_max_s)}",
            f"wall time             {self.wall_s:.1f} s",
            f"server RSS when ready {self.rss_ready_mib:.1f} MiB (gunicorn master + worker)",
            f"server RSS start      {self.rss_start_mib:.1f} MiB (after the warm-up jobs)",
            f"server RSS end        {self.rss_end_mib:.1f} MiB ({self.rss_growth_pct:+.1f} %)",
        ]


def run_soak(
    stack: Any,
    server: Any,
    db: Any,
    bucket: Any,
    jobs: int = 200,
    *,
    rate: float = 0.0,
    timeout: float = 600.0,
    ack_deadline_s: int = 60,
    warmup_jobs: int = 10,
    log: Any = None,
) -> SoakReport:
    """Creates ``jobs`` sessions, publishes them (``rate`` per second; 0: all at once) to a
    topic pushed to ``server``, waits until all are completed or ``timeout`` passes.

    ``warmup_jobs`` more jobs go first, through the same path, and are not counted: the first
    jobs at a new image size grow the process (allocator pools, kernels for that shape), so the
    memory baseline for "growth" is taken after them. The RSS when ready is reported as well.
    """
    from firebase_admin.firestore import SERVER_TIMESTAMP

    say = log or (lambda *_: None)
    photo, mask = photo_and_mask()
    run = uuid.uuid4().hex[:8]
    topic, subscription = f"soak-{run}", f"soak-push-{run}"
    stack.create_push_subscription(
        topic, subscription, server.url + "/", ack_deadline_s=ack_deadline_s, max_backoff_s=10
    )
    try:
        rss_ready = server_rss(server)
        sessions = []
        for i in range(warmup_jobs + jobs):
            user, session = f"soak{run}u{i}", f"soak{run}s{i}"
            base = f"users/{user}/sessions/{session}"
            bucket.blob(f"{base}/original.jpg").upload_from_string(photo, "image/jpeg")
            bucket.blob(f"{base}/mask_auto.png").upload_from_string(mask, "image/png")
            db.document(base).set({"processingStatus": "queued", "createdAt": SERVER_TIMESTAMP})
            sessions.append((user, session))
        warmup, sessions = sessions[:warmup_jobs], sessions[warmup_jobs:]
        if warmup:
            say(f"{len(warmup)} warm-up jobs")
            for user, session in warmup:
                stack.publish(topic, {"userId": user, "sessionId": session})
            _wait_done(db, warmup, timeout)
        say(f"created {jobs} sessions; publishing")
        rss_start = server_rss(server)
        claims_before = claims_by_session(server)
        published: dict[str, float] = {}
        t0 = time.time()
        for i, (user, session) in enumerate(sessions):
            if rate > 0:
                time.sleep(max(0.0, t0 + i / rate - time.time()))
            published[session] = time.time()
            stack.publish(topic, {"userId": user, "sessionId": session})
        docs: dict[str, dict] = {}
        refs = {s: db.document(f"users/{u}/sessions/{s}") for u, s in sessions}
        deadline = time.monotonic() + timeout
        last_report = 0.0
        while len(docs) < jobs and time.monotonic() < deadline:
            pending = [refs[s] for s in refs if s not in docs]
            for snap in db.get_all(pending):
                doc = snap.to_dict() or {}
                if doc.get("processingStatus") in ("completed", "failed"):
                    docs[snap.id] = doc
            if time.monotonic() - last_report > 10:
                say(f"{len(docs)}/{jobs} done after {time.time() - t0:.0f} s")
                last_report = time.monotonic()
            time.sleep(0.25)
        wall = time.time() - t0
        time.sleep(1.0)  # late duplicate deliveries, if any, would show up in the log now
        rss_end = server_rss(server)
    finally:
        stack.delete_subscription(subscription)

    claims = claims_by_session(server)
    completed = {s: d for s, d in docs.items() if d["processingStatus"] == "completed"}
    latencies = [d["completedAt"].timestamp() - published[s] for s, d in completed.items()]
    duplicated = sum(
        1
        for _, s in sessions
        if claims.get(s, 0) - claims_before.get(s, 0) > 1 or docs.get(s, {}).get("attempts", 1) > 1
    )
    return SoakReport(
        jobs=jobs,
        completed=len(completed),
        lost=jobs - len(docs),
        failed=len(docs) - len(completed),
        duplicated=duplicated,
        latency_median_s=round(statistics.median(latencies), 3) if latencies else None,
        latency_p95_s=round(percentile(latencies, 95), 3) if latencies else None,
        latency_max_s=round(max(latencies), 3) if latencies else None,
        wall_s=round(wall, 1),
        rss_ready_mib=round(rss_ready / 2**20, 1),
        rss_start_mib=round(rss_start / 2**20, 1),
        rss_end_mib=round(rss_end / 2**20, 1),
        rss_growth_pct=round(100 * (rss_end - rss_start) / rss_start, 1),
    )


def _wait_done(db: Any, sessions: list[tuple[str, str]], timeout: float) -> None:
    refs = [db.document(f"users/{u}/sessions/{s}") for u, s in sessions]
    deadline = time.monotonic() + timeout
    while refs and time.monotonic() < deadline:
        refs = [
            snap.reference
            for snap in db.get_all(refs)
            if (snap.to_dict() or {}).get("processingStatus") not in ("completed", "failed")
        ]
        time.sleep(0.25)


@contextmanager
def local_service(extra_env: dict[str, str] | None = None, workdir: Path | None = None) -> Any:
    """The emulators + one server process with the tiny model: (stack, server, db, bucket)."""
    from firebase_admin import firestore, storage

    from inpaint.randmodel import MODEL_VERSION, build_tiny_model
    from tools.stack import LocalStack

    model_dir = ROOT / "build" / f"tiny-model-v{MODEL_VERSION}"
    build_tiny_model(model_dir, layout="diffusers", quant="Q8_0")
    workdir = workdir or Path(tempfile.mkdtemp(prefix="inpaint-bench-"))
    with LocalStack(workdir=workdir / "stack") as stack:
        stack.apply_env()
        env = stack.env | FAST_SETTINGS | {"INPAINT_MODEL_DIR": str(model_dir)}
        server = ServerProcess(env | (extra_env or {}), workdir / "server.log").start()
        try:
            server.wait_ready(timeout=300)
            app = stack.firebase_app("bench")
            yield stack, server, firestore.client(app), storage.bucket(app=app)
        finally:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--rate", type=float, default=0.0, help="publishes/s; 0 = all at once")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--ack-deadline", type=int, default=60, help="push subscription, s")
    parser.add_argument("--warmup-jobs", type=int, default=10, help="not counted (see run_soak)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON too")
    args = parser.parse_args(argv)

    def say(text: str) -> None:
        print(f"# {text}", file=sys.stderr, flush=True)

    with local_service() as (stack, server, db, bucket):
        say(f"server ready at {server.url} (log {server.log_path})")
        report = run_soak(
            stack,
            server,
            db,
            bucket,
            args.jobs,
            rate=args.rate,
            timeout=args.timeout,
            ack_deadline_s=args.ack_deadline,
            warmup_jobs=args.warmup_jobs,
            log=say,
        )
    print("\n".join(report.lines()))
    if args.json:
        print(json.dumps(asdict(report)))
    ok = report.completed == report.jobs and report.lost == 0 and report.duplicated == 0
    return 0 if ok and report.rss_growth_pct < 10 else 1


if __name__ == "__main__":
    raise SystemExit(main())
