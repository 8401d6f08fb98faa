"""The optional speed-ups of InpaintModel (``inpaint.model.options``: one object per setting),
on the tiny random model, CPU only.

What a CPU can check: the settings parse, each option's refusal (a table: settings and machine ->
the message naming the setting, or None), CUDA-only options are ignored with a warning rather
than failing, the options not proven on a GPU say so in their settings' descriptions and in one
warning at load, offloaded text encoders visit the device exactly for a cache miss, and the
attention backend and step cache are applied (the speed itself is measured by
benchmarks/perf_bench.py).
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from inpaint.config import Settings
from inpaint.errors import DeviceFailedError, TransientError
from inpaint.model import encoders
from inpaint.model.checks import check_attention_backend
from inpaint.model.inpainter import InpaintModel
from inpaint.model.options import (
    EXPERIMENTAL,
    OPTIONS,
    Target,
    choose_options,
    first_refusal,
)
from inpaint.model.params import GenerationParams
from inpaint.serving import process
from tests.helpers import tiny_settings
from tests.samples import ramp_inputs


def params(prompt="a cat on a sofa", steps=2):
    return GenerationParams(prompt=prompt, seed=3, steps=steps, guidance=30.0)


def test_defaults_are_off_and_environment_turns_them_on(monkeypatch):
    for key in ("COMPILE", "OFFLOAD_TEXT_ENCODERS", "ATTENTION_BACKEND", "STEP_CACHE_THRESHOLD"):
        monkeypatch.delenv(f"INPAINT_{key}", raising=False)
    s = Settings()
    assert (s.compile, s.offload_text_encoders, s.attention_backend) == (False, False, None)
    assert s.step_cache_threshold == 0.0
    monkeypatch.setenv("INPAINT_COMPILE", "1")
    monkeypatch.setenv("INPAINT_OFFLOAD_TEXT_ENCODERS", "true")
    monkeypatch.setenv("INPAINT_ATTENTION_BACKEND", "_native_cudnn")
    monkeypatch.setenv("INPAINT_STEP_CACHE_THRESHOLD", "0.05")
    s = Settings()
    assert s.compile and s.offload_text_encoders and s.attention_backend == "_native_cudnn"
    assert s.step_cache_threshold == 0.05
    monkeypatch.setenv("INPAINT_STEP_CACHE_THRESHOLD", "2")
    with pytest.raises(ValidationError, match="step_cache_threshold"):
        Settings()


def test_attention_backend_names_are_checked():
    assert check_attention_backend("native") == "native"
    with pytest.raises(ValueError, match="unknown INPAINT_ATTENTION_BACKEND"):
        check_attention_backend("fastest")
    with pytest.raises(ValueError, match="downloads its kernels from the Hub"):
        check_attention_backend("flash_hub")


CPU = Target("cpu", "float32")
GPU = Target("cuda", "bfloat16", (9, 0), "/usr/bin/gcc")  # an H100 with a C compiler
L4 = Target("cuda", "bfloat16", (8, 9), "/usr/bin/gcc")
A10 = Target("cuda", "bfloat16", (8, 6), "/usr/bin/gcc")
NO_CC = Target("cuda", "bfloat16", (9, 0), None)

REFUSALS = [
    # settings, machine -> None, or the setting the refusal names and a part of its message
    ({}, CPU, None),
    ({}, NO_CC, None),
    ({"compile": True}, CPU, None),  # ignored on the CPU (a warning), not refused
    ({"compile": True}, GPU, None),
    ({"compile": True}, NO_CC, ("INPAINT_COMPILE", "needs a C compiler")),
    ({"cpu_offload": True}, CPU, None),
    ({"offload_text_encoders": True, "pin_text_encoders": True}, CPU, None),
    ({"dequantize": True}, GPU, None),
    ({"dequantize": True, "cpu_offload": True}, GPU, ("INPAINT_DEQUANTIZE", "INPAINT_CPU_OFFLOAD")),
    ({"dequantize": True, "cpu_offload": True, "fp8": "auto"}, CPU, ("INPAINT_DEQUANTIZE", "")),
    ({"fp8": "weight-only"}, CPU, None),
    ({"fp8": "auto"}, A10, None),
    ({"fp8": "dynamic"}, L4, None),
    ({"fp8": "weight-only", "dequantize": True}, CPU, ("INPAINT_FP8", "INPAINT_DEQUANTIZE")),
    ({"fp8": "auto", "cpu_offload": True}, GPU, ("INPAINT_FP8", "INPAINT_CPU_OFFLOAD")),
    ({"fp8": "dynamic"}, CPU, ("INPAINT_FP8", "needs a CUDA GPU with FP8 tensor cores")),
    ({"fp8": "dynamic"}, A10, ("INPAINT_FP8", "compute capability 8.6")),
    ({"fp8": "dynamic"}, Target("cuda", "float16", (9, 0)), ("INPAINT_FP8", "bfloat16")),
    ({"attention_backend": "native"}, CPU, None),
    ({"attention_backend": "fastest"}, CPU, ("INPAINT_ATTENTION_BACKEND", "unknown")),
    ({"attention_backend": "flash_hub"}, GPU, ("INPAINT_ATTENTION_BACKEND", "from the Hub")),
    ({"step_cache_threshold": 0.5}, CPU, None),
]


@pytest.mark.parametrize(("overrides", "target", "expected"), REFUSALS)
def test_each_option_says_when_it_is_refused(tmp_path, overrides, target, expected):
    options = tiny_settings(tmp_path, **overrides)
    refused = first_refusal(options, target)
    if expected is None:
        assert refused is None
        return
    setting, part = expected
    assert refused is not None and setting in refused and part in refused
    with pytest.raises(ValueError) as info:
        choose_options(options, target)
    assert str(info.value) == refused


@pytest.mark.parametrize(
    ("overrides", "target", "in_effect"),
    [
        ({"compile": True, "offload_text_encoders": True, "pin_text_encoders": True}, CPU, []),
        ({"cpu_offload": True, "offload_text_encoders": True}, GPU, ["INPAINT_CPU_OFFLOAD"]),
        (
            {"offload_text_encoders": True, "pin_text_encoders": True, "compile": True},
            GPU,
            ["INPAINT_OFFLOAD_TEXT_ENCODERS", "INPAINT_PIN_TEXT_ENCODERS", "INPAINT_COMPILE"],
        ),
        ({"pin_text_encoders": True}, GPU, []),  # pinning needs offloaded encoders
        (
            {"step_cache_threshold": 0.1, "fp8": "auto", "attention_backend": "native"},
            CPU,
            ["INPAINT_FP8", "INPAINT_ATTENTION_BACKEND", "INPAINT_STEP_CACHE_THRESHOLD"],
        ),
    ],
)
def test_options_in_effect_come_in_their_order(tmp_path, overrides, target, in_effect):
    chosen = choose_options(tiny_settings(tmp_path, **overrides), target)
    assert [option.setting for option in chosen] == in_effect


def test_every_option_reads_its_own_setting(monkeypatch):
    for name in [n for n in os.environ if n.startswith("INPAINT_")]:
        monkeypatch.delenv(name)
    fields = Settings.model_fields
    assert all(option.field in fields for option in OPTIONS)
    assert len({option.field for option in OPTIONS}) == len(OPTIONS)
    assert all(not option.enabled(Settings()) for option in OPTIONS)  # all off by default


def test_the_settings_of_experimental_options_say_so():
    """One source: the option objects say which options a GPU has not proven yet; the settings'
    descriptions (and so docs/configuration.md) must agree, both ways."""
    assert EXPERIMENTAL  # today no option is proven on a GPU
    marked = {
        name
        for name, field in Settings.model_fields.items()
        if (field.description or "").startswith("Experimental")
    }
    assert marked == {option.field for option in OPTIONS if not option.gpu_proven}
    assert set(EXPERIMENTAL) == {f"INPAINT_{name.upper()}" for name in marked}


def test_load_warns_once_naming_the_experimental_options_in_effect(tiny_model_dir, caplog):
    caplog.set_level(logging.INFO, logger="inpaint.model")
    InpaintModel.load(tiny_settings(tiny_model_dir))
    assert not [r for r in caplog.records if r.getMessage() == "experimental options enabled"]
    caplog.clear()
    model = InpaintModel.load(
        tiny_settings(
            tiny_model_dir, compile=True, attention_backend="native", step_cache_threshold=0.5
        )
    )
    warned = [r for r in caplog.records if r.getMessage() == "experimental options enabled"]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING
    expected = ["INPAINT_ATTENTION_BACKEND", "INPAINT_STEP_CACHE_THRESHOLD"]  # compile: ignored
    assert warned[0].experimental == expected
    loaded = [r for r in caplog.records if r.getMessage() == "model loaded"]
    assert loaded[0].options == expected
    assert model.pipe.transformer.is_cache_enabled and not model.compiled


def test_cuda_only_options_are_ignored_on_cpu_with_a_warning(tiny_model_dir, caplog):
    caplog.set_level(logging.WARNING, logger="inpaint.model")
    model = InpaintModel.load(
        tiny_settings(
            tiny_model_dir, compile=True, offload_text_encoders=True, pin_text_encoders=True
        )
    )
    assert not model.compiled and model.prompts.text_encoder_home is None
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "INPAINT_COMPILE ignored" in messages
    assert "INPAINT_OFFLOAD_TEXT_ENCODERS ignored" in messages
    assert "INPAINT_PIN_TEXT_ENCODERS ignored" in messages
    out = model.generate(*ramp_inputs(), params())
    assert out.size == (64, 64)


class MoveSpy:
    """Records the devices a module is moved to (wraps the instance's ``to``), and whether the
    model lock ``lock`` was held by the mover at that moment."""

    def __init__(self, module, lock=None):
        self.devices: list[str] = []
        self.locked: list[bool] = []
        original = module.to

        def to(*args, **kwargs):
            self.devices.append(str(args[0] if args else kwargs.get("device")))
            self.locked.append(lock is not None and lock._is_owned())
            return original(*args, **kwargs)

        module.to = to


def test_offloaded_text_encoders_visit_the_device_only_on_a_cache_miss(tiny_model_dir):
    model = InpaintModel.load(tiny_settings(tiny_model_dir))
    model.prompts.text_encoder_home = "cpu"  # what load() sets on a GPU with offload_text_encoders
    model.prompts.load_text_encoders()  # on demand they load into their home: no move yet
    clip, t5 = MoveSpy(model.pipe.text_encoder), MoveSpy(model.pipe.text_encoder_2)
    first = model.generate(*ramp_inputs(), params(prompt="a dog on a sofa"))
    assert clip.devices == t5.devices == [model.device, "cpu"]
    second = model.generate(*ramp_inputs(), params(prompt="a dog on a sofa"))
    assert t5.devices == [model.device, "cpu"]  # cached: not moved again
    assert np.array_equal(np.asarray(first), np.asarray(second))


def test_text_encoders_move_only_under_the_model_lock(tiny_model_dir, monkeypatch):
    """CLIP + T5 (~9.5 GB on the GPU) must never arrive while another job is denoising: their
    move onto the device when first loaded, and every visit of offloaded encoders, hold the lock
    that a job holds for its whole denoising."""
    model = InpaintModel.load(tiny_settings(tiny_model_dir))
    spies: list[MoveSpy] = []
    real = encoders.load_text_pipeline

    def spied(*args, **kwargs):
        text = real(*args, **kwargs)
        spies.extend(MoveSpy(m, model._lock) for m in (text.text_encoder, text.text_encoder_2))
        return text

    monkeypatch.setattr(encoders, "load_text_pipeline", spied)
    model.generate(*ramp_inputs(), params(prompt="a dog on a sofa"))  # loaded, moved to the device
    assert [spy.devices for spy in spies] == [[model.device]] * 2
    model.prompts.text_encoder_home = "cpu"  # offloaded (the L4 profile): a visit per cache miss
    model.generate(*ramp_inputs(), params(prompt="a cat in the grass"))
    assert [spy.devices for spy in spies] == [[model.device, model.device, "cpu"]] * 2
    assert all(locked for spy in spies for locked in spy.locked)


def test_a_visit_gives_the_home_weights_back_without_a_copy():
    """Offloaded encoders go home after a visit with their own CPU memory (pinned, if it was),
    not a device-to-host copy of ~11.5 GB. ``meta`` stands in for the GPU: ``to`` replaces
    the parameters there, the harder of its two ways."""
    module = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 4))
    parameters = dict(module.named_parameters())
    memory = {name: p.data_ptr() for name, p in parameters.items()}
    with encoders.visiting([module], "meta", "cpu"):
        assert {p.device.type for p in module.parameters()} == {"meta"}
    assert dict(module.named_parameters()) == parameters  # the same objects
    assert {name: p.data_ptr() for name, p in module.named_parameters()} == memory
    assert module(torch.ones(1, 8)).shape == (1, 4)


def test_offloaded_text_encoders_leave_the_pipeline_on_the_accelerator(tiny_model_dir, monkeypatch):
    """Parking CLIP/T5 in CPU memory must not move the denoising there: diffusers prefers an
    accelerator component for the execution device. Simulated by making the transformer and
    the VAE report a CUDA device while the text encoders stay on the CPU."""
    model = InpaintModel.load(tiny_settings(tiny_model_dir))
    model.prompts.text_encoder_home = "cpu"
    model.prompts.load_text_encoders()
    cuda = property(lambda _self: torch.device("cuda"))
    monkeypatch.setattr(type(model.pipe.transformer), "device", cuda)
    monkeypatch.setattr(type(model.pipe.vae), "device", cuda)
    assert model.pipe.text_encoder.device.type == "cpu"
    assert model.pipe._execution_device == torch.device("cuda")


def test_attention_backend_and_step_cache_are_applied(tiny_model_dir):
    base = InpaintModel.load(tiny_settings(tiny_model_dir))
    model = InpaintModel.load(
        tiny_settings(tiny_model_dir, attention_backend="native", step_cache_threshold=0.5)
    )
    assert model.pipe.transformer.is_cache_enabled
    assert not base.pipe.transformer.is_cache_enabled
    image, mask = ramp_inputs()
    out = model.generate(image, mask, params(steps=4))
    again = model.generate(image, mask, params(steps=4))  # cache state is reset per job
    assert out.size == image.size and out.mode == "RGB"
    assert np.array_equal(np.asarray(out), np.asarray(again))


class _Stop(Exception):
    pass


def test_a_job_stopped_mid_denoising_leaves_no_step_cache_state_for_the_next(tiny_model_dir):
    """A cancel, lost lease or SIGTERM raises from the step callback, skipping the pipeline's
    own clean-up at its end: the first-block cache must still start the next job empty. (With
    threshold 1.0 and another seed first, a stale cache changes this job's pixels: measured.)"""
    options = tiny_settings(tiny_model_dir, step_cache_threshold=1.0)
    stopped = InpaintModel.load(options)
    fresh = InpaintModel.load(options)
    image, mask = ramp_inputs()
    other_job = GenerationParams(prompt="a cat on a sofa", seed=4, steps=6, guidance=30.0)

    def stop_after_the_first_step(step: int, total: int) -> None:
        if step == 1:
            raise _Stop

    with pytest.raises(_Stop):
        stopped.generate(image, mask, other_job, on_step=stop_after_the_first_step)
    after_stop = stopped.generate(image, mask, params(steps=6))
    clean = fresh.generate(image, mask, params(steps=6))
    assert np.array_equal(np.asarray(after_stop), np.asarray(clean))


def test_the_model_loads_and_paints_in_bfloat16(tiny_model_dir):
    """Production runs bfloat16 (`dtype: auto` picks it on a GPU): the dtypes of the parts
    that compute, and one whole step, on the tiny model."""
    model = InpaintModel.load(tiny_settings(tiny_model_dir, dtype="bfloat16"))
    assert model.dtype_name == "bfloat16"
    assert model.pipe.vae.dtype == torch.bfloat16
    transformer = model.pipe.transformer
    dense = [p for p in transformer.parameters() if p.dtype.is_floating_point]
    assert dense and {p.dtype for p in dense} <= {torch.bfloat16, torch.uint8}
    embeds, pooled = model.prompts.encode("a cat on a sofa")
    assert embeds.dtype == pooled.dtype == torch.bfloat16
    image, mask = ramp_inputs()
    out = model.generate(image, mask, params(steps=1))
    assert out.size == image.size and out.mode == "RGB"
    assert np.asarray(out).std() > 0  # painted something, not a blank or NaN image


def test_a_gpu_failure_under_jobs_is_transient_and_then_replaces_the_instance(
    tiny_model_dir, monkeypatch
):
    """Out of memory: the job is redelivered (transient), the instance stays while a success
    comes between; three in a row, or one fatal CUDA error, and /health answers 503 (Cloud
    Run replaces the instance) and no job is taken any more."""
    model = InpaintModel.load(tiny_settings(tiny_model_dir, warmup_steps=0))
    warmup = process.Warmup(lambda: model)
    warmup._run(warmup._generation)
    real_call = type(model.pipe).__call__

    def failing(error):
        def call(*args, **kwargs):
            raise error

        monkeypatch.setattr(type(model.pipe), "__call__", call)

    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB")
    for _ in range(2):
        failing(oom)
        with pytest.raises(DeviceFailedError, match="out_of_memory"):
            model.generate(*ramp_inputs(), params())
    monkeypatch.setattr(type(model.pipe), "__call__", real_call)
    model.generate(*ramp_inputs(), params())  # a success in between: still sound
    assert warmup.health()[0] == 200 and warmup.require(0) is model

    failing(oom)
    for _ in range(3):
        with pytest.raises(DeviceFailedError):
            model.generate(*ramp_inputs(), params())
    code, body = warmup.health()
    assert code == 503 and body["model"] == "broken"
    assert "out of memory in 3 jobs in a row" in body["error"]
    assert warmup.readiness()[0] == 503
    with pytest.raises(TransientError, match="GPU failed"):
        warmup.require(0)

    fresh = InpaintModel.load(tiny_settings(tiny_model_dir, warmup_steps=0))
    failing(RuntimeError("CUDA error: an illegal memory access was encountered"))
    with pytest.raises(DeviceFailedError, match="fatal"):
        fresh.generate(*ramp_inputs(), params())
    assert "illegal memory access" in fresh.device_health.broken

    failing(ValueError("not the device's fault"))  # raised as it is, the device stays sound
    other = InpaintModel.load(tiny_settings(tiny_model_dir, warmup_steps=0))
    with pytest.raises(ValueError, match="not the device"):
        other.generate(*ramp_inputs(), params())
    assert other.device_health.broken is None
