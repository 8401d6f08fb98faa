"""FP8 transformer weights made from the GGUF file at load, with torchao (``INPAINT_FP8``).

Why: a GGUF linear dequantizes its whole weight on every forward call, so a GGUF transformer
runs at best at bf16 speed, and the dense bf16 transformer (23.8 GB) does not fit a 24 GB L4.
Float8 e4m3 weights are 11.9 GB, and on GPUs with FP8 tensor cores (compute capability >= 8.9:
L4, H100, H200) torchao's dynamic mode runs the matmuls in FP8 (about twice the bf16 rate).

How: each GGUF linear of the transformer, one layer at a time where the transformer already
lives (the target device), is dequantized to the compute dtype, put into a plain ``nn.Linear``
and quantized by ``torchao.quantization.quantize_``, so the extra memory at any moment is about
one dense layer. On CPU the file's pages of a converted layer are dropped from the process
(``madvise``) and the freed temporaries returned to the OS (``malloc_trim``), so the converted
model and the mapped file are not resident together: at full size the load peaks at 13.4 GB,
FP8 weights 11.85 GB included (docs/performance.md). The
embedders, norms and every other tensor that the GGUF file stores unquantized are left as they
are. Afterwards diffusers' quantizer state is cleared as ``ModelMixin.dequantize`` clears it.

Modes (``choose_fp8_mode`` decides; a pure function, tested by a table):

* ``dynamic``: ``Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())``: weights and
  each activation row in FP8, FP8 matmuls. torchao refuses it below compute capability 8.9 and
  on CPU, so we refuse that at start-up, naming the setting. ``activation_value_lb`` is set:
  without it torchao 0.18 divides an all-zero activation row by a zero scale and the row
  becomes NaN (``tests/model/test_fp8.py`` shows both).
* ``weight-only``: ``Float8WeightOnlyConfig()``: FP8 weights (per-row scales), matmuls in the
  compute dtype. Any device, CPU included: the tests prove the conversion and its numerics here.

The best source is a Q8_0 file: FP8 re-quantizes what the file holds, so a Q4_0 file keeps its
4-bit error under the FP8 one.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import inpaint.model.runtime  # noqa: F401  (first: the environment the libraries read)

# isort: split
import torch
from diffusers.quantizers.gguf.utils import GGUFLinear, dequantize_gguf_tensor

logger = logging.getLogger(__name__)

Fp8Setting = Literal["off", "auto", "weight-only", "dynamic"]
Fp8Mode = Literal["off", "weight-only", "dynamic"]

#: torchao's dynamic FP8 needs FP8 tensor cores: Ada (sm_89, the L4) or Hopper (sm_90) and later.
MIN_DYNAMIC_CAPABILITY = (8, 9)
#: Lower bound on an activation row's absolute maximum when its FP8 scale is computed (the bound
#: torchao's own float8 training uses, ``EPS``): an all-zero row then gets a tiny positive scale
#: and quantizes to exact zeros instead of 0/0 = NaN.
ACTIVATION_VALUE_LB = 1e-12


def choose_fp8_mode(
    setting: str,
    *,
    device: str,
    capability: tuple[int, int] | None,
    dtype: str = "bfloat16",
    dequantize: bool = False,
    cpu_offload: bool = False,
) -> Fp8Mode:
    """The FP8 mode for ``INPAINT_FP8=setting`` on ``device`` (CUDA ``capability``, else None)
    with the compute ``dtype`` (its name).

    ``auto``: dynamic on a CUDA GPU of compute capability >= 8.9 in bfloat16, else weight-only.
    Raises ValueError naming ``INPAINT_FP8`` for what cannot work: dynamic without FP8 tensor
    cores, dynamic in another dtype than bfloat16 (torch's row-wise FP8 matmul writes bf16), or
    FP8 together with ``INPAINT_DEQUANTIZE`` (two conversions of the same layers) or
    ``INPAINT_CPU_OFFLOAD`` (FP8 exists to keep the transformer on the GPU).
    """
    if setting == "off":
        return "off"
    if setting not in ("auto", "weight-only", "dynamic"):
        raise ValueError(
            f"unknown INPAINT_FP8={setting!r}; expected off, auto, weight-only or dynamic"
        )
    if dequantize:
        raise ValueError(
            f"INPAINT_FP8={setting} and INPAINT_DEQUANTIZE cannot be combined: both replace the "
            "GGUF layers (FP8 dequantizes each layer itself); set one of them"
        )
    if cpu_offload:
        raise ValueError(
            f"INPAINT_FP8={setting} and INPAINT_CPU_OFFLOAD cannot be combined: FP8 weights "
            "(11.9 GB) are meant to stay on the GPU, model offload would move them every job"
        )
    fp8_cores = (
        device.startswith("cuda")
        and capability is not None
        and tuple(capability) >= MIN_DYNAMIC_CAPABILITY
    )
    if setting == "dynamic" and not fp8_cores:
        where = (
            f"a GPU of compute capability {capability[0]}.{capability[1]}"
            if device.startswith("cuda") and capability is not None
            else device
        )
        raise ValueError(
            f"INPAINT_FP8=dynamic needs a CUDA GPU with FP8 tensor cores (compute capability "
            f">= 8.9: L4, H100, H200); this model runs on {where}. Use INPAINT_FP8=weight-only "
            "(or auto) there"
        )
    if setting == "dynamic" and dtype != "bfloat16":
        raise ValueError(
            f"INPAINT_FP8=dynamic needs INPAINT_DTYPE=bfloat16 (the row-wise FP8 matmul writes "
            f"bfloat16), not {dtype}; use INPAINT_FP8=weight-only (or auto) with {dtype}"
        )
    if setting == "auto":
        return "dynamic" if fp8_cores and dtype == "bfloat16" else "weight-only"
    return "dynamic" if setting == "dynamic" else "weight-only"


def device_capability(device: str) -> tuple[int, int] | None:
    """CUDA compute capability of ``device``; None for a CPU."""
    if not device.startswith("cuda"):
        return None
    major, minor = torch.cuda.get_device_capability(torch.device(device))
    return int(major), int(minor)


def quant_config(mode: Fp8Mode) -> Any:
    """torchao's configuration for ``mode`` (imported here: torchao loads only when used)."""
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        Float8WeightOnlyConfig,
        PerRow,
    )

    # set_inductor_config=False: torchao would otherwise switch on its recommended inductor
    # settings (coordinate descent tuning, ...) for the whole process, lengthening every later
    # compilation (the warm-up of a cold start) and changing variants measured after this one.
    if mode == "dynamic":
        return Float8DynamicActivationFloat8WeightConfig(
            granularity=PerRow(),
            activation_value_lb=ACTIVATION_VALUE_LB,
            set_inductor_config=False,
        )
    if mode == "weight-only":
        return Float8WeightOnlyConfig(set_inductor_config=False)
    raise ValueError(f"no torchao configuration for FP8 mode {mode!r}")


