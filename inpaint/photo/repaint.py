"""Photo + mask bytes -> edited.jpg + preview.jpg bytes: the part of a job that needs no cloud.

The cloud function (``inpaint.session.jobs``) and the local CLI (``python -m inpaint run``) both
call ``repaint``, so the command line exercises exactly the code that production runs.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image

from inpaint.config import Settings
from inpaint.model.params import GenerationParams, ProgressCallback
from inpaint.photo import imaging


class Model(Protocol):
    """What a job needs from the pipeline (``inpaint.model.inpainter.InpaintModel``)."""

    def generate(
        self,
        image: Image.Image,
        mask: Image.Image,
        params: GenerationParams,
        on_step: ProgressCallback | None = None,
    ) -> Image.Image: ...


QUEUE_STAGE = "queue"


@dataclass
class Timings:
    """Seconds per stage, recorded in the session document and the logs."""

    started: float = field(default_factory=time.monotonic)
    stages: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Any:
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.stages[name] = round(time.monotonic() - t0, 4)

    def total(self) -> float:
        return time.monotonic() - self.started

    def busy(self) -> float:
        """The job's own work: the time since it started, less its wait for the GPU."""
        return self.total() - self.stages.get(QUEUE_STAGE, 0.0)


@dataclass(frozen=True)
class Result:
    edited_jpeg: bytes
    preview_jpeg: bytes
    prepared: imaging.Prepared


def repaint(
    photo: bytes,
    mask: bytes,
    model: Model,
    params: GenerationParams,
    settings: Settings,
    *,
    timings: Timings | None = None,
    on_step: ProgressCallback | None = None,
    gpu_turn: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
) -> Result:
    """Decodes and checks the inputs, repaints the masked region, pastes it back, encodes.

    Raises ``PermanentError`` subclasses for unusable inputs. An empty mask skips the model and
    returns the original (re-encoded). Only the model call runs inside ``gpu_turn()`` (the
    service's wait for the instance's one GPU): decoding happens before it, while the job
    waits, and compositing and encoding after it, while the next job already denoises.
    """
    timings = timings or Timings()
    with timings.stage("prepare"):
        prepared = imaging.prepare(
            photo,
            mask,
            limits=imaging.ImageLimits.from_settings(settings),
            work_megapixels=settings.work_megapixels,
            margin=settings.crop_margin,
            band_px=settings.dilate_px + settings.feather_px,
        )
    generated = None
    if prepared.empty:
        timings.stages["inference"] = 0.0
    else:
        assert prepared.model_image is not None and prepared.model_mask is not None
        with gpu_turn(), timings.stage("inference"):
            generated = model.generate(prepared.model_image, prepared.model_mask, params, on_step)
    with timings.stage("postprocess"):
        edited = prepared.original
        if generated is not None:
            edited = imaging.composite(
                prepared, generated, dilate_px=settings.dilate_px, feather_px=settings.feather_px
            )
        edited_jpeg, preview_jpeg = imaging.encode_outputs(edited)
    return Result(edited_jpeg, preview_jpeg, prepared)
