"""A tiny, random FLUX.1-Fill-dev written in exactly the on-disk layout of the real weights.

The real model is 23 GB (transformer) + 9.5 GB (T5) and gated behind a Hugging Face token, so
neither the tests nor a laptop demo can use it. This module builds, offline and in seconds, a
model with the same *shape of everything that our code touches*:

* ``<dest>/base/`` is a diffusers repository like ``black-forest-labs/FLUX.1-Fill-dev`` after
  ``python -m inpaint weights``: model_index.json, scheduler, CLIP + T5 text encoders with their
  tokenizers, a 4-level VAE with 16 latent channels (8x downscale, 2x2 packing: the transformer
  sees the real 384 input channels), and ``transformer/config.json`` *without* weights;
* ``<dest>/flux1-fill-dev-<QUANT>.gguf`` holds the transformer as a GGUF file with really
  quantized Q8_0/Q4_0 tensors, so the production loader (diffusers' GGUF quantizer) runs
  unchanged.

Two key layouts exist. ``"diffusers"`` names tensors as diffusers does, which skips diffusers'
BFL->diffusers conversion and so allows a narrow transformer (hidden width 256): that is the fast
model the test-suite and the demo use. ``"bfl"`` names them as the published GGUF files do
(``double_blocks.0.img_attn.qkv.weight``...), which exercises the conversion the production files
go through; diffusers' converter hard-codes the hidden width 3072, so that model is 3072 wide with
one double and one single block (~532 M parameters, Q4_0 ~355 MiB).

The output of the tiny model is noise: it proves plumbing (sizes, dtypes, determinism, progress,
caching), not quality. Heavy imports happen inside functions so importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from inpaint.config import gguf_filename

if TYPE_CHECKING:
    import numpy as np
    import torch

Layout = Literal["diffusers", "bfl"]
TinyQuant = Literal["Q8_0", "Q4_0"]

# Bump when the builder's output changes, so caches keyed by it (tests, demo) are rebuilt.
TINY_MODEL_VERSION = "2"
MARKER_NAME = ".tiny-model.json"
LOCK_NAME = ".tiny-model.lock"

# Sizes of the tiny text encoders. The transformer's joint_attention_dim / pooled_projection_dim
# follow them, exactly as 4096 / 768 follow T5-XXL and CLIP-L in the real model.
_TEXT_WIDTH = 32
_T5_MAX_LENGTH = 32  # real FLUX: 512. Short keeps the tiny model fast; the pipeline allows it.
_CLIP_MAX_LENGTH = 77  # as the real CLIP: the pipeline pads CLIP prompts to model_max_length.

_PET_WORDS = ["a", "an", "the", "of", "on", "in", "with", "and", "cat", "dog", "pet", "sofa"]

# Values drawn and quantized per chunk (8 MB of float32): small enough for malloc to reuse.
_CHUNK_VALUES = 1 << 21

# The values of FLUX.1-Fill-dev's scheduler/scheduler_config.json.
_SCHEDULER_CONFIG: dict[str, Any] = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
}

# Real FLUX.1-Fill-dev model_index.json component classes.
_MODEL_INDEX_COMPONENTS: dict[str, list[str]] = {
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "T5EncoderModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "T5TokenizerFast"],
    "transformer": ["diffusers", "FluxTransformer2DModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}

# Tensors kept in F16 rather than quantized: the small input embedders and the final layer,
# whose precision matters most per parameter, as llama.cpp-based image-model converters commonly
# do (YarvixPA's exact per-tensor choice could not be checked offline). diffusers' loader takes
# F32, F16 and quantized tensors alike, so the tiny files exercise all three kinds.
_HIGH_PRECISION_PREFIXES = ("img_in.", "txt_in.", "time_in.", "vector_in.", "guidance_in.")
_HIGH_PRECISION_DIFFUSERS = ("x_embedder.", "context_embedder.", "time_text_embed.", "norm_out.")


def transformer_config(layout: Layout) -> dict[str, Any]:
    """The tiny transformer's diffusers config for ``layout`` (see the module docstring).

    Input/output channels are the real ones (384 = 64 latent + 64 masked-image latent + 256
    packed mask; 64 out) because they follow from the VAE, which has the real 16 channels.
    """
    if layout == "diffusers":
        heads, head_dim, rope = 2, 128, [16, 56, 56]  # width 256, real head geometry
        double, single = 2, 2
    elif layout == "bfl":
        heads, head_dim, rope = 24, 128, [16, 56, 56]  # width 3072: the converter needs it
        double, single = 1, 1
    else:
        raise ValueError(f"unknown layout {layout!r}; expected 'diffusers' or 'bfl'")
    return {
        "_class_name": "FluxTransformer2DModel",
        "patch_size": 1,
        "in_channels": 384,
        "out_channels": 64,
        "num_layers": double,
        "num_single_layers": single,
        "attention_head_dim": head_dim,
        "num_attention_heads": heads,
        "joint_attention_dim": _TEXT_WIDTH,
        "pooled_projection_dim": _TEXT_WIDTH,
        "guidance_embeds": True,
        "axes_dims_rope": rope,
    }


def build_tiny_model(
    dest: Path,
    *,
    layout: Layout = "diffusers",
    quant: TinyQuant = "Q8_0",
    seed: int = 0,
) -> Path:
    """Builds the tiny model into ``dest`` (``base/`` + GGUF) and returns ``dest``.

    A marker file records what was built, so the directory doubles as a cache: the same call
    again is a no-op, and another ``quant`` for the same layout and seed only adds its GGUF
    file (same random weights, quantized differently), as the weights command would. Builds
    into one directory are serialised with a file lock (parallel test sessions share a cache).
    A ``base/`` not written by this function (real weights!) is refused, never overwritten.
    """
    if quant not in ("Q8_0", "Q4_0"):
        raise ValueError(f"tiny models support Q8_0 and Q4_0 (gguf-py cannot write {quant!r})")
    if layout not in ("diffusers", "bfl"):
        raise ValueError(f"unknown layout {layout!r}; expected 'diffusers' or 'bfl'")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with _locked(dest / LOCK_NAME):
        _build_locked(dest, layout=layout, quant=quant, seed=seed)
        from inpaint.prompts import write_builder_embeddings

        # float32: what the CPU runs by default (tests, demo); bfloat16: what a GPU runs.
        write_builder_embeddings(dest, ("float32", "bfloat16"))
    return dest


def _build_locked(dest: Path, *, layout: Layout, quant: TinyQuant, seed: int) -> None:
    marker = dest / MARKER_NAME
    identity = {"version": TINY_MODEL_VERSION, "layout": layout, "seed": seed}
    found = _read_marker(marker)
    base_ok = (
        found is not None
        and {k: found.get(k) for k in identity} == identity
        and (dest / "base" / "model_index.json").is_file()
    )
    quants: list[str] = list(found.get("quants", [])) if base_ok and found else []
    gguf_path = dest / gguf_filename(quant)
    if base_ok and quant in quants and gguf_path.is_file():
        return
    if (dest / "base").exists() and found is None:
        raise FileExistsError(
            f"{dest / 'base'} exists and was not written by build_tiny_model; refusing to "
            "overwrite what may be real weights. Choose another directory."
        )

    config = transformer_config(layout)
    # Build in a staging directory, then move in with renames. The marker always lists only
    # what is complete (and keeps the directory ours): an interrupted build is redone, never
    # trusted, and never mistaken for foreign weights.
    with tempfile.TemporaryDirectory(prefix=".tiny-build-", dir=dest) as staging_name:
        staging = Path(staging_name)
        if not base_ok:
            _write_base(staging / "base", config, seed=seed)
        specs = tensor_specs(config, layout)
        _write_random_gguf(staging / gguf_path.name, specs, quant=quant, layout=layout, seed=seed)

        if not base_ok:
            quants = []
            _write_marker(marker, {**identity, "quants": quants})
            if (dest / "base").exists():
                (dest / "base").rename(staging / "old-base")  # deleted with the staging dir
            for old in dest.glob("flux1-fill-dev-*.gguf"):
                old.unlink()
            (staging / "base").rename(dest / "base")
        (staging / gguf_path.name).replace(gguf_path)
    _write_marker(marker, {**identity, "quants": sorted({*quants, quant})})


def _write_marker(marker: Path, content: dict[str, Any]) -> None:
    partial = marker.with_name(marker.name + ".tmp")
    partial.write_text(json.dumps(content, indent=2) + "\n")
    partial.replace(marker)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` for the duration of the block (POSIX flock)."""
    import fcntl

    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_marker(marker: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# --- base directory (everything but the transformer's weights) ---------------------------------


def _write_base(base: Path, transformer_cfg: Mapping[str, Any], *, seed: int) -> None:
    """Writes scheduler, tokenizers, text encoders, VAE, transformer config, model_index.json."""
    import torch

    base.mkdir(parents=True)
    torch.manual_seed(seed)
    with _quiet_transformers():
        _write_base_components(base, transformer_cfg)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No "Writing model shards" progress bars from save_pretrained in test and CLI output."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _write_base_components(base: Path, transformer_cfg: Mapping[str, Any]) -> None:
    import diffusers
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    clip_tokenizer = _clip_tokenizer()
    t5_tokenizer = _t5_tokenizer()
    clip_tokenizer.save_pretrained(base / "tokenizer")
    t5_tokenizer.save_pretrained(base / "tokenizer_2")

    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(clip_tokenizer),
            hidden_size=_TEXT_WIDTH,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=_CLIP_MAX_LENGTH,
            projection_dim=_TEXT_WIDTH,
            bos_token_id=clip_tokenizer.bos_token_id,
            eos_token_id=clip_tokenizer.eos_token_id,
            pad_token_id=clip_tokenizer.pad_token_id,
        )
    )
    clip.save_pretrained(base / "text_encoder")
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tokenizer),
            d_model=_TEXT_WIDTH,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",  # as T5 v1.1 / T5-XXL
            pad_token_id=t5_tokenizer.pad_token_id,
            eos_token_id=t5_tokenizer.eos_token_id,
        )
    )
    t5.save_pretrained(base / "text_encoder_2")

    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[16, 16, 32, 32],
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    vae.save_pretrained(base / "vae")

    FlowMatchEulerDiscreteScheduler(**_SCHEDULER_CONFIG).save_pretrained(base / "scheduler")

    (base / "transformer").mkdir()
    transformer_json = {**transformer_cfg, "_diffusers_version": diffusers.__version__}
    (base / "transformer" / "config.json").write_text(json.dumps(transformer_json, indent=2))

    model_index = {
        "_class_name": "FluxFillPipeline",
        "_diffusers_version": diffusers.__version__,
        **_MODEL_INDEX_COMPONENTS,
    }
    (base / "model_index.json").write_text(json.dumps(model_index, indent=2))


