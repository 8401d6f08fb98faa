"""Prompt -> (T5 sequence, pooled CLIP) embeddings, loading as little as possible.

Most jobs use the default prompt, whose embedding is precomputed in the weights directory
(``inpaint.model.prompts``), so the service gets ready without CLIP and T5-XXL (9.5 GB) and loads
them once, from disk, on the first other prompt. That loading happens outside the model lock, so
default-prompt jobs never wait for it. Results are kept in a small LRU cache.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import inpaint.model.runtime  # noqa: F401  (first: the environment the libraries read)

# isort: split
import torch
from diffusers import FluxFillPipeline
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

from inpaint.config import Settings
from inpaint.errors import ModelFilesMissingError, PromptUnavailableError
from inpaint.model.prompts import EmbeddingStore

logger = logging.getLogger(__name__)

Embeddings = tuple[torch.Tensor, torch.Tensor]


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
) -> Embeddings:
    """(T5 sequence, pooled CLIP) embeddings of ``prompt`` by ``pipe``'s text encoders."""
    prompt_embeds, pooled, _text_ids = pipe.encode_prompt(
        prompt=prompt, prompt_2=None, device=device, max_sequence_length=max_sequence_length
    )
    return prompt_embeds, pooled


@contextlib.contextmanager
def visiting(modules: list[torch.nn.Module], device: str, home: str) -> Iterator[None]:
    """``modules`` on ``device`` for the duration, then home again without copying back: their
    weights do not change on the visit, so each parameter gets its home tensor back (the same
    memory, pinned if it was) instead of a device-to-host copy of several GB."""
    homes = [
        (owner, name, parameter, parameter.data)
        for module in modules
        for owner in module.modules()
        for name, parameter in owner.named_parameters(recurse=False)
    ]
    for module in modules:
        module.to(device, non_blocking=True)
    try:
        yield
    finally:
        # ``to`` sets a parameter's data in place, or replaces the parameter when the devices'
        # tensor types differ: either way the home parameter, with its home data, goes back.
        for owner, name, parameter, data in homes:
            parameter.data = data
            owner.register_parameter(name, parameter)
        for module in modules:
            module.to(home)  # buffers (small) and anything not restored above


class PromptEncoder:
    """The text side of one loaded pipeline: cache, precomputed store, CLIP and T5 on demand.

    ``model_lock`` is the pipeline's lock: encoding and attaching the encoders take it, loading
    them from disk does not.
    """

    def __init__(
        self,
        pipe: FluxFillPipeline,
        settings: Settings,
        device: str,
        dtype: torch.dtype,
        store: EmbeddingStore,
        model_lock: threading.RLock,
    ) -> None:
        self.pipe = pipe
        self.settings = settings
        self.device = device
        self.dtype = dtype
        self.dtype_name = str(dtype).removeprefix("torch.")
        self.store = store
        self.max_sequence_length = store.max_sequence_length
        # Where CLIP and T5 live between cache misses: None = with the rest, on the device.
        self.text_encoder_home: str | None = None
        self.loads = 0  # how often CLIP + T5 were loaded from disk (0 or 1)
        self.background_load: threading.Thread | None = None
        self._model_lock = model_lock
        self._encoder_lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, int], Embeddings] = OrderedDict()

    @property
    def text_encoders_loaded(self) -> bool:
        return self.pipe.text_encoder_2 is not None

    def is_cached(self, prompt: str) -> bool:
        """Whether ``prompt``'s embeddings are in the LRU cache now."""
        with self._model_lock:
            return (prompt, self.max_sequence_length) in self._cache

    def require_default(self) -> None:
        """Loads the text encoders now unless the default prompt's embedding is precomputed
        (as before the store existed, with the reason logged); fatal if they were left out."""
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
            offloaded = self.settings.cpu_offload and self.device.startswith("cuda")
            with self._model_lock:
                # Onto the GPU only under the lock: never beside another job's denoising,
                # whose activations would then have to share the memory with CLIP and T5.
                if self.text_encoder_home is None and not offloaded:
                    text.text_encoder.to(self.device)
                    text.text_encoder_2.to(self.device)
                self.pipe.register_modules(
                    text_encoder=text.text_encoder,
                    text_encoder_2=text.text_encoder_2,
                    tokenizer=text.tokenizer,
                    tokenizer_2=text.tokenizer_2,
                )
                if offloaded:
                    self.pipe.enable_model_cpu_offload(device=self.device)  # hooks incl. these
                if self.text_encoder_home is not None and self.settings.pin_text_encoders:
                    self.pin_home_copies()
            self.loads += 1
            logger.info(
                "text encoders loaded",
                extra={"seconds": round(time.perf_counter() - started, 2)},
            )

    def load_in_background(self) -> None:
        """Starts ``load_text_encoders`` in a daemon thread (``background_load``)."""

        def run() -> None:
            try:
                self.load_text_encoders()
            except Exception:  # a job that needs them will try again and report it
                logger.exception("background loading of the text encoders failed")

        self.background_load = threading.Thread(target=run, name="text-encoders", daemon=True)
        self.background_load.start()

    @contextlib.contextmanager
    def _on_device(self) -> Iterator[None]:
        """Brings offloaded text encoders to the device for one encoding, then offloads them
        again. Called under the model lock (``encode``), so the visit never overlaps a
        denoising."""
        home = self.text_encoder_home
        if home is None:
            yield
            return
        encoders = [m for m in (self.pipe.text_encoder, self.pipe.text_encoder_2) if m is not None]
        with visiting(encoders, self.device, home):
            yield
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()  # hand the encoders' memory back for the next job

    def pin_home_copies(self) -> None:
        """Page-locks the offloaded encoders' CPU weights (``INPAINT_PIN_TEXT_ENCODERS``), so a
        visit copies them to the GPU by DMA at full bus speed, at the price of that much locked
        host memory (T5: ~11.5 GB)."""
        for encoder in (self.pipe.text_encoder, self.pipe.text_encoder_2):
            if encoder is None:
                continue
            for tensor in (*encoder.parameters(), *encoder.buffers()):
                if not tensor.is_pinned():
                    tensor.data = tensor.data.pin_memory()

    def encode(self, prompt: str) -> Embeddings:
        """From the LRU cache, else precomputed (``inpaint.model.prompts``), else computed by CLIP +
        T5, which are loaded on the first such prompt. Raises PromptUnavailableError when the image
        has no encoders."""
        key = (prompt, self.max_sequence_length)
        with self._model_lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        found: Embeddings | None = None
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
        with self._model_lock:
            if found is None:
                with torch.no_grad(), self._on_device():
                    found = encode_with(
                        self.pipe, prompt, self.pipe._execution_device, self.max_sequence_length
                    )
            capacity = self.settings.prompt_cache_size
            if capacity > 0:
                self._cache[key] = found
                while len(self._cache) > capacity:
                    self._cache.popitem(last=False)
            return found
