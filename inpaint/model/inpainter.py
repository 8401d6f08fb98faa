"""``InpaintModel``: the loaded pipeline and the policies around it.

Decisions made here and why:

* One lock around all model work: the GPU holds one job at a time, and a second concurrent job
  would only double memory and make both slower.
* Prompt embeddings come from ``PromptEncoder`` (cache, precomputed store, CLIP and T5 loaded
  on demand outside this lock).
* Noise comes from a seeded CPU generator, so a seed reproduces a result bit for bit on CPU and
  independently of which GPU ran it (up to kernel nondeterminism).
* Speed-ups are settings, each off by default, measured one at a time by
  ``benchmarks/perf_bench.py`` (docs/performance.md), and each one object in
  ``inpaint.model.options`` (its refusal, how it is applied, whether a GPU has proven it):
  ``load`` only checks the files and device, builds the pipeline and applies the options in
  effect in their order.
"""

from __future__ import annotations

import contextlib
import logging
import resource
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import inpaint.model.runtime  # noqa: F401  (first: the environment the libraries read)

# isort: split
import torch
from diffusers import FluxFillPipeline, FluxTransformer2DModel, GGUFQuantizationConfig
from diffusers.utils import logging as diffusers_logging
from PIL import Image
from transformers.utils import logging as transformers_logging

from inpaint.config import Settings
from inpaint.errors import DeviceFailedError
from inpaint.model.checks import check_model_files, resolve_device, resolve_dtype
from inpaint.model.encoders import PromptEncoder
from inpaint.model.fp8 import Fp8Conversion, Fp8Mode
from inpaint.model.gpuhealth import DeviceHealth, Failure
from inpaint.model.layout import to_diffusers_layout
from inpaint.model.mapped import load_gguf_mapped
from inpaint.model.options import Option, Target, apply_options, choose_options
from inpaint.model.params import GenerationParams, ProgressCallback
from inpaint.model.prompts import EmbeddingStore

logger = logging.getLogger(__name__)

# Image sides must be multiples of this: VAE 8x downscale, then 2x2 latent packing.
SIZE_MULTIPLE = 16
WARMUP_SIZE = 256


