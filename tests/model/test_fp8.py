"""INPAINT_FP8 (``inpaint.model.fp8``): the GGUF transformer's linears re-quantized to float8 e4m3
by torchao at load, proven on CPU (issue 20).

What a CPU can show: which mode each device gets and what is refused (a table); that every GGUF
linear is converted and nothing else changes; that the tiny model's image with FP8 weight-only
stays close to its dequantized-bf16 image; one layer's error at the real width 3072; and what an
all-zero activation row does in the dynamic mode's activation quantization (torchao refuses the
dynamic mode itself on CPU, so its activation path is run through torchao's own functions).
No timing is asserted.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.quantizers.gguf.utils import GGUFLinear
from pydantic import ValidationError

from inpaint.config import Settings
from inpaint.model import fp8 as fp8_module
from inpaint.model.fp8 import ACTIVATION_VALUE_LB, choose_fp8_mode, gguf_linears, quant_config
from inpaint.model.inpainter import InpaintModel
from inpaint.model.params import GenerationParams
from tests.helpers import tiny_settings
from tests.samples import ramp_inputs

ROOT = Path(__file__).resolve().parents[2]
torchao_quantization = pytest.importorskip("torchao.quantization")
from torchao.quantization import Float8Tensor, PerRow, quantize_  # noqa: E402

# Bounds, with the values measured on this code (torch 2.13.0+cpu, torchao 0.18.0) beside them.
# Tiny model, 64x64, 2 steps, bfloat16: FP8 weight-only vs the same file dequantized to bf16.
PIXEL_MEAN_BOUND = 2.0  # measured 0.48 (of 255; 0.49 at 128x128)
PIXEL_MAX_BOUND = 24  # measured 5 (7 at 128x128)
# The same bounds hold FP8 against the GGUF model itself at width 3072 (BFL file, Q4_0, 32x32,
# one step): measured mean 0.52, max 4.
# One 3072x3072 bf16 linear, 256 tokens: relative Frobenius error of the outputs.
LAYER_WEIGHT_ONLY_BOUND = 0.04  # measured 0.0259 (2.6 %, three input seeds alike)
LAYER_DYNAMIC_BOUND = 0.055  # measured 0.0370 (weights and activations both in FP8)
Q8_0_SOURCE_BOUND = 0.04  # the same layer through Q8_0, then FP8: measured 0.0262 (Q4_0: 0.0705)


def settings(model_dir, **overrides) -> Settings:
    return tiny_settings(model_dir, **({"dtype": "bfloat16"} | overrides))


def params(steps=2):
    return GenerationParams(prompt="a cat on a sofa", seed=11, steps=steps, guidance=30.0)


# --- which mode, and what is refused (a pure function) ---------------------------------------

REFUSED = "refused"
BF16, FP16, FP32 = "bfloat16", "float16", "float32"
MODE_TABLE = [
    # setting, device, capability, dtype, dequantize, cpu_offload -> mode, or the refusal
    ("off", "cpu", None, FP32, False, False, "off"),
    ("off", "cuda", (8, 9), BF16, True, True, "off"),  # off never refuses anything
    ("auto", "cpu", None, FP32, False, False, "weight-only"),  # CPU's default dtype
    ("auto", "cpu", None, BF16, False, False, "weight-only"),
    ("weight-only", "cpu", None, BF16, False, False, "weight-only"),
    ("dynamic", "cpu", None, BF16, False, False, (REFUSED, "FP8=dynamic.*runs on cpu")),
    ("auto", "cuda", (8, 9), BF16, False, False, "dynamic"),  # L4
    ("auto", "cuda:0", (9, 0), BF16, False, False, "dynamic"),  # H100, H200
    ("auto", "cuda", (10, 0), BF16, False, False, "dynamic"),  # B200
    ("auto", "cuda", (8, 6), BF16, False, False, "weight-only"),  # A10G
    ("auto", "cuda", (8, 0), BF16, False, False, "weight-only"),  # A100
    ("auto", "cuda", (8, 9), FP16, False, False, "weight-only"),  # row-wise FP8 mm: bf16 only
    ("auto", "cuda", (9, 0), FP32, False, False, "weight-only"),
    ("weight-only", "cuda", (9, 0), BF16, False, False, "weight-only"),
    ("dynamic", "cuda", (8, 9), BF16, False, False, "dynamic"),
    ("dynamic", "cuda", (9, 0), BF16, False, False, "dynamic"),
    ("dynamic", "cuda", (8, 6), BF16, False, False, (REFUSED, r"compute capability 8\.6")),
    ("dynamic", "cuda", (7, 5), BF16, False, False, (REFUSED, "FP8=dynamic needs a CUDA")),
    ("dynamic", "cuda", (9, 0), FP16, False, False, (REFUSED, "needs INPAINT_DTYPE=bfloat16")),
    ("auto", "cuda", (9, 0), BF16, True, False, (REFUSED, "FP8=auto and INPAINT_DEQUANTIZE")),
    ("weight-only", "cpu", None, BF16, True, False, (REFUSED, "INPAINT_DEQUANTIZE")),
    ("auto", "cuda", (8, 9), BF16, False, True, (REFUSED, "FP8=auto and INPAINT_CPU_OFFLOAD")),
    ("weight-only", "cpu", None, FP32, False, True, (REFUSED, "INPAINT_CPU_OFFLOAD")),
    ("fast", "cuda", (9, 0), BF16, False, False, (REFUSED, "unknown INPAINT_FP8")),
]


@pytest.mark.parametrize(
    ("setting", "device", "capability", "dtype", "dequant", "offload", "expected"), MODE_TABLE
)
def test_mode_for_each_device_and_setting(
    setting, device, capability, dtype, dequant, offload, expected
):
    decide = lambda: choose_fp8_mode(  # noqa: E731
        setting,
        device=device,
        capability=capability,
        dtype=dtype,
        dequantize=dequant,
        cpu_offload=offload,
    )
    if isinstance(expected, tuple):
        with pytest.raises(ValueError, match=expected[1]) as info:
            decide()
        assert "INPAINT_FP8" in str(info.value)
    else:
        assert decide() == expected


def test_setting_is_off_by_default_and_read_from_the_environment(monkeypatch):
    monkeypatch.delenv("INPAINT_FP8", raising=False)
    assert Settings().fp8 == "off"
    monkeypatch.setenv("INPAINT_FP8", "weight-only")
    assert Settings().fp8 == "weight-only"
    monkeypatch.setenv("INPAINT_FP8", "int8")
    with pytest.raises(ValidationError, match="fp8"):
        Settings()


def test_dynamic_on_cpu_is_refused_at_start_up(tiny_model_dir):
    with pytest.raises(ValueError, match="INPAINT_FP8=dynamic") as info:
        InpaintModel.load(settings(tiny_model_dir, fp8="dynamic"))
    assert "weight-only" in str(info.value)  # the message names the way out


def test_a_gpu_without_fp8_cores_is_refused_before_anything_loads(tiny_model_dir, monkeypatch):
    """An A10G-class GPU (sm_86) with INPAINT_FP8=dynamic: refused before any weight is read
    (no CUDA call is made: the capability is all the decision needs)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda _device=None: (8, 6))
    with pytest.raises(ValueError, match=r"compute capability 8\.6") as info:
        InpaintModel.load(settings(tiny_model_dir, device="cuda", fp8="dynamic"))
    assert "INPAINT_FP8" in str(info.value)


