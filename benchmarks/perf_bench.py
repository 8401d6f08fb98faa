"""Baseline vs ours, one speed-up at a time, on FLUX.1-Fill-dev-shaped models with random weights.

Random weights paint noise but cost the same time and memory as the real ones, so this needs no
download (the real base repository is gated). Two scales, one code path:

* ``--scale tiny`` (default): the tiny test model (``inpaint.tiny.build_tiny_model``, hidden
  width 256) on the CPU at 256 px and 4 steps. Seconds; run by the test-suite so it cannot rot.
  Its figures say nothing about the GPU targets.
* ``--scale full``: the real shapes - transformer 19 double + 38 single blocks, width 3072,
  in_channels 384, as a GGUF file (Q4_0, or Q8_0 with ``--quant``) in the **BFL key layout** of
  the published files (YarvixPA/FLUX.1-Fill-dev-gguf), so loading pays the same BFL->diffusers
  conversion as production; a T5-XXL-shaped encoder (4096 wide, 24 layers, 512 tokens), CLIP-L
  and the real VAE config. Built once into ``--workdir`` (random init and quantization run on
  ``--device`` in chunks: a GPU builds it in about a minute), then loaded through the production
  loader (``InpaintModel.load``) like every variant.

Variants (``--variants``, comma separated, measured in this order in one process):

* ``baseline``: what the seed's system does - diffusers' FluxFillPipeline with the GGUF
  transformer, default settings, CLIP and T5 run for every job (prompt cache off).
* ``ours-TOKEN+TOKEN...``: the production loader with the named speed-ups, each a setting of
  ``inpaint.config.Settings`` (printed as INPAINT_* variables): ``cache`` (prompt-embedding
  cache), ``embeds`` (precomputed prompt embeddings, CLIP/T5 loaded on demand: issue 12),
  ``offload-te`` (text encoders parked in CPU memory between cache misses), ``dequant``
  (GGUF -> compute dtype once at load), ``compile`` (regional torch.compile, CUDA only),
  ``attn-NAME`` (diffusers attention backend), ``stepcache-T`` (first-block step cache,
  approximate), ``cpu-offload`` (model CPU offload), ``Q4_0``/``Q8_0`` (GGUF file).
* ``ours``: the recommended configuration for large GPUs (cache+embeds+dequant+compile);
  ``ours-l4``: the 24 GB profile (cache+embeds+offload-te+compile on the quantized transformer).

Figures per variant: cold start (load from local disk, page cache evicted, + warm-up), first
job, warm job median, transformer time per step (CUDA events / perf_counter), text encoding per
job and for an uncached prompt, VAE encode + decode, peak memory (GPU allocator; on CPU the
process's peak RSS, labelled so), ratios to the baseline, the step time as a multiple of the
bf16 compute bound (GPU only), and the output's pixel difference to the baseline on the same
seed. Then the crop-to-mask figures for a 12 MP photo with a mask of 5 % of its area.

Nothing is asserted: the test-suite only checks that every figure is there. Run::

    .venv/bin/python benchmarks/perf_bench.py --scale tiny --json out/perf-tiny.json
    python benchmarks/perf_bench.py --scale full --build-only        # once per machine
    python benchmarks/perf_bench.py --scale full --json out/perf-full.json

See docs/performance.md for the GPU procedure and the analysis.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime as dt
import gc
import hashlib
import io
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from inpaint import tiny  # noqa: E402  (cheap: heavy imports happen inside its functions)
from inpaint.config import gguf_filename  # noqa: E402

# --- the real shapes -----------------------------------------------------------------------------

#: FLUX.1-Fill-dev's transformer/config.json (see /work/shared/FACTS.md).
FULL_TRANSFORMER_CONFIG: dict[str, Any] = {
    "_class_name": "FluxTransformer2DModel",
    "patch_size": 1,
    "in_channels": 384,
    "out_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": [16, 56, 56],
}
#: google/t5-v1_1-xxl's encoder (FLUX's text_encoder_2), 4.76 B parameters.
T5_XXL_CONFIG: dict[str, Any] = {
    "vocab_size": 32128,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",
    "layer_norm_epsilon": 1e-6,
    "tie_word_embeddings": False,
}
#: openai/clip-vit-large-patch14's text tower (FLUX's text_encoder), 123 M parameters.
CLIP_L_CONFIG: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}
#: FLUX.1's autoencoder (vae/config.json), 84 M parameters.
FLUX_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 16,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "mid_block_add_attention": True,
    "force_upcast": True,
}


@dataclass(frozen=True)
class ModelSpec:
    """Shapes of a random FLUX Fill model written by ``build_model`` (BFL-layout GGUF)."""

    name: str
    transformer: Mapping[str, Any]
    t5: Mapping[str, Any]
    clip: Mapping[str, Any]
    vae: Mapping[str, Any]
    t5_max_length: int = 512

    def digest(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True, default=list).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


FULL_SPEC = ModelSpec(
    "full", FULL_TRANSFORMER_CONFIG, T5_XXL_CONFIG, CLIP_L_CONFIG, FLUX_VAE_CONFIG, 512
)

#: Dense (no sparsity) bf16 tensor-core peaks in TFLOPS, by a substring of the CUDA device name;
#: the first match wins, so specific names come first. ``--peak-tflops`` overrides.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H200 NVL", 835.0),
    ("H200", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
)

#: Mean absolute pixel difference (0..255) to the baseline on the same seed that a speed-up may
#: cost. Exact rewrites (cache, offload, dequantize) give 0 on CPU; fused GPU kernels change the
#: rounding, and random weights amplify that, so the figure is informative, never asserted.
DEFAULT_TOLERANCE = 1.0

PRESETS: dict[str, str] = {
    "ours": "cache+embeds+dequant+compile",
    "ours-l4": "cache+embeds+offload-te+compile",
}
_TOKEN_SETTINGS: dict[str, dict[str, Any]] = {
    "cache": {"prompt_cache_size": 32},
    "embeds": {"prompt_embeddings": True},
    "offload-te": {"offload_text_encoders": True},
    "dequant": {"dequantize": True},
    "compile": {"compile": True},
    "cpu-offload": {"cpu_offload": True},
    "Q4_0": {"quant": "Q4_0"},
    "Q8_0": {"quant": "Q8_0"},
}
BASELINE_SETTINGS: dict[str, Any] = {
    "prompt_cache_size": 0,
    "prompt_embeddings": False,
    "dequantize": False,
    "compile": False,
    "offload_text_encoders": False,
    "cpu_offload": False,
    "attention_backend": None,
    "step_cache_threshold": 0.0,
}


@dataclass(frozen=True)
class ScaleDefaults:
    size: int
    steps: int
    repeats: int
    crop_steps: int
    device: str
    variants: str


SCALES: dict[str, ScaleDefaults] = {
    "tiny": ScaleDefaults(
        256, 4, 3, 2, "cpu", "baseline,ours-cache,ours-cache+dequant,ours,ours-l4"
    ),
    "full": ScaleDefaults(
        1024,
        28,
        3,
        4,
        "auto",
        "baseline,ours-cache,ours-cache+dequant,ours-cache+dequant+compile,ours-l4",
    ),
}


# --- variants ------------------------------------------------------------------------------------


def variant_settings(name: str) -> dict[str, Any]:
    """Settings overrides (relative to the defaults) for a variant name; ValueError if unknown."""
    if name == "baseline":
        return dict(BASELINE_SETTINGS)
    spec = PRESETS.get(name)
    if spec is None:
        if not name.startswith("ours-"):
            raise ValueError(f"unknown variant {name!r}: 'baseline', 'ours', 'ours-l4' or ours-...")
        spec = name.removeprefix("ours-")
    values = dict(BASELINE_SETTINGS)
    for token in spec.split("+"):
        if token in _TOKEN_SETTINGS:
            values.update(_TOKEN_SETTINGS[token])
        elif token.startswith("attn-") and len(token) > 5:
            values["attention_backend"] = token[5:]
        elif token.startswith("stepcache-"):
            try:
                values["step_cache_threshold"] = float(token.removeprefix("stepcache-"))
            except ValueError:
                raise ValueError(f"bad step cache threshold in {token!r}") from None
        else:
            known = [*_TOKEN_SETTINGS, "attn-NAME", "stepcache-T"]
            raise ValueError(f"unknown token {token!r} in variant {name!r}; known: {known}")
    return values


def env_form(overrides: Mapping[str, Any]) -> str:
    """The settings as the INPAINT_* variables a deployment would set (non-defaults only)."""
    from inpaint.config import Settings

    defaults = Settings.model_fields
    parts = []
    for key, value in overrides.items():
        if key == "quant" or defaults[key].default != value:
            shown = (
                "" if value is None else str(value).lower() if isinstance(value, bool) else value
            )
            parts.append(f"INPAINT_{key.upper()}={shown}")
    return " ".join(parts) or "(defaults)"


# --- compute bound -------------------------------------------------------------------------------


def transformer_flops(config: Mapping[str, Any], image_tokens: int, text_tokens: int) -> float:
    """FLOPs of one FLUX transformer forward (one denoising step; Fill has no CFG batch).

    Per token and block the linear layers cost 12 H^2 multiply-adds in both block kinds (double:
    qkv 3H^2 + out H^2 + MLP 8H^2 per stream; single: linear1 7H^2 + linear2 5H^2), attention
    4 S^2 H FLOPs per block (QK^T and PV), plus the embedders and the output projection. With
    the real config at 1024^2 (4096 image + 512 text tokens): 74.4 TFLOP.
    """
    hidden = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    blocks = int(config["num_layers"]) + int(config["num_single_layers"])
    seq = image_tokens + text_tokens
    linear = 2.0 * 12 * hidden * hidden * seq * blocks
    attention = 4.0 * seq * seq * hidden * blocks
    embed = (
        2.0
        * hidden
        * (
            int(config["in_channels"]) * image_tokens
            + int(config["joint_attention_dim"]) * text_tokens
            + int(config["out_channels"]) * image_tokens
        )
    )
    return linear + attention + embed


def image_tokens_for(width: int, height: int) -> int:
    """Packed latent tokens: VAE 8x downscale, then 2x2 patches."""
    return (width // 16) * (height // 16)


def peak_tflops_for(device_name: str) -> float | None:
    for needle, tflops in PEAK_BF16_TFLOPS:
        if needle.lower() in device_name.lower():
            return tflops
    return None


# --- GGUF quantization in torch (bit-identical to gguf-py, runs on the GPU) ----------------------

QK = 32  # values per Q8_0 / Q4_0 block


def quantize_q8_0(x: Any) -> Any:
    """Q8_0 blocks of a float32 tensor (rows, cols % 32 == 0) -> uint8 (rows, cols / 32 * 34).

    The same arithmetic as gguf-py's ``Q8_0.quantize_blocks`` (reference ggml rounding: half
    away from zero), in float32 torch ops, so any device gives gguf-py's bytes.
    """
    import torch

    rows = x.shape[0]
    blocks = x.reshape(-1, QK)
    d = blocks.abs().amax(dim=1, keepdim=True) / 127
    inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
    q = blocks * inv
    a = q.abs()
    floored = torch.floor(a)
    qs = torch.sign(q) * (floored + torch.floor(2 * (a - floored)))
    scale = d.to(torch.float16).view(torch.uint8)
    return torch.cat([scale, qs.to(torch.int8).view(torch.uint8)], dim=1).reshape(rows, -1)


def quantize_q4_0(x: Any) -> Any:
    """Q4_0 blocks of a float32 tensor -> uint8 (rows, cols / 32 * 18), as gguf-py's
    ``Q4_0.quantize_blocks``: scale = the block's largest-magnitude value / -8, nibbles packed
    low half | high half << 4."""
    import torch

    rows = x.shape[0]
    blocks = x.reshape(-1, QK)
    imax = blocks.abs().argmax(dim=1, keepdim=True)
    d = blocks.gather(1, imax) / -8
    inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
    qs = torch.trunc(blocks * inv + 8.5).clamp(0, 15).to(torch.uint8)
    packed = qs[:, : QK // 2] | (qs[:, QK // 2 :] << 4)
    scale = d.to(torch.float16).view(torch.uint8)
    return torch.cat([scale, packed], dim=1).reshape(rows, -1)


def _gguf_nbytes(shape: tuple[int, ...], qtype: Any) -> int:
    import gguf

    count = math.prod(shape)
    if qtype == gguf.GGMLQuantizationType.F32:
        return 4 * count
    if qtype == gguf.GGMLQuantizationType.F16:
        return 2 * count
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return count // block * size


def write_random_gguf(
    path: Path,
    specs: Mapping[str, tuple[int, ...]],
    *,
    quant: str,
    layout: tiny.Layout,
    device: str,
    seed: int,
) -> None:
    """Random weights straight into a GGUF file, generated and quantized on ``device``.

    Same values recipe and tensor types as ``inpaint.tiny`` (uniform +-1/sqrt(fan_in), norm
    scales 1, embedders and final layer F16, biases F32), but torch instead of numpy so a GPU
    does the 12 B values of the real transformer in seconds. The file is streamed: tensor infos
    first, then each tensor's bytes (chunks of rows, so a CPU run stays within memory).
    """
    import gguf
    import numpy as np
    import torch

    writer = gguf.GGUFWriter(str(path), arch="flux")
    writer.add_name(f"random FLUX.1-Fill-dev ({layout} keys, perf benchmark)")
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(
        gguf.LlamaFileType.MOSTLY_Q8_0 if quant == "Q8_0" else gguf.LlamaFileType.MOSTLY_Q4_0
    )
    plan = []
    for name, shape in specs.items():
        qtype = tiny.gguf_tensor_type(name, shape, quant, layout)  # type: ignore[arg-type]
        nbytes = _gguf_nbytes(shape, qtype)
        if qtype == gguf.GGMLQuantizationType.F32:
            writer.add_tensor_info(name, shape, np.dtype(np.float32), nbytes)
        elif qtype == gguf.GGMLQuantizationType.F16:
            writer.add_tensor_info(name, shape, np.dtype(np.float16), nbytes)
        else:
            writer.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, raw_dtype=qtype)
        plan.append((name, shape, qtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()

    generator = torch.Generator(device=device).manual_seed(seed)
    chunk_values = (1 << 26) if device.startswith("cuda") else (1 << 21)
    quantizers = {
        gguf.GGMLQuantizationType.Q8_0: quantize_q8_0,
        gguf.GGMLQuantizationType.Q4_0: quantize_q4_0,
    }
    for name, shape, qtype in plan:
        if len(shape) == 1 and tiny._is_norm_scale(name):
            values = [torch.ones(shape, dtype=torch.float32, device=device)]
        else:
            fan_in = shape[-1]
            bound = 1.0 / math.sqrt(fan_in)
            step = max(1, chunk_values // max(1, math.prod(shape[1:])))
            values = (
                (
                    torch.rand(
                        (min(step, shape[0] - start), *shape[1:]),
                        generator=generator,
                        device=device,
                        dtype=torch.float32,
                    )
                    * (2 * bound)
                    - bound
                )
                for start in range(0, shape[0], step)
            )
        parts = []
        for chunk in values:
            if qtype == gguf.GGMLQuantizationType.F32:
                out = chunk
            elif qtype == gguf.GGMLQuantizationType.F16:
                out = chunk.to(torch.float16)
            else:
                out = quantizers[qtype](chunk)
            parts.append(out.cpu().numpy())
        data = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        writer.write_tensor_data(data)
    writer.close()


# --- the full-size random model ------------------------------------------------------------------

BUILD_VERSION = "1"
BUILD_MARKER = ".perf-model.json"


@contextlib.contextmanager
def _default_dtype(dtype: Any) -> Iterator[None]:
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_model(
    dest: Path,
    spec: ModelSpec,
    *,
    quant: str,
    device: str,
    seed: int = 0,
    layout: tiny.Layout = "bfl",
) -> Path:
    """Builds ``spec`` as a weights directory (``base/`` + GGUF) into ``dest``.

    ``layout="bfl"`` (the default, and what ``--scale full`` uses) names the tensors as the
    published GGUF files do, so the load pays diffusers' BFL->diffusers conversion exactly as
    production does; that converter needs the real width 3072. ``"diffusers"`` allows narrow
    test models.

    Cached like ``build_tiny_model``: a marker names what is complete; the same call again is a
    no-op and another ``quant`` adds only its GGUF file. A ``base/`` not written here is refused.
    """
    if quant not in ("Q4_0", "Q8_0"):
        raise ValueError(f"random GGUF files support Q4_0 and Q8_0, not {quant!r}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    marker = dest / BUILD_MARKER
    identity = {
        "version": BUILD_VERSION,
        "spec": spec.name,
        "digest": spec.digest(),
        "seed": seed,
        "layout": layout,
    }
    with tiny._locked(dest / ".perf-model.lock"):
        found = tiny._read_marker(marker)
        if (dest / "base").exists() and found is None:
            raise FileExistsError(f"{dest / 'base'} was not written by perf_bench; refusing")
        base_ok = (
            found is not None
            and {k: found.get(k) for k in identity} == identity
            and (dest / "base" / "model_index.json").is_file()
        )
        quants = list(found.get("quants", [])) if base_ok and found else []
        if not base_ok:
            shutil.rmtree(dest / "base", ignore_errors=True)
            for old in dest.glob("flux1-fill-dev-*.gguf"):
                old.unlink()
            tiny._write_marker(marker, {**identity, "quants": []})
            staging = dest / "base.partial"
            shutil.rmtree(staging, ignore_errors=True)
            _write_base(staging, spec, device=device, seed=seed)
            staging.rename(dest / "base")
        gguf_path = dest / gguf_filename(quant)
        if quant not in quants or not gguf_path.is_file():
            partial = gguf_path.with_name(gguf_path.name + ".partial")
            specs = tiny.tensor_specs(spec.transformer, layout)
            write_random_gguf(partial, specs, quant=quant, layout=layout, device=device, seed=seed)
            partial.replace(gguf_path)
            quants = sorted({*quants, quant})
        tiny._write_marker(marker, {**identity, "quants": quants})
        from inpaint.prompts import write_builder_embeddings

        write_builder_embeddings(dest, ("bfloat16",))  # what a GPU and the CPU bench run
    return dest


def _write_base(base: Path, spec: ModelSpec, *, device: str, seed: int) -> None:
    """Scheduler, tokenizers, random CLIP/T5 (bf16, as published) and VAE (fp32), configs."""
    import diffusers
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    base.mkdir(parents=True)
    torch.manual_seed(seed)
    clip_tokenizer = tiny._clip_tokenizer()
    t5_tokenizer = tiny._t5_tokenizer()
    t5_tokenizer.model_max_length = spec.t5_max_length  # FLUX pads T5 prompts to 512 tokens
    clip_tokenizer.save_pretrained(base / "tokenizer")
    t5_tokenizer.save_pretrained(base / "tokenizer_2")

    with tiny._quiet_transformers():
        with _default_dtype(torch.bfloat16), torch.device(device):
            clip = CLIPTextModel(
                CLIPTextConfig(
                    **spec.clip,
                    bos_token_id=clip_tokenizer.bos_token_id,
                    eos_token_id=clip_tokenizer.eos_token_id,
                    pad_token_id=clip_tokenizer.pad_token_id,
                )
            )
        clip.save_pretrained(base / "text_encoder")
        del clip
        with _default_dtype(torch.bfloat16), torch.device(device):
            t5 = T5EncoderModel(
                T5Config(
                    **spec.t5,
                    pad_token_id=t5_tokenizer.pad_token_id,
                    eos_token_id=t5_tokenizer.eos_token_id,
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

    FlowMatchEulerDiscreteScheduler(**tiny._SCHEDULER_CONFIG).save_pretrained(base / "scheduler")
    (base / "transformer").mkdir()
    transformer_json = {**spec.transformer, "_diffusers_version": diffusers.__version__}
    (base / "transformer" / "config.json").write_text(json.dumps(transformer_json, indent=2))
    model_index = {
        "_class_name": "FluxFillPipeline",
        "_diffusers_version": diffusers.__version__,
        **tiny._MODEL_INDEX_COMPONENTS,
    }
    (base / "model_index.json").write_text(json.dumps(model_index, indent=2))


# --- measuring -----------------------------------------------------------------------------------


class RegionTimer:
    """Durations of named regions: CUDA events on a GPU (no sync inside a job), else wall time."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self._open: dict[str, Any] = {}
        self._done: dict[str, list[Any]] = defaultdict(list)

    def _now(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        import torch

        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def start(self, key: str) -> None:
        self._open[key] = self._now()

    def stop(self, key: str) -> None:
        start = self._open.pop(key, None)
        if start is not None:
            self._done[key].append((start, self._now()))

    def collect(self) -> dict[str, list[float]]:
        """Seconds of every region closed since the last collect."""
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            out = {k: [s.elapsed_time(e) / 1000 for s, e in v] for k, v in self._done.items()}
        else:
            out = {k: [e - s for s, e in v] for k, v in self._done.items()}
        self._done = defaultdict(list)
        return out


@contextlib.contextmanager
def instrumented(pipe: Any, timer: RegionTimer) -> Iterator[None]:
    """Times the transformer's forward (one per step), CLIP, T5, and the VAE's encode/decode."""
    handles = []

    def hook(module: Any, key: str) -> None:
        handles.append(module.register_forward_pre_hook(lambda *_a: timer.start(key)))
        handles.append(module.register_forward_hook(lambda *_a: timer.stop(key)))

    hook(pipe.transformer, "step")
    if pipe.text_encoder is not None:
        hook(pipe.text_encoder, "clip")
    if pipe.text_encoder_2 is not None:
        hook(pipe.text_encoder_2, "t5")
    wrapped = []
    for attr in ("encode", "decode"):
        original = getattr(pipe.vae, attr)

        def timed(*args: Any, _f: Callable[..., Any] = original, _k: str = attr, **kw: Any) -> Any:
            timer.start(f"vae_{_k}")
            try:
                return _f(*args, **kw)
            finally:
                timer.stop(f"vae_{_k}")

        pipe.vae.__dict__[attr] = timed  # instance attribute shadows the method
        wrapped.append(attr)
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for attr in wrapped:
            pipe.vae.__dict__.pop(attr, None)
        timer.collect()


def _sync(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()


def reset_peak_memory(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.reset_peak_memory_stats()
        return
    with contextlib.suppress(OSError):  # Linux >= 4.0: "5" resets VmHWM (peak RSS)
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory(cuda: bool) -> tuple[int, int | None]:
    """(peak allocated, peak reserved) on a GPU; (peak RSS, None) on a CPU."""
    if cuda:
        import torch

        return torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024, None
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, None


def evict_page_cache(folder: Path) -> bool:
    """Drops ``folder``'s files from the OS page cache (no root needed), so the next load reads
    the disk: a cold start as on a fresh instance. False where the OS does not support it."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            with contextlib.suppress(OSError):
                os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def pet_photo(width: int, height: int, seed: int = 0) -> Any:
    """A photo-like RGB image: scikit-image's cat (a dev dependency) scaled, plus sensor noise;
    a colour gradient where scikit-image is missing (a bare GPU machine)."""
    import numpy as np
    from PIL import Image

    try:
        from skimage import data

        base = Image.fromarray(data.chelsea())
    except ImportError:
        y, x = np.mgrid[0:300, 0:451].astype(np.float32)
        base = Image.fromarray(
            np.dstack([x / 451 * 255, y / 300 * 255, (x + y) / 751 * 255]).astype(np.uint8)
        )
    big = np.asarray(base.resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    noise = np.random.default_rng(seed).integers(-6, 7, big.shape, dtype=np.int16)
    return Image.fromarray(np.clip(big + noise, 0, 255).astype(np.uint8))


def job_inputs(size: int) -> tuple[Any, Any]:
    """The benchmark job: a size x size pet photo with an elliptic mask of ~16 % of it."""
    from PIL import Image, ImageDraw

    image = pet_photo(size, size)
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).ellipse((0.3 * size, 0.25 * size, 0.7 * size, 0.75 * size), fill=255)
    return image, mask


@dataclass
class Context:
    """What every variant shares."""

    args: argparse.Namespace
    model_dir: Path
    device: str
    cuda: bool
    image: Any
    mask: Any
    prompt: str
    timer: RegionTimer
    baseline_pixels: Any = None
    results: list[dict[str, Any]] = field(default_factory=list)


def _release(cuda: bool) -> None:
    import torch

    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    dynamo = getattr(torch, "_dynamo", None)
    if dynamo is not None:
        dynamo.reset()  # each compile variant pays its own compilation


def _settings_for(ctx: Context, overrides: Mapping[str, Any]) -> Any:
    from inpaint.config import Settings

    values = {
        "model_dir": ctx.model_dir,
        "quant": ctx.args.quant,
        "device": ctx.device,
        "dtype": ctx.args.dtype,
        **overrides,
    }
    return Settings(**values)


MISS_PROMPT = "a dog on a sofa"  # never the default prompt: a cache miss in a fresh model


def prime(ctx: Context) -> float:
    """Pays the process's one-time costs (lazy imports, thread pools, cuBLAS/cuDNN handles) on
    the tiny model, so that they are not charged to whichever variant happens to run first."""
    from inpaint.model import InpaintModel

    started = time.perf_counter()
    tiny_dir = tiny.build_tiny_model(
        ROOT / "build" / f"tiny-model-v{tiny.TINY_MODEL_VERSION}", layout="diffusers", quant="Q8_0"
    )
    settings = _settings_for(ctx, {"prompt_cache_size": 0})
    model = InpaintModel.load(settings.model_copy(update={"model_dir": tiny_dir, "quant": "Q8_0"}))
    model.warm_up()
    small_image, small_mask = job_inputs(64)
    run_job(ctx, model, small_image, small_mask, 2)
    with instrumented(model.pipe, ctx.timer):
        run_job(ctx, model, small_image, small_mask, 1)
    del model
    _release(ctx.cuda)
    return time.perf_counter() - started


def run_job(ctx: Context, model: Any, image: Any, mask: Any, steps: int) -> tuple[float, Any]:
    from inpaint.model import GenerationParams

    params = GenerationParams(
        prompt=ctx.prompt, seed=ctx.args.seed, steps=steps, guidance=model.settings.guidance
    )
    _sync(ctx.cuda)
    started = time.perf_counter()
    out = model.generate(image, mask, params)
    _sync(ctx.cuda)
    return time.perf_counter() - started, out


def measure_variant(ctx: Context, name: str, *, keep: bool) -> tuple[dict[str, Any], Any]:
    """Loads one variant cold, warms it up, runs the jobs; returns its figures (and the model
    when ``keep``, for the crop-to-mask figures)."""
    import numpy as np

    from inpaint.model import InpaintModel

    args = ctx.args
    overrides = variant_settings(name)
    settings = _settings_for(ctx, overrides)
    _release(ctx.cuda)
    evicted = evict_page_cache(ctx.model_dir) if args.evict else False
    reset_peak_memory(ctx.cuda)

    started = time.perf_counter()
    model = InpaintModel.load(settings)
    _sync(ctx.cuda)
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    model.warm_up()
    _sync(ctx.cuda)
    warmup_s = time.perf_counter() - started

    with instrumented(model.pipe, ctx.timer):
        first_job_s, _ = run_job(ctx, model, ctx.image, ctx.mask, args.steps)
        ctx.timer.collect()
        load_peak, load_reserved = peak_memory(ctx.cuda)  # load, warm-up, first job
        reset_peak_memory(ctx.cuda)  # from here: the steady-state job peak
        jobs, steps, texts, vae_enc, vae_dec, out = [], [], [], [], [], None
        for _ in range(args.repeats):
            seconds, out = run_job(ctx, model, ctx.image, ctx.mask, args.steps)
            regions = ctx.timer.collect()
            jobs.append(seconds)
            steps += regions.get("step", [])
            texts.append(sum(regions.get("clip", [])) + sum(regions.get("t5", [])))
            vae_enc.append(sum(regions.get("vae_encode", [])))
            vae_dec.append(sum(regions.get("vae_decode", [])))
        job_peak, job_reserved = peak_memory(ctx.cuda)
        # A prompt no job used: a cache miss everywhere (parked encoders: transfers included).
        _sync(ctx.cuda)
        started = time.perf_counter()
        model.encode_prompt(MISS_PROMPT)
        _sync(ctx.cuda)
        miss_s = time.perf_counter() - started
    miss_peak, miss_reserved = peak_memory(ctx.cuda)
    peak = max(load_peak, job_peak, miss_peak)
    reserved = max(load_reserved or 0, job_reserved or 0, miss_reserved or 0) or None

    pixels = np.asarray(out, dtype=np.int16)
    if ctx.baseline_pixels is None:
        ctx.baseline_pixels = pixels
    diff = (
        np.abs(pixels - ctx.baseline_pixels) if pixels.shape == ctx.baseline_pixels.shape else None
    )
    result: dict[str, Any] = {
        "variant": name,
        "text_tokens": model.max_sequence_length,
        "settings": {k: v for k, v in overrides.items()},
        "env": env_form({"quant": settings.quant, **overrides}),
        "applied": {
            "dequantized": model.dequantized,
            "compiled": model.compiled,
            "text_encoders_offloaded": model.text_encoder_home is not None,
            "prompt_cache": settings.prompt_cache_size > 0,
        },
        "page_cache_evicted": evicted,
        "load_s": load_s,
        "warmup_s": warmup_s,
        "cold_start_s": load_s + warmup_s,
        "first_job_s": first_job_s,
        "job_s": _median(jobs),
        "job_s_runs": jobs,
        "step_s": _median(steps),
        "steps_per_job": len(steps) / max(1, len(jobs)),
        "text_encode_s": _median(texts),
        "text_encode_miss_s": miss_s,
        "vae_encode_s": _median(vae_enc),
        "vae_decode_s": _median(vae_dec),
        "vae_s": _median(vae_enc) + _median(vae_dec),
        "peak_mem_bytes": peak,
        "peak_mem_job_bytes": job_peak,
        "peak_mem_reserved_bytes": reserved,
        "diff_max": float(diff.max()) if diff is not None else None,
        "diff_mean": float(diff.mean()) if diff is not None else None,
        "diff_p99": float(np.percentile(diff, 99)) if diff is not None else None,
    }
    tolerance = args.tolerance
    result["within_tolerance"] = diff is not None and result["diff_mean"] <= tolerance
    if keep:
        return result, model
    del model
    _release(ctx.cuda)
    return result, None


def add_ratios(results: list[dict[str, Any]], bound_step_s: float | None) -> None:
    """ours / baseline for the headline figures, and the compute-bound multiple."""
    base = next((r for r in results if r["variant"] == "baseline"), None)
    for r in results:
        r["compute_bound_multiple"] = r["step_s"] / bound_step_s if bound_step_s else None
        if base is None:
            r["ratios"] = None
            continue
        r["ratios"] = {
            key: (r[key] / base[key]) if base[key] else None
            for key in ("job_s", "step_s", "cold_start_s", "text_encode_s", "peak_mem_bytes")
        }
        r["speedup_job"] = base["job_s"] / r["job_s"] if r["job_s"] else None


# --- crop-to-mask --------------------------------------------------------------------------------

PHOTO_SIZE = (4000, 3000)  # 12 MP, a phone photo
MASK_FRACTION = 0.05


def crop_photo_and_mask() -> tuple[bytes, bytes]:
    """A 12 MP JPEG and a PNG mask: an ellipse covering 5 % of the photo (a pet-sized edit)."""
    from PIL import Image, ImageDraw

    width, height = PHOTO_SIZE
    photo = pet_photo(width, height, seed=1)
    buf = io.BytesIO()
    photo.save(buf, "JPEG", quality=92)
    mask = Image.new("L", PHOTO_SIZE, 0)
    # ellipse area = pi/4 * w * h = 5 % of 12 MP, aspect 4:3
    w = math.sqrt(MASK_FRACTION * width * height * 4 / math.pi * 4 / 3)
    h = w * 3 / 4
    cx, cy = 0.62 * width, 0.45 * height
    ImageDraw.Draw(mask).ellipse((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), fill=255)
    mbuf = io.BytesIO()
    mask.save(mbuf, "PNG")
    return buf.getvalue(), mbuf.getvalue()


def measure_crop(ctx: Context, model: Any, config: Mapping[str, Any]) -> dict[str, Any]:
    """Crop-to-mask vs whole photo for a 12 MP photo with a 5 % mask, via the production
    planner (``imaging.prepare`` / ``plan_region`` / ``model_inputs``).

    At the same working budget (``--size``^2 pixels) both cost the same; the crop spends them
    on the edit (``detail_gain``: linear resolution on the mask). The speed-up is therefore
    stated at equal detail: what the whole photo would cost at the crop's resolution, timed
    (``--crop-steps`` steps, each size warmed up first) and in FLOPs.
    """
    import numpy as np

    from inpaint import imaging

    args = ctx.args
    settings = model.settings
    work_mp = args.size * args.size / 1e6
    photo, mask_png = crop_photo_and_mask()
    limits = imaging.ImageLimits(max_bytes=1 << 30, max_pixels=100_000_000)
    prepared = imaging.prepare(
        photo,
        mask_png,
        limits=limits,
        work_megapixels=work_mp,
        margin=settings.crop_margin,
        band_px=settings.dilate_px + settings.feather_px,
    )
    region = prepared.region
    assert region is not None and prepared.model_image is not None
    width, height = PHOTO_SIZE
    full_budget = imaging.work_size_for(PHOTO_SIZE, work_mp)
    scale = region.work_size[0] / region.size[0]
    full_detail = (
        max(16, int(width * scale) // 16 * 16),
        max(16, int(height * scale) // 16 * 16),
    )
    full_region = imaging.Region(box=(0, 0, width, height), work_size=full_detail)
    full_image, full_mask = imaging.model_inputs(prepared.original, prepared.mask, full_region)
    mask_fraction = float(np.asarray(prepared.mask, dtype=bool).mean())

    def timed(image: Any, mask: Any) -> tuple[float, float]:
        run_job(ctx, model, image, mask, 1)  # new size: allocator, kernels, recompilation
        ctx.timer.collect()
        seconds, _ = run_job(ctx, model, image, mask, args.crop_steps)
        steps = ctx.timer.collect().get("step", [])
        return seconds, _median(steps)

    with instrumented(model.pipe, ctx.timer):
        crop_s, crop_step_s = timed(prepared.model_image, prepared.model_mask)
        full_s, full_step_s = timed(full_image, full_mask)
    text = model.max_sequence_length

    def flops(size: tuple[int, int]) -> float:
        return transformer_flops(config, image_tokens_for(*size), text)

    return {
        "photo_size": list(PHOTO_SIZE),
        "mask_fraction": mask_fraction,
        "work_megapixels": work_mp,
        "crop_box": list(region.box),
        "crop_work_size": list(region.work_size),
        "full_budget_work_size": list(full_budget),
        "full_equal_detail_size": list(full_detail),
        "detail_gain": scale / (full_budget[0] / width),
        "model_pixels_crop": region.work_size[0] * region.work_size[1],
        "model_pixels_full_budget": full_budget[0] * full_budget[1],
        "model_pixels_full_equal_detail": full_detail[0] * full_detail[1],
        "flops_ratio_equal_detail": flops(full_detail) / flops(region.work_size),
        "flops_ratio_equal_budget": flops(full_budget) / flops(region.work_size),
        "steps": args.crop_steps,
        "crop_job_s": crop_s,
        "full_equal_detail_job_s": full_s,
        "crop_step_s": crop_step_s,
        "full_equal_detail_step_s": full_step_s,
        "speedup_equal_detail": full_s / crop_s if crop_s else None,
    }


# --- output --------------------------------------------------------------------------------------


def _fmt(value: Any, kind: str = "s") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if kind == "gib":
        return f"{value / 2**30:.2f}"
    if kind == "x":
        return f"{value:.2f}x"
    if kind == "px":
        return f"{value:.2f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.4f}"


def format_table(report: Mapping[str, Any]) -> str:
    meta = report["meta"]
    results = report["variants"]
    cuda = meta["cuda"]
    mem = "peak GPU mem allocated (GiB)" if cuda else "peak process RSS (GiB, CPU)"
    rows: list[tuple[str, str, str]] = [
        ("cold start: load + warm-up (s)", "cold_start_s", "s"),
        ("  load from disk (s)", "load_s", "s"),
        ("  warm-up (s)", "warmup_s", "s"),
        ("first job at size (s)", "first_job_s", "s"),
        (f"warm job, median of {meta['repeats']} (s)", "job_s", "s"),
        ("  speed-up vs baseline", "speedup_job", "x"),
        ("transformer step (s)", "step_s", "s"),
        ("  x bf16 compute bound", "compute_bound_multiple", "x"),
        ("text encoding per job (s)", "text_encode_s", "s"),
        ("text encoding, new prompt (s)", "text_encode_miss_s", "s"),
        ("VAE encode + decode (s)", "vae_s", "s"),
        (mem, "peak_mem_bytes", "gib"),
        ("  during warm jobs (GiB)", "peak_mem_job_bytes", "gib"),
        ("max |pixel diff| vs baseline", "diff_max", "px"),
        ("mean |pixel diff| vs baseline", "diff_mean", "px"),
        (f"  within tolerance ({meta['tolerance']})", "within_tolerance", "s"),
    ]
    if cuda:
        rows.insert(13, ("  reserved (GiB)", "peak_mem_reserved_bytes", "gib"))
    ratio_rows = [
        ("ratio job ours/baseline", "job_s"),
        ("ratio step", "step_s"),
        ("ratio cold start", "cold_start_s"),
        ("ratio peak memory", "peak_mem_bytes"),
    ]
    widths = [max(10, len(r["variant"])) + 2 for r in results]
    label = 36
    lines = [
        f"FLUX.1-Fill-dev perf bench - scale {meta['scale']}, {meta['device_name']}, "
        f"{meta['size']}x{meta['size']}, {meta['steps']} steps, {meta['quant']}, "
        f"{meta['date']}",
        f"transformer FLOPs/step {meta['flops_per_step'] / 1e12:.3f} T "
        f"({meta['image_tokens']} image + {meta['text_tokens']} text tokens); "
        + (
            f"bf16 peak {meta['peak_tflops']:.0f} TFLOPS -> bound {meta['bound_step_s']:.4f} s"
            if meta["peak_tflops"]
            else "compute bound: n/a (no GPU peak known for this device)"
        ),
        "",
        " " * label + "".join(r["variant"].rjust(w) for r, w in zip(results, widths, strict=True)),
    ]
    for title, key, kind in rows:
        cells = "".join(
            _fmt(r.get(key), kind).rjust(w) for r, w in zip(results, widths, strict=True)
        )
        lines.append(title.ljust(label) + cells)
    for title, key in ratio_rows:
        cells = "".join(
            _fmt((r.get("ratios") or {}).get(key), "x").rjust(w)
            for r, w in zip(results, widths, strict=True)
        )
        lines.append(title.ljust(label) + cells)
    lines.append("")
    for r in results:
        lines.append(f"  {r['variant']}: {r['env']}  applied={r['applied']}")
    crop = report.get("crop")
    if crop:
        lines += [
            "",
            f"crop-to-mask ({crop['variant']}): {crop['photo_size'][0]}x{crop['photo_size'][1]} "
            f"photo, mask {crop['mask_fraction'] * 100:.1f} % of it, budget "
            f"{crop['work_megapixels']:.3f} MP",
            f"  crop box {crop['crop_box']} -> model {crop['crop_work_size']}; whole photo at the "
            f"same budget -> {crop['full_budget_work_size']} (same cost, "
            f"{crop['detail_gain']:.2f}x less linear detail on the mask)",
            f"  whole photo at the crop's detail -> {crop['full_equal_detail_size']}: "
            f"{crop['model_pixels_full_equal_detail'] / crop['model_pixels_crop']:.2f}x the "
            f"pixels, {crop['flops_ratio_equal_detail']:.2f}x the FLOPs",
            f"  timed, {crop['steps']} steps: crop {crop['crop_job_s']:.3f} s "
            f"(step {crop['crop_step_s']:.4f} s), whole photo {crop['full_equal_detail_job_s']:.3f}"
            f" s (step {crop['full_equal_detail_step_s']:.4f} s): speed-up "
            f"{_fmt(crop['speedup_equal_detail'], 'x')}",
        ]
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="tiny")
    parser.add_argument("--quant", choices=["Q4_0", "Q8_0"], default="Q4_0")
    parser.add_argument("--size", type=int, help="job side in px (tiny 256, full 1024)")
    parser.add_argument("--steps", type=int, help="denoising steps per job (tiny 4, full 28)")
    parser.add_argument("--repeats", type=int, help="warm jobs per variant (median; default 3)")
    parser.add_argument("--crop-steps", type=int, help="steps for the crop-to-mask timing")
    parser.add_argument("--device", help="cpu, cuda, cuda:N or auto (tiny: cpu, full: auto)")
    parser.add_argument(
        "--dtype",
        choices=("auto", "bfloat16", "float16", "float32"),
        help="INPAINT_DTYPE (default auto; full scale on a CPU: bfloat16, as float32 T5 alone "
        "is 19 GB)",
    )
    parser.add_argument("--workdir", type=Path, help="where the random model is built/cached")
    parser.add_argument("--variants", help="comma-separated; see the module docstring")
    parser.add_argument("--crop-variant", help="variant used for the crop figures (last)")
    parser.add_argument("--no-crop", dest="crop", action="store_false")
    parser.add_argument(
        "--no-evict",
        dest="evict",
        action="store_false",
        help="keep the page cache (load times then are warm-cache figures)",
    )
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help="max mean |pixel diff| (0..255) to the baseline",
    )
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak of this GPU")
    parser.add_argument("--build-only", action="store_true", help="build the model and exit")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    defaults = SCALES[args.scale]
    for key in ("size", "steps", "repeats", "crop_steps", "device", "variants"):
        if getattr(args, key) is None:
            setattr(args, key, getattr(defaults, key))
    if args.size % 16 or args.size < 16:
        parser.error("--size must be a positive multiple of 16")
    if args.repeats < 1 or args.steps < 1 or args.crop_steps < 1:
        parser.error("--repeats, --steps and --crop-steps must be >= 1")
    if args.dtype is None:
        args.dtype = "bfloat16" if args.scale == "full" and args.device == "cpu" else "auto"
    args.variant_list = [v.strip() for v in args.variants.split(",") if v.strip()]
    try:
        for name in args.variant_list:
            variant_settings(name)
    except ValueError as exc:
        parser.error(str(exc))
    if args.workdir is None:
        args.workdir = (
            ROOT / "build" / f"tiny-model-v{tiny.TINY_MODEL_VERSION}"
            if args.scale == "tiny"
            else ROOT / "build" / "perf-full"
        )
    return args


def _fresh_compile_caches() -> None:
    """Compiler caches in a fresh directory per run (before torch is imported), so a compiled
    variant's warm-up pays what a fresh instance pays rather than an earlier run's cache hits."""
    root = Path(tempfile.mkdtemp(prefix="perf-bench-compile-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(root / "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(root / "triton"))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _fresh_compile_caches()
    started = time.perf_counter()
    import torch

    import inpaint.model as model_module  # sets the offline environment before diffusers

    import_s = time.perf_counter() - started
    device = model_module.resolve_device(args.device)
    cuda = device.startswith("cuda")
    started = time.perf_counter()
    if cuda:
        torch.cuda.init()
        torch.zeros(1, device=device)
    cuda_init_s = time.perf_counter() - started if cuda else None

    started = time.perf_counter()
    if args.scale == "tiny":
        model_dir = tiny.build_tiny_model(args.workdir, layout="diffusers", quant=args.quant)
        config = tiny.transformer_config("diffusers")
    else:
        build_device = device if cuda else "cpu"
        model_dir = build_model(args.workdir, FULL_SPEC, quant=args.quant, device=build_device)
        config = FULL_SPEC.transformer
    for name in args.variant_list:  # variants may name the other GGUF file
        quant = variant_settings(name).get("quant")
        if quant and quant != args.quant:
            if args.scale == "tiny":
                tiny.build_tiny_model(args.workdir, layout="diffusers", quant=quant)
            else:
                build_model(args.workdir, FULL_SPEC, quant=quant, device=device)
    build_s = time.perf_counter() - started
    print(f"model ready in {model_dir} ({build_s:.1f} s)", flush=True)
    if args.build_only:
        return 0

    device_name = (
        torch.cuda.get_device_name(device)
        if cuda
        else f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()}"
    )
    peak_tflops = args.peak_tflops or (peak_tflops_for(device_name) if cuda else None)
    image, mask = job_inputs(args.size)
    from inpaint.config import Settings

    ctx = Context(
        args=args,
        model_dir=model_dir,
        device=device,
        cuda=cuda,
        image=image,
        mask=mask,
        prompt=Settings().default_prompt,
        timer=RegionTimer(cuda),
    )
    prime_s = prime(ctx)
    crop_variant = args.crop_variant or args.variant_list[-1]
    crop = None
    for name in args.variant_list:
        print(f"measuring {name} ...", flush=True)
        keep = args.crop and name == crop_variant and crop is None
        result, model = measure_variant(ctx, name, keep=keep)
        ctx.results.append(result)
        if model is not None:
            crop = {"variant": name, **measure_crop(ctx, model, config)}
            del model
            _release(cuda)
    text_tokens = ctx.results[0]["text_tokens"]
    image_tokens = image_tokens_for(args.size, args.size)
    flops = transformer_flops(config, image_tokens, text_tokens)
    bound_step_s = flops / (peak_tflops * 1e12) if peak_tflops else None
    add_ratios(ctx.results, bound_step_s)

    import diffusers
    import gguf
    import transformers

    meta = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "scale": args.scale,
        "device": device,
        "cuda": cuda,
        "device_name": device_name,
        "quant": args.quant,
        "dtype": args.dtype,
        "size": args.size,
        "steps": args.steps,
        "repeats": args.repeats,
        "seed": args.seed,
        "tolerance": args.tolerance,
        "image_tokens": image_tokens,
        "text_tokens": text_tokens,
        "flops_per_step": flops,
        "peak_tflops": peak_tflops,
        "bound_step_s": bound_step_s,
        "memory_kind": "cuda max_memory_allocated" if cuda else "process peak RSS (VmHWM)",
        "page_cache": "evicted before each load" if args.evict else "warm",
        "import_s": import_s,
        "prime_s": prime_s,
        "cuda_init_s": cuda_init_s,
        "build_s": build_s,
        "threads": torch.get_num_threads(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "gguf": getattr(gguf, "__version__", None) or _dist_version("gguf"),
        },
        "model_dir": str(model_dir),
    }
    report = {"meta": meta, "variants": ctx.results, "crop": crop}
    print()
    print(format_table(report), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
        print(f"\nwrote {args.json}")
    return 0


def _dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
