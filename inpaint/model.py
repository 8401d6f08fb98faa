"""FLUX.1-Fill-dev behind one small interface: load once, then ``generate`` per job.

This is the only product module that imports torch and diffusers, so everything else (event
handling, imaging, Firestore) stays importable and testable without them. The transformer comes
from a GGUF file (Q4_0 is 6.8 GB instead of 23 GB), everything else from a local diffusers copy of
``black-forest-labs/FLUX.1-Fill-dev`` written by ``python -m inpaint weights``; nothing is ever
fetched from the Hub at run time (a missing file is a deployment error, named with its fix).

Decisions made here and why:

* One lock around all model work: the GPU holds one job at a time, and a second concurrent job
  would only double memory and make both slower.
* Prompt embeddings are cached (LRU), and read from the weights directory when precomputed
  (``inpaint.prompts``): most jobs use the default prompt, so the service gets ready without
  CLIP and T5-XXL (9.5 GB) and loads them once, from disk, on the first other prompt. Loading
  them happens outside the model lock, so default-prompt jobs never wait for it.
* Noise comes from a seeded CPU generator, so a seed reproduces a result bit for bit on CPU and
  independently of which GPU ran it (up to kernel nondeterminism).
* Speed-ups are settings, each off by default and measured one at a time by
  ``benchmarks/perf_bench.py`` (docs/performance.md): dequantize once at load, regional
  torch.compile (CUDA only), an attention backend, text encoders parked in CPU memory between
  cache misses, and an approximate first-block step cache.
"""

from __future__ import annotations

import os

# Before diffusers/transformers are imported: they read these at import time. Offline, because
# every file must come from the weights directory; no GGUF CUDA kernels, because diffusers would
# download their code from the Hub at import.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["DIFFUSERS_GGUF_CUDA_KERNELS"] = "false"

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    FluxFillPipeline,
    FluxTransformer2DModel,
    GGUFQuantizationConfig,
)
from diffusers.utils import logging as diffusers_logging
from PIL import Image
from transformers.utils import logging as transformers_logging

from inpaint.config import Settings
from inpaint.errors import ModelFilesMissingError, PromptUnavailableError
from inpaint.prompts import EmbeddingStore
from inpaint.vocabulary import GenerationParams, ProgressCallback
from inpaint.weights import missing_files

logger = logging.getLogger(__name__)

# Image sides must be multiples of this: VAE 8x downscale, then 2x2 latent packing.
SIZE_MULTIPLE = 16
WARMUP_SIZE = 256

_DTYPES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
}


@dataclass(frozen=True)
class _PromptEmbeddings:
    prompt_embeds: torch.Tensor
    pooled_prompt_embeds: torch.Tensor


def weights_command(settings: Settings) -> str:
    """The command that creates the weights directory these settings point at."""
    return f"python -m inpaint weights --dest {settings.model_dir} --quant {settings.quant}"


def check_model_files(settings: Settings, *, text_encoders: bool = True) -> None:
    """Raises ModelFilesMissingError naming the missing files and the command that fetches them.

    Checked up front because diffusers, offline, reports a missing file as a confusing Hub
    error, possibly minutes into loading. ``text_encoders=False``: a directory built with
    ``--no-text-encoders`` (CLIP, T5 and their tokenizers left out on purpose).
    """
    missing = missing_files(settings.base_dir, settings.gguf_path, text_encoders=text_encoders)
    if not missing:
        return
    shown = ", ".join(str(p) for p in missing[:5])
    more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
    raise ModelFilesMissingError(
        f"model file missing: {shown}{more}. Fetch the weights with: {weights_command(settings)}"
    )


def resolve_device(setting: str) -> str:
    """``auto`` picks CUDA when present, else CPU; an explicit CUDA without one is an error."""
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"INPAINT_DEVICE={setting} but torch sees no CUDA device")
    return setting


def resolve_dtype(setting: str, device: str) -> torch.dtype:
    """``auto``: bfloat16 on GPU (FLUX's native dtype), float32 on CPU (bf16 matmuls are slow
    there and half precision is unsupported for some CPU ops)."""
    if setting == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return _DTYPES[setting]
    except KeyError:
        raise ValueError(
            f"unsupported dtype {setting!r}; expected one of {sorted(_DTYPES)}"
        ) from None