def test_fp8_with_dequantize_is_refused_at_start_up(tiny_model_dir):
    with pytest.raises(ValueError, match="INPAINT_FP8=weight-only and INPAINT_DEQUANTIZE"):
        InpaintModel.load(settings(tiny_model_dir, fp8="weight-only", dequantize=True))


# --- the conversion on the tiny model ------------------------------------------------------------


@pytest.fixture(scope="module")
def gguf_model(tiny_model_dir) -> InpaintModel:
    return InpaintModel.load(settings(tiny_model_dir))


@pytest.fixture(scope="module")
def fp8_model(tiny_model_dir) -> InpaintModel:
    return InpaintModel.load(settings(tiny_model_dir, fp8="weight-only"))


def test_default_load_keeps_the_gguf_layers(gguf_model):
    assert gguf_model.fp8 == "off" and gguf_model.fp8_conversion is None
    assert gguf_linears(gguf_model.pipe.transformer)
    assert gguf_model.pipe.transformer.hf_quantizer is not None


def test_every_gguf_linear_is_converted_and_nothing_else_changes(gguf_model, fp8_model):
    before = {
        name
        for name, module in gguf_model.pipe.transformer.named_modules()
        if isinstance(module, GGUFLinear)
    }
    transformer = fp8_model.pipe.transformer
    after = {
        name
        for name, module in transformer.named_modules()
        if isinstance(module, torch.nn.Linear) and isinstance(module.weight, Float8Tensor)
    }
    assert len(before) > 10 and after == before  # the same layers, every one of them
    assert fp8_model.fp8 == "weight-only"
    conversion = fp8_model.fp8_conversion
    assert conversion.layers == len(before) and conversion.mode == "weight-only"
    assert not gguf_linears(transformer)
    assert not any(isinstance(m, GGUFLinear) for m in transformer.modules())
    for name in after:
        layer = transformer.get_submodule(name)
        assert type(layer) is torch.nn.Linear and layer.weight.qdata.dtype == torch.float8_e4m3fn
        assert layer.weight.dtype == torch.bfloat16  # the compute dtype
        reference = gguf_model.pipe.transformer.get_submodule(name)
        if reference.bias is not None:
            assert torch.equal(layer.bias, reference.bias.to(torch.bfloat16))
    # diffusers' quantizer state is cleared, as ModelMixin.dequantize clears it
    assert getattr(transformer, "hf_quantizer", None) is None and not transformer.is_quantized

    # Everything else in the transformer (embedders, norms, the final layer: stored unquantized
    # in the GGUF file) is bit for bit what the GGUF model holds; so are the VAE's weights.
    converted = {f"{name}.{p}" for name in after for p in ("weight", "bias")}
    reference = dict(gguf_model.pipe.transformer.named_parameters())
    untouched = {n: p for n, p in transformer.named_parameters() if n not in converted}
    assert untouched and set(untouched) == set(reference) - converted
    for name, tensor in untouched.items():
        assert type(tensor) is torch.nn.Parameter, name
        assert torch.equal(tensor, reference[name]), name
    plain_linears = [
        m
        for m in transformer.modules()
        if isinstance(m, torch.nn.Linear) and not isinstance(m.weight, Float8Tensor)
    ]
    assert plain_linears  # the embedders: F16 in the file, never GGUF, never converted
    vae = dict(gguf_model.pipe.vae.state_dict())
    for name, tensor in fp8_model.pipe.vae.state_dict().items():
        assert torch.equal(tensor, vae[name]), name


