"""``load_gguf_mapped``: diffusers' GGUF state dict, as views of the file's memory map.

Proven here: the same names, types and bytes as diffusers' own (copying) reader, for both key
layouts; every tensor, and every transformer parameter after ``InpaintModel.load``, lies inside
the file's mapping (no private copy); a write never reaches the file; the loaded transformer is
the same, number for number, as the one diffusers loads from the path; unknown types refused.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from diffusers import FluxTransformer2DModel, GGUFQuantizationConfig
from diffusers.models.model_loading_utils import load_gguf_checkpoint
from diffusers.quantizers.gguf.utils import GGUFParameter
from PIL import Image

from inpaint.config import Settings
from inpaint.model.inpainter import InpaintModel
from inpaint.model.mapped import load_gguf_mapped
from inpaint.model.params import GenerationParams
from inpaint.randmodel import MODEL_VERSION, build_tiny_model
from tests.conftest import ROOT

Q = gguf.GGMLQuantizationType


def mapped_ranges(path: Path) -> list[tuple[int, int]]:
    """Address ranges at which this process maps ``path`` (from /proc/self/maps)."""
    target = str(path.resolve())
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == target:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            ranges.append((start, end))
    return ranges


def inside(tensor: torch.Tensor, ranges: list[tuple[int, int]]) -> bool:
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    return any(low <= start and end <= high for low, high in ranges)


@pytest.fixture(scope="module")
def bfl_model_dir() -> Path:
    """The BFL-layout tiny model (names the converter renames and splits), cached in build/."""
    dest = ROOT / "build" / f"tiny-model-bfl-v{MODEL_VERSION}"
    build_tiny_model(dest, layout="bfl", quant="Q4_0")
    return dest


@pytest.mark.parametrize(
    ("layout", "quant"), [("diffusers", "Q8_0"), ("diffusers", "Q4_0"), ("bfl", "Q4_0")]
)
def test_same_tensors_as_diffusers_reader(layout, quant, tiny_model_dir, bfl_model_dir):
    model_dir = tiny_model_dir if layout == "diffusers" else bfl_model_dir
    path = model_dir / f"flux1-fill-dev-{quant}.gguf"
    copied = load_gguf_checkpoint(str(path))
    mapped = load_gguf_mapped(path)
    assert list(mapped) == list(copied)
    kinds = set()
    for name, expected in copied.items():
        got = mapped[name]
        assert type(got) is type(expected), name
        assert got.dtype == expected.dtype and got.shape == expected.shape, name
        if isinstance(expected, GGUFParameter):
            assert got.quant_type == expected.quant_type, name
            assert got.quant_shape == expected.quant_shape, name
        assert torch.equal(got.view(torch.uint8), expected.view(torch.uint8)), name
        kinds.add(type(got).__name__ + str(got.dtype))
    # The files hold quantized blocks and plain F32 and F16 tensors: all three were compared.
    assert kinds == {"GGUFParameter" + "torch.uint8", "Tensortorch.float32", "Tensortorch.float16"}


def test_every_tensor_views_the_file_mapping(tiny_model_dir):
    path = tiny_model_dir / "flux1-fill-dev-Q8_0.gguf"
    mapped = load_gguf_mapped(path)
    ranges = mapped_ranges(path)
    assert ranges, "the file is not mapped"
    outside = [name for name, tensor in mapped.items() if not inside(tensor, ranges)]
    assert outside == []


def test_a_write_stays_private_to_the_process(tmp_path, tiny_model_dir):
    path = tmp_path / "copy.gguf"
    path.write_bytes((tiny_model_dir / "flux1-fill-dev-Q8_0.gguf").read_bytes())
    before = path.read_bytes()
    mapped = load_gguf_mapped(path)
    name = "transformer_blocks.0.attn.to_q.bias"
    mapped[name].add_(1.0)  # writable, as torch expects of parameters
    assert torch.equal(load_gguf_mapped(path)[name] + 1.0, mapped[name])
    assert path.read_bytes() == before


def test_loaded_transformer_lives_in_the_mapping_and_equals_diffusers_load(bfl_model_dir):
    """The service's load keeps the quantized weights in the map (no private copy of the file)
    and builds exactly the transformer diffusers builds from the path, so the same pixels."""
    settings = Settings(model_dir=bfl_model_dir, quant="Q4_0", device="cpu", dtype="float32")
    model = InpaintModel.load(settings)
    ranges = mapped_ranges(settings.gguf_path)
    quantized = {
        name: p
        for name, p in model.pipe.transformer.named_parameters()
        if isinstance(p, GGUFParameter)
    }
    assert quantized and all(inside(p, ranges) for p in quantized.values())
    reference = FluxTransformer2DModel.from_single_file(
        str(settings.gguf_path),
        quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32),
        config=str(settings.base_dir),
        subfolder="transformer",
        dtype=torch.float32,
        local_files_only=True,
    )
    expected = dict(reference.named_parameters()) | dict(reference.named_buffers())
    got = dict(model.pipe.transformer.named_parameters())
    got |= dict(model.pipe.transformer.named_buffers())
    assert list(got) == list(expected)
    for name, tensor in got.items():
        assert type(tensor) is type(expected[name]), name
        assert tensor.dtype == expected[name].dtype, name
        assert torch.equal(tensor.view(torch.uint8), expected[name].view(torch.uint8)), name
    # And so the same pixels as before this loader, on the same seed (CPU is deterministic).
    job = (Image.new("RGB", (32, 32), (90, 120, 150)), Image.new("L", (32, 32), 255))
    job_params = GenerationParams(prompt=settings.default_prompt, seed=3, steps=2, guidance=30.0)
    mapped_pixels = np.asarray(model.generate(*job, job_params))
    model.pipe.transformer = reference
    assert np.array_equal(np.asarray(model.generate(*job, job_params)), mapped_pixels)


def test_unsupported_quantization_is_refused_by_name(tmp_path):
    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), arch="flux")
    writer.add_tensor("fine.weight", np.zeros((4, 32), np.float32))
    # TQ1_0 (ternary): gguf knows it, diffusers' kernels cannot dequantize it.
    _, size = gguf.GGML_QUANT_SIZES[Q.TQ1_0]
    writer.add_tensor("odd.weight", np.zeros((2, size), np.uint8), raw_dtype=Q.TQ1_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match=r"odd\.weight has quantization type TQ1_0"):
        load_gguf_mapped(path)
