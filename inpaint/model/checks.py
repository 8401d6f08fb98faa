"""What is refused before any weight is loaded: missing files, impossible devices, unknown dtypes
and attention backends that would reach the Hub. Cheap, so the service fails fast and clearly."""

from __future__ import annotations

import os
import shutil

import inpaint.model.runtime  # noqa: F401  (first: the environment the libraries read)

# isort: split
import torch

from inpaint.config import Settings
from inpaint.errors import DeviceUnavailableError, ModelFilesMissingError
from inpaint.model.weights_layout import missing_files

_DTYPES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
}


def weights_command(settings: Settings) -> str:
    """The command that creates the weights directory these settings point at."""
    return f"python -m inpaint weights --dest {settings.model_dir} --quant {settings.quant}"


def check_model_files(settings: Settings, *, text_encoders: bool = True) -> None:
    """Raises ModelFilesMissingError naming the missing files and the command that fetches them.

    Checked up front because diffusers, offline, reports a missing file as a confusing Hub
    error, possibly minutes into loading. ``text_encoders=False``: a directory built with
    ``--no-text-encoders`` (CLIP, T5 and their tokenizers left out on purpose).
    """
    missing = missing_files(settings.base_dir, settings.gguf_path, text_encoders=text_encoders)
    if not missing:
        return
    shown = ", ".join(str(p) for p in missing[:5])
    more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
    raise ModelFilesMissingError(
        f"model file missing: {shown}{more}. Fetch the weights with: {weights_command(settings)}"
    )


def choose_device(setting: str, cuda_available: bool, cuda_problem: str | None = None) -> str:
    """The device for ``INPAINT_DEVICE``: ``auto`` is CUDA when torch sees it, else CPU; an
    explicit ``cuda`` without a usable GPU is refused, never quietly run on the CPU (an instance
    would get ready and then time out every job). The image sets ``cuda``; ``cpu`` stays
    possible on purpose (tests, demos)."""
    if setting == "auto":
        return "cuda" if cuda_available else "cpu"
    if setting.startswith("cuda") and not cuda_available:
        why = f" ({cuda_problem})" if cuda_problem else ""
        raise DeviceUnavailableError(
            f"INPAINT_DEVICE={setting} but torch sees no usable CUDA device{why}; this "
            "deployment needs a GPU (set INPAINT_DEVICE=cpu only to run on the CPU on purpose)"
        )
    return setting


def cuda_problem() -> str | None:
    """Why CUDA cannot be used (driver missing or too old for the wheel...), as torch says it."""
    try:
        torch.cuda.init()
    except Exception as exc:  # torch reports a broken driver as RuntimeError or AssertionError
        return f"{type(exc).__name__}: {exc}".strip()
    return None


def resolve_device(setting: str) -> str:
    """``choose_device`` for this machine."""
    available = torch.cuda.is_available()
    problem = None if available or not setting.startswith("cuda") else cuda_problem()
    return choose_device(setting, available, problem)


def compile_refusal(compile_on: bool, on_gpu: bool, compiler: str | None) -> str | None:
    """Why ``INPAINT_COMPILE`` cannot work here, or None. Inductor's Triton kernels need a C
    compiler at run time (Triton builds its CUDA launcher with it, on the first compiled call),
    so without one the first job would fail, not merely run slower. On the CPU compile is
    ignored (with a warning), so nothing to refuse."""
    if compile_on and on_gpu and compiler is None:
        return (
            "INPAINT_COMPILE=true needs a C compiler (gcc or $CC) for Triton, and there is none "
            "on this machine; install one in the image or turn INPAINT_COMPILE off"
        )
    return None


def find_c_compiler() -> str | None:
    """The C compiler Triton would use (its ``runtime/build.py``): $CC, else gcc or clang."""
    candidates = [os.environ["CC"]] if os.environ.get("CC") else ["gcc", "clang"]
    for name in candidates:
        found = shutil.which(name)
        if found:
            return found
    return None


def resolve_dtype(setting: str, device: str) -> torch.dtype:
    """``auto``: bfloat16 on GPU (FLUX's native dtype), float32 on CPU (bf16 matmuls are slow
    there and half precision is unsupported for some CPU ops)."""
    if setting == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return _DTYPES[setting]
    except KeyError:
        raise ValueError(
            f"unsupported dtype {setting!r}; expected one of {sorted(_DTYPES)}"
        ) from None


def check_attention_backend(name: str) -> str:
    """Returns ``name`` if diffusers knows it as an attention backend that works offline.

    ``*_hub`` backends download kernels from the Hugging Face Hub when selected: refused, like
    the GGUF CUDA kernels, because the service runs offline.
    """
    from diffusers.models.attention_dispatch import AttentionBackendName

    known = sorted(b.value for b in AttentionBackendName)
    if name not in known:
        raise ValueError(f"unknown INPAINT_ATTENTION_BACKEND {name!r}; expected one of {known}")
    if name.endswith("_hub"):
        raise ValueError(
            f"INPAINT_ATTENTION_BACKEND={name} downloads its kernels from the Hub at run time; "
            "choose a backend installed locally (e.g. native, _native_cudnn, flash)"
        )
    return name