def test_the_converted_layers_pages_leave_the_process(fp8_model):
    """On CPU the GGUF file is memory-mapped; each converted layer's whole pages are dropped."""
    assert fp8_model.fp8_conversion.released_bytes > 0
    assert fp8_model.fp8_conversion.fp8_bytes > 0
    if sys.platform.startswith("linux"):  # and the freed temporaries go back to the OS
        assert fp8_module._malloc_trim() is not None


def test_fp8_weight_only_image_is_close_to_the_dequantized_bf16_image(tiny_model_dir, fp8_model):
    dense = InpaintModel.load(settings(tiny_model_dir, dequantize=True))
    assert dense.dequantized and dense.fp8 == "off"
    image, mask = ramp_inputs()
    expected = np.asarray(dense.generate(image, mask, params()), dtype=np.int16)
    got = np.asarray(fp8_model.generate(image, mask, params()), dtype=np.int16)
    diff = np.abs(expected - got)
    assert got.shape == expected.shape and np.isfinite(got).all()
    assert diff.mean() <= PIXEL_MEAN_BOUND, diff.mean()
    assert diff.max() <= PIXEL_MAX_BOUND, diff.max()


def test_fp8_model_runs_with_the_step_cache_and_float32(tiny_model_dir):
    """CPU's default dtype (float32) and the step cache on top of FP8 layers."""
    model = InpaintModel.load(
        settings(tiny_model_dir, dtype="auto", fp8="auto", step_cache_threshold=0.5)
    )
    assert model.fp8 == "weight-only" and model.dtype == torch.float32
    out = model.generate(*ramp_inputs(32), params(steps=1))
    assert out.size == (32, 32) and out.mode == "RGB"


