"""The random model builder (tiny specs): layout on disk, real GGUF quantization, BFL keys."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import torch
from diffusers import FluxTransformer2DModel
from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers
from diffusers.models.model_loading_utils import load_gguf_checkpoint
from diffusers.quantizers.gguf.utils import GGUFParameter, dequantize_gguf_tensor

from inpaint import randmodel
from inpaint.model.weights_layout import missing_files

Q = gguf.GGMLQuantizationType


def meta_state(layout):
    config = {
        k: v for k, v in randmodel.transformer_config(layout).items() if not k.startswith("_")
    }
    with torch.device("meta"):
        return FluxTransformer2DModel(**config).state_dict()


def test_tiny_dir_has_the_weights_layout(tiny_model_dir):
    base = tiny_model_dir / "base"
    assert missing_files(base, tiny_model_dir / "flux1-fill-dev-Q8_0.gguf") == []
    assert missing_files(base, tiny_model_dir / "flux1-fill-dev-Q4_0.gguf") == []
    # Like the weights command: the transformer is only a config, its weights are the GGUF.
    assert sorted(p.name for p in (base / "transformer").iterdir()) == ["config.json"]
    index = json.loads((base / "model_index.json").read_text())
    assert index["_class_name"] == "FluxFillPipeline"
    assert index["transformer"] == ["diffusers", "FluxTransformer2DModel"]
    vae = json.loads((base / "vae" / "config.json").read_text())
    assert vae["latent_channels"] == 16 and len(vae["block_out_channels"]) == 4
    config = json.loads((base / "transformer" / "config.json").read_text())
    assert (config["in_channels"], config["out_channels"]) == (384, 64)
    scheduler = json.loads((base / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "FlowMatchEulerDiscreteScheduler"
    assert scheduler["shift"] == 3.0 and scheduler["use_dynamic_shifting"] is True
    marker = json.loads((tiny_model_dir / randmodel.MARKER_NAME).read_text())
    assert marker["quants"] == ["Q4_0", "Q8_0"] and marker["layout"] == "diffusers"


def test_gguf_holds_really_quantized_tensors_with_diffusers_names(tiny_model_dir):
    for quant in ("Q8_0", "Q4_0"):
        reader = gguf.GGUFReader(tiny_model_dir / f"flux1-fill-dev-{quant}.gguf")
        types = {t.name: t.tensor_type for t in reader.tensors}
        assert set(types) == set(meta_state("diffusers"))
        assert types["transformer_blocks.0.attn.to_q.weight"] == Q[quant]
        assert types["single_transformer_blocks.1.proj_out.weight"] == Q[quant]
        assert types["transformer_blocks.0.attn.to_q.bias"] == Q.F32
        assert types["transformer_blocks.0.attn.norm_q.weight"] == Q.F32
        assert types["x_embedder.weight"] == Q.F16
        # Packed blocks: Q8_0 is 34 bytes per 32 values, Q4_0 18 bytes.
        to_q = next(t for t in reader.tensors if t.name == "transformer_blocks.0.attn.to_q.weight")
        assert to_q.data.dtype == np.uint8
        assert to_q.data.shape == (256, 256 // 32 * (34 if quant == "Q8_0" else 18))


def test_same_seed_gives_the_same_weights_in_both_quants(tiny_model_dir):
    """Q8_0 and Q4_0 files quantize the same random model: their dequantized values agree to
    within Q4_0's resolution (1/8 of a block's range)."""
    name = "transformer_blocks.0.ff.net.2.weight"
    values = {}
    for quant in ("Q8_0", "Q4_0"):
        state = load_gguf_checkpoint(str(tiny_model_dir / f"flux1-fill-dev-{quant}.gguf"))
        values[quant] = dequantize_gguf_tensor(state[name]).float()
    bound = 1 / np.sqrt(values["Q8_0"].shape[1])
    assert values["Q8_0"].abs().max() <= bound * 1.01
    assert (values["Q8_0"] - values["Q4_0"]).abs().max() <= bound / 4


def test_write_gguf_round_trips_through_diffusers_reader(tmp_path):
    torch.manual_seed(1)
    state = {
        "a.weight": torch.randn(64, 96),
        "a.bias": torch.randn(64),
        "b.weight": torch.randn(8, 40),
    }
    path = tmp_path / "x.gguf"
    randmodel.write_gguf(path, state, quant="Q8_0", layout="diffusers")
    loaded = load_gguf_checkpoint(str(path))
    assert isinstance(loaded["a.weight"], GGUFParameter) and loaded["a.weight"].quant_type == Q.Q8_0
    assert loaded["a.weight"].quant_shape == (64, 96)
    restored = dequantize_gguf_tensor(loaded["a.weight"]).float()
    assert torch.allclose(restored, state["a.weight"], atol=state["a.weight"].abs().max() / 100)
    assert torch.equal(loaded["a.bias"], state["a.bias"])  # 1-D stays F32, exactly
    # 40 values per row is not a whole number of 32-value blocks: F16, like llama.cpp's tools.
    assert loaded["b.weight"].dtype == torch.float16
    assert torch.allclose(loaded["b.weight"].float(), state["b.weight"], atol=1e-2)


def test_bfl_names_round_trip_through_diffusers_converter():
    """diffusers_to_bfl is the inverse of the converter the real GGUF files go through.

    Every tensor gets distinct values but only one column, so the 3072-wide model costs
    kilobytes; the converter only splits and concatenates along the first dimension.
    """
    state = meta_state("bfl")
    fake = {}
    offset = 0
    for name, meta in state.items():
        rows = meta.shape[0]
        values = torch.arange(offset, offset + rows, dtype=torch.float64)
        fake[name] = values if meta.ndim == 1 else values[:, None]
        offset += rows
    bfl = randmodel.diffusers_to_bfl(fake)
    assert "double_blocks.0.img_attn.qkv.weight" in bfl
    assert bfl["single_blocks.0.linear1.weight"].shape[0] == 3 * 3072 + 4 * 3072
    assert not any(k.startswith(("transformer_blocks.", "x_embedder")) for k in bfl)
    back = convert_flux_transformer_checkpoint_to_diffusers(dict(bfl))
    assert set(back) == set(fake)
    for name, value in fake.items():
        assert torch.equal(back[name], value), name


def test_bfl_specs_match_the_real_files_key_names():
    specs = randmodel.tensor_specs(randmodel.transformer_config("bfl"), "bfl")
    assert specs["img_in.weight"] == (3072, 384)
    assert specs["txt_in.weight"] == (3072, 32)
    assert specs["double_blocks.0.img_attn.qkv.weight"] == (3 * 3072, 3072)
    assert specs["double_blocks.0.img_attn.norm.query_norm.scale"] == (128,)
    assert specs["single_blocks.0.linear2.weight"] == (3072, 5 * 3072)
    assert specs["final_layer.adaLN_modulation.1.weight"] == (2 * 3072, 3072)
    assert specs["guidance_in.in_layer.weight"] == (3072, 256)
    assert sum(int(np.prod(s)) for s in specs.values()) > 500_000_000


def test_rebuild_is_cached_and_adding_a_quant_keeps_the_base(tmp_path):
    dest = randmodel.build_tiny_model(tmp_path / "m", quant="Q8_0", seed=3)
    base_config = dest / "base" / "vae" / "config.json"
    q8 = dest / "flux1-fill-dev-Q8_0.gguf"
    stamps = (base_config.stat().st_mtime_ns, q8.stat().st_mtime_ns)
    assert randmodel.build_tiny_model(dest, quant="Q8_0", seed=3) == dest
    assert (base_config.stat().st_mtime_ns, q8.stat().st_mtime_ns) == stamps

    randmodel.build_tiny_model(dest, quant="Q4_0", seed=3)
    assert (base_config.stat().st_mtime_ns, q8.stat().st_mtime_ns) == stamps
    assert (dest / "flux1-fill-dev-Q4_0.gguf").is_file()
    assert not list(dest.glob(".build-*"))  # staging cleaned up

    q8.unlink()  # e.g. an interrupted copy: only the missing file is rebuilt
    randmodel.build_tiny_model(dest, quant="Q8_0", seed=3)
    assert q8.is_file() and base_config.stat().st_mtime_ns == stamps[0]

    # Another seed is another model: everything is rebuilt, stale GGUF files go.
    randmodel.build_tiny_model(dest, quant="Q4_0", seed=4)
    assert not q8.exists()
    marker = json.loads((dest / randmodel.MARKER_NAME).read_text())
    assert (marker["seed"], marker["quants"]) == (4, ["Q4_0"])


def test_refuses_to_overwrite_a_base_it_did_not_write(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "model_index.json").write_text("{}")
    with pytest.raises(FileExistsError, match="real weights"):
        randmodel.build_tiny_model(tmp_path)
    assert (tmp_path / "base" / "model_index.json").read_text() == "{}"


def test_rejects_quants_gguf_py_cannot_write(tmp_path):
    with pytest.raises(ValueError, match="Q8_0 and Q4_0"):
        randmodel.build_tiny_model(tmp_path, quant="Q4_K_S")  # type: ignore[arg-type]