def warmup_sizes(side: int, compiled: bool) -> list[tuple[int, int]]:
    """The warm-up's (width, height) inferences: the ``side`` square; when compiled, also a
    second size with another token count (the same width, 3/4 of the height). torch.compile
    specializes its first graph to the first shape; the second shape compiles once more with
    dynamic shapes, which then serve every later size (measured on CPU inductor: no compile
    after the second). Without it the first job of another size would pay that compile."""
    sizes = [(side, side)]
    if compiled:
        height = max(SIZE_MULTIPLE, side * 3 // 4 // SIZE_MULTIPLE * SIZE_MULTIPLE)
        if height == side:
            height = side + SIZE_MULTIPLE
        sizes.append((side, height))
    return sizes


def load_pipeline(settings: Settings, dtype: torch.dtype) -> FluxFillPipeline:
    """The GGUF transformer and the base pipeline, without CLIP and T5 (they load on demand, or
    at load when the default prompt's embedding is not precomputed), still on the CPU."""
    # Progress bars are noise in JSON logs (and each one is a stderr write per shard).
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    # Views of the file's memory map, renamed to diffusers' layout by views as well: diffusers'
    # own reader and converter would copy the file (and a third of it again) into private
    # memory, doubling the load's peak (see ``mapped`` and ``layout``).
    transformer = FluxTransformer2DModel.from_single_file(
        to_diffusers_layout(load_gguf_mapped(settings.gguf_path)),
        quantization_config=GGUFQuantizationConfig(compute_dtype=dtype),
        config=str(settings.base_dir),
        subfolder="transformer",
        dtype=dtype,
        local_files_only=True,
    )
    pipe = FluxFillPipeline.from_pretrained(
        str(settings.base_dir),
        transformer=transformer,
        text_encoder=None,
        text_encoder_2=None,
        tokenizer=None,
        tokenizer_2=None,
        dtype=dtype,
        local_files_only=True,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


class InpaintModel:
    """A loaded FluxFillPipeline plus the policies around it (lock, prompt cache, seeding)."""

    device: str
    dtype_name: str

    def __init__(
        self,
        pipe: FluxFillPipeline,
        settings: Settings,
        device: str,
        dtype: torch.dtype,
        store: EmbeddingStore | None = None,
    ) -> None:
        """Wraps an already loaded pipeline; use ``load`` to build one from settings."""
        self.pipe = pipe
        self.settings = settings
        self.device = device
        self.dtype = dtype
        self.dtype_name = str(dtype).removeprefix("torch.")
        self.quant = settings.quant
        self.gguf_path = settings.gguf_path
        self.dequantized = False
        self.fp8: Fp8Mode = "off"  # INPAINT_FP8's mode in effect (``inpaint.model.fp8``)
        self.fp8_conversion: Fp8Conversion | None = None
        self.compiled = False
        self.load_seconds = 0.0
        # Seconds of each warm-up inference, by size; with compile on, the first includes the
        # compile and the second the dynamic-shape recompile.
        self.warmup_seconds: list[tuple[tuple[int, int], float]] = []
        self.device_health = DeviceHealth()
        self._lock = threading.RLock()
        self.prompts = PromptEncoder(
            pipe,
            settings,
            device,
            dtype,
            store or EmbeddingStore.open(settings.model_dir),
            self._lock,
        )

    @classmethod
    def load(cls, settings: Settings) -> InpaintModel:
        """Loads the GGUF transformer and the base pipeline from ``settings.model_dir``, then
        applies the options in effect (``inpaint.model.options``) in their order.

        Raises ModelFilesMissingError (with the fix) before touching diffusers when a file is
        missing, and ValueError for contradictory device or option settings.
        """
        store = EmbeddingStore.open(settings.model_dir)
        check_model_files(settings, text_encoders=not store.text_encoders_omitted)
        device = resolve_device(settings.device)
        dtype = resolve_dtype(settings.dtype, device)
        target = Target.here(settings, device, dtype)
        options = choose_options(settings, target)  # before any weight is read: refusals are free
        started = time.perf_counter()
        loaded = cls(load_pipeline(settings, dtype), settings, device, dtype, store)
        apply_options(loaded, options, target, "placement")
        loaded.prompts.require_default()  # CLIP and T5 go where the placement says
        apply_options(loaded, options, target, "transformer")
        loaded.load_seconds = time.perf_counter() - started
        loaded._log_loaded(options)
        return loaded

    def _log_loaded(self, options: list[Option]) -> None:
        """One line saying what was loaded, with which options, in how long."""
        logger.info(
            "model loaded",
            extra={
                "device": self.device,
                "dtype": self.dtype_name,
                "gguf": str(self.gguf_path),
                "dequantized": self.dequantized,
                "fp8": self.fp8,
                "compiled": self.compiled,
                "options": [option.setting for option in options],
                "textEncodersOffloaded": self.prompts.text_encoder_home is not None,
                "textEncodersLoaded": self.prompts.text_encoders_loaded,
                "loadSeconds": round(self.load_seconds, 2),
            },
        )

    def _step_cache_scope(self) -> contextlib.AbstractContextManager[Any]:
        """The cache context diffusers' step caches need around the denoiser calls (Flux Fill's
        pipeline does not open one itself; the pipeline resets the cache state at its end)."""
        transformer = self.pipe.transformer
        if getattr(transformer, "is_cache_enabled", False):
            return transformer.cache_context("cond")
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def _cleanup_on_stop(self) -> Iterator[None]:
        """What the pipeline does at its end, also when a job stops mid-denoising (cancel,
        lease lost, SIGTERM raise from the step callback): ``maybe_free_model_hooks`` resets
        stateful hooks (the first-block cache's residuals, else carried into the next job) and
        offloads models when CPU offload is on."""
        try:
            yield
        except BaseException:
            self.pipe.maybe_free_model_hooks()
            raise

    def generate(
        self,
        image: Image.Image,
        mask: Image.Image,
        params: GenerationParams,
        on_step: ProgressCallback | None = None,
    ) -> Image.Image:
        """Inpaints the white area of ``mask`` in ``image``; returns RGB of ``image``'s size.

        The caller chooses the working size (multiples of 16) and pastes the result back; we
        only refuse what would make the pipeline silently resize or fail deep inside.
        """
        if params.steps < 1:
            raise ValueError(f"steps must be >= 1, got {params.steps}")
        if image.size != mask.size:
            raise ValueError(f"mask size {mask.size} differs from image size {image.size}")
        width, height = image.size
        if width % SIZE_MULTIPLE or height % SIZE_MULTIPLE or width < 1 or height < 1:
            raise ValueError(f"image size {image.size} must be positive multiples of 16")
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        gray = mask if mask.mode == "L" else mask.convert("L")
        total = params.steps

        def step_end(
            _pipe: Any, index: int, _timestep: Any, tensors: dict[str, Any]
        ) -> dict[str, Any]:
            if on_step is not None:
                on_step(index + 1, total)
            return {}

        with self._watching_device():
            result = self._denoise(rgb, gray, params, step_end)
        out: Image.Image = result.images[0]
        if out.size != image.size:  # cannot happen for multiples of 16; never return a surprise
            out = out.resize(image.size, Image.Resampling.LANCZOS)
        return out if out.mode == "RGB" else out.convert("RGB")

    def _denoise(
        self,
        rgb: Image.Image,
        gray: Image.Image,
        params: GenerationParams,
        step_end: Callable[..., dict[str, Any]],
    ) -> Any:
        """The prompt's embeddings, then the pipeline under the model lock."""
        height, width = rgb.height, rgb.width
        prompt_embeds, pooled = self.prompts.encode(params.prompt)  # may load encoders: unlocked
        with self._lock:
            generator = torch.Generator("cpu").manual_seed(params.seed)
            # no_grad, not inference_mode: offload hooks move parameters during the call, and
            # parameters turned into inference tensors would break later (grad-mode) use.
            with torch.no_grad(), self._step_cache_scope(), self._cleanup_on_stop():
                return self.pipe(
                    image=rgb,
                    mask_image=gray,
                    height=height,
                    width=width,
                    guidance_scale=params.guidance,
                    num_inference_steps=params.steps,
                    max_sequence_length=self.prompts.max_sequence_length,
                    generator=generator,
                    prompt_embeds=prompt_embeds,
                    pooled_prompt_embeds=pooled,
                    output_type="pil",
                    callback_on_step_end=step_end,
                )

    @contextlib.contextmanager
    def _watching_device(self) -> Iterator[None]:
        """Tells ``device_health`` how each job went; a GPU failure is raised as
        ``DeviceFailedError`` (transient: the job is redelivered, maybe to another instance)."""
        try:
            yield
        except Exception as exc:
            failure = self.device_health.record(exc)
            if failure in (Failure.OOM, Failure.FATAL):
                if failure is Failure.OOM:
                    torch.cuda.empty_cache()  # the failed job's blocks, back for the next one
                broken = self.device_health.broken
                logger.error(
                    "device failure: %s",
                    exc,
                    extra={"failure": failure.value, "instanceBroken": broken is not None},
                )
                raise DeviceFailedError(f"{failure.value}: {exc}") from exc
            raise
        self.device_health.record(None)

    def warm_up(self, side: int = WARMUP_SIZE) -> None:
        """One inference of ``side`` x ``side`` pixels so the first real job does not pay
        first-call costs (CUDA context and kernel selection, allocator growth, lazy imports, and
        on CPU reading the memory-mapped weights); the service picks the side
        (``inpaint.serving.process.warmup_side``). ``INPAINT_WARMUP_STEPS=0`` skips it: ready once
        loaded. The default prompt's embeddings come from the store, or were computed at load."""
        if self.settings.warmup_steps > 0:
            for size in warmup_sizes(side, self.compiled):
                self._warm_up_step(size)
        if (
            self.settings.text_encoders_background
            and self.prompts.store.text_encoders_present
            and not self.prompts.text_encoders_loaded
        ):
            self.prompts.load_in_background()

    def _warm_up_step(self, size: tuple[int, int]) -> None:
        on_gpu = self.device.startswith("cuda")
        width, height = size
        image = Image.new("RGB", size, (128, 128, 128))
        mask = Image.new("L", size, 0)
        mask.paste(255, (width // 4, height // 4, 3 * width // 4, 3 * height // 4))
        params = GenerationParams(
            prompt=self.settings.default_prompt,
            seed=0,
            steps=self.settings.warmup_steps,
            guidance=self.settings.guidance,
        )
        if on_gpu:
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        self.generate(image, mask, params)
        seconds = time.perf_counter() - started
        self.warmup_seconds.append((size, seconds))
        logger.info(
            "model warmed up",
            extra={
                "warmupSeconds": round(seconds, 2),
                "size": width,
                "height": height,
                "compiled": self.compiled,
                **peak_memory(on_gpu),
            },
        )


def peak_memory(on_gpu: bool) -> dict[str, int]:
    """The warm-up's memory figures for the log: on a GPU the allocator's peak and the device's
    total (the headroom left at the largest working size); elsewhere the process's peak RSS."""
    if on_gpu:
        return {
            "peakGpuBytes": torch.cuda.max_memory_allocated(),
            "peakGpuReservedBytes": torch.cuda.max_memory_reserved(),
            "gpuTotalBytes": torch.cuda.get_device_properties(
                torch.cuda.current_device()
            ).total_memory,
        }
    return {"peakRssBytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
