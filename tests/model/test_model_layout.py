"""``to_diffusers_layout``: BFL names to diffusers', by views (diffusers' converter copies).

Equality with diffusers' own converter, on a real GGUF file, is proven in
tests/model/test_model_mapped.py (the loaded transformers agree tensor for tensor); here: the
inverse of the random model's ``diffusers_to_bfl``, views not copies, and the fallbacks.
"""

from __future__ import annotations

import logging

import pytest
import torch
from diffusers import FluxTransformer2DModel
from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

from inpaint import randmodel
from inpaint.model.layout import is_bfl_layout, to_diffusers_layout
from inpaint.randmodel.bfl import diffusers_to_bfl
from inpaint.randmodel.spec import FULL_TRANSFORMER_CONFIG


def random_state() -> dict[str, torch.Tensor]:
    """A small diffusers-named state: width 32, two blocks of each kind, random values."""
    config = {k: v for k, v in randmodel.transformer_config("bfl").items() if not k.startswith("_")}
    config |= {"num_layers": 2, "num_single_layers": 2, "attention_head_dim": 8}
    config |= {"num_attention_heads": 4, "joint_attention_dim": 16, "pooled_projection_dim": 8}
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in FluxTransformer2DModel(**config).state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    return {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}


def test_inverts_the_bfl_renaming_exactly():
    state = random_state()
    bfl = diffusers_to_bfl(state)
    assert is_bfl_layout(bfl) and not is_bfl_layout(state)
    back = to_diffusers_layout(bfl)
    assert sorted(back) == sorted(state)
    assert all(torch.equal(back[name], state[name]) for name in state)


def test_parts_view_the_fused_tensors_memory():
    bfl = diffusers_to_bfl(random_state())
    back = to_diffusers_layout(dict(bfl))
    fused = bfl["single_blocks.1.linear1.weight"]
    start = fused.data_ptr()
    end = start + fused.untyped_storage().nbytes()
    for part in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"):
        tensor = back[f"single_transformer_blocks.1.{part}.weight"]
        assert tensor.untyped_storage().data_ptr() == fused.untyped_storage().data_ptr()
        assert start <= tensor.data_ptr() < end
    assert back["transformer_blocks.0.attn.add_v_proj.bias"].untyped_storage().data_ptr() == (
        bfl["double_blocks.0.txt_attn.qkv.bias"].untyped_storage().data_ptr()
    )
    # Renamed tensors are the very same objects.
    assert back["x_embedder.weight"] is bfl["img_in.weight"]


def test_prefixed_names_are_understood():
    state = random_state()
    prefixed = {f"model.diffusion_model.{k}": v for k, v in diffusers_to_bfl(state).items()}
    back = to_diffusers_layout(prefixed)
    assert sorted(back) == sorted(state)


def test_diffusers_names_pass_through_untouched():
    state = random_state()
    assert to_diffusers_layout(state) is state


def test_an_unknown_tensor_leaves_the_conversion_to_diffusers(caplog):
    bfl = diffusers_to_bfl(random_state())
    bfl["double_blocks.0.something_new.weight"] = torch.zeros(2)
    with caplog.at_level(logging.WARNING, logger="inpaint.model.layout"):
        assert to_diffusers_layout(bfl) is bfl
    assert "double_blocks.0.something_new.weight" in caplog.text
    assert "diffusers converts it" in caplog.text


def real_rows_bfl_state(*, guidance: bool) -> dict[str, torch.Tensor]:
    """BFL names with the real row counts (diffusers' converter hard-codes width 3072 and MLP
    ratio 4) and three blocks of each kind; two columns per matrix keep it small."""
    config = {k: v for k, v in FULL_TRANSFORMER_CONFIG.items() if not k.startswith("_")}
    config |= {"num_layers": 3, "num_single_layers": 3, "guidance_embeds": guidance}
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in FluxTransformer2DModel(**config).state_dict().items()}
    generator = torch.Generator().manual_seed(1)
    state = {
        name: torch.randn((shape[0], 2) if len(shape) == 2 else shape, generator=generator)
        for name, shape in shapes.items()
    }
    return diffusers_to_bfl(state)


@pytest.mark.parametrize(
    ("guidance", "prefix"), [(True, ""), (False, ""), (True, "model.diffusion_model.")]
)
def test_same_tensors_as_diffusers_converter(guidance, prefix):
    bfl = {prefix + k: v for k, v in real_rows_bfl_state(guidance=guidance).items()}
    expected = convert_flux_transformer_checkpoint_to_diffusers(dict(bfl))
    got = to_diffusers_layout(dict(bfl))
    assert sorted(got) == sorted(expected) and got is not bfl
    assert ("time_text_embed.guidance_embedder.linear_1.weight" in got) is guidance
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name


def test_a_gap_in_block_numbers_leaves_the_conversion_to_diffusers(caplog):
    bfl = diffusers_to_bfl(random_state())
    bfl = {k.replace("double_blocks.1.", "double_blocks.2."): v for k, v in bfl.items()}
    with caplog.at_level(logging.WARNING, logger="inpaint.model.layout"):
        assert to_diffusers_layout(bfl) is bfl
    assert "double blocks numbered [0, 2]" in caplog.text