def check_attention_backend(name: str) -> str:
    """Returns ``name`` if diffusers knows it as an attention backend that works offline.

    ``*_hub`` backends download kernels from the Hugging Face Hub when selected: refused, like
    the GGUF CUDA kernels, because the service runs offline.
    """
    from diffusers.models.attention_dispatch import AttentionBackendName

    known = sorted(b.value for b in AttentionBackendName)
    if name not in known:
        raise ValueError(f"unknown INPAINT_ATTENTION_BACKEND {name!r}; expected one of {known}")
    if name.endswith("_hub"):
        raise ValueError(
            f"INPAINT_ATTENTION_BACKEND={name} downloads its kernels from the Hub at run time; "
            "choose a backend installed locally (e.g. native, _native_cudnn, flash)"
        )
    return name


def load_text_pipeline(base_dir: Path, dtype: torch.dtype) -> FluxFillPipeline:
    """CLIP, T5 and their tokenizers alone, loaded by the same diffusers code as the whole
    pipeline (so precomputed and computed embeddings are the same numbers)."""
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    text: FluxFillPipeline = FluxFillPipeline.from_pretrained(
        str(base_dir),
        transformer=None,
        vae=None,
        scheduler=None,
        dtype=dtype,
        local_files_only=True,
    )
    text.set_progress_bar_config(disable=True)
    return text


