"""What is refused before any weight is loaded: missing files, impossible devices, unknown dtypes
and attention backends that would reach the Hub. Cheap, so the service fails fast and clearly."""

from __future__ import annotations

import torch

from inpaint.config import Settings
from inpaint.errors import ModelFilesMissingError
from inpaint.weights_dir import missing_files

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


def resolve_device(setting: str) -> str:
    """``auto`` picks CUDA when present, else CPU; an explicit CUDA without one is an error."""
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"INPAINT_DEVICE={setting} but torch sees no CUDA device")
    return setting


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