def test_real_width_bfl_file_converts_from_its_memory_map(tiny_model_dir):
    """The published files' layout (BFL names, width 3072; 1 double + 1 single block, Q4_0):
    the fused q/k/v and MLP weights are row views of the mapped file (``inpaint.model.layout``),
    each converted and its pages released; the image stays close to the GGUF model's."""
    from inpaint.randmodel import MODEL_VERSION, build_tiny_model

    dest = ROOT / "build" / f"tiny-model-bfl-v{MODEL_VERSION}"  # shared with test_model.py
    build_tiny_model(dest, layout="bfl", quant="Q4_0")
    gguf = InpaintModel.load(settings(dest, quant="Q4_0"))
    names = {n for n, m in gguf.pipe.transformer.named_modules() if isinstance(m, GGUFLinear)}
    fp8 = InpaintModel.load(settings(dest, quant="Q4_0", fp8="weight-only"))
    transformer = fp8.pipe.transformer
    converted = {
        n
        for n, m in transformer.named_modules()
        if isinstance(getattr(m, "weight", None), Float8Tensor)
    }
    assert converted == names and fp8.fp8_conversion.layers == len(names) == 20
    assert transformer.single_transformer_blocks[0].attn.to_k.weight.shape == (3072, 3072)
    assert fp8.fp8_conversion.released_bytes > 200 * 2**20  # most of the 355 MiB file
    image, mask = ramp_inputs(32)
    expected = np.asarray(gguf.generate(image, mask, params(steps=1)), dtype=np.int16)
    got = np.asarray(fp8.generate(image, mask, params(steps=1)), dtype=np.int16)
    diff = np.abs(expected - got)
    assert diff.mean() <= PIXEL_MEAN_BOUND and diff.max() <= PIXEL_MAX_BOUND, (
        diff.mean(),
        diff.max(),
    )


# --- one layer at the real width -----------------------------------------------------------------


def _relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float(torch.linalg.norm(got.float() - expected.float()) / torch.linalg.norm(expected))


def _flux_linear(width: int = 3072) -> torch.nn.Linear:
    """A bf16 linear drawn like the random models' (uniform +-1/sqrt(fan_in))."""
    generator = torch.Generator().manual_seed(0)
    bound = 1 / width**0.5
    layer = torch.nn.Linear(width, width, dtype=torch.bfloat16)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(width, width, generator=generator) * 2 * bound - bound)
        layer.bias.copy_(torch.rand(width, generator=generator) * 2 * bound - bound)
    return layer


