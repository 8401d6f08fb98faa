"""The perf benchmark's measurements: cold start, jobs, regions, memory, crop-to-mask.

Shared state lives in ``Context``; every figure of a variant comes from ``measure_variant``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import math
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.perf_variants import (
    env_form,
    image_tokens_for,
    transformer_flops,
    variant_settings,
)
from inpaint.randmodel import MODEL_VERSION, build_tiny_model

ROOT = Path(__file__).resolve().parents[1]

# --- measuring -----------------------------------------------------------------------------------


class RegionTimer:
    """Durations of named regions: CUDA events on a GPU (no sync inside a job), else wall time."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self._open: dict[str, Any] = {}
        self._done: dict[str, list[Any]] = defaultdict(list)

    def _now(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        import torch

        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def start(self, key: str) -> None:
        self._open[key] = self._now()

    def stop(self, key: str) -> None:
        start = self._open.pop(key, None)
        if start is not None:
            self._done[key].append((start, self._now()))

    def collect(self) -> dict[str, list[float]]:
        """Seconds of every region closed since the last collect."""
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            out = {k: [s.elapsed_time(e) / 1000 for s, e in v] for k, v in self._done.items()}
        else:
            out = {k: [e - s for s, e in v] for k, v in self._done.items()}
        self._done = defaultdict(list)
        return out


@contextlib.contextmanager
def instrumented(pipe: Any, timer: RegionTimer) -> Iterator[None]:
    """Times the transformer's forward (one per step), CLIP, T5, and the VAE's encode/decode."""
    handles = []

    def hook(module: Any, key: str) -> None:
        handles.append(module.register_forward_pre_hook(lambda *_a: timer.start(key)))
        handles.append(module.register_forward_hook(lambda *_a: timer.stop(key)))

    hook(pipe.transformer, "step")
    if pipe.text_encoder is not None:
        hook(pipe.text_encoder, "clip")
    if pipe.text_encoder_2 is not None:
        hook(pipe.text_encoder_2, "t5")
    wrapped = []
    for attr in ("encode", "decode"):
        original = getattr(pipe.vae, attr)

        def timed(*args: Any, _f: Callable[..., Any] = original, _k: str = attr, **kw: Any) -> Any:
            timer.start(f"vae_{_k}")
            try:
                return _f(*args, **kw)
            finally:
                timer.stop(f"vae_{_k}")

        pipe.vae.__dict__[attr] = timed  # instance attribute shadows the method
        wrapped.append(attr)
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for attr in wrapped:
            pipe.vae.__dict__.pop(attr, None)
        timer.collect()


def _sync(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()


def reset_peak_memory(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.reset_peak_memory_stats()
        return
    with contextlib.suppress(OSError):  # Linux >= 4.0: "5" resets VmHWM (peak RSS)
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory(cuda: bool) -> tuple[int, int | None]:
    """(peak allocated, peak reserved) on a GPU; (peak RSS, None) on a CPU."""
    if cuda:
        import torch

        return torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024, None
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, None


def evict_page_cache(folder: Path) -> bool:
    """Drops ``folder``'s files from the OS page cache (no root needed), so the next load reads
    the disk: a cold start as on a fresh instance. False where the OS does not support it."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            with contextlib.suppress(OSError):
                os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def pet_photo(width: int, height: int, seed: int = 0) -> Any:
    """A photo-like RGB image: scikit-image's cat (a dev dependency) scaled, plus sensor noise;
    a colour gradient where scikit-image is missing (a bare GPU machine)."""
    import numpy as np
    from PIL import Image

    try:
        from skimage import data

        base = Image.fromarray(data.chelsea())
    except ImportError:
        y, x = np.mgrid[0:300, 0:451].astype(np.float32)
        base = Image.fromarray(
            np.dstack([x / 451 * 255, y / 300 * 255, (x + y) / 751 * 255]).astype(np.uint8)
        )
    big = np.asarray(base.resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    noise = np.random.default_rng(seed).integers(-6, 7, big.shape, dtype=np.int16)
    return Image.fromarray(np.clip(big + noise, 0, 255).astype(np.uint8))


def job_inputs(size: int) -> tuple[Any, Any]:
    """The benchmark job: a size x size pet photo with an elliptic mask of ~16 % of it."""
    from PIL import Image, ImageDraw

    image = pet_photo(size, size)
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).ellipse((0.3 * size, 0.25 * size, 0.7 * size, 0.75 * size), fill=255)
    return image, mask


@dataclass
class Context:
    """What every variant shares."""

    args: argparse.Namespace
    model_dir: Path
    device: str
    cuda: bool
    image: Any
    mask: Any
    prompt: str
    timer: RegionTimer
    baseline_pixels: Any = None
    results: list[dict[str, Any]] = field(default_factory=list)


def release(cuda: bool) -> None:
    import torch

    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    dynamo = getattr(torch, "_dynamo", None)
    if dynamo is not None:
        dynamo.reset()  # each compile variant pays its own compilation


def _settings_for(ctx: Context, overrides: Mapping[str, Any]) -> Any:
    from inpaint.config import Settings

    values = {
        "model_dir": ctx.model_dir,
        "quant": ctx.args.quant,
        "device": ctx.device,
        "dtype": ctx.args.dtype,
        **overrides,
    }
    return Settings(**values)


MISS_PROMPT = "a dog on a sofa"  # never the default prompt: a cache miss in a fresh model


def prime(ctx: Context) -> float:
    """Pays the process's one-time costs (lazy imports, thread pools, cuBLAS/cuDNN handles) on
    the tiny model, so that they are not charged to whichever variant happens to run first."""
    from inpaint.model.inpainter import InpaintModel

    started = time.perf_counter()
    tiny_dir = build_tiny_model(
        ROOT / "build" / f"tiny-model-v{MODEL_VERSION}", layout="diffusers", quant="Q8_0"
    )
    settings = _settings_for(ctx, {"prompt_cache_size": 0})
    model = InpaintModel.load(settings.model_copy(update={"model_dir": tiny_dir, "quant": "Q8_0"}))
    model.warm_up()
    small_image, small_mask = job_inputs(64)
    run_job(ctx, model, small_image, small_mask, 2)
    with instrumented(model.pipe, ctx.timer):
        run_job(ctx, model, small_image, small_mask, 1)
    del model
    release(ctx.cuda)
    return time.perf_counter() - started


def _dynamo_graphs() -> int:
    """Graphs torch.compile has built in this process (dynamo's own counter)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def run_job(ctx: Context, model: Any, image: Any, mask: Any, steps: int) -> tuple[float, Any]:
    from inpaint.model.params import GenerationParams

    params = GenerationParams(
        prompt=ctx.prompt, seed=ctx.args.seed, steps=steps, guidance=model.settings.guidance
    )
    _sync(ctx.cuda)
    started = time.perf_counter()
    out = model.generate(image, mask, params)
    _sync(ctx.cuda)
    return time.perf_counter() - started, out


def measure_variant(ctx: Context, name: str, *, keep: bool) -> tuple[dict[str, Any], Any]:
    """Loads one variant cold, warms it up, runs the jobs; returns its figures (and the model
    when ``keep``, for the crop-to-mask figures)."""
    import numpy as np

    from inpaint.model.inpainter import InpaintModel

    args = ctx.args
    overrides = variant_settings(name)
    settings = _settings_for(ctx, overrides)
    release(ctx.cuda)
    evicted = evict_page_cache(ctx.model_dir) if args.evict else False
    reset_peak_memory(ctx.cuda)

    started = time.perf_counter()
    model = InpaintModel.load(settings)
    _sync(ctx.cuda)
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    model.warm_up()
    _sync(ctx.cuda)
    warmup_s = time.perf_counter() - started

    graphs_before = _dynamo_graphs()
    with instrumented(model.pipe, ctx.timer):
        first_job_s, _ = run_job(ctx, model, ctx.image, ctx.mask, args.steps)
        ctx.timer.collect()
        # Graphs compiled by the first job (its size differs from the warm-up's): 0 when the
        # warm-up left a compiled model ready for any size (issue 28).
        first_job_graphs = _dynamo_graphs() - graphs_before
        load_peak, load_reserved = peak_memory(ctx.cuda)  # load, warm-up, first job
        reset_peak_memory(ctx.cuda)  # from here: the steady-state job peak
        jobs, steps, texts, vae_enc, vae_dec, out = [], [], [], [], [], None
        for _ in range(args.repeats):
            seconds, out = run_job(ctx, model, ctx.image, ctx.mask, args.steps)
            regions = ctx.timer.collect()
            jobs.append(seconds)
            steps += regions.get("step", [])
            texts.append(sum(regions.get("clip", [])) + sum(regions.get("t5", [])))
            vae_enc.append(sum(regions.get("vae_encode", [])))
            vae_dec.append(sum(regions.get("vae_decode", [])))
        job_peak, job_reserved = peak_memory(ctx.cuda)
        # A prompt no job used: a cache miss everywhere (offloaded encoders: transfers included).
        _sync(ctx.cuda)
        started = time.perf_counter()
        model.prompts.encode(MISS_PROMPT)
        _sync(ctx.cuda)
        miss_s = time.perf_counter() - started
    miss_peak, miss_reserved = peak_memory(ctx.cuda)
    peak = max(load_peak, job_peak, miss_peak)
    reserved = max(load_reserved or 0, job_reserved or 0, miss_reserved or 0) or None

    pixels = np.asarray(out, dtype=np.int16)
    if ctx.baseline_pixels is None:
        ctx.baseline_pixels = pixels
    diff = (
        np.abs(pixels - ctx.baseline_pixels) if pixels.shape == ctx.baseline_pixels.shape else None
    )
    conversion = getattr(model, "fp8_conversion", None)  # INPAINT_FP8's, part of load_s
    result: dict[str, Any] = {
        "variant": name,
        "text_tokens": model.prompts.max_sequence_length,
        "settings": {k: v for k, v in overrides.items()},
        "env": env_form({"quant": settings.quant, **overrides}),
        "applied": {
            "dequantized": model.dequantized,
            "fp8": model.fp8,
            "fp8_layers": conversion.layers if conversion else 0,
            "fp8_s": conversion.seconds if conversion else None,
            "compiled": model.compiled,
            "text_encoders_offloaded": model.prompts.text_encoder_home is not None,
            "prompt_cache": settings.prompt_cache_size > 0,
        },
        "page_cache_evicted": evicted,
        "load_s": load_s,
        "warmup_s": warmup_s,
        # Each warm-up inference: with compile on, the first includes the compile and the
        # second (another size) the dynamic-shape recompile.
        "warmup_inferences": [
            {"size": list(size), "s": round(seconds, 3)} for size, seconds in model.warmup_seconds
        ],
        "compile_s": model.warmup_seconds[0][1]
        if model.compiled and model.warmup_seconds
        else None,
        "recompile_s": (
            model.warmup_seconds[1][1] if model.compiled and len(model.warmup_seconds) > 1 else None
        ),
        "first_job_new_graphs": first_job_graphs,
        "cold_start_s": load_s + warmup_s,
        "first_job_s": first_job_s,
        "job_s": _median(jobs),
        "job_s_runs": jobs,
        "step_s": _median(steps),
        "steps_per_job": len(steps) / max(1, len(jobs)),
        "text_encode_s": _median(texts),
        "text_encode_miss_s": miss_s,
        "vae_encode_s": _median(vae_enc),
        "vae_decode_s": _median(vae_dec),
        "vae_s": _median(vae_enc) + _median(vae_dec),
        "peak_mem_bytes": peak,
        "peak_mem_job_bytes": job_peak,
        "peak_mem_reserved_bytes": reserved,
        "diff_max": float(diff.max()) if diff is not None else None,
        "diff_mean": float(diff.mean()) if diff is not None else None,
        "diff_p99": float(np.percentile(diff, 99)) if diff is not None else None,
    }
    tolerance = args.tolerance
    result["within_tolerance"] = diff is not None and result["diff_mean"] <= tolerance
    if keep:
        return result, model
    del model
    release(ctx.cuda)
    return result, None


def add_ratios(
    results: list[dict[str, Any]], bound_step_s: float | None, reference: str = "baseline"
) -> None:
    """variant / reference (the baseline by default) for the headline figures, and the
    compute-bound multiple."""
    base = next((r for r in results if r["variant"] == reference), None)
    for r in results:
        r["compute_bound_multiple"] = r["step_s"] / bound_step_s if bound_step_s else None
        if base is None:
            r["ratios"] = None
            continue
        r["ratios"] = {
            key: (r[key] / base[key]) if base[key] else None
            for key in ("job_s", "step_s", "cold_start_s", "text_encode_s", "peak_mem_bytes")
        }
        r["speedup_job"] = base["job_s"] / r["job_s"] if r["job_s"] else None


# --- crop-to-mask --------------------------------------------------------------------------------

PHOTO_SIZE = (4000, 3000)  # 12 MP, a phone photo
MASK_FRACTION = 0.05


def crop_photo_and_mask() -> tuple[bytes, bytes]:
    """A 12 MP JPEG and a PNG mask: an ellipse covering 5 % of the photo (a pet-sized edit)."""
    from PIL import Image, ImageDraw

    width, height = PHOTO_SIZE
    photo = pet_photo(width, height, seed=1)
    buf = io.BytesIO()
    photo.save(buf, "JPEG", quality=92)
    mask = Image.new("L", PHOTO_SIZE, 0)
    # ellipse area = pi/4 * w * h = 5 % of 12 MP, aspect 4:3
    w = math.sqrt(MASK_FRACTION * width * height * 4 / math.pi * 4 / 3)
    h = w * 3 / 4
    cx, cy = 0.62 * width, 0.45 * height
    ImageDraw.Draw(mask).ellipse((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), fill=255)
    mbuf = io.BytesIO()
    mask.save(mbuf, "PNG")
    return buf.getvalue(), mbuf.getvalue()


def measure_crop(ctx: Context, model: Any, config: Mapping[str, Any]) -> dict[str, Any]:
    """Crop-to-mask vs whole photo for a 12 MP photo with a 5 % mask, via the production
    planner (``imaging.prepare`` / ``plan_region`` / ``model_inputs``).

    At the same working budget (``--size``^2 pixels) both cost the same; the crop spends them
    on the edit (``detail_gain``: linear resolution on the mask). The speed-up is therefore
    stated at equal detail: what the whole photo would cost at the crop's resolution, timed
    (``--crop-steps`` steps, each size warmed up first) and in FLOPs.
    """
    import numpy as np

    from inpaint.photo import imaging

    args = ctx.args
    settings = model.settings
    work_mp = args.size * args.size / 1e6
    photo, mask_png = crop_photo_and_mask()
    limits = imaging.ImageLimits(max_bytes=1 << 30, max_pixels=100_000_000)
    prepared = imaging.prepare(
        photo,
        mask_png,
        limits=limits,
        work_megapixels=work_mp,
        margin=settings.crop_margin,
        band_px=settings.dilate_px + settings.feather_px,
    )
    region = prepared.region
    assert region is not None and prepared.model_image is not None
    width, height = PHOTO_SIZE
    full_budget = imaging.work_size_for(PHOTO_SIZE, work_mp)
    scale = region.work_size[0] / region.size[0]
    full_detail = (
        max(16, int(width * scale) // 16 * 16),
        max(16, int(height * scale) // 16 * 16),
    )
    full_region = imaging.Region(box=(0, 0, width, height), work_size=full_detail)
    full_image, full_mask = imaging.model_inputs(prepared.original, prepared.mask, full_region)
    mask_fraction = float(np.asarray(prepared.mask, dtype=bool).mean())

    def timed(image: Any, mask: Any) -> tuple[float, float]:
        run_job(ctx, model, image, mask, 1)  # new size: allocator, kernels, recompilation
        ctx.timer.collect()
        seconds, _ = run_job(ctx, model, image, mask, args.crop_steps)
        steps = ctx.timer.collect().get("step", [])
        return seconds, _median(steps)

    with instrumented(model.pipe, ctx.timer):
        crop_s, crop_step_s = timed(prepared.model_image, prepared.model_mask)
        full_s, full_step_s = timed(full_image, full_mask)
    text = model.prompts.max_sequence_length

    def flops(size: tuple[int, int]) -> float:
        return transformer_flops(config, image_tokens_for(*size), text)

    return {
        "photo_size": list(PHOTO_SIZE),
        "mask_fraction": mask_fraction,
        "work_megapixels": work_mp,
        "crop_box": list(region.box),
        "crop_work_size": list(region.work_size),
        "full_budget_work_size": list(full_budget),
        "full_equal_detail_size": list(full_detail),
        "detail_gain": scale / (full_budget[0] / width),
        "model_pixels_crop": region.work_size[0] * region.work_size[1],
        "model_pixels_full_budget": full_budget[0] * full_budget[1],
        "model_pixels_full_equal_detail": full_detail[0] * full_detail[1],
        "flops_ratio_equal_detail": flops(full_detail) / flops(region.work_size),
        "flops_ratio_equal_budget": flops(full_budget) / flops(region.work_size),
        "steps": args.crop_steps,
        "crop_job_s": crop_s,
        "full_equal_detail_job_s": full_s,
        "crop_step_s": crop_step_s,
        "full_equal_detail_step_s": full_step_s,
        "speedup_equal_detail": full_s / crop_s if crop_s else None,
    }
