"""InpaintModel through the production loading path, on the tiny random model (CPU)."""

from __future__ import annotations

import json
import logging
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.quantizers.gguf.utils import GGUFLinear
from PIL import Image

from inpaint.errors import DeviceUnavailableError, ModelFilesMissingError
from inpaint.model.checks import choose_device, compile_refusal, resolve_device, resolve_dtype
from inpaint.model.inpainter import WARMUP_SIZE, InpaintModel
from inpaint.model.params import GenerationParams
from inpaint.randmodel import MODEL_VERSION, build_tiny_model
from tests.helpers import tiny_settings
from tests.samples import ramp_inputs

ROOT = Path(__file__).resolve().parents[2]


def params(prompt="a cat on a sofa", seed=7, steps=2, guidance=30.0):
    return GenerationParams(prompt=prompt, seed=seed, steps=steps, guidance=guidance)


def pixels(image):
    return np.asarray(image, dtype=np.int16)


@pytest.fixture(scope="module")
def model(tiny_model_dir) -> InpaintModel:
    return InpaintModel.load(tiny_settings(tiny_model_dir))


def test_loads_gguf_quantized_transformer_on_cpu_float32(model):
    assert model.device == "cpu" and model.dtype_name == "float32"
    assert model.dtype == torch.float32 and not model.dequantized
    layers = [m for m in model.pipe.transformer.modules() if isinstance(m, GGUFLinear)]
    assert layers, "the transformer should run on GGUF weights"
    assert {int(m.weight.quant_type) for m in layers} >= {8}  # GGML type 8 = Q8_0
    assert model.pipe.vae.dtype == torch.float32
    assert model.prompts.max_sequence_length == 32  # the tiny T5 tokenizer's limit, not 512


def test_generate_returns_rgb_of_the_input_size(model):
    image, mask = ramp_inputs(256)
    out = model.generate(image, mask, params())
    assert isinstance(out, Image.Image) and out.mode == "RGB" and out.size == (256, 256)
    image, mask = ramp_inputs((192, 128))
    out = model.generate(image.convert("RGBA"), mask.convert("1"), params(steps=1))
    assert out.mode == "RGB" and out.size == (192, 128)
    assert pixels(out).std() > 0


def test_same_seed_same_pixels_other_seed_differs(model):
    image, mask = ramp_inputs(128)
    first = model.generate(image, mask, params(seed=11))
    again = model.generate(image, mask, params(seed=11))
    other = model.generate(image, mask, params(seed=12))
    assert np.array_equal(pixels(first), pixels(again))
    assert np.abs(pixels(first) - pixels(other)).mean() > 1.0


def test_progress_callback_gets_each_step(model):
    image, mask = ramp_inputs(128)
    calls = []
    model.generate(
        image, mask, params(steps=3), on_step=lambda done, total: calls.append((done, total))
    )
    assert calls == [(1, 3), (2, 3), (3, 3)]


class EncoderCalls:
    """Counts forward calls of both text encoders."""

    def __init__(self, pipe):
        self.count = {"clip": 0, "t5": 0}
        self.handles = [
            pipe.text_encoder.register_forward_hook(lambda *_: self.bump("clip")),
            pipe.text_encoder_2.register_forward_hook(lambda *_: self.bump("t5")),
        ]

    def bump(self, name):
        self.count[name] += 1

    def remove(self):
        for handle in self.handles:
            handle.remove()


def test_repeated_prompt_skips_both_text_encoders(model):
    image, mask = ramp_inputs(128)
    model.prompts.load_text_encoders()
    calls = EncoderCalls(model.pipe)
    try:
        first = model.generate(image, mask, params(prompt="a brand new prompt"))
        assert calls.count == {"clip": 1, "t5": 1}
        second = model.generate(image, mask, params(prompt="a brand new prompt"))
        assert calls.count == {"clip": 1, "t5": 1}
        model.generate(image, mask, params(prompt="another prompt"))
        assert calls.count == {"clip": 2, "t5": 2}
    finally:
        calls.remove()
    assert np.array_equal(pixels(first), pixels(second))


def test_prompt_cache_is_lru_and_can_be_off(model, tiny_model_dir):
    small = InpaintModel(
        model.pipe, tiny_settings(tiny_model_dir, prompt_cache_size=2), "cpu", torch.float32
    )
    off = InpaintModel(
        model.pipe, tiny_settings(tiny_model_dir, prompt_cache_size=0), "cpu", torch.float32
    )
    model.prompts.load_text_encoders()
    calls = EncoderCalls(model.pipe)
    try:
        for prompt in ("a", "b", "a", "c", "b"):  # "b" was evicted by "c" (LRU keeps a, c)
            small.prompts.encode(prompt)
        assert calls.count["t5"] == 4
        off.prompts.encode("a")
        off.prompts.encode("a")
        assert calls.count["t5"] == 6
    finally:
        calls.remove()
    embeds, pooled = small.prompts.encode("a")
    assert embeds.shape == (1, 32, 32) and pooled.shape == (1, 32)


