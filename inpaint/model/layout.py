"""BFL tensor names (the published GGUF files') to diffusers', by views instead of copies.

diffusers' ``convert_flux_transformer_checkpoint_to_diffusers`` splits each fused q/k/v (and the
single blocks' q/k/v/MLP input) and then copies every part (``torch.cat([part])``): about a third
of the transformer, read at load and held twice. Rows of a quantized tensor are independent
blocks, so a part is just a view of its rows; this conversion returns views, and the only copy
left is the final AdaLN's swapped halves (a few megabytes). A state dict already in diffusers
names, or one this does not fully understand, is returned as it came, and diffusers converts it
as before: correct, only without the saving. Tested against diffusers' converter, tensor for
tensor.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch

logger = logging.getLogger(__name__)

PREFIX = "model.diffusion_model."


def is_bfl_layout(state: Mapping[str, torch.Tensor]) -> bool:
    """True for BFL names (with or without the ``model.diffusion_model.`` prefix)."""
    return any(name.removeprefix(PREFIX).startswith("double_blocks.") for name in state)


def to_diffusers_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` in diffusers' names, its parts viewing the original tensors' memory."""
    if not is_bfl_layout(state):
        return state
    try:
        return _convert(state)
    except KeyError as missing:
        logger.warning(
            "GGUF file in an unexpected BFL layout (%s); diffusers converts it, with copies",
            missing,
        )
        return state


def _convert(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    src = {name.removeprefix(PREFIX): tensor for name, tensor in state.items()}
    out: dict[str, torch.Tensor] = {}

    def move(new: str, old: str) -> None:
        for suffix in ("weight", "bias"):
            out[f"{new}.{suffix}"] = src.pop(f"{old}.{suffix}")

    def split(news: list[str], old: str, rows: list[int]) -> None:
        for suffix in ("weight", "bias"):
            for new, part in zip(news, src.pop(f"{old}.{suffix}").split(rows, dim=0), strict=True):
                out[f"{new}.{suffix}"] = part

    def scale(new: str, old: str) -> None:
        out[new] = src.pop(old)

    move("time_text_embed.timestep_embedder.linear_1", "time_in.in_layer")
    move("time_text_embed.timestep_embedder.linear_2", "time_in.out_layer")
    move("time_text_embed.text_embedder.linear_1", "vector_in.in_layer")
    move("time_text_embed.text_embedder.linear_2", "vector_in.out_layer")
    if "guidance_in.in_layer.weight" in src:
        move("time_text_embed.guidance_embedder.linear_1", "guidance_in.in_layer")
        move("time_text_embed.guidance_embedder.linear_2", "guidance_in.out_layer")
    move("context_embedder", "txt_in")
    move("x_embedder", "img_in")

    double = sorted({int(k.split(".")[1]) for k in src if k.startswith("double_blocks.")})
    for i in double:
        d, b = f"double_blocks.{i}", f"transformer_blocks.{i}"
        inner = src[f"{d}.img_attn.proj.bias"].shape[0]
        move(f"{b}.norm1.linear", f"{d}.img_mod.lin")
        move(f"{b}.norm1_context.linear", f"{d}.txt_mod.lin")
        split(
            [f"{b}.attn.to_q", f"{b}.attn.to_k", f"{b}.attn.to_v"], f"{d}.img_attn.qkv", [inner] * 3
        )
        split(
            [f"{b}.attn.add_q_proj", f"{b}.attn.add_k_proj", f"{b}.attn.add_v_proj"],
            f"{d}.txt_attn.qkv",
            [inner] * 3,
        )
        scale(f"{b}.attn.norm_q.weight", f"{d}.img_attn.norm.query_norm.scale")
        scale(f"{b}.attn.norm_k.weight", f"{d}.img_attn.norm.key_norm.scale")
        scale(f"{b}.attn.norm_added_q.weight", f"{d}.txt_attn.norm.query_norm.scale")
        scale(f"{b}.attn.norm_added_k.weight", f"{d}.txt_attn.norm.key_norm.scale")
        move(f"{b}.ff.net.0.proj", f"{d}.img_mlp.0")
        move(f"{b}.ff.net.2", f"{d}.img_mlp.2")
        move(f"{b}.ff_context.net.0.proj", f"{d}.txt_mlp.0")
        move(f"{b}.ff_context.net.2", f"{d}.txt_mlp.2")
        move(f"{b}.attn.to_out.0", f"{d}.img_attn.proj")
        move(f"{b}.attn.to_add_out", f"{d}.txt_attn.proj")

    single = sorted({int(k.split(".")[1]) for k in src if k.startswith("single_blocks.")})
    for i in single:
        s, b = f"single_blocks.{i}", f"single_transformer_blocks.{i}"
        inner = src[f"{s}.linear2.bias"].shape[0]
        mlp = src[f"{s}.linear1.bias"].shape[0] - 3 * inner
        move(f"{b}.norm.linear", f"{s}.modulation.lin")
        split(
            [f"{b}.attn.to_q", f"{b}.attn.to_k", f"{b}.attn.to_v", f"{b}.proj_mlp"],
            f"{s}.linear1",
            [inner, inner, inner, mlp],
        )
        scale(f"{b}.attn.norm_q.weight", f"{s}.norm.query_norm.scale")
        scale(f"{b}.attn.norm_k.weight", f"{s}.norm.key_norm.scale")
        move(f"{b}.proj_out", f"{s}.linear2")

    move("proj_out", "final_layer.linear")
    for suffix in ("weight", "bias"):
        # BFL's final AdaLN is (shift, scale), diffusers' (scale, shift): the one real copy.
        shift, scale_ = src.pop(f"final_layer.adaLN_modulation.1.{suffix}").chunk(2, dim=0)
        out[f"norm_out.linear.{suffix}"] = torch.cat([scale_, shift], dim=0)
    if src:
        raise KeyError(f"tensors without a diffusers name: {sorted(src)[:8]}")
    return out