def _vocabulary_words() -> list[str]:
    """Whole-word tokens for the default prompt and common pet words, so typical prompts take
    about as many tokens as with the real tokenizers (one per character would overflow the
    tiny T5's 32 positions and log truncation warnings on every job)."""
    from inpaint.config import DEFAULT_PROMPT

    words = re.findall(r"[a-z]+", DEFAULT_PROMPT.lower())
    words += _PET_WORDS
    return list(dict.fromkeys(words))


def _clip_tokenizer() -> Any:
    """A byte-level BPE tokenizer in CLIP's format: every byte is a token, plus merges that
    build the vocabulary words left to right."""
    from transformers import CLIPTokenizer

    chars = _byte_level_alphabet()
    vocab: dict[str, int] = {}
    for token in [*chars, *(c + "</w>" for c in chars)]:
        vocab.setdefault(token, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in _vocabulary_words():
        pieces = [*word[:-1], word[-1] + "</w>"]
        left = pieces[0]
        for right in pieces[1:]:
            if (left, right) not in merges:
                merges.append((left, right))
            left += right
            vocab.setdefault(left, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab.setdefault(special, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=_CLIP_MAX_LENGTH)


def _byte_level_alphabet() -> list[str]:
    """GPT-2/CLIP's printable stand-ins for the 256 byte values (ByteLevel pre-tokenizer)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars: list[str] = []
    extra = 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def _t5_tokenizer() -> Any:
    """A Unigram tokenizer in T5's format (pad 0, eos 1, unk 2) over letters and digits."""
    from transformers import T5Tokenizer

    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-"
    pieces += [("\u2581", -2.0)]
    pieces += [("\u2581" + c, -3.0) for c in alphabet]
    pieces += [(c, -4.0) for c in alphabet]
    pieces += [(c.upper(), -5.0) for c in alphabet if c.isalpha()]
    pieces += [("\u2581" + word, -1.0) for word in _vocabulary_words() if len(word) > 1]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=_T5_MAX_LENGTH)


# --- transformer weights -------------------------------------------------------------------------


def tensor_specs(config: Mapping[str, Any], layout: Layout) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every transformer tensor as the GGUF file of ``layout`` stores it.

    The model is instantiated on the meta device (no memory, no slow init) to learn diffusers'
    names and shapes; for ``"bfl"`` the same meta tensors go through ``diffusers_to_bfl``, so
    the file is written by exactly the mapping that the round-trip test checks against
    diffusers' own converter.
    """
    import torch
    from diffusers import FluxTransformer2DModel

    cfg = {k: v for k, v in config.items() if not k.startswith("_")}
    with torch.device("meta"):
        model = FluxTransformer2DModel(**cfg)
    state: Mapping[str, torch.Tensor] = model.state_dict()
    if layout == "bfl":
        state = diffusers_to_bfl(state)
    return {name: tuple(tensor.shape) for name, tensor in state.items()}


def _is_norm_scale(name: str) -> bool:
    """RMSNorm scales (diffusers ``attn.norm_q.weight``, BFL ``query_norm.scale``) start at 1."""
    return name.endswith(".scale") or ("norm" in name and ".linear" not in name)


def _write_random_gguf(
    path: Path, specs: Mapping[str, tuple[int, ...]], *, quant: TinyQuant, layout: Layout, seed: int
) -> None:
    """Writes random weights of the given shapes straight into a GGUF file.

    Values are drawn and quantized a few rows at a time: the BFL model has 532 M parameters,
    and materialising them as float32 first costs 2 GB of freshly faulted memory, which is slower
    than the quantization itself on a small VM. Linear weights are uniform in +-1/sqrt(fan_in)
    (torch's default init), norm scales are ones.
    """
    import numpy as np

    rng = np.random.default_rng(seed)

    def rows(name: str, shape: tuple[int, ...]) -> Iterator[np.ndarray]:
        if len(shape) == 1 and _is_norm_scale(name):
            yield np.ones(shape, dtype=np.float32)
            return
        fan_in = shape[-1]
        bound = np.float32(2.0 / math.sqrt(fan_in))
        if len(shape) == 1:
            yield (rng.random(shape, dtype=np.float32) - np.float32(0.5)) * bound
            return
        step = max(1, _CHUNK_VALUES // fan_in)
        for start in range(0, shape[0], step):
            chunk = rng.random((min(step, shape[0] - start), *shape[1:]), dtype=np.float32)
            chunk -= np.float32(0.5)
            chunk *= bound
            yield chunk

    _write_gguf_rows(
        path,
        ((name, shape, rows(name, shape)) for name, shape in specs.items()),
        quant=quant,
        layout=layout,
    )


def _swap_halves(tensor: torch.Tensor) -> torch.Tensor:
    """BFL's final AdaLN is (shift, scale); diffusers' is (scale, shift). Self-inverse."""
    import torch

    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def diffusers_to_bfl(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Renames a diffusers FLUX transformer state dict to BFL (original checkpoint) names.

    The exact inverse of diffusers' ``convert_flux_transformer_checkpoint_to_diffusers``:
    q/k/v are fused into ``qkv`` (double blocks) or ``linear1`` together with the MLP input
    (single blocks) and the final AdaLN halves are swapped. Raises KeyError on leftovers so a
    diffusers release adding tensors cannot silently produce a file that loads half-empty.
    """
    import torch

    src = dict(state)
    out: dict[str, torch.Tensor] = {}

    def move(new: str, old: str) -> None:
        for suffix in ("weight", "bias"):
            out[f"{new}.{suffix}"] = src.pop(f"{old}.{suffix}")

    def fuse(new: str, olds: list[str]) -> None:
        for suffix in ("weight", "bias"):
            out[f"{new}.{suffix}"] = torch.cat([src.pop(f"{o}.{suffix}") for o in olds], dim=0)

    def scale(new: str, old: str) -> None:
        out[new] = src.pop(old)

    move("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1")
    move("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2")
    move("vector_in.in_layer", "time_text_embed.text_embedder.linear_1")
    move("vector_in.out_layer", "time_text_embed.text_embedder.linear_2")
    if "time_text_embed.guidance_embedder.linear_1.weight" in src:
        move("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1")
        move("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2")
    move("txt_in", "context_embedder")
    move("img_in", "x_embedder")

    double = sorted({int(k.split(".")[1]) for k in src if k.startswith("transformer_blocks.")})
    for i in double:
        d, b = f"double_blocks.{i}", f"transformer_blocks.{i}"
        move(f"{d}.img_mod.lin", f"{b}.norm1.linear")
        move(f"{d}.txt_mod.lin", f"{b}.norm1_context.linear")
        fuse(f"{d}.img_attn.qkv", [f"{b}.attn.to_q", f"{b}.attn.to_k", f"{b}.attn.to_v"])
        fuse(
            f"{d}.txt_attn.qkv",
            [f"{b}.attn.add_q_proj", f"{b}.attn.add_k_proj", f"{b}.attn.add_v_proj"],
        )
        scale(f"{d}.img_attn.norm.query_norm.scale", f"{b}.attn.norm_q.weight")
        scale(f"{d}.img_attn.norm.key_norm.scale", f"{b}.attn.norm_k.weight")
        scale(f"{d}.txt_attn.norm.query_norm.scale", f"{b}.attn.norm_added_q.weight")
        scale(f"{d}.txt_attn.norm.key_norm.scale", f"{b}.attn.norm_added_k.weight")
        move(f"{d}.img_mlp.0", f"{b}.ff.net.0.proj")
        move(f"{d}.img_mlp.2", f"{b}.ff.net.2")
        move(f"{d}.txt_mlp.0", f"{b}.ff_context.net.0.proj")
        move(f"{d}.txt_mlp.2", f"{b}.ff_context.net.2")
        move(f"{d}.img_attn.proj", f"{b}.attn.to_out.0")
        move(f"{d}.txt_attn.proj", f"{b}.attn.to_add_out")

    single = sorted(
        {int(k.split(".")[1]) for k in src if k.startswith("single_transformer_blocks.")}
    )
    for i in single:
        s, b = f"single_blocks.{i}", f"single_transformer_blocks.{i}"
        move(f"{s}.modulation.lin", f"{b}.norm.linear")
        fuse(
            f"{s}.linear1",
            [f"{b}.attn.to_q", f"{b}.attn.to_k", f"{b}.attn.to_v", f"{b}.proj_mlp"],
        )
        scale(f"{s}.norm.query_norm.scale", f"{b}.attn.norm_q.weight")
        scale(f"{s}.norm.key_norm.scale", f"{b}.attn.norm_k.weight")
        move(f"{s}.linear2", f"{b}.proj_out")

    move("final_layer.linear", "proj_out")
    for suffix in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{suffix}"] = _swap_halves(
            src.pop(f"norm_out.linear.{suffix}")
        )
    if src:
        raise KeyError(f"no BFL name for diffusers tensors: {sorted(src)[:8]}")
    return out


def gguf_tensor_type(name: str, shape: tuple[int, ...], quant: TinyQuant, layout: Layout) -> Any:
    """The GGML type a published FLUX GGUF file uses for this tensor.

    1-D tensors (biases, norm scales) stay F32; the input embedders and the final layer stay
    F16; every other matrix is block-quantized. Rows whose length is not a multiple of the
    32-value block cannot be quantized and fall back to F16, as llama.cpp's tools do.
    """
    import gguf

    if len(shape) == 1:
        return gguf.GGMLQuantizationType.F32
    prefixes = (*_HIGH_PRECISION_PREFIXES, "final_layer.")
    if layout == "diffusers":
        prefixes = (*_HIGH_PRECISION_DIFFUSERS, "proj_out.")
    if name.startswith(prefixes) or shape[-1] % 32:
        return gguf.GGMLQuantizationType.F16
    return gguf.GGMLQuantizationType[quant]


def write_gguf(
    path: Path, state: Mapping[str, torch.Tensor], *, quant: TinyQuant, layout: Layout
) -> None:
    """Writes a state dict as a GGUF file with real Q8_0/Q4_0 blocks (gguf-py's quantizer)."""
    _write_gguf_rows(
        path,
        (
            (name, tuple(t.shape), iter([t.detach().to("cpu").float().numpy()]))
            for name, t in state.items()
        ),
        quant=quant,
        layout=layout,
    )


def _write_gguf_rows(
    path: Path,
    tensors: Iterable[tuple[str, tuple[int, ...], Iterator[np.ndarray]]],
    *,
    quant: TinyQuant,
    layout: Layout,
) -> None:
    """Quantizes (name, shape, row chunks) tensor by tensor into one GGUF file.

    Quantizing row chunks gives the same bytes as quantizing the whole tensor: Q8_0/Q4_0 blocks
    run along a row (32 values), never across rows.
    """
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch="flux")
    writer.add_name(f"tiny FLUX.1-Fill-dev ({layout} keys)")
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(
        gguf.LlamaFileType.MOSTLY_Q8_0 if quant == "Q8_0" else gguf.LlamaFileType.MOSTLY_Q4_0
    )
    for name, shape, chunks in tensors:
        qtype = gguf_tensor_type(name, shape, quant, layout)
        parts = [gguf.quants.quantize(np.ascontiguousarray(c, np.float32), qtype) for c in chunks]
        data = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            writer.add_tensor(name, data.reshape(shape))
        else:
            writer.add_tensor(name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
