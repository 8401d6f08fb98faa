"""The model's optional speed-ups, one small object each: when it is refused, when it does
nothing here, how it is applied, and whether a GPU has proven it.

Why objects: each option has its own reasons (a C compiler for Triton, FP8 tensor cores, memory
that only some GPUs have), and none of them has run on a GPU yet, while the load they sit in
is the one path every job needs. One object per option keeps each option's rules in one place,
keeps ``InpaintModel.load`` a short list of steps, and gives one source for the options still
**experimental** (``gpu_proven=False``): their setting descriptions say so (checked by
``tests/model/test_model_options.py``) and ``load`` logs one warning naming those in effect.

Order matters and is ``OPTIONS``' order: the placement options decide where the pipeline's parts
live (before the default prompt may load CLIP and T5); then the transformer options, where the
transformer already lives: dequantize or FP8 (both replace the GGUF layers), the attention
backend, the step cache, and compilation last, so it traces the final modules. Refusals are
checked in the same order, before any weight is read, so a refusal costs nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import inpaint.model.runtime  # noqa: F401  (first: the environment the libraries read)

# isort: split
import torch

from inpaint.config import Settings
from inpaint.model.checks import check_attention_backend, compile_refusal, find_c_compiler
from inpaint.model.encoders import PromptEncoder
from inpaint.model.fp8 import (
    Fp8Conversion,
    Fp8Mode,
    choose_fp8_mode,
    convert_transformer,
    device_capability,
)

logger = logging.getLogger(__name__)

Stage = Literal["placement", "transformer"]


@dataclass(frozen=True)
class Target:
    """Where the model will run, as far as the options' rules need it: plain data, so the rules
    are pure functions a table can test without a GPU."""

    device: str
    dtype: str  # the compute dtype's name, e.g. "bfloat16"
    capability: tuple[int, int] | None = None  # CUDA compute capability; None on CPU
    compiler: str | None = None  # the C compiler Triton would use

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")

    @classmethod
    def here(cls, settings: Settings, device: str, dtype: torch.dtype) -> Target:
        """This machine. The capability is asked only when FP8 needs it (it initializes CUDA)."""
        capability = device_capability(device) if settings.fp8 != "off" else None
        name = str(dtype).removeprefix("torch.")
        return cls(device, name, capability, find_c_compiler())


class Loaded(Protocol):
    """What the options act on and record: ``InpaintModel``, seen through the attributes they
    need (a protocol, because the inpainter imports this module)."""

    pipe: Any
    settings: Settings
    device: str
    dtype: torch.dtype
    prompts: PromptEncoder
    dequantized: bool
    fp8: Fp8Mode
    fp8_conversion: Fp8Conversion | None
    compiled: bool


Rule = Callable[[Settings, Target], str | None]


def _never(_settings: Settings, _target: Target) -> str | None:
    """The rule of an option that is never refused (or never ignored)."""
    return None


@dataclass(frozen=True)
class Option:
    """One optional speed-up behind one setting, off by default.

    ``refusal``: why the enabled option cannot work here (start-up fails with this message,
    naming the setting), else None. ``ignored``: why it does nothing here (logged as a warning;
    the model loads without it), else None. ``apply`` acts on the loaded model. ``gpu_proven``:
    measured on a GPU; False marks the option experimental.
    """

    setting: str
    enabled: Callable[[Settings], bool]
    apply: Callable[[Loaded, Target], None]
    stage: Stage = "transformer"
    refusal: Rule = _never
    ignored: Rule = _never
    gpu_proven: bool = False

    @property
    def field(self) -> str:
        """The ``Settings`` field read from ``setting``."""
        return self.setting.removeprefix("INPAINT_").lower()


# --- placement ------------------------------------------------------------------------------


def _runs_on(setting: str) -> Rule:
    """``ignored`` for an option that only acts on a CUDA GPU."""

    def ignored(_settings: Settings, target: Target) -> str | None:
        return None if target.on_gpu else f"{setting} ignored: the model runs on {target.device}"

    return ignored


def _offload_model(model: Loaded, _target: Target) -> None:
    """diffusers' model CPU offload: each component visits the GPU only while it runs."""
    model.pipe.enable_model_cpu_offload(device=model.device)


