"""BFL tensor names (the published GGUF files') to diffusers', by views instead of copies.

diffusers' ``convert_flux_transformer_checkpoint_to_diffusers`` splits each fused q/k/v (and the
single blocks' q/k/v/MLP input) and then copies every part (``torch.cat([part])``): about a third
of the transformer, read at load and held twice. Rows of a quantized tensor are independent
blocks, so a part is just a view of its rows; this conversion returns views, and the only copy
left is the final AdaLN's swapped halves (a few megabytes). A state dict already in diffusers
names, or one this does not fully understand, is returned as it came, and diffusers converts it
as before: correct, only without the saving. The names come from ``inpaint.model.flux_names`` (the
random model's writer reads the same table); tested against diffusers' converter, tensor for
tensor.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import inpaint.model.runtime  # noqa: F401  (first: the environment the libraries read)

# isort: split
import torch

from inpaint.model.flux_names import SUFFIXES, Fused, Scale, Swapped, block_indices, flux_names

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
    except (KeyError, ValueError) as missing:
        logger.warning(
            "GGUF file in an unexpected BFL layout (%s); diffusers converts it, with copies",
            missing,
        )
        return state


def _convert(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    src = {name.removeprefix(PREFIX): tensor for name, tensor in state.items()}
    double = block_indices(src, "double_blocks.")
    single = block_indices(src, "single_blocks.")
    for kind, found in (("double", double), ("single", single)):
        if found != list(range(len(found))):  # a gap: let diffusers' converter report it
            raise KeyError(f"{kind} blocks numbered {found[:8]}, not 0..{len(found) - 1}")
    table = flux_names(double, single, guidance="guidance_in.in_layer.weight" in src)
    out: dict[str, torch.Tensor] = {}
    for entry in table:
        if isinstance(entry, Scale):
            out[entry.diffusers] = src.pop(entry.bfl)
            continue
        for suffix in SUFFIXES:
            whole = src.pop(f"{entry.bfl}.{suffix}")
            if isinstance(entry, Fused):
                views = whole.split(entry.rows(whole.shape[0]), dim=0)
                out.update(zip((f"{p}.{suffix}" for p in entry.parts), views, strict=True))
            elif isinstance(entry, Swapped):  # the one real copy (a few MB)
                out[f"{entry.diffusers}.{suffix}"] = entry.swap(whole)
            else:
                out[f"{entry.diffusers}.{suffix}"] = whole
    if src:
        raise KeyError(f"tensors without a diffusers name: {sorted(src)[:8]}")
    return out
