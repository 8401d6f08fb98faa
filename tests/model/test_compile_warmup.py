"""With compile on, the warm-up leaves the model ready for any work size (issue 28).

torch.compile specializes its first graph to the first input shape; a second, different shape
compiles once more with dynamic shapes, and later shapes compile nothing (measured on CPU
inductor, tiny model, regional compile). So the warm-up runs two sizes when the transformer is
compiled, and the first user job of any size pays no compile.

The product compiles on CUDA only (on CPU inductor builds C++ for minutes); here the tiny
model's transformer is compiled by the test, exactly as the ``INPAINT_COMPILE`` option
(``inpaint.model.options``) does on a GPU, and dynamo's own counters prove that no size after
the warm-up compiles. Slow: ~1-2 min of inductor compiles on 2 CPU cores.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from inpaint.config import Settings
from inpaint.model.inpainter import SIZE_MULTIPLE, InpaintModel, warmup_sizes
from inpaint.model.params import GenerationParams

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("side", "compiled", "expected"),
    [
        (256, False, [(256, 256)]),
        (1024, False, [(1024, 1024)]),
        (256, True, [(256, 256), (256, 192)]),
        (1024, True, [(1024, 1024), (1024, 768)]),
        (1008, True, [(1008, 1008), (1008, 752)]),
        (16, True, [(16, 16), (16, 32)]),  # 3/4 of 16 floors to 16: taller instead
        (32, True, [(32, 32), (32, 16)]),
    ],
)
def test_warmup_sizes(side, compiled, expected):
    sizes = warmup_sizes(side, compiled)
    assert sizes == expected
    assert all(w % SIZE_MULTIPLE == 0 and h % SIZE_MULTIPLE == 0 for w, h in sizes)
    # Different token counts: the second shape is really another shape for the transformer.
    assert len({w * h for w, h in sizes}) == len(sizes)


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _job(model: InpaintModel, size: tuple[int, int]) -> Image.Image:
    width, height = size
    image = Image.new("RGB", size, (90, 120, 150))
    mask = Image.new("L", size, 0)
    mask.paste(255, (width // 4, height // 4, 3 * width // 4, 3 * height // 4))
    params = GenerationParams(prompt="a cat", seed=3, steps=2, guidance=30.0)
    return model.generate(image, mask, params)


@pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler"
)
@pytest.mark.timeout(900)
def test_a_compiled_warm_up_leaves_every_work_size_ready(tiny_model_dir):
    settings = Settings(
        model_dir=tiny_model_dir,
        quant="Q8_0",
        device="cpu",
        dtype="float32",
        warmup_steps=1,
        prompt_cache_size=4,
    )
    eager = InpaintModel.load(settings)
    compiled = InpaintModel.load(settings)
    torch._dynamo.reset()
    # What the INPAINT_COMPILE option (inpaint.model.options) applies on a GPU.
    compiled.pipe.transformer.compile_repeated_blocks(fullgraph=False)
    compiled.compiled = True
    try:
        before = _graphs()
        compiled.warm_up(128)
        assert [size for size, _ in compiled.warmup_seconds] == [(128, 128), (128, 96)]
        after_warm_up = _graphs()
        assert after_warm_up > before, "the warm-up compiled"
        jobs = []
        for size in [(160, 112), (96, 176), (144, 144), (128, 128)]:
            started = time.perf_counter()
            out = _job(compiled, size)
            jobs.append({"size": list(size), "s": round(time.perf_counter() - started, 2)})
            assert _graphs() == after_warm_up, f"a job at {size} compiled again"
            reference = np.asarray(_job(eager, size), dtype=np.float32)
            difference = np.abs(np.asarray(out, dtype=np.float32) - reference).mean()
            assert difference <= 1.0, difference
            jobs[-1]["mean_abs_diff_vs_eager"] = round(float(difference), 4)
        figures = {
            "warm_up": [{"size": list(z), "s": round(t, 2)} for z, t in compiled.warmup_seconds],
            "graphs_after_warm_up": after_warm_up - before,
            "jobs": jobs,
        }
        (ROOT / "build").mkdir(exist_ok=True)
        (ROOT / "build" / "compile-warmup.json").write_text(json.dumps(figures, indent=1))
    finally:
        torch._dynamo.reset()
