"""FLUX transformer tensor names, diffusers' against BFL's (the published checkpoints'): one table.

The random model's writer (``randmodel.bfl.diffusers_to_bfl``) and the model loader
(``model.layout.to_diffusers_layout``, by views) both walk it, in its order (which is the BFL files'
tensor order), so the two directions cannot drift apart.
Mirrors diffusers' ``convert_flux_transformer_checkpoint_to_diffusers``, against which both
directions are tested. Torch is imported only by ``Swapped.swap``, when it runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

SUFFIXES = ("weight", "bias")


@dataclass(frozen=True)
class Move:
    """A weight and a bias renamed: ``diffusers`` and ``bfl`` are the prefixes."""

    diffusers: str
    bfl: str


@dataclass(frozen=True)
class Scale:
    """One tensor renamed (the q/k RMSNorm scales): full names."""

    diffusers: str
    bfl: str


@dataclass(frozen=True)
class Fused:
    """A BFL weight and bias stacking diffusers tensors along rows, in this order; ``shares``
    are the parts' relative row counts (q, k, v: 1 each; the single blocks' MLP input: 4)."""

    bfl: str
    parts: tuple[str, ...]
    shares: tuple[int, ...]

    def rows(self, total: int) -> list[int]:
        """Each part's row count, for a fused tensor of ``total`` rows."""
        unit, rest = divmod(total, sum(self.shares))
        if rest:
            raise ValueError(f"{self.bfl}: {total} rows do not split in shares {self.shares}")
        return [unit * share for share in self.shares]


@dataclass(frozen=True)
class Swapped:
    """A weight and a bias whose two row halves are swapped (the final AdaLN: BFL's order is
    shift, scale; diffusers' scale, shift)."""

    diffusers: str
    bfl: str

    @staticmethod
    def swap(tensor: torch.Tensor) -> torch.Tensor:
        """The tensor with its row halves exchanged (self-inverse: both directions use it)."""
        import torch

        first, second = tensor.chunk(2, dim=0)
        return torch.cat([second, first], dim=0)


Entry = Move | Scale | Fused | Swapped


def block_indices(names: Iterable[str], prefix: str) -> list[int]:
    """Sorted block numbers N of the names starting with ``prefix`` + "N."."""
    return sorted({int(n[len(prefix) :].split(".")[0]) for n in names if n.startswith(prefix)})


def flux_names(double: Iterable[int], single: Iterable[int], *, guidance: bool) -> list[Entry]:
    """The table for these double and single blocks (and the guidance embedder, if present)."""
    table: list[Entry] = [
        Move("time_text_embed.timestep_embedder.linear_1", "time_in.in_layer"),
        Move("time_text_embed.timestep_embedder.linear_2", "time_in.out_layer"),
        Move("time_text_embed.text_embedder.linear_1", "vector_in.in_layer"),
        Move("time_text_embed.text_embedder.linear_2", "vector_in.out_layer"),
    ]
    if guidance:
        table += [
            Move("time_text_embed.guidance_embedder.linear_1", "guidance_in.in_layer"),
            Move("time_text_embed.guidance_embedder.linear_2", "guidance_in.out_layer"),
        ]
    table += [Move("context_embedder", "txt_in"), Move("x_embedder", "img_in")]
    for i in double:
        b, d = f"transformer_blocks.{i}", f"double_blocks.{i}"
        table += [
            Move(f"{b}.norm1.linear", f"{d}.img_mod.lin"),
            Move(f"{b}.norm1_context.linear", f"{d}.txt_mod.lin"),
            Fused(f"{d}.img_attn.qkv", tuple(f"{b}.attn.to_{x}" for x in "qkv"), (1, 1, 1)),
            Fused(f"{d}.txt_attn.qkv", tuple(f"{b}.attn.add_{x}_proj" for x in "qkv"), (1, 1, 1)),
            Scale(f"{b}.attn.norm_q.weight", f"{d}.img_attn.norm.query_norm.scale"),
            Scale(f"{b}.attn.norm_k.weight", f"{d}.img_attn.norm.key_norm.scale"),
            Scale(f"{b}.attn.norm_added_q.weight", f"{d}.txt_attn.norm.query_norm.scale"),
            Scale(f"{b}.attn.norm_added_k.weight", f"{d}.txt_attn.norm.key_norm.scale"),
            Move(f"{b}.ff.net.0.proj", f"{d}.img_mlp.0"),
            Move(f"{b}.ff.net.2", f"{d}.img_mlp.2"),
            Move(f"{b}.ff_context.net.0.proj", f"{d}.txt_mlp.0"),
            Move(f"{b}.ff_context.net.2", f"{d}.txt_mlp.2"),
            Move(f"{b}.attn.to_out.0", f"{d}.img_attn.proj"),
            Move(f"{b}.attn.to_add_out", f"{d}.txt_attn.proj"),
        ]
    for i in single:
        b, s = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
        parts = (*(f"{b}.attn.to_{x}" for x in "qkv"), f"{b}.proj_mlp")
        table += [
            Move(f"{b}.norm.linear", f"{s}.modulation.lin"),
            Fused(f"{s}.linear1", parts, (1, 1, 1, 4)),
            Scale(f"{b}.attn.norm_q.weight", f"{s}.norm.query_norm.scale"),
            Scale(f"{b}.attn.norm_k.weight", f"{s}.norm.key_norm.scale"),
            Move(f"{b}.proj_out", f"{s}.linear2"),
        ]
    table += [
        Move("proj_out", "final_layer.linear"),
        Swapped("norm_out.linear", "final_layer.adaLN_modulation.1"),
    ]
    return table
