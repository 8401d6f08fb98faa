"""``to_diffusers_layout``: BFL names to diffusers', by views (diffusers' converter copies).

Equality with diffusers' own converter, on a real GGUF file, is proven in
tests/test_model_mapped.py (the loaded transformers agree tensor for tensor); here: the inverse
of the random model's ``diffusers_to_bfl``, views not copies, and the fallbacks.
"""

from __future__ import annotations

import logging

import torch
from diffusers import FluxTransformer2DModel

from inpaint import randmodel
from inpaint.model import is_bfl_layout, to_diffusers_layout
from inpaint.randmodel.bfl import diffusers_to_bfl


def random_state() -> dict[str, torch.Tensor]:
    """A diffusers-named state of the tiny BFL-width spec (3072 wide, one block of each kind)."""
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
