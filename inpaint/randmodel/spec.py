"""What a random FLUX.1-Fill-dev model looks like: one ``ModelSpec`` per size.

* ``tiny_spec("diffusers")``: hidden width 256, tensors named as diffusers does (no conversion at
  load, so the width may be narrow): the fast model of the tests, the demo and ``--scale tiny``.
* ``tiny_spec("bfl")``: width 3072 with one double and one single block, tensors named as the
  published GGUF files do, so loading runs diffusers' BFL->diffusers converter (which hard-codes
  the width 3072); ~532 M parameters, Q4_0 ~355 MiB.
* ``FULL_SPEC``: the real shapes (19 + 38 blocks, T5-XXL, CLIP-L, the real VAE) in the BFL layout:
  what ``benchmarks/perf_bench.py --scale full`` loads through the production loader.

The text encoders of the tiny specs are 32 wide; the transformer's ``joint_attention_dim`` /
``pooled_projection_dim`` follow them, exactly as 4096 / 768 follow T5-XXL and CLIP-L.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

Layout = Literal["diffusers", "bfl"]
Quant = Literal["Q8_0", "Q4_0"]
QUANTS: tuple[str, ...] = ("Q8_0", "Q4_0")
TextDtype = Literal["float32", "bfloat16"]

#: Bump when the builder's output changes, so caches keyed by it (tests, demo) are rebuilt.
MODEL_VERSION = "3"

TINY_TEXT_WIDTH = 32
#: The tiny T5's sequence length (real FLUX: 512). Short keeps the tiny model fast.
TINY_T5_MAX_LENGTH = 32
#: As the real CLIP: the pipeline pads CLIP prompts to model_max_length.
CLIP_MAX_LENGTH = 77

#: The values of FLUX.1-Fill-dev's scheduler/scheduler_config.json.
SCHEDULER_CONFIG: dict[str, Any] = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
}

#: Real FLUX.1-Fill-dev model_index.json component classes.
MODEL_INDEX_COMPONENTS: dict[str, list[str]] = {
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "T5EncoderModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "T5TokenizerFast"],
    "transformer": ["diffusers", "FluxTransformer2DModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}

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

# The tiny text encoders and VAE. A missing ``vocab_size`` means "the tokenizer's size".
TINY_CLIP_CONFIG: dict[str, Any] = {
    "hidden_size": TINY_TEXT_WIDTH,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": CLIP_MAX_LENGTH,
    "projection_dim": TINY_TEXT_WIDTH,
}
TINY_T5_CONFIG: dict[str, Any] = {
    "d_model": TINY_TEXT_WIDTH,
    "d_kv": 8,
    "d_ff": 64,
    "num_layers": 2,
    "num_heads": 4,
    "relative_attention_num_buckets": 8,
    "feed_forward_proj": "gated-gelu",  # as T5 v1.1 / T5-XXL
}
TINY_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [16, 16, 32, 32],
    "layers_per_block": 1,
    "latent_channels": 16,
    "norm_num_groups": 8,
    "sample_size": 64,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}


@dataclass(frozen=True)
class ModelSpec:
    """Shapes and layout of a random FLUX Fill model written by ``build_model``.

    ``text_dtype`` is how the text encoders are stored (the published ones are bf16);
    ``text_encoders=False`` leaves CLIP and T5 out (tokenizers stay): a weights directory for a
    deployment whose prompts are all precomputed.
    """

    name: str
    layout: Layout
    transformer: Mapping[str, Any]
    t5: Mapping[str, Any]
    clip: Mapping[str, Any]
    vae: Mapping[str, Any]
    t5_max_length: int = 512
    text_dtype: TextDtype = "bfloat16"
    text_encoders: bool = True

    def digest(self) -> str:
        """A short fingerprint of everything above: the cache key of a built directory."""
        blob = json.dumps(asdict(self), sort_keys=True, default=list).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def transformer_config(layout: Layout) -> dict[str, Any]:
    """The tiny transformer's diffusers config for ``layout`` (see the module docstring).

    Input/output channels are the real ones (384 = 64 latent + 64 masked-image latent + 256
    packed mask; 64 out) because they follow from the VAE, which has the real 16 channels.
    """
    if layout == "diffusers":
        heads, double, single = 2, 2, 2  # width 256, real head geometry
    elif layout == "bfl":
        heads, double, single = 24, 1, 1  # width 3072: the converter needs it
    else:
        raise ValueError(f"unknown layout {layout!r}; expected 'diffusers' or 'bfl'")
    return {
        **FULL_TRANSFORMER_CONFIG,
        "num_layers": double,
        "num_single_layers": single,
        "num_attention_heads": heads,
        "joint_attention_dim": TINY_TEXT_WIDTH,
        "pooled_projection_dim": TINY_TEXT_WIDTH,
    }


def tiny_spec(layout: Layout = "diffusers") -> ModelSpec:
    """The tiny model of ``layout`` (diffusers: the tests' model; bfl: the converter's width)."""
    return ModelSpec(
        name=f"tiny-{layout}",
        layout=layout,
        transformer=transformer_config(layout),
        t5=TINY_T5_CONFIG,
        clip=TINY_CLIP_CONFIG,
        vae=TINY_VAE_CONFIG,
        t5_max_length=TINY_T5_MAX_LENGTH,
        text_dtype="float32",
    )


FULL_SPEC = ModelSpec(
    "full", "bfl", FULL_TRANSFORMER_CONFIG, T5_XXL_CONFIG, CLIP_L_CONFIG, FLUX_VAE_CONFIG, 512
)
