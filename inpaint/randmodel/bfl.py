"""Diffusers' FLUX transformer names to BFL's (the published checkpoints' and GGUF files')."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from inpaint.model.flux_names import SUFFIXES, Fused, Scale, Swapped, block_indices, flux_names

if TYPE_CHECKING:
    import torch


def diffusers_to_bfl(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Renames a diffusers FLUX transformer state dict to BFL (original checkpoint) names.

    The exact inverse of diffusers' ``convert_flux_transformer_checkpoint_to_diffusers``, by the
    table in ``inpaint.model.flux_names``: q/k/v are fused into ``qkv`` (double blocks) or
    ``linear1`` together with the MLP input (single blocks) and the final AdaLN halves are swapped.
    Raises KeyError on leftovers so a diffusers release adding tensors cannot silently produce a
    file that loads half-empty.
    """
    import torch

    src = dict(state)
    table = flux_names(
        block_indices(src, "transformer_blocks."),
        block_indices(src, "single_transformer_blocks."),
        guidance="time_text_embed.guidance_embedder.linear_1.weight" in src,
    )
    out: dict[str, torch.Tensor] = {}
    for entry in table:
        if isinstance(entry, Scale):
            out[entry.bfl] = src.pop(entry.diffusers)
            continue
        for suffix in SUFFIXES:
            if isinstance(entry, Fused):
                parts = [src.pop(f"{part}.{suffix}") for part in entry.parts]
                out[f"{entry.bfl}.{suffix}"] = torch.cat(parts, dim=0)
            elif isinstance(entry, Swapped):
                out[f"{entry.bfl}.{suffix}"] = entry.swap(src.pop(f"{entry.diffusers}.{suffix}"))
            else:
                out[f"{entry.bfl}.{suffix}"] = src.pop(f"{entry.diffusers}.{suffix}")
    if src:
        raise KeyError(f"no BFL name for diffusers tensors: {sorted(src)[:8]}")
    return out
