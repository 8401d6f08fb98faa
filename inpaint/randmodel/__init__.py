"""Random FLUX.1-Fill-dev models in the real weights' on-disk layout, built offline.

The real model is 23 GB (transformer) + 9.5 GB (T5) and gated behind a Hugging Face token, so
neither the tests nor a laptop demo nor a benchmark without the weights can use it. One builder,
``build_model(dest, spec, quant=..., seed=..., device=...)``, writes any ``ModelSpec``: the tiny
test model, the BFL-layout model at width 3072, or the full size (``spec``). Its output is noise:
it proves plumbing (sizes, dtypes, determinism, progress, caching, load time and memory), not
quality. Heavy imports happen inside functions, so importing this package is cheap.

Rooms: ``spec`` (shapes), ``tokenizers``, ``bfl`` (key names), ``gguf_file`` (the transformer
file), ``build`` (the directory, cached and locked).
"""

from inpaint.randmodel.bfl import diffusers_to_bfl
from inpaint.randmodel.build import MARKER_NAME, build_model, build_tiny_model
from inpaint.randmodel.gguf_file import (
    gguf_tensor_type,
    quantize_q4_0,
    quantize_q8_0,
    tensor_specs,
    write_gguf,
    write_random_gguf,
)
from inpaint.randmodel.spec import (
    CLIP_L_CONFIG,
    FLUX_VAE_CONFIG,
    FULL_SPEC,
    FULL_TRANSFORMER_CONFIG,
    MODEL_VERSION,
    T5_XXL_CONFIG,
    Layout,
    ModelSpec,
    Quant,
    tiny_spec,
    transformer_config,
)

__all__ = [
    "CLIP_L_CONFIG",
    "FLUX_VAE_CONFIG",
    "FULL_SPEC",
    "FULL_TRANSFORMER_CONFIG",
    "MARKER_NAME",
    "MODEL_VERSION",
    "T5_XXL_CONFIG",
    "Layout",
    "ModelSpec",
    "Quant",
    "build_model",
    "build_tiny_model",
    "diffusers_to_bfl",
    "gguf_tensor_type",
    "quantize_q4_0",
    "quantize_q8_0",
    "tensor_specs",
    "tiny_spec",
    "transformer_config",
    "write_gguf",
    "write_random_gguf",
]
