"""The main job, end to end on this machine: ``make demo``.

Starts the local Google stack (Firestore and Pub/Sub emulators, fake-gcs-server) and the function
with the production serving command; creates a session the way the app does (uploads a pet photo
and a mask, creates the document with ``processingStatus: "queued"``); publishes
``{"userId", "sessionId"}`` to the ``session-processing`` topic, whose push subscription delivers
it to the function; waits for ``completed``; prints the document and downloads ``edited.jpg`` and
``preview.jpg`` into ``out/demo/``.

Without real weights (``INPAINT_MODEL_DIR`` holding ``python -m inpaint weights`` output) it uses
the random tiny model, which paints noise inside the mask.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
import uuid
from pathlib import Path

from firebase_admin import firestore, storage
from PIL import Image, ImageDraw

from inpaint.config import Settings
from inpaint.randmodel import build_tiny_model
from tools.server import ServerProcess
from tools.stack import LocalStack

ROOT = Path(__file__).resolve().parent.parent

TOPIC = "session-processing"


def pet_photo() -> tuple[bytes, bytes]:
    """scikit-image's cat (chelsea), 2x, and an ellipse mask over its head."""
    from skimage import data

    photo = Image.fromarray(data.chelsea())
    photo = photo.resize((photo.width * 2, photo.height * 2), Image.Resampling.LANCZOS)
    mask = Image.new("L", photo.size, 0)
    w, h = photo.size
    ImageDraw.Draw(mask).ellipse((0.28 * w, 0.08 * h, 0.66 * w, 0.62 * h), fill=255)
    photo_buf, mask_buf = io.BytesIO(), io.BytesIO()
    photo.save(photo_buf, "JPEG", quality=92)
    mask.save(mask_buf, "PNG")
    return photo_buf.getvalue(), mask_buf.getvalue()


def model_env(out: Path) -> dict[str, str]:
    settings = Settings()
    if settings.gguf_path.is_file() and (settings.base_dir / "model_index.json").is_file():
        print(f"using real weights from {settings.model_dir}", flush=True)
        return {}
    tiny = build_tiny_model(ROOT / "build" / "tiny-model")
    print(
        "no real weights configured (INPAINT_MODEL_DIR): using the random TINY model, "
        "which paints noise inside the mask",
        flush=True,
    )
    return {
        "INPAINT_MODEL_DIR": str(tiny),
        "INPAINT_QUANT": "Q8_0",
        "INPAINT_STEPS": "4",
        "INPAINT_WORK_MEGAPIXELS": "0.25",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "demo")
    parser.add_argument("--prompt", default="a cat wearing a tiny red party hat")
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    with LocalStack(workdir=args.out / "stack") as stack:
        stack.apply_env()
        print("local stack up:\n" + stack.exports(), flush=True)
        env = stack.env | model_env(args.out)
        server = ServerProcess(env, args.out / "server.log").start()
        try:
            print(f"function starting on {server.url} (log: {server.log_path})", flush=True)
            server.wait_ready(timeout=args.timeout)
            stack.create_topic(TOPIC)
            stack.create_push_subscription(TOPIC, "session-processing-push", server.url + "/")

            # The app's side: upload the photo and mask, create the session, publish.
            app = stack.firebase_app("demo-app")
            db, bucket = firestore.client(app), storage.bucket(app=app)
            user, session = "demo-user", f"session-{uuid.uuid4().hex[:8]}"
            base = f"users/{user}/sessions/{session}"
            photo, mask = pet_photo()
            bucket.blob(f"{base}/original.jpg").upload_from_string(photo, "image/jpeg")
            bucket.blob(f"{base}/mask_auto.png").upload_from_string(mask, "image/png")
            db.document(base).set({"processingStatus": "queued", "prompt": args.prompt})
            message_id = stack.publish(TOPIC, {"userId": user, "sessionId": session})
            print(f"published {message_id} for {base}", flush=True)

            doc = wait_done(db, base, args.timeout)
            print(json.dumps(doc, indent=2, default=str), flush=True)
            if doc.get("processingStatus") != "completed":
                return 1
            for name in ("edited.jpg", "preview.jpg"):
                path = args.out / name
                bucket.blob(f"{base}/{name}").download_to_filename(str(path))
                print(f"downloaded {path} {Image.open(path).size}", flush=True)
            return 0
        finally:
            server.stop()


def wait_done(db, path: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        doc = db.document(path).get().to_dict() or {}
        progress = (doc.get("processingStatus"), doc.get("progress"))
        if progress != last:
            print(f"status {progress[0]} progress {progress[1]}", flush=True)
            last = progress
        if doc.get("processingStatus") in ("completed", "failed"):
            return doc
        time.sleep(0.25)
    raise TimeoutError(f"{path} did not finish in {timeout} s")


if __name__ == "__main__":
    os.environ.setdefault("INPAINT_LOG_LEVEL", "WARNING")
    sys.exit(main())