def test_generate_rejects_nonsense(model):
    image, mask = ramp_inputs(128)
    with pytest.raises(ValueError, match="steps"):
        model.generate(image, mask, params(steps=0))
    with pytest.raises(ValueError, match="multiples of 16"):
        model.generate(*ramp_inputs((120, 128)), params())
    with pytest.raises(ValueError, match="mask size"):
        model.generate(image, mask.resize((64, 64)), params())


def test_generation_is_serialised(model):
    """Two threads never run the pipeline at the same time: each job's steps are contiguous."""
    image, mask = ramp_inputs(64)
    events = []

    def job(name):
        model.generate(image, mask, params(steps=3), on_step=lambda done, _: events.append(name))

    threads = [threading.Thread(target=job, args=(n,)) for n in ("x", "y")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(events) == ["x"] * 3 + ["y"] * 3
    assert events in (["x"] * 3 + ["y"] * 3, ["y"] * 3 + ["x"] * 3)


def test_warm_up_runs_and_caches_the_default_prompt(model, caplog):
    model.prompts.load_text_encoders()  # loaded: then nothing but the cache can explain zero calls
    calls = EncoderCalls(model.pipe)
    caplog.set_level(logging.INFO, logger="inpaint.model")
    try:
        model.warm_up()
        after_warm_up = dict(calls.count)
        model.prompts.encode(model.settings.default_prompt)
    finally:
        calls.remove()
    assert calls.count == after_warm_up
    assert model.prompts.is_cached(model.settings.default_prompt)
    # The size it ran at and its peak memory (on a GPU: the allocator's peak and the total).
    (warmed,) = [r for r in caplog.records if r.getMessage() == "model warmed up"]
    assert warmed.size == WARMUP_SIZE and warmed.peakRssBytes > 0


def test_zero_warm_up_steps_skip_the_inference(model, tiny_model_dir, caplog):
    """``INPAINT_WARMUP_STEPS=0``: ready once loaded, no inference; jobs still run."""
    cold = InpaintModel(
        model.pipe, tiny_settings(tiny_model_dir, warmup_steps=0), "cpu", model.dtype
    )
    calls = []
    original = model.pipe.__class__.__call__

    def counting(pipe, *args, **kwargs):
        calls.append(kwargs.get("num_inference_steps"))
        return original(pipe, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch, caplog.at_level("INFO", "inpaint.model"):
        patch.setattr(model.pipe.__class__, "__call__", counting)
        cold.warm_up()
        assert calls == [] and "model warmed up" not in caplog.text
        out = cold.generate(*ramp_inputs(32), params(steps=1))
        warm = InpaintModel(
            model.pipe, tiny_settings(tiny_model_dir, warmup_steps=1), "cpu", model.dtype
        )
        warm.warm_up()
    assert out.size == (32, 32) and calls == [1, 1] and "model warmed up" in caplog.text


def test_q4_0_file_loads_and_generates(tiny_model_dir):
    q4 = InpaintModel.load(tiny_settings(tiny_model_dir, quant="Q4_0"))
    layers = [m for m in q4.pipe.transformer.modules() if isinstance(m, GGUFLinear)]
    assert {int(m.weight.quant_type) for m in layers} >= {2}  # GGML type 2 = Q4_0
    out = q4.generate(*ramp_inputs(128), params())
    assert out.size == (128, 128) and out.mode == "RGB"


def test_dequantize_replaces_gguf_layers_with_the_same_numbers(model, tiny_model_dir):
    dense = InpaintModel.load(tiny_settings(tiny_model_dir, dequantize=True))
    assert dense.dequantized
    transformer = dense.pipe.transformer
    assert not any(isinstance(m, GGUFLinear) for m in transformer.modules())
    weight = transformer.transformer_blocks[0].attn.to_q.weight
    assert type(weight) is torch.nn.Parameter and weight.dtype == torch.float32
    assert {p.dtype for p in transformer.parameters()} == {torch.float32}
    image, mask = ramp_inputs(128)
    expected = model.generate(image, mask, params(seed=5))
    got = dense.generate(image, mask, params(seed=5))
    assert np.abs(pixels(expected) - pixels(got)).max() <= 1


def test_dequantize_with_cpu_offload_is_refused(tiny_model_dir):
    with pytest.raises(ValueError, match="cannot be combined"):
        InpaintModel.load(tiny_settings(tiny_model_dir, dequantize=True, cpu_offload=True))


def test_missing_files_are_named_with_the_command(tmp_path, tiny_model_dir):
    with pytest.raises(ModelFilesMissingError) as info:
        InpaintModel.load(tiny_settings(tmp_path, quant="Q4_0"))
    message = str(info.value)
    assert str(tmp_path / "flux1-fill-dev-Q4_0.gguf") in message
    assert f"python -m inpaint weights --dest {tmp_path} --quant Q4_0" in message

    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy, ignore=shutil.ignore_patterns("*Q4_0.gguf", ".tiny*"))
    (copy / "base" / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelFilesMissingError) as info:
        InpaintModel.load(tiny_settings(copy))
    message = str(info.value)
    assert "vae/diffusion_pytorch_model.safetensors" in message
    assert "flux1-fill-dev" not in message.split("Fetch")[0]  # the GGUF file is there
    assert f"--dest {copy} --quant Q8_0" in message


def test_sharded_text_encoder_needs_every_shard(tmp_path, tiny_model_dir):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy, ignore=shutil.ignore_patterns("*Q4_0.gguf", ".tiny*"))
    t5 = copy / "base" / "text_encoder_2"
    (t5 / "model.safetensors").rename(t5 / "model-00001-of-00002.safetensors")
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    index = {"weight_map": {"a": shards[0], "b": shards[1]}}
    (t5 / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelFilesMissingError) as info:
        InpaintModel.load(tiny_settings(copy))
    assert str(t5 / shards[1]) in str(info.value)
    assert str(t5 / shards[0]) not in str(info.value)


