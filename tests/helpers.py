"""Helpers shared by every level of the suite (fixtures: ``tests/conftest.py``; sample images:
``tests/samples.py``)."""

from __future__ import annotations

import time
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
