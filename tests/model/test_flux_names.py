"""The FLUX name table: complete for the real model, each name once, row shares exact.

Both directions that read it are tested against diffusers' converter elsewhere
(tests/model/test_randmodel.py, tests/model/test_model_mapped.py); here the table itself."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from diffusers import FluxTransformer2DModel

from inpaint.model.flux_names import (
    SUFFIXES,
    Fused,
    Move,
    Scale,
    Swapped,
    block_indices,
    flux_names,
)
from inpaint.randmodel.spec import FULL_TRANSFORMER_CONFIG


def diffusers_names(entries) -> list[str]:
    names = []
    for entry in entries:
        if isinstance(entry, Scale):
            names.append(entry.diffusers)
        elif isinstance(entry, Fused):
            names += [f"{part}.{s}" for part in entry.parts for s in SUFFIXES]
        else:
            names += [f"{entry.diffusers}.{s}" for s in SUFFIXES]
    return names


def bfl_names(entries) -> list[str]:
    return [
        entry.bfl if isinstance(entry, Scale) else f"{entry.bfl}.{s}"
        for entry in entries
        for s in ((None,) if isinstance(entry, Scale) else SUFFIXES)
    ]


def test_the_real_model_is_named_completely_and_once():
    config = {k: v for k, v in FULL_TRANSFORMER_CONFIG.items() if not k.startswith("_")}
    with torch.device("meta"):
        expected = set(FluxTransformer2DModel(**config).state_dict())
    table = flux_names(range(19), range(38), guidance=True)
    named = diffusers_names(table)
    assert Counter(named).most_common(1)[0][1] == 1 and set(named) == expected
    bfl = bfl_names(table)
    assert len(set(bfl)) == len(bfl) == len(expected) - 19 * 8 - 38 * 6  # fused: 3 or 4 to 1
    kinds = Counter(type(entry).__name__ for entry in table)
    assert kinds == {
        "Move": 8 + 19 * 8 + 38 * 2 + 1,
        "Scale": 19 * 4 + 38 * 2,
        "Fused": 19 * 2 + 38,
        "Swapped": 1,
    }


def test_guidance_embedder_only_when_present():
    with_guidance = {e.bfl for e in flux_names([], [], guidance=True) if isinstance(e, Move)}
    without = {e.bfl for e in flux_names([], [], guidance=False) if isinstance(e, Move)}
    assert with_guidance - without == {"guidance_in.in_layer", "guidance_in.out_layer"}


@pytest.mark.parametrize(
    ("shares", "total", "rows"),
    [
        ((1, 1, 1), 9216, [3072, 3072, 3072]),
        ((1, 1, 1, 4), 21504, [3072, 3072, 3072, 12288]),
        ((1, 1, 1, 4), 224, [32, 32, 32, 128]),
    ],
)
def test_fused_rows(shares, total, rows):
    assert Fused("x", tuple("abcd"[: len(shares)]), shares).rows(total) == rows


def test_fused_rows_refuse_an_uneven_split():
    with pytest.raises(ValueError, match="do not split"):
        Fused("single_blocks.0.linear1", tuple("abcd"), (1, 1, 1, 4)).rows(100)


@pytest.mark.parametrize(
    ("names", "prefix", "expected"),
    [
        (
            ["double_blocks.0.x", "double_blocks.10.y", "double_blocks.2.z"],
            "double_blocks.",
            [0, 2, 10],
        ),
        (["single_blocks.3.a", "double_blocks.1.b"], "single_blocks.", [3]),
        (["img_in.weight"], "double_blocks.", []),
    ],
)
def test_block_indices(names, prefix, expected):
    assert block_indices(names, prefix) == expected


def test_table_order_is_the_bfl_files_order():
    """The writer emits tensors in table order: the first and last entries pin it."""
    table = flux_names([0], [0], guidance=True)
    assert isinstance(table[0], Move) and table[0].bfl == "time_in.in_layer"
    assert isinstance(table[-1], Swapped) and table[-1].bfl == "final_layer.adaLN_modulation.1"
