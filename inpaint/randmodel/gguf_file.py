"""The transformer of a random model as a GGUF file with really quantized Q8_0/Q4_0 tensors,
typed as the published FLUX files are, so the production loader (diffusers' GGUF quantizer) runs
unchanged on it.

Random values come from numpy when no device is named (the tiny models: the same bytes on every
machine) or from torch on a named device (the 12 B values of the full size: seconds on a GPU,
with torch quantizers that give gguf-py's bytes). Either way, linear weights are uniform in
+-1/sqrt(fan_in) (torch's default init) and norm scales are ones.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inpaint.randmodel.bfl import diffusers_to_bfl
from inpaint.randmodel.spec import Layout, Quant

if TYPE_CHECKING:
    import numpy as np
    import torch

# Values drawn and quantized per chunk (8 MB of float32): small enough for malloc to reuse.
_CHUNK_VALUES = 1 << 21

# Tensors kept in F16 rather than quantized: the small input embedders and the final layer,
# whose precision matters most per parameter, as llama.cpp-based image-model converters commonly
# do (YarvixPA's exact per-tensor choice could not be checked offline). diffusers' loader takes
# F32, F16 and quantized tensors alike, so the tiny files exercise all three kinds.
_HIGH_PRECISION_PREFIXES = ("img_in.", "txt_in.", "time_in.", "vector_in.", "guidance_in.")
_HIGH_PRECISION_DIFFUSERS = ("x_embedder.", "context_embedder.", "time_text_embed.", "norm_out.")


def tensor_specs(config: Mapping[str, Any], layout: Layout) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every transformer tensor as the GGUF file of ``layout`` stores it.

    The model is instantiated on the meta device (no memory, no slow init) to learn diffusers'
    names and shapes; for ``"bfl"`` the same meta tensors go through ``diffusers_to_bfl``, so
    the file is written by exactly the mapping that the round-trip test checks against
    diffusers' own converter.
    """
    import inpaint.model.runtime  # noqa: F401  (first: the environment the libraries read)

    # isort: split
    import torch
    from diffusers import FluxTransformer2DModel

    cfg = {k: v for k, v in config.items() if not k.startswith("_")}
    with torch.device("meta"):
        model = FluxTransformer2DModel(**cfg)
    state: Mapping[str, torch.Tensor] = model.state_dict()
    if layout == "bfl":
        state = diffusers_to_bfl(state)
    return {name: tuple(tensor.shape) for name, tensor in state.items()}


def _is_norm_scale(name: str) -> bool:
    """RMSNorm scales (diffusers ``attn.norm_q.weight``, BFL ``query_norm.scale``) start at 1."""
    return name.endswith(".scale") or ("norm" in name and ".linear" not in name)


def write_random_gguf(
    path: Path,
    specs: Mapping[str, tuple[int, ...]],
    *,
    quant: Quant,
    layout: Layout,
    seed: int,
    device: str | None = None,
) -> None:
    """Random weights of the given shapes straight into a GGUF file: numpy without ``device``,
    torch on ``device`` otherwise (see the module docstring)."""
    if device is None:
        _write_random_gguf_numpy(path, specs, quant=quant, layout=layout, seed=seed)
    else:
        _write_random_gguf_torch(path, specs, quant=quant, layout=layout, seed=seed, device=device)


