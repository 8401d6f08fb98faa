"""Names every room of the service shares: one job's generation parameters and the progress
callback (the session document's fields and ``processingStatus`` values:
``inpaint.session.document``).

Kept free of heavy imports (no torch, no Google clients), so the job runner, the repaint step
and the model can all use the same definitions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

ProgressCallback = Callable[[int, int], None]
"""Called after each denoising step with (steps done, total steps)."""


@dataclass(frozen=True)
class GenerationParams:
    """What varies per job: the document's values, bounded by the settings, or the defaults."""

    prompt: str
    seed: int
    steps: int
    guidance: float
