"""``build_model``: a random FLUX.1-Fill-dev in exactly the on-disk layout of the real weights.

* ``<dest>/base/`` is a diffusers repository like ``black-forest-labs/FLUX.1-Fill-dev`` after
  ``python -m inpaint weights``: model_index.json, scheduler, CLIP + T5 text encoders with their
  tokenizers, a 4-level VAE with 16 latent channels, and ``transformer/config.json`` *without*
  weights;
* ``<dest>/flux1-fill-dev-<QUANT>.gguf`` holds the transformer (``inpaint.randmodel.gguf_file``).

A marker file records what was built, so the directory doubles as a cache: the same call again
is a no-op, and another ``quant`` of the same spec and seed only adds its GGUF file (same random
weights, quantized differently), as the weights command would. Builds into one directory are
serialised with a file lock (parallel test sessions share a cache). A ``base/`` not written by
this module (real weights!) is refused, never overwritten.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from inpaint.model.weights_layout import gguf_filename
from inpaint.randmodel.gguf_file import tensor_specs, write_random_gguf
from inpaint.randmodel.spec import (
    MODEL_INDEX_COMPONENTS,
    MODEL_VERSION,
    QUANTS,
    SCHEDULER_CONFIG,
    Layout,
    ModelSpec,
    Quant,
    tiny_spec,
)
from inpaint.randmodel.tokenizers import clip_tokenizer, t5_tokenizer

MARKER_NAME = ".random-model.json"
LOCK_NAME = ".random-model.lock"
STAGING_PREFIX = ".build-"
# Markers of the builders this one replaced: such a directory is ours to rebuild.
LEGACY_MARKERS = (".tiny-model.json", ".perf-model.json")


def build_model(
    dest: Path,
    spec: ModelSpec,
    *,
    quant: Quant = "Q8_0",
    seed: int = 0,
    device: str | None = None,
) -> Path:
    """Builds ``spec`` into ``dest`` (``base/`` + the ``quant`` GGUF file); returns ``dest``.

    ``device`` names where the random values are drawn (torch); without it the transformer's
    values come from numpy and everything else is built on the CPU (see ``gguf_file``).
    """
    if quant not in QUANTS:
        raise ValueError(f"random models support Q8_0 and Q4_0 (gguf-py cannot write {quant!r})")
    if spec.layout not in ("diffusers", "bfl"):
        raise ValueError(f"unknown layout {spec.layout!r}; expected 'diffusers' or 'bfl'")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with locked(dest / LOCK_NAME):
        _build_locked(dest, spec, quant=quant, seed=seed, device=device)
        if spec.text_encoders:  # the weights command's step, same code
            from inpaint.model.embeddings import write_builder_embeddings

            # bfloat16: what a GPU runs; float32: what a CPU runs by default (tests, demo), too
            # big for T5-XXL at full size (19 GB).
            dtypes = ("bfloat16",) if spec.name == "full" else ("float32", "bfloat16")
            write_builder_embeddings(dest, dtypes)
    return dest


def build_tiny_model(
    dest: Path, *, layout: Layout = "diffusers", quant: Quant = "Q8_0", seed: int = 0
) -> Path:
    """``build_model`` of the tiny spec of ``layout``: the tests', demo's and CLI's model."""
    if layout not in ("diffusers", "bfl"):
        raise ValueError(f"unknown layout {layout!r}; expected 'diffusers' or 'bfl'")
    return build_model(dest, tiny_spec(layout), quant=quant, seed=seed)


