"""The perf benchmark's variants (names -> settings) and its compute-bound model."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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

#: First-block step cache threshold of the FP8 profiles (cache-dit's FLUX setting; approximate).
STEP_CACHE_THRESHOLD = 0.08

PRESETS: dict[str, str] = {
    "ours": "cache+embeds+dequant+compile",
    # The 24 GB (L4) profile: FP8 weights from the Q8_0 file (a Q4_0 source keeps its 4-bit
    # error), compiled, with the step cache; CLIP/T5 offloaded to CPU memory (issue 20).
    "ours-l4": f"cache+embeds+offload-te+Q8_0+fp8+compile+stepcache-{STEP_CACHE_THRESHOLD}",
    # The L4 profile before FP8: the Q4_0 GGUF layers dequantized on every forward.
    "ours-l4-gguf": "cache+embeds+offload-te+compile+Q4_0",
    # The FP8 ladder, each from the Q8_0 file, and its reference: the same file in dense bf16.
    "bf16": "cache+embeds+Q8_0+dequant",
    "fp8": "cache+embeds+Q8_0+fp8",
    "fp8+compile": "cache+embeds+Q8_0+fp8+compile",
    "fp8+compile+stepcache": f"cache+embeds+Q8_0+fp8+compile+stepcache-{STEP_CACHE_THRESHOLD}",
}
_TOKEN_SETTINGS: dict[str, dict[str, Any]] = {
    "cache": {"prompt_cache_size": 32},
    "embeds": {"prompt_embeddings": True},
    "offload-te": {"offload_text_encoders": True},
    "pin-te": {"offload_text_encoders": True, "pin_text_encoders": True},
    "dequant": {"dequantize": True},
    "compile": {"compile": True},
    "cpu-offload": {"cpu_offload": True},
    "fp8": {"fp8": "auto"},
    "fp8-weight-only": {"fp8": "weight-only"},
    "fp8-dynamic": {"fp8": "dynamic"},
    "Q4_0": {"quant": "Q4_0"},
    "Q8_0": {"quant": "Q8_0"},
}
BASELINE_SETTINGS: dict[str, Any] = {
    "prompt_cache_size": 0,
    "prompt_embeddings": False,
    "dequantize": False,
    "compile": False,
    "offload_text_encoders": False,
    "pin_text_encoders": False,
    "cpu_offload": False,
    "attention_backend": None,
    "step_cache_threshold": 0.0,
    "fp8": "off",
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
            presets = ", ".join(repr(p) for p in PRESETS)
            raise ValueError(f"unknown variant {name!r}: 'baseline', {presets} or ours-...")
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