def _write_random_gguf_numpy(
    path: Path, specs: Mapping[str, tuple[int, ...]], *, quant: Quant, layout: Layout, seed: int
) -> None:
    """Writes random weights of the given shapes straight into a GGUF file.

    Values are drawn and quantized a few rows at a time: the BFL model has 532 M parameters,
    and materialising them as float32 first costs 2 GB of freshly faulted memory, which is slower
    than the quantization itself on a small VM. Linear weights are uniform in +-1/sqrt(fan_in)
    (torch's default init), norm scales are ones.
    """
    import numpy as np

    rng = np.random.default_rng(seed)

    def rows(name: str, shape: tuple[int, ...]) -> Iterator[np.ndarray]:
        if len(shape) == 1 and _is_norm_scale(name):
            yield np.ones(shape, dtype=np.float32)
            return
        fan_in = shape[-1]
        bound = np.float32(2.0 / math.sqrt(fan_in))
        if len(shape) == 1:
            yield (rng.random(shape, dtype=np.float32) - np.float32(0.5)) * bound
            return
        step = max(1, _CHUNK_VALUES // fan_in)
        for start in range(0, shape[0], step):
            chunk = rng.random((min(step, shape[0] - start), *shape[1:]), dtype=np.float32)
            chunk -= np.float32(0.5)
            chunk *= bound
            yield chunk

    _write_gguf_rows(
        path,
        ((name, shape, rows(name, shape)) for name, shape in specs.items()),
        quant=quant,
        layout=layout,
    )


def gguf_tensor_type(name: str, shape: tuple[int, ...], quant: Quant, layout: Layout) -> Any:
    """The GGML type a published FLUX GGUF file uses for this tensor.

    1-D tensors (biases, norm scales) stay F32; the input embedders and the final layer stay
    F16; every other matrix is block-quantized. Rows whose length is not a multiple of the
    32-value block cannot be quantized and fall back to F16, as llama.cpp's tools do.
    """
    import gguf

    if len(shape) == 1:
        return gguf.GGMLQuantizationType.F32
    prefixes = (*_HIGH_PRECISION_PREFIXES, "final_layer.")
    if layout == "diffusers":
        prefixes = (*_HIGH_PRECISION_DIFFUSERS, "proj_out.")
    if name.startswith(prefixes) or shape[-1] % 32:
        return gguf.GGMLQuantizationType.F16
    return gguf.GGMLQuantizationType[quant]


def write_gguf(
    path: Path, state: Mapping[str, torch.Tensor], *, quant: Quant, layout: Layout
) -> None:
    """Writes a state dict as a GGUF file with real Q8_0/Q4_0 blocks (gguf-py's quantizer)."""
    _write_gguf_rows(
        path,
        (
            (name, tuple(t.shape), iter([t.detach().to("cpu").float().numpy()]))
            for name, t in state.items()
        ),
        quant=quant,
        layout=layout,
    )


def _write_gguf_rows(
    path: Path,
    tensors: Iterable[tuple[str, tuple[int, ...], Iterator[np.ndarray]]],
    *,
    quant: Quant,
    layout: Layout,
) -> None:
    """Quantizes (name, shape, row chunks) tensor by tensor into one GGUF file.

    Quantizing row chunks gives the same bytes as quantizing the whole tensor: Q8_0/Q4_0 blocks
    run along a row (32 values), never across rows.
    """
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch="flux")
    writer.add_name(f"tiny FLUX.1-Fill-dev ({layout} keys)")
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(
        gguf.LlamaFileType.MOSTLY_Q8_0 if quant == "Q8_0" else gguf.LlamaFileType.MOSTLY_Q4_0
    )
    for name, shape, chunks in tensors:
        qtype = gguf_tensor_type(name, shape, quant, layout)
        parts = [gguf.quants.quantize(np.ascontiguousarray(c, np.float32), qtype) for c in chunks]
        data = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            writer.add_tensor(name, data.reshape(shape))
        else:
            writer.add_tensor(name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# --- GGUF quantization in torch (bit-identical to gguf-py, runs on the GPU) ---------------------

QK = 32  # values per Q8_0 / Q4_0 block


def quantize_q8_0(x: Any) -> Any:
    """Q8_0 blocks of a float32 tensor (rows, cols % 32 == 0) -> uint8 (rows, cols / 32 * 34).

    The same arithmetic as gguf-py's ``Q8_0.quantize_blocks`` (reference ggml rounding: half
    away from zero), in float32 torch ops, so any device gives gguf-py's bytes.
    """
    import torch

    rows = x.shape[0]
    blocks = x.reshape(-1, QK)
    d = blocks.abs().amax(dim=1, keepdim=True) / 127
    inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
    q = blocks * inv
    a = q.abs()
    floored = torch.floor(a)
    qs = torch.sign(q) * (floored + torch.floor(2 * (a - floored)))
    scale = d.to(torch.float16).view(torch.uint8)
    return torch.cat([scale, qs.to(torch.int8).view(torch.uint8)], dim=1).reshape(rows, -1)


def quantize_q4_0(x: Any) -> Any:
    """Q4_0 blocks of a float32 tensor -> uint8 (rows, cols / 32 * 18), as gguf-py's
    ``Q4_0.quantize_blocks``: scale = the block's largest-magnitude value / -8, nibbles packed
    low half | high half << 4."""
    import torch

    rows = x.shape[0]
    blocks = x.reshape(-1, QK)
    imax = blocks.abs().argmax(dim=1, keepdim=True)
    d = blocks.gather(1, imax) / -8
    inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
    qs = torch.trunc(blocks * inv + 8.5).clamp(0, 15).to(torch.uint8)
    packed = qs[:, : QK // 2] | (qs[:, QK // 2 :] << 4)
    scale = d.to(torch.float16).view(torch.uint8)
    return torch.cat([scale, packed], dim=1).reshape(rows, -1)


def _gguf_nbytes(shape: tuple[int, ...], qtype: Any) -> int:
    import gguf

    count = math.prod(shape)
    if qtype == gguf.GGMLQuantizationType.F32:
        return 4 * count
    if qtype == gguf.GGMLQuantizationType.F16:
        return 2 * count
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return count // block * size


def _write_random_gguf_torch(
    path: Path,
    specs: Mapping[str, tuple[int, ...]],
    *,
    quant: Quant,
    layout: Layout,
    device: str,
    seed: int,
) -> None:
    """Random weights straight into a GGUF file, generated and quantized on ``device``.

    Same values recipe and tensor types as the numpy writer (uniform +-1/sqrt(fan_in), norm
    scales 1, embedders and final layer F16, biases F32), but torch instead of numpy so a GPU
    does the 12 B values of the real transformer in seconds. The file is streamed: tensor infos
    first, then each tensor's bytes (chunks of rows, so a CPU run stays within memory).
    """
    import gguf
    import numpy as np
    import torch

    writer = gguf.GGUFWriter(str(path), arch="flux")
    writer.add_name(f"random FLUX.1-Fill-dev ({layout} keys, perf benchmark)")
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(
        gguf.LlamaFileType.MOSTLY_Q8_0 if quant == "Q8_0" else gguf.LlamaFileType.MOSTLY_Q4_0
    )
    plan = []
    for name, shape in specs.items():
        qtype = gguf_tensor_type(name, shape, quant, layout)
        nbytes = _gguf_nbytes(shape, qtype)
        if qtype == gguf.GGMLQuantizationType.F32:
            writer.add_tensor_info(name, shape, np.dtype(np.float32), nbytes)
        elif qtype == gguf.GGMLQuantizationType.F16:
            writer.add_tensor_info(name, shape, np.dtype(np.float16), nbytes)
        else:
            writer.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, raw_dtype=qtype)
        plan.append((name, shape, qtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()

    generator = torch.Generator(device=device).manual_seed(seed)
    chunk_values = (1 << 26) if device.startswith("cuda") else (1 << 21)
    quantizers = {
        gguf.GGMLQuantizationType.Q8_0: quantize_q8_0,
        gguf.GGMLQuantizationType.Q4_0: quantize_q4_0,
    }
    for name, shape, qtype in plan:
        if len(shape) == 1 and _is_norm_scale(name):
            values = [torch.ones(shape, dtype=torch.float32, device=device)]
        else:
            fan_in = shape[-1]
            bound = 1.0 / math.sqrt(fan_in)
            step = max(1, chunk_values // max(1, math.prod(shape[1:])))
            values = (
                (
                    torch.rand(
                        (min(step, shape[0] - start), *shape[1:]),
                        generator=generator,
                        device=device,
                        dtype=torch.float32,
                    )
                    * (2 * bound)
                    - bound
                )
                for start in range(0, shape[0], step)
            )
        parts = []
        for chunk in values:
            if qtype == gguf.GGMLQuantizationType.F32:
                out = chunk
            elif qtype == gguf.GGMLQuantizationType.F16:
                out = chunk.to(torch.float16)
            else:
                out = quantizers[qtype](chunk)
            parts.append(out.cpu().numpy())
        data = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        writer.write_tensor_data(data)
    writer.close()
