"""The production app in this process, driven through functions-framework's own test client.

``inprocess_app`` builds the app exactly as production does (``inpaint.serving.app.create_app``,
which has functions-framework load ``main.py``), with the process state ``main.py`` uses swapped for
this test's own: the session store is the real ``SessionStore`` over the in-memory Firestore and
Storage backends (``tests/sim/fakes.py``, held to the emulators' behaviour by
``tests/e2e/test_store_backends.py``), and the model is the tiny one loaded by the production loader
(``process.load_and_warm``) once per process. A delivery runs the whole job inside the request, so
the document is final when the answer comes: no waiting, no server per case. ``tests/e2e`` keeps one
case per failure class against the real servers.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import signal
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from werkzeug.test import TestResponse

from inpaint.config import Settings, get_settings
from inpaint.serving import process
from inpaint.session.gpuqueue import GpuQueue
from inpaint.session.store import SessionStore, utcnow
from tests.helpers import create_session
from tests.sim.fakes import Faults, MemoryBlobs, MemoryDocuments
from tools.server import FAST_SETTINGS

_MODELS: dict[str, Any] = {}
_MODELS_LOCK = threading.Lock()


def _tiny_model(settings: Settings) -> Any:
    """The tiny model through the production loader, once per process and weights setting."""
    key = f"{settings.model_dir}|{settings.quant}|{settings.device}"
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = process.load_and_warm(settings)
        return _MODELS[key]


@dataclass
class InProcess:
    """The app's test client and the in-memory Firebase it writes to."""

    client: Any
    docs: MemoryDocuments
    blobs: MemoryBlobs
    faults: Faults
    settings: Settings

    def post(self, headers: dict[str, str], body: bytes) -> TestResponse:
        return self.client.post("/", headers=headers, data=body)

    def create(
        self,
        *,
        photo: bytes | None = None,
        mask: bytes | None = None,
        doc: dict | None = None,
        upload_photo: bool = True,
        upload_mask: bool = True,
        create_doc: bool = True,
    ) -> tuple[str, str]:
        """A session as the app creates it (the same arguments as the e2e ``Sessions``)."""
        return create_session(
            lambda path, data, _kind: self.blobs.put(path, data),
            self.docs.set,
            utcnow(),
            photo=photo,
            mask=mask,
            doc=doc,
            upload_photo=upload_photo,
            upload_mask=upload_mask,
            create_doc=create_doc,
        )

    def doc(self, user: str, session: str) -> dict | None:
        return self.docs.peek(f"users/{user}/sessions/{session}")

    def versions(self, user: str, session: str) -> dict[str, int]:
        """Each of the session's files -> its generation (changes on every write)."""
        prefix = f"users/{user}/sessions/{session}/"
        return {
            path.removeprefix(prefix): self.blobs.stat(path).generation  # type: ignore[union-attr]
            for path in self.blobs.listing(prefix)
        }

    def image(self, user: str, session: str, name: str) -> Image.Image:
        path = f"users/{user}/sessions/{session}/{name}"
        data = self.blobs.listing(path).get(path)
        assert data is not None, f"{name} missing"
        return Image.open(io.BytesIO(data))

    def everything(self) -> tuple[dict[str, int], dict[str, Any]]:
        """Every object's generation and every document: any write anywhere changes this."""
        objects = {p: self.blobs.stat(p).generation for p in self.blobs.listing("")}  # type: ignore[union-attr]
        return objects, {p: self.docs.peek(p) for p in self.docs.paths()}


@contextlib.contextmanager
def inprocess_app(model_dir: Path, **env: str) -> Iterator[InProcess]:
    """The production app over in-memory Firebase, the tiny model and ``FAST_SETTINGS | env``.

    Restores the process afterwards: the environment, the settings cache, ``process``'s
    globals and the SIGTERM handler ``create_app`` chains onto.
    """
    sigterm = signal.getsignal(signal.SIGTERM)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in (FAST_SETTINGS | {"INPAINT_MODEL_DIR": str(model_dir)} | env).items():
            patch.setenv(name, value)
        get_settings.cache_clear()
        settings = get_settings()
        model = _tiny_model(settings)
        faults = Faults()
        docs = MemoryDocuments(utcnow, faults)
        blobs = MemoryBlobs(faults)
        store = SessionStore(settings, docs, blobs, instance=f"inprocess-{uuid.uuid4().hex[:6]}")
        patch.setattr(process, "STORE", lambda: store)
        patch.setattr(process, "WARMUP", process.Warmup(lambda: model, stall=process.gpu_stall))
        patch.setattr(process, "GPU_QUEUE", GpuQueue())
        patch.setattr(process, "SHUTDOWN", threading.Event())
        from inpaint.serving import app as production

        app = production.create_app()
        process.require_model()  # the warm-up thread hands the loaded model over
        try:
            yield InProcess(app.test_client(), docs, blobs, faults, settings)
        finally:
            signal.signal(signal.SIGTERM, sigterm)
            get_settings.cache_clear()


def age(seconds: float) -> dt.datetime:
    """A time ``seconds`` ago (for documents a test writes as if long past)."""
    return utcnow() - dt.timedelta(seconds=seconds)