def _offload_encoders_ignored(settings: Settings, target: Target) -> str | None:
    if not target.on_gpu:
        return f"INPAINT_OFFLOAD_TEXT_ENCODERS ignored: the model runs on {target.device}"
    if settings.cpu_offload:
        return "INPAINT_OFFLOAD_TEXT_ENCODERS ignored: INPAINT_CPU_OFFLOAD already offloads them"
    return None


def _offload_encoders(model: Loaded, _target: Target) -> None:
    """CLIP and T5 stay in CPU memory; encoding a cache miss brings them over."""
    model.pipe.transformer.to(model.device)
    model.pipe.vae.to(model.device)
    model.prompts.text_encoder_home = "cpu"


def _pin_ignored(settings: Settings, target: Target) -> str | None:
    if _offload_encoders_ignored(settings, target) is None and settings.offload_text_encoders:
        return None
    return (
        "INPAINT_PIN_TEXT_ENCODERS ignored: it applies to text encoders offloaded from "
        "a GPU (INPAINT_OFFLOAD_TEXT_ENCODERS on CUDA)"
    )


def _pinned_when_loaded(_model: Loaded, _target: Target) -> None:
    """Nothing now: ``PromptEncoder`` pins CLIP and T5 when it loads them (on demand)."""


# --- the transformer ------------------------------------------------------------------------


def _dequantize_refusal(settings: Settings, _target: Target) -> str | None:
    if not settings.cpu_offload:
        return None
    return (
        "INPAINT_DEQUANTIZE and INPAINT_CPU_OFFLOAD cannot be combined: offloading is for "
        "GPUs under 24 GB, and the dequantized transformer alone needs ~24 GB in bf16"
    )


def _dequantize(model: Loaded, _target: Target) -> None:
    """Replaces every GGUF linear layer by a dense one in the compute dtype, once.

    GGUFLinear dequantizes its whole weight on every forward call; paying that once at load
    makes each step cheaper at the price of the dense model's memory (~24 GB in bf16 for
    FLUX, so only for large GPUs or CPU). Uses diffusers' own ``ModelMixin.dequantize``,
    which runs where the transformer already lives (placed on the device first).
    """
    transformer = model.pipe.transformer
    if getattr(transformer, "hf_quantizer", None) is None:
        return
    transformer.dequantize()  # diffusers casts each weight to the layer's compute dtype
    model.dequantized = True


def _fp8_mode(settings: Settings, target: Target) -> Fp8Mode:
    """``choose_fp8_mode`` for these settings here; raises ValueError naming INPAINT_FP8."""
    return choose_fp8_mode(
        settings.fp8,
        device=target.device,
        capability=target.capability,
        dtype=target.dtype,
        dequantize=settings.dequantize,
        cpu_offload=settings.cpu_offload,
    )


def _fp8_refusal(settings: Settings, target: Target) -> str | None:
    try:
        _fp8_mode(settings, target)
    except ValueError as refused:
        return str(refused)
    return None


def _fp8(model: Loaded, target: Target) -> None:
    """GGUF linears to float8 where they live (``inpaint.model.fp8``)."""
    mode = _fp8_mode(model.settings, target)
    model.fp8_conversion = convert_transformer(
        model.pipe.transformer, mode, dtype=model.dtype, source=model.settings.gguf_path
    )
    model.fp8 = mode


def _attention_refusal(settings: Settings, _target: Target) -> str | None:
    try:
        check_attention_backend(str(settings.attention_backend))
    except ValueError as refused:
        return str(refused)
    return None


def _attention(model: Loaded, _target: Target) -> None:
    """The backend, checked by the refusal already (no Hub kernels, a name diffusers knows)."""
    model.pipe.transformer.set_attention_backend(model.settings.attention_backend)