@dataclass(frozen=True)
class Fp8Conversion:
    """What ``convert_transformer`` did."""

    mode: Fp8Mode
    layers: int
    seconds: float
    fp8_bytes: int  # float8 weights and their scales, as stored after the conversion
    released_bytes: int  # file pages dropped from this process (CPU, memory-mapped GGUF)


def gguf_linears(module: torch.nn.Module) -> list[tuple[torch.nn.Module, str, GGUFLinear]]:
    """(parent, attribute name, layer) of every GGUF linear layer under ``module``."""
    found = []
    for parent in module.modules():
        for name, child in parent.named_children():
            if isinstance(child, GGUFLinear):
                found.append((parent, name, child))
    return found


def convert_transformer(
    transformer: torch.nn.Module,
    mode: Fp8Mode,
    *,
    dtype: torch.dtype,
    source: str | os.PathLike[str] | None = None,
) -> Fp8Conversion:
    """Replaces every GGUF linear of ``transformer`` by an FP8 one (torchao), layer by layer.

    Runs where each layer's weight lives (call it after the transformer is on its device).
    ``source``: the GGUF file the weights are memory-mapped from, whose pages a converted layer
    no longer needs (CPU only; elsewhere nothing is mapped).
    """
    if mode == "off":
        raise ValueError("convert_transformer needs an FP8 mode, not 'off'")
    from torchao.quantization import quantize_

    config = quant_config(mode)
    pages = _MappedFile(source)
    started = time.perf_counter()
    layers = fp8_bytes = released = 0
    todo = gguf_linears(transformer)
    todo.reverse()
    with torch.no_grad():
        while todo:  # popped, so each GGUF layer is freed as soon as it is replaced
            parent, name, layer = todo.pop()
            compute = layer.compute_dtype or dtype
            dense = torch.nn.Linear(
                layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta"
            )
            weight = dequantize_gguf_tensor(layer.weight).to(compute)
            dense.weight = torch.nn.Parameter(weight, requires_grad=False)
            if layer.bias is not None:
                dense.bias = torch.nn.Parameter(layer.bias.to(compute), requires_grad=False)
            del weight
            quantize_(dense, config)
            dense.requires_grad_(False)
            parent._modules[name] = dense
            on_cpu = layer.weight.device.type == "cpu"
            released += pages.release(layer.weight)
            fp8_bytes += _stored_bytes(dense.weight)
            del layer, parent
            if on_cpu:
                _trim_heap()
            layers += 1
    # What ``ModelMixin.dequantize`` does once the quantizer's layers are gone: diffusers must not
    # treat the model as GGUF any more (``dequantize()``, offload and dtype checks read these).
    if getattr(transformer, "hf_quantizer", None) is not None:
        del transformer.hf_quantizer
    transformer.is_quantized = False
    seconds = time.perf_counter() - started
    logger.info(
        "transformer converted to FP8",
        extra={
            "fp8": mode,
            "fp8Layers": layers,
            "fp8Seconds": round(seconds, 2),
            "fp8Bytes": fp8_bytes,
            "releasedFileBytes": released,
        },
    )
    return Fp8Conversion(mode, layers, seconds, fp8_bytes, released)


