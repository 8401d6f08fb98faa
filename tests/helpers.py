"""Helpers shared by every level of the suite (fixtures: ``tests/conftest.py``; sample images:
``tests/samples.py``)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from inpaint.config import Settings


def tiny_settings(model_dir: Path, **overrides: Any) -> Settings:
    """Settings for the tiny model in ``model_dir``: Q8_0 on the CPU (on purpose: the tests check
    the CPU path's exact behaviour, on a GPU machine too), the dtype the device implies."""
    values = {"model_dir": model_dir, "quant": "Q8_0", "device": "cpu", "dtype": "auto"}
    return Settings(**(values | overrides))


def wait_for(
    predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Polls ``predicate`` until it returns something truthy (returned), else ``TimeoutError``
    (naming ``what``). A bound on a hang, not a speed requirement."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(what or f"condition not met within {timeout} s")
        time.sleep(interval)


def denoising(sessions: Any, user: str, session: str) -> dict | None:
    """The session's document once its job is denoising (``processing`` with some progress)."""
    doc = sessions.doc(user, session)
    if doc and doc.get("processingStatus") == "processing" and doc.get("progress", 0) > 0:
        return doc
    return None


def create_session(
    upload: Callable[[str, bytes, str], object],
    write_document: Callable[[str, dict], object],
    created_at: object,
    *,
    photo: bytes | None = None,
    mask: bytes | None = None,
    doc: dict | None = None,
    upload_photo: bool = True,
    upload_mask: bool = True,
    create_doc: bool = True,
    user: str | None = None,
) -> tuple[str, str]:
    """A session as the app creates it: the photo and the mask uploaded (``upload(path, data,
    content_type)``; the sample cat and an ellipse by default), then the ``queued`` document
    (``write_document(path, fields)``). The same for the real servers and the in-memory ones."""
    from tests.samples import ellipse_mask, photo_jpeg

    user, session = user or f"u{uuid.uuid4().hex[:10]}", f"s{uuid.uuid4().hex[:10]}"
    base = f"users/{user}/sessions/{session}"
    if upload_photo:
        upload(f"{base}/original.jpg", photo if photo is not None else photo_jpeg(), "image/jpeg")
    if upload_mask:
        upload(f"{base}/mask_auto.png", mask if mask is not None else ellipse_mask(), "image/png")
    if create_doc:
        write_document(base, {"processingStatus": "queued", "createdAt": created_at} | (doc or {}))
    return user, session