def _step_cache(model: Loaded, _target: Target) -> None:
    """The first-block cache (approximate: skips the rest of a step that barely changes)."""
    from diffusers import FirstBlockCacheConfig

    config = FirstBlockCacheConfig(threshold=model.settings.step_cache_threshold)
    model.pipe.transformer.enable_cache(config)


def _compile_refusal(settings: Settings, target: Target) -> str | None:
    return compile_refusal(settings.compile, target.on_gpu, target.compiler)


def _compile(model: Loaded, _target: Target) -> None:
    """Regional compilation of the repeated blocks. ``fullgraph=False``: GGUF weights are
    tensor subclasses, and a graph break must cost speed, never a failed job. Only on CUDA: on
    CPU, inductor compiles C++ for minutes and the CPU path is for tests and demos."""
    model.pipe.transformer.compile_repeated_blocks(fullgraph=False)
    model.compiled = True


OPTIONS: tuple[Option, ...] = (
    Option(
        "INPAINT_CPU_OFFLOAD",
        lambda s: s.cpu_offload,
        _offload_model,
        stage="placement",
        ignored=_runs_on("INPAINT_CPU_OFFLOAD"),
    ),
    Option(
        "INPAINT_OFFLOAD_TEXT_ENCODERS",
        lambda s: s.offload_text_encoders,
        _offload_encoders,
        stage="placement",
        ignored=_offload_encoders_ignored,
    ),
    Option(
        "INPAINT_PIN_TEXT_ENCODERS",
        lambda s: s.pin_text_encoders,
        _pinned_when_loaded,
        stage="placement",
        ignored=_pin_ignored,
    ),
    Option("INPAINT_DEQUANTIZE", lambda s: s.dequantize, _dequantize, refusal=_dequantize_refusal),
    Option("INPAINT_FP8", lambda s: s.fp8 != "off", _fp8, refusal=_fp8_refusal),
    Option(
        "INPAINT_ATTENTION_BACKEND",
        lambda s: bool(s.attention_backend),
        _attention,
        refusal=_attention_refusal,
    ),
    Option("INPAINT_STEP_CACHE_THRESHOLD", lambda s: s.step_cache_threshold > 0, _step_cache),
    Option(
        "INPAINT_COMPILE",
        lambda s: s.compile,
        _compile,
        refusal=_compile_refusal,
        ignored=_runs_on("INPAINT_COMPILE"),
    ),
)

EXPERIMENTAL: tuple[str, ...] = tuple(o.setting for o in OPTIONS if not o.gpu_proven)


def first_refusal(settings: Settings, target: Target) -> str | None:
    """The first enabled option's refusal, in ``OPTIONS``' order; None when all can work."""
    for option in OPTIONS:
        if option.enabled(settings):
            refused = option.refusal(settings, target)
            if refused:
                return refused
    return None


def choose_options(settings: Settings, target: Target) -> list[Option]:
    """The options in effect, in order. Raises ValueError with the first refusal; warns once
    per enabled option that does nothing here, and once naming those not proven on a GPU."""
    refused = first_refusal(settings, target)
    if refused:
        raise ValueError(refused)
    chosen = []
    for option in (o for o in OPTIONS if o.enabled(settings)):
        ignored = option.ignored(settings, target)
        if ignored:
            logger.warning("%s", ignored, extra={"setting": option.setting})
        else:
            chosen.append(option)
    experimental = [o.setting for o in chosen if not o.gpu_proven]
    if experimental:
        logger.warning("experimental options enabled", extra={"experimental": experimental})
    return chosen


def apply_options(model: Loaded, options: Sequence[Option], target: Target, stage: Stage) -> None:
    """Applies ``stage``'s options in order; a placement without options puts every part of
    the pipeline on the device."""
    chosen = [o for o in options if o.stage == stage]
    for option in chosen:
        option.apply(model, target)
    if stage == "placement" and not chosen:
        model.pipe.to(model.device)