def test_one_layer_at_width_3072_weight_only_and_dynamic_numerics():
    layer = _flux_linear()
    tokens = torch.randn(256, 3072, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    with torch.no_grad():
        expected = layer(tokens)
        fp8 = _flux_linear()
        quantize_(fp8, quant_config("weight-only"))
        assert isinstance(fp8.weight, Float8Tensor)
        weight_only = _relative_error(fp8(tokens), expected)
        # The dynamic mode's numerics, without its FP8 matmul (CUDA only): activations and weights
        # quantized per row exactly as torchao does it, then multiplied in float32.
        act = Float8Tensor.from_hp(tokens, granularity=PerRow(), hp_value_lb=ACTIVATION_VALUE_LB)
        dynamic_out = act.dequantize().float() @ fp8.weight.dequantize().float().T
        dynamic = _relative_error(dynamic_out + layer.bias.float(), expected)
    assert 0 < weight_only <= LAYER_WEIGHT_ONLY_BOUND, weight_only
    assert weight_only < dynamic <= LAYER_DYNAMIC_BOUND, dynamic


# --- an all-zero activation row in the dynamic mode ----------------------------------------------


def test_all_zero_activation_row_gives_an_exact_zero_row_not_nan(monkeypatch):
    """torchao 0.18 computes a row's scale as amax / 448: an all-zero row (padding, a masked
    token) has scale 0 and quantizes to 0/0 = NaN, which a matmul spreads to the whole output
    row. ``activation_value_lb`` bounds amax from below, so the row is exact zeros.

    The dynamic configuration is applied with torchao's own ``quantize_`` (its hardware check,
    which refuses CPUs, bypassed), and the activation is quantized by the function torchao's
    FP8 linear calls before its CUDA-only ``_scaled_mm``.
    """
    from torchao.quantization import quant_api
    from torchao.quantization.quantize_.common import _choose_quant_func_and_quantize_tensor

    config = quant_config("dynamic")
    assert config.activation_value_lb == ACTIVATION_VALUE_LB
    assert config.set_inductor_config is False  # no process-wide inductor settings
    assert quant_config("weight-only").set_inductor_config is False
    assert isinstance(config.granularity[0], PerRow) and isinstance(config.granularity[1], PerRow)
    monkeypatch.setattr(quant_api, "_check_hardware_support", lambda *_a, **_k: None)
    layer = torch.nn.Linear(64, 32, dtype=torch.bfloat16)
    quantize_(layer, config)
    kwargs = layer.weight.act_quant_kwargs
    assert kwargs is not None and kwargs.hp_value_lb == ACTIVATION_VALUE_LB

    x = torch.randn(4, 64, dtype=torch.bfloat16)
    x[2] = 0
    act = _choose_quant_func_and_quantize_tensor(x, kwargs)
    assert torch.isfinite(act.scale).all() and (act.scale > 0).all()
    rows = act.dequantize()
    assert torch.equal(rows[2], torch.zeros(64, dtype=torch.bfloat16))
    out = rows.float() @ layer.weight.dequantize().float().T
    assert torch.isfinite(out).all() and torch.equal(out[2], torch.zeros(32))

    # Without the bound (torchao's default), the same row becomes NaN: why the bound is set.
    unbounded = Float8Tensor.from_hp(x, granularity=PerRow())
    assert torch.isnan(unbounded.dequantize()[2]).all()
    assert torch.isfinite(unbounded.dequantize()[[0, 1, 3]]).all()


def test_off_has_no_torchao_configuration():
    with pytest.raises(ValueError, match="no torchao configuration"):
        quant_config("off")
    with pytest.raises(ValueError, match="not 'off'"):
        fp8_module.convert_transformer(torch.nn.Linear(2, 2), "off", dtype=torch.float32)


# --- which GGUF file to convert from -------------------------------------------------------------


def test_q8_0_is_the_better_fp8_source_than_q4_0():
    """FP8 re-quantizes what the file holds: the same 3072-wide layer through Q4_0 keeps the
    4-bit error under the FP8 one, through Q8_0 it stays at FP8's own error."""
    import gguf

    layer = _flux_linear()
    tokens = torch.randn(256, 3072, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    errors = {}
    with torch.no_grad():
        expected = layer(tokens)
        weights = layer.weight.float().numpy()
        for name in ("Q8_0", "Q4_0"):
            kind = gguf.GGMLQuantizationType[name]
            restored = gguf.quants.dequantize(gguf.quants.quantize(weights, kind), kind)
            fp8 = _flux_linear()
            fp8.weight.copy_(torch.from_numpy(restored).to(torch.bfloat16))
            quantize_(fp8, quant_config("weight-only"))
            errors[name] = _relative_error(fp8(tokens), expected)
    assert errors["Q8_0"] <= Q8_0_SOURCE_BOUND, errors
    assert errors["Q4_0"] >= 2 * errors["Q8_0"], errors