def encode_with(
    pipe: FluxFillPipeline, prompt: str, device: Any, max_sequence_length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(T5 sequence, pooled CLIP) embeddings of ``prompt`` by ``pipe``'s text encoders."""
    prompt_embeds, pooled, _text_ids = pipe.encode_prompt(
        prompt=prompt, prompt_2=None, device=device, max_sequence_length=max_sequence_length
    )
    return prompt_embeds, pooled


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
        self.compiled = False
        # Where CLIP and T5 live between prompt-cache misses: None = with the rest, on device.
        self.text_encoder_home: str | None = None
        self.load_seconds = 0.0
        self.text_encoder_loads = 0  # how often CLIP + T5 were loaded from disk (0 or 1)
        self.background_load: threading.Thread | None = None
        self._lock = threading.RLock()
        self._encoder_lock = threading.Lock()
        self._prompt_cache: OrderedDict[tuple[str, int], _PromptEmbeddings] = OrderedDict()
        self.store = store or EmbeddingStore.open(settings.model_dir)
        self.max_sequence_length = self.store.max_sequence_length

    @property
    def text_encoders_loaded(self) -> bool:
        return self.pipe.text_encoder_2 is not None

    @classmethod
    def load(cls, settings: Settings) -> InpaintModel:
        """Loads the GGUF transformer and the base pipeline from ``settings.model_dir``.

        Raises ModelFilesMissingError (with the fix) before touching diffusers when a file is
        missing, and ValueError for contradictory device settings.
        """
        store = EmbeddingStore.open(settings.model_dir)
        check_model_files(settings, text_encoders=not store.text_encoders_omitted)
        device = resolve_device(settings.device)
        dtype = resolve_dtype(settings.dtype, device)
        on_gpu = device.startswith("cuda")
        if settings.cpu_offload and settings.dequantize:
            raise ValueError(
                "INPAINT_DEQUANTIZE and INPAINT_CPU_OFFLOAD cannot be combined: offloading is for "
                "GPUs under 24 GB, and the dequantized transformer alone needs ~24 GB in bf16"
            )
        started = time.perf_counter()
        # Progress bars are noise in JSON logs (and each one is a stderr write per shard).
        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
        transformer = FluxTransformer2DModel.from_single_file(
            str(settings.gguf_path),
            quantization_config=GGUFQuantizationConfig(compute_dtype=dtype),
            config=str(settings.base_dir),
            subfolder="transformer",
            dtype=dtype,
            local_files_only=True,
        )
        # Without CLIP and T5: they load on demand (``load_text_encoders``), or just below when
        # the default prompt's embedding is not precomputed.
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
        park_text_encoders = settings.offload_text_encoders and on_gpu and not settings.cpu_offload
        if settings.offload_text_encoders and not park_text_encoders:
            logger.warning(
                "INPAINT_OFFLOAD_TEXT_ENCODERS ignored: %s",
                "INPAINT_CPU_OFFLOAD already offloads them"
                if on_gpu
                else f"the model runs on {device}",
            )
        if settings.cpu_offload and on_gpu:
            pipe.enable_model_cpu_offload(device=device)
        elif park_text_encoders:
            # CLIP and T5 stay in CPU memory; encode_prompt brings them over for a cache miss.
            pipe.transformer.to(device)
            pipe.vae.to(device)
        else:
            if settings.cpu_offload:
                logger.warning("INPAINT_CPU_OFFLOAD ignored: the model runs on %s", device)
            pipe.to(device)
        model = cls(pipe, settings, device, dtype, store)
        if park_text_encoders:
            model.text_encoder_home = "cpu"
        model._check_default_prompt()
        if settings.dequantize:
            model._dequantize()
        model._configure_transformer(on_gpu)
        model.load_seconds = time.perf_counter() - started
        logger.info(
            "model loaded",
            extra={
                "device": device,
                "dtype": model.dtype_name,
                "gguf": str(settings.gguf_path),
                "dequantized": model.dequantized,
                "compiled": model.compiled,
                "textEncodersOffloaded": model.text_encoder_home is not None,
                "textEncodersLoaded": model.text_encoders_loaded,
                "loadSeconds": round(model.load_seconds, 2),
            },
        )
        return model

    def _check_default_prompt(self) -> None:
        """Loads the text encoders now unless the default prompt's embedding is precomputed
        (as before this store existed, with the reason logged); fatal if they were left out."""
        default = self.settings.default_prompt
        if self.settings.prompt_embeddings:
            entry, reason = self.store.find(default, self.dtype_name)
        else:
            entry, reason = None, "INPAINT_PROMPT_EMBEDDINGS is off"
        if entry is not None:
            return
        if not self.store.text_encoders_present:
            raise ModelFilesMissingError(
                f"the default prompt has no usable precomputed embedding ({reason}) and the "
                "weights were built without text encoders; rebuild them with this "
                "INPAINT_DEFAULT_PROMPT set, or without --no-text-encoders"
            )
        logger.warning("default prompt not precomputed: %s; loading the text encoders", reason)
        self.load_text_encoders()

    def load_text_encoders(self) -> None:
        """Loads CLIP, T5 and their tokenizers from disk once (idempotent, thread-safe).

        Runs outside the model lock (it takes seconds to minutes at full size), so jobs that
        need no encoder go on meanwhile; only attaching them to the pipeline takes the lock.
        On the L4 profile they stay in CPU memory (``text_encoder_home``) and visit the GPU
        only to encode.
        """
        if self.text_encoders_loaded:
            return
        if not self.store.text_encoders_present:
            raise PromptUnavailableError()
        with self._encoder_lock:
            if self.text_encoders_loaded:
                return
            started = time.perf_counter()
            text = load_text_pipeline(self.settings.base_dir, self.dtype)
            on_gpu = self.device.startswith("cuda")
            if self.text_encoder_home is None and not (self.settings.cpu_offload and on_gpu):
                text.text_encoder.to(self.device)
                text.text_encoder_2.to(self.device)
            with self._lock:
                self.pipe.register_modules(
                    text_encoder=text.text_encoder,
                    text_encoder_2=text.text_encoder_2,
                    tokenizer=text.tokenizer,
                    tokenizer_2=text.tokenizer_2,
                )
                if self.settings.cpu_offload and on_gpu:
                    self.pipe.enable_model_cpu_offload(device=self.device)  # hooks incl. these
            self.text_encoder_loads += 1
            logger.info(
                "text encoders loaded",
                extra={"seconds": round(time.perf_counter() - started, 2)},
            )

    def _load_text_encoders_in_background(self) -> None:
        def run() -> None:
            try:
                self.load_text_encoders()
            except Exception:  # a job that needs them will try again and report it
                logger.exception("background loading of the text encoders failed")

        self.background_load = threading.Thread(target=run, name="text-encoders", daemon=True)
        self.background_load.start()

    def _dequantize(self) -> None:
        """Replaces every GGUF linear layer by a dense one in the compute dtype, once.

        GGUFLinear dequantizes its whole weight on every forward call; paying that once at load
        makes each step cheaper at the price of the dense model's memory (~24 GB in bf16 for
        FLUX, so only for large GPUs or CPU). Uses diffusers' own ``ModelMixin.dequantize``,
        which runs where the transformer already lives (we moved it to ``device`` first).
        """
        transformer = self.pipe.transformer
        if getattr(transformer, "hf_quantizer", None) is None:
            return
        transformer.dequantize()  # diffusers casts each weight to the layer's compute dtype
        self.dequantized = True

    def _configure_transformer(self, on_gpu: bool) -> None:
        """Applies the optional attention backend, step cache and regional compilation.

        Compilation comes last so it traces the final modules (dequantized layers, cache hooks).
        ``fullgraph=False``: GGUF weights are tensor subclasses, and a graph break must cost
        speed, never a failed job. Only on CUDA: on CPU, inductor compiles C++ for minutes and
        the CPU path is for tests and demos.
        """
        transformer = self.pipe.transformer
        settings = self.settings
        if settings.attention_backend:
            transformer.set_attention_backend(check_attention_backend(settings.attention_backend))
        if settings.step_cache_threshold > 0:
            from diffusers import FirstBlockCacheConfig

            transformer.enable_cache(FirstBlockCacheConfig(threshold=settings.step_cache_threshold))
        if settings.compile:
            if on_gpu:
                transformer.compile_repeated_blocks(fullgraph=False)
                self.compiled = True
            else:
                logger.warning("INPAINT_COMPILE ignored: the model runs on %s", self.device)

    def _step_cache_scope(self) -> contextlib.AbstractContextManager[Any]:
        """The cache context diffusers' step caches need around the denoiser calls (Flux Fill's
        pipeline does not open one itself; the pipeline resets the cache state at its end)."""
        transformer = self.pipe.transformer
        if getattr(transformer, "is_cache_enabled", False):
            return transformer.cache_context("cond")
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def _text_encoders_on_device(self) -> Iterator[None]:
        """Brings parked text encoders to the device for one encoding, then parks them again."""
        home = self.text_encoder_home
        if home is None:
            yield
            return
        encoders = [m for m in (self.pipe.text_encoder, self.pipe.text_encoder_2) if m is not None]
        for encoder in encoders:
            encoder.to(self.device)
        try:
            yield
        finally:
            for encoder in encoders:
                encoder.to(home)
            if self.device.startswith("cuda"):
                torch.cuda.empty_cache()  # hand the encoders' memory back for the next job

    def encode_prompt(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(T5 sequence embeddings, pooled CLIP embedding) for ``prompt``: from the LRU cache,
        else precomputed (``inpaint.prompts``), else computed by CLIP + T5, which are loaded on
        the first such prompt. Raises PromptUnavailableError when the image has no encoders."""
        key = (prompt, self.max_sequence_length)
        with self._lock:
            cached = self._prompt_cache.get(key)
            if cached is not None:
                self._prompt_cache.move_to_end(key)
                return cached.prompt_embeds, cached.pooled_prompt_embeds
        found: tuple[torch.Tensor, torch.Tensor] | None = None
        if self.settings.prompt_embeddings:
            entry, reason = self.store.find(prompt, self.dtype_name)
            if entry is not None:
                embeds, pooled = self.store.load(entry, "cpu")
                device = self.pipe._execution_device
                found = embeds.to(device), pooled.to(device)
            else:
                logger.info("prompt not precomputed: %s", reason)
        if found is None:
            self.load_text_encoders()  # outside the lock: other jobs go on meanwhile
        with self._lock:
            if found is None:
                with torch.no_grad(), self._text_encoders_on_device():
                    found = encode_with(
                        self.pipe, prompt, self.pipe._execution_device, self.max_sequence_length
                    )
            capacity = self.settings.prompt_cache_size
            if capacity > 0:
                self._prompt_cache[key] = _PromptEmbeddings(*found)
                while len(self._prompt_cache) > capacity:
                    self._prompt_cache.popitem(last=False)
            return found

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

        prompt_embeds, pooled = self.encode_prompt(params.prompt)  # may load encoders: unlocked
        with self._lock:
            generator = torch.Generator("cpu").manual_seed(params.seed)
            # no_grad, not inference_mode: offload hooks move parameters during the call, and
            # parameters turned into inference tensors would break later (grad-mode) use.
            with torch.no_grad(), self._step_cache_scope():
                result = self.pipe(
                    image=rgb,
                    mask_image=gray,
                    height=height,
                    width=width,
                    guidance_scale=params.guidance,
                    num_inference_steps=params.steps,
                    max_sequence_length=self.max_sequence_length,
                    generator=generator,
                    prompt_embeds=prompt_embeds,
                    pooled_prompt_embeds=pooled,
                    output_type="pil",
                    callback_on_step_end=step_end,
                )
        out: Image.Image = result.images[0]
        if out.size != image.size:  # cannot happen for multiples of 16; never return a surprise
            out = out.resize(image.size, Image.Resampling.LANCZOS)
        return out if out.mode == "RGB" else out.convert("RGB")

    def warm_up(self) -> None:
        """One small inference so the first real job does not pay first-call costs (CUDA
        context and kernel selection, allocator growth, lazy imports); it also caches the
        default prompt's embeddings, which most jobs use."""
        size = WARMUP_SIZE
        image = Image.new("RGB", (size, size), (128, 128, 128))
        mask = Image.new("L", (size, size), 0)
        mask.paste(255, (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
        params = GenerationParams(
            prompt=self.settings.default_prompt,
            seed=0,
            steps=self.settings.warmup_steps,
            guidance=self.settings.guidance,
        )
        started = time.perf_counter()
        self.generate(image, mask, params)
        logger.info(
            "model warmed up",
            extra={"warmupSeconds": round(time.perf_counter() - started, 2), "size": size},
        )
        if (
            self.settings.text_encoders_background
            and self.store.text_encoders_present
            and not self.text_encoders_loaded
        ):
            self._load_text_encoders_in_background()
