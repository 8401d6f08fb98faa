"""Names every room of the service shares: one job's generation parameters, the progress
callback, and the ``processingStatus`` values of a session document.

Kept free of heavy imports (no torch, no Google clients), so the event parser, the store, the
job runner and the model can all use the same definitions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

#: ``processingStatus`` of a session document: the app writes ``queued``; this service moves it
#: to ``processing`` when it claims the job and to ``completed`` or ``failed`` at the end.
QUEUED, PROCESSING, COMPLETED, FAILED = "queued", "processing", "completed", "failed"
#: The app may write ``cancelled`` on a queued or running session: the job stops, writes nothing.
CANCELLED = "cancelled"

ProgressCallback = Callable[[int, int], None]
"""Called after each denoising step with (steps done, total steps)."""


@dataclass(frozen=True)
class GenerationParams:
    """What varies per job: the document's values, bounded by the settings, or the defaults."""

    prompt: str
    seed: int
    steps: int
    guidance: float