def _build_locked(
    dest: Path, spec: ModelSpec, *, quant: Quant, seed: int, device: str | None
) -> None:
    marker = dest / MARKER_NAME
    identity = {
        "version": MODEL_VERSION,
        "spec": spec.name,
        "digest": spec.digest(),
        "layout": spec.layout,
        "seed": seed,
    }
    found = read_marker(marker)
    base_ok = (
        found is not None
        and {k: found.get(k) for k in identity} == identity
        and (dest / "base" / "model_index.json").is_file()
    )
    quants: list[str] = list(found.get("quants", [])) if base_ok and found else []
    gguf_path = dest / gguf_filename(quant)
    if base_ok and quant in quants and gguf_path.is_file():
        return
    ours = found is not None or any((dest / name).is_file() for name in LEGACY_MARKERS)
    if (dest / "base").exists() and not ours:
        raise FileExistsError(
            f"{dest / 'base'} exists and was not written by build_model; refusing to "
            "overwrite what may be real weights. Choose another directory."
        )

    # Build in a staging directory, then move in with renames. The marker always lists only
    # what is complete (and keeps the directory ours): an interrupted build is redone, never
    # trusted, and never mistaken for foreign weights.
    with tempfile.TemporaryDirectory(prefix=STAGING_PREFIX, dir=dest) as staging_name:
        staging = Path(staging_name)
        if not base_ok:
            write_base(staging / "base", spec, seed=seed, device=device or "cpu")
        specs = tensor_specs(spec.transformer, spec.layout)
        write_random_gguf(
            staging / gguf_path.name,
            specs,
            quant=quant,
            layout=spec.layout,
            seed=seed,
            device=device,
        )
        if not base_ok:
            quants = []
            write_marker(marker, {**identity, "quants": quants})
            if (dest / "base").exists():
                (dest / "base").rename(staging / "old-base")  # deleted with the staging dir
            for old in dest.glob("flux1-fill-dev-*.gguf"):
                old.unlink()
            (staging / "base").rename(dest / "base")
        (staging / gguf_path.name).replace(gguf_path)
    write_marker(marker, {**identity, "quants": sorted({*quants, quant})})


def write_marker(marker: Path, content: dict[str, Any]) -> None:
    """Replaces ``marker`` atomically with ``content`` as JSON."""
    partial = marker.with_name(marker.name + ".tmp")
    partial.write_text(json.dumps(content, indent=2) + "\n")
    partial.replace(marker)


def read_marker(marker: Path) -> dict[str, Any] | None:
    """The marker's content, or None when it is missing or unreadable."""
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` for the duration of the block (POSIX flock)."""
    import fcntl

    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- base directory (everything but the transformer's weights) ---------------------------------


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No "Writing model shards" progress bars from save_pretrained in test and CLI output."""
    import inpaint.model.runtime  # noqa: F401  (first: the environment the libraries read)

    # isort: split
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _default_dtype(dtype: Any) -> Iterator[None]:
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def write_base(base: Path, spec: ModelSpec, *, seed: int, device: str = "cpu") -> None:
    """Scheduler, tokenizers, random CLIP/T5 (``spec.text_dtype``) and VAE (fp32), configs.

    Modules are created on ``device`` one at a time and freed after saving, so the full size
    (T5-XXL: 9.5 GB in bf16) never holds two of them.
    """
    import inpaint.model.runtime  # noqa: F401  (first: the environment the libraries read)

    # isort: split
    import diffusers
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    base.mkdir(parents=True)
    torch.manual_seed(seed)
    clip_tok = clip_tokenizer()
    t5_tok = t5_tokenizer(spec.t5_max_length)  # FLUX pads T5 prompts to this length
    clip_tok.save_pretrained(base / "tokenizer")
    t5_tok.save_pretrained(base / "tokenizer_2")
    text_dtype = getattr(torch, spec.text_dtype)

    with _quiet_transformers():
        if spec.text_encoders:
            with _default_dtype(text_dtype), torch.device(device):
                clip = CLIPTextModel(
                    CLIPTextConfig(
                        **{"vocab_size": len(clip_tok), **spec.clip},
                        bos_token_id=clip_tok.bos_token_id,
                        eos_token_id=clip_tok.eos_token_id,
                        pad_token_id=clip_tok.pad_token_id,
                    )
                )
            clip.save_pretrained(base / "text_encoder")
            del clip
            with _default_dtype(text_dtype), torch.device(device):
                t5 = T5EncoderModel(
                    T5Config(
                        **{"vocab_size": len(t5_tok), **spec.t5},
                        pad_token_id=t5_tok.pad_token_id,
                        eos_token_id=t5_tok.eos_token_id,
                    )
                )
            t5.save_pretrained(base / "text_encoder_2", max_shard_size="5GB")
            del t5
        with torch.device(device):
            vae = AutoencoderKL(**spec.vae)
        vae.save_pretrained(base / "vae")
        del vae
    if device.startswith("cuda"):
        torch.cuda.empty_cache()

    FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG).save_pretrained(base / "scheduler")
    (base / "transformer").mkdir()
    transformer_json = {**spec.transformer, "_diffusers_version": diffusers.__version__}
    (base / "transformer" / "config.json").write_text(json.dumps(transformer_json, indent=2))
    model_index = {
        "_class_name": "FluxFillPipeline",
        "_diffusers_version": diffusers.__version__,
        **MODEL_INDEX_COMPONENTS,
    }
    (base / "model_index.json").write_text(json.dumps(model_index, indent=2))
