"""A GGUF state dict whose tensors are views of the file's memory map, not copies of it.

diffusers' ``load_gguf_checkpoint`` copies every tensor out of the map (``tensor.data.copy()``),
so for a moment the process holds the file's pages and a private copy of them: twice the
transformer. Here each tensor is a view of a copy-on-write map of the file, so the parameters
*are* the page cache: resident memory never holds the transformer twice, the pages are clean
(the kernel can drop and re-read them instead of swapping), and on CPU a page is only read when
a step first uses it. Moving the model to a GPU copies the tensors there and releases the map.

Everything else is diffusers' logic, unchanged: the same names, the same tensor types (F32 and
F16 as plain tensors, every other type as ``GGUFParameter``) and the same refusal of types its
kernels cannot dequantize. The file must not change while mapped; in the image it never does.
"""

from __future__ import annotations

import os

import inpaint.model.runtime  # noqa: F401  (first: the environment the libraries read)

# isort: split
import gguf
import numpy as np
import torch
from diffusers.quantizers.gguf.utils import SUPPORTED_GGUF_QUANT_TYPES, GGUFParameter

PLAIN_TYPES = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)


def load_gguf_mapped(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors of the GGUF file at ``path``, keyed by their names in the file.

    Raises ValueError naming the tensor for a quantization type diffusers cannot dequantize.
    The map is copy-on-write (``mode="c"``): tensors are writable as torch expects, and a write
    (none happens at inference) would stay private to this process, never reach the file.
    """
    reader = gguf.GGUFReader(path, mode="c")
    tensors: dict[str, torch.Tensor] = {}
    for tensor in reader.tensors:
        quant_type = tensor.tensor_type
        quantized = quant_type not in PLAIN_TYPES
        if quantized and quant_type not in SUPPORTED_GGUF_QUANT_TYPES:
            supported = ", ".join(t.name for t in SUPPORTED_GGUF_QUANT_TYPES)
            raise ValueError(
                f"{path}: tensor {tensor.name} has quantization type {quant_type.name}, which "
                f"diffusers cannot dequantize (supported: {supported})"
            )
        data: np.ndarray = tensor.data
        weights = torch.from_numpy(data)
        if quantized:
            weights = GGUFParameter(weights, quant_type=quant_type)
        tensors[tensor.name] = weights
    return tensors