def _trim_heap() -> None:
    """Returns the freed temporaries (the dense layer, torchao's float32 copy) to the OS.

    On CPU each layer's temporaries are freed between FP8 weights that stay, and glibc keeps
    such holes in its heap: measured at full size, 18.9 GB private memory after the conversion
    instead of the 11.8 GB of FP8 weights. ``malloc_trim`` releases them. A no-op where glibc
    is not the allocator.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    return trim


def _stored_bytes(weight: torch.Tensor) -> int:
    """Bytes of a torchao Float8Tensor's data and scale (or a plain tensor's)."""
    total = 0
    for attr in ("qdata", "scale"):
        part = getattr(weight, attr, None)
        if isinstance(part, torch.Tensor):
            total += part.numel() * part.element_size()
    return total or weight.numel() * weight.element_size()


class _MappedFile:
    """Drops a converted layer's pages of the memory-mapped GGUF file from this process.

    ``inpaint.model.mapped`` maps the file copy-on-write and nothing writes to it, so the pages
    are clean copies of the file: ``MADV_DONTNEED`` releases them (a later access would re-read
    the file). Only whole pages inside one tensor's bytes, and only inside a mapping of
    ``source`` (read from /proc/self/maps), are touched; anywhere else this does nothing.
    """

    MADV_DONTNEED = 4

    def __init__(self, source: str | os.PathLike[str] | None) -> None:
        self.ranges: list[tuple[int, int]] = []
        self._madvise: Any = None
        if source is None or not sys.platform.startswith("linux"):
            return
        target = str(Path(source).resolve())
        try:
            lines = Path("/proc/self/maps").read_text().splitlines()
        except OSError:
            return
        for line in lines:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5] == target:
                start, end = (int(x, 16) for x in parts[0].split("-"))
                self.ranges.append((start, end))
        if self.ranges:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
            libc.madvise.restype = ctypes.c_int
            self._madvise = libc.madvise
            self.page = os.sysconf("SC_PAGE_SIZE")

    def release(self, tensor: torch.Tensor) -> int:
        if not self.ranges or tensor.device.type != "cpu" or not tensor.is_contiguous():
            return 0
        start = tensor.data_ptr()
        end = start + tensor.numel() * tensor.element_size()
        if not any(lo <= start and end <= hi for lo, hi in self.ranges):
            return 0
        first = -(-start // self.page) * self.page
        last = end // self.page * self.page
        if last <= first:
            return 0
        if self._madvise(first, last - first, self.MADV_DONTNEED) != 0:
            return 0
        return last - first