def test_device_and_dtype_selection(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"  # a machine without CUDA
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("auto", "cuda") == torch.bfloat16
    assert resolve_dtype("float16", "cpu") == torch.float16
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(DeviceUnavailableError, match="INPAINT_DEVICE=cuda but torch sees no"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
    assert resolve_device("cuda:1") == "cuda:1"


@pytest.mark.parametrize(
    ("setting", "cuda", "expected"),
    [
        ("auto", True, "cuda"),
        ("auto", False, "cpu"),  # a machine without a GPU, on purpose (tests, demos)
        ("cpu", True, "cpu"),
        ("cpu", False, "cpu"),
        ("cuda", True, "cuda"),
        ("cuda:1", True, "cuda:1"),
        ("cuda", False, DeviceUnavailableError),  # the image: never a silent CPU fallback
        ("cuda:0", False, DeviceUnavailableError),
    ],
)
def test_choose_device(setting, cuda, expected):
    if isinstance(expected, str):
        assert choose_device(setting, cuda) == expected
        return
    with pytest.raises(expected) as info:
        choose_device(setting, cuda, "RuntimeError: driver too old (found version 12020)")
    assert f"INPAINT_DEVICE={setting}" in str(info.value)
    assert "driver too old" in str(info.value)  # torch's own reason, for the operator


@pytest.mark.parametrize(
    ("compile_on", "on_gpu", "compiler", "refused"),
    [
        (False, True, None, False),
        (True, False, None, False),  # the CPU ignores compile (with a warning)
        (True, True, "/usr/bin/gcc", False),
        (True, True, None, True),  # Triton would fail the first job
    ],
)
def test_compile_is_refused_without_a_c_compiler(compile_on, on_gpu, compiler, refused):
    reason = compile_refusal(compile_on, on_gpu, compiler)
    assert (reason is not None) == refused
    if refused:
        assert "INPAINT_COMPILE" in reason and "C compiler" in reason


def test_bfl_layout_gguf_loads_and_generates():
    """The published files use BFL key names (width 3072), renamed at load by views
    (``inpaint.model.layout``): built once, cached in build/."""
    dest = ROOT / "build" / f"tiny-model-bfl-v{MODEL_VERSION}"
    build_tiny_model(dest, layout="bfl", quant="Q4_0")
    model = InpaintModel.load(tiny_settings(dest, quant="Q4_0"))
    transformer = model.pipe.transformer
    assert transformer.config.num_attention_heads * transformer.config.attention_head_dim == 3072
    assert (
        len(transformer.transformer_blocks) == 1 and len(transformer.single_transformer_blocks) == 1
    )
    assert isinstance(transformer.single_transformer_blocks[0].attn.to_k, GGUFLinear)
    assert transformer.single_transformer_blocks[0].attn.to_k.weight.quant_shape == (3072, 3072)
    calls = []
    out = model.generate(*ramp_inputs(32), params(steps=1), on_step=lambda *a: calls.append(a))
    assert out.size == (32, 32) and out.mode == "RGB" and calls == [(1, 1)]
