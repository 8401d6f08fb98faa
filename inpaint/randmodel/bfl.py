"""Diffusers' FLUX transformer names to BFL's (the published checkpoints' and GGUF files')."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def _swap_halves(tensor: torch.Tensor) -> torch.Tensor:
    """BFL's final AdaLN is (shift, scale); diffusers' is (scale, shift). Self-inverse."""
    import torch

    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def diffusers_to_bfl(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Renames a diffusers FLUX transformer state dict to BFL (original checkpoint) names.

    The exact inverse of diffusers' ``convert_flux_transformer_checkpoint_to_diffusers``:
    q/k/v are fused into ``qkv`` (double blocks) or ``linear1`` together with the MLP input
    (single blocks) and the final AdaLN halves are swapped. Raises KeyError on leftovers so a
    diffusers release adding tensors cannot silently produce a file that loads half-empty.
    """
    import torch

    src = dict(state)
    out: dict[str, torch.Tensor] = {}

    def move(new: str, old: str) -> None:
        for suffix in ("weight", "bias"):
            out[f"{new}.{suffix}"] = src.pop(f"{old}.{suffix}")

    def fuse(new: str, olds: list[str]) -> None:
        for suffix in ("weight", "bias"):
            out[f"{new}.{suffix}"] = torch.cat([src.pop(f"{o}.{suffix}") for o in olds], dim=0)

    def scale(new: str, old: str) -> None:
        out[new] = src.pop(old)

    move("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1")
    move("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2")
    move("vector_in.in_layer", "time_text_embed.text_embedder.linear_1")
    move("vector_in.out_layer", "time_text_embed.text_embedder.linear_2")
    if "time_text_embed.guidance_embedder.linear_1.weight" in src:
        move("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1")
        move("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2")
    move("txt_in", "context_embedder")
    move("img_in", "x_embedder")

    double = sorted({int(k.split(".")[1]) for k in src if k.startswith("transformer_blocks.")})
    for i in double:
        d, b = f"double_blocks.{i}", f"transformer_blocks.{i}"
        move(f"{d}.img_mod.lin", f"{b}.norm1.linear")
        move(f"{d}.txt_mod.lin", f"{b}.norm1_context.linear")
        fuse(f"{d}.img_attn.qkv", [f"{b}.attn.to_q", f"{b}.attn.to_k", f"{b}.attn.to_v"])
        fuse(
            f"{d}.txt_attn.qkv",
            [f"{b}.attn.add_q_proj", f"{b}.attn.add_k_proj", f"{b}.attn.add_v_proj"],
        )
        scale(f"{d}.img_attn.norm.query_norm.scale", f"{b}.attn.norm_q.weight")
        scale(f"{d}.img_attn.norm.key_norm.scale", f"{b}.attn.norm_k.weight")
        scale(f"{d}.txt_attn.norm.query_norm.scale", f"{b}.attn.norm_added_q.weight")
        scale(f"{d}.txt_attn.norm.key_norm.scale", f"{b}.attn.norm_added_k.weight")
        move(f"{d}.img_mlp.0", f"{b}.ff.net.0.proj")
        move(f"{d}.img_mlp.2", f"{b}.ff.net.2")
        move(f"{d}.txt_mlp.0", f"{b}.ff_context.net.0.proj")
        move(f"{d}.txt_mlp.2", f"{b}.ff_context.net.2")
        move(f"{d}.img_attn.proj", f"{b}.attn.to_out.0")
        move(f"{d}.txt_attn.proj", f"{b}.attn.to_add_out")

    single = sorted(
        {int(k.split(".")[1]) for k in src if k.startswith("single_transformer_blocks.")}
    )
    for i in single:
        s, b = f"single_blocks.{i}", f"single_transformer_blocks.{i}"
        move(f"{s}.modulation.lin", f"{b}.norm.linear")
        fuse(
            f"{s}.linear1",
            [f"{b}.attn.to_q", f"{b}.attn.to_k", f"{b}.attn.to_v", f"{b}.proj_mlp"],
        )
        scale(f"{s}.norm.query_norm.scale", f"{b}.attn.norm_q.weight")
        scale(f"{s}.norm.key_norm.scale", f"{b}.attn.norm_k.weight")
        move(f"{s}.linear2", f"{b}.proj_out")

    move("final_layer.linear", "proj_out")
    for suffix in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{suffix}"] = _swap_halves(
            src.pop(f"norm_out.linear.{suffix}")
        )
    if src:
        raise KeyError(f"no BFL name for diffusers tensors: {sorted(src)[:8]}")
    return out
