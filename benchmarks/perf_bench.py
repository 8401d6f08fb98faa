"""Baseline vs ours, one speed-up at a time, on FLUX.1-Fill-dev-shaped models with random weights.

Random weights paint noise but cost the same time and memory as the real ones, so this needs no
download (the real base repository is gated). Two scales, one code path:

* ``--scale tiny`` (default): the tiny test model (``inpaint.randmodel``, hidden
  width 256) on the CPU at 256 px and 4 steps. Seconds; run by the test-suite so it cannot rot.
  Its figures say nothing about the GPU targets.
* ``--scale full``: the real shapes - transformer 19 double + 38 single blocks, width 3072,
  in_channels 384, as a GGUF file (Q4_0, or Q8_0 with ``--quant``) in the **BFL key layout** of
  the published files (YarvixPA/FLUX.1-Fill-dev-gguf), so loading pays the same BFL->diffusers
  conversion as production; a T5-XXL-shaped encoder (4096 wide, 24 layers, 512 tokens), CLIP-L
  and the real VAE config. Built once into ``--workdir`` (random init and quantization run on
  ``--device`` in chunks: a GPU builds it in about a minute), then loaded through the production
  loader (``InpaintModel.load``) like every variant.

Variants (``--variants``, comma separated, measured in this order in one process):

* ``baseline``: what the seed's system does - diffusers' FluxFillPipeline with the GGUF
  transformer, default settings, CLIP and T5 run for every job (prompt cache off).
* ``ours-TOKEN+TOKEN...``: the production loader with the named speed-ups, each a setting of
  ``inpaint.config.Settings`` (printed as INPAINT_* variables): ``cache`` (prompt-embedding
  cache), ``offload-te`` (text encoders offloaded to CPU memory between cache misses),
  ``pin-te`` (the same, their CPU copies page-locked), ``dequant``
  (GGUF -> compute dtype once at load), ``compile`` (regional torch.compile, CUDA only),
  ``attn-NAME`` (diffusers attention backend), ``stepcache-T`` (first-block step cache,
  approximate), ``cpu-offload`` (model CPU offload), ``Q4_0``/``Q8_0`` (GGUF file).
* ``ours``: the recommended configuration for large GPUs (cache+embeds+dequant+compile);
  ``ours-l4``: the 24 GB profile (cache+embeds+offload-te+Q8_0+fp8+compile+stepcache-0.08:
  FP8 weights from the Q8_0 file); ``ours-l4-gguf``: the L4 profile before FP8
  (cache+embeds+offload-te+compile on the Q4_0 GGUF layers). ``embeds``: precomputed prompt
  embeddings, CLIP/T5 loaded on demand (issue 12). ``fp8`` (``INPAINT_FP8=auto``),
  ``fp8-weight-only``, ``fp8-dynamic``: FP8 transformer weights (issue 20).
* The FP8 ladder, all from the Q8_0 file: ``bf16`` (the same file dequantized to bf16: the
  reference for FP8's pixel difference), ``fp8``, ``fp8+compile``, ``fp8+compile+stepcache``.
  ``benchmarks/fp8_gpu_run.sh`` measures it within a time budget.

Figures per variant: cold start (load from local disk, page cache evicted, + warm-up), first
job, warm job median, transformer time per step (CUDA events / perf_counter), text encoding per
job and for an uncached prompt, VAE encode + decode, peak memory (GPU allocator; on CPU the
process's peak RSS, labelled so), ratios to the baseline, the step time as a multiple of the
bf16 compute bound (GPU only), and the output's pixel difference to the baseline on the same
seed. Then the crop-to-mask figures for a 12 MP photo with a mask of 5 % of its area.

Nothing is asserted: the test-suite only checks that every figure is there. Run::

    .venv/bin/python benchmarks/perf_bench.py --scale tiny --json out/perf-tiny.json
    python -m benchmarks.perf_bench --scale full --build-only        # once per machine
    python -m benchmarks.perf_bench --scale full --json out/perf-full.json

See docs/performance.md for the GPU procedure and the analysis.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.perf_measure import (
    Context,
    RegionTimer,
    add_ratios,
    job_inputs,
    measure_crop,
    measure_variant,
    prime,
    release,
)
from benchmarks.perf_report import format_table
from benchmarks.perf_variants import (
    DEFAULT_TOLERANCE,
    SCALES,
    image_tokens_for,
    peak_tflops_for,
    transformer_flops,
    variant_settings,
)
from inpaint.randmodel import FULL_SPEC, MODEL_VERSION, build_model, tiny_spec

ROOT = Path(__file__).resolve().parents[1]

# --- main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="tiny")
    parser.add_argument("--quant", choices=["Q4_0", "Q8_0"], default="Q4_0")
    parser.add_argument("--size", type=int, help="job side in px (tiny 256, full 1024)")
    parser.add_argument("--steps", type=int, help="denoising steps per job (tiny 4, full 28)")
    parser.add_argument("--repeats", type=int, help="warm jobs per variant (median; default 3)")
    parser.add_argument("--crop-steps", type=int, help="steps for the crop-to-mask timing")
    parser.add_argument("--device", help="cpu, cuda, cuda:N or auto (tiny: cpu, full: auto)")
    parser.add_argument(
        "--dtype",
        choices=("auto", "bfloat16", "float16", "float32"),
        help="INPAINT_DTYPE (default auto; full scale on a CPU: bfloat16, as float32 T5 alone "
        "is 19 GB)",
    )
    parser.add_argument("--workdir", type=Path, help="where the random model is built/cached")
    parser.add_argument("--variants", help="comma-separated; see the module docstring")
    parser.add_argument("--crop-variant", help="variant used for the crop figures (last)")
    parser.add_argument("--no-crop", dest="crop", action="store_false")
    parser.add_argument(
        "--no-evict",
        dest="evict",
        action="store_false",
        help="keep the page cache (load times then are warm-cache figures)",
    )
    parser.add_argument(
        "--reference",
        help="variant the others are compared with (pixels and ratios; measured first); "
        "default: baseline when measured, else the first variant",
    )
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help="max mean |pixel diff| (0..255) to the baseline",
    )
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak of this GPU")
    parser.add_argument("--build-only", action="store_true", help="build the model and exit")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    defaults = SCALES[args.scale]
    for key in ("size", "steps", "repeats", "crop_steps", "device", "variants"):
        if getattr(args, key) is None:
            setattr(args, key, getattr(defaults, key))
    if args.size % 16 or args.size < 16:
        parser.error("--size must be a positive multiple of 16")
    if args.repeats < 1 or args.steps < 1 or args.crop_steps < 1:
        parser.error("--repeats, --steps and --crop-steps must be >= 1")
    if args.dtype is None:
        args.dtype = "bfloat16" if args.scale == "full" and args.device == "cpu" else "auto"
    args.variant_list = [v.strip() for v in args.variants.split(",") if v.strip()]
    try:
        for name in args.variant_list:
            variant_settings(name)
    except ValueError as exc:
        parser.error(str(exc))
    if args.reference is None:
        args.reference = "baseline" if "baseline" in args.variant_list else args.variant_list[0]
    if args.reference not in args.variant_list:
        parser.error(f"--reference {args.reference} is not among --variants")
    # The reference is measured first: every later output is compared with its pixels.
    args.variant_list.remove(args.reference)
    args.variant_list.insert(0, args.reference)
    if args.workdir is None:
        args.workdir = (
            ROOT / "build" / f"tiny-model-v{MODEL_VERSION}"
            if args.scale == "tiny"
            else ROOT / "build" / f"full-model-v{MODEL_VERSION}"
        )
    return args


def _fresh_compile_caches() -> None:
    """Compiler caches in a fresh directory per run (before torch is imported), so a compiled
    variant's warm-up pays what a fresh instance pays rather than an earlier run's cache hits."""
    root = Path(tempfile.mkdtemp(prefix="perf-bench-compile-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(root / "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(root / "triton"))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _fresh_compile_caches()
    started = time.perf_counter()
    import torch

    from inpaint.model.checks import resolve_device  # sets the offline environment first

    import_s = time.perf_counter() - started
    device = resolve_device(args.device)
    cuda = device.startswith("cuda")
    started = time.perf_counter()
    if cuda:
        torch.cuda.init()
        torch.zeros(1, device=device)
    cuda_init_s = time.perf_counter() - started if cuda else None

    started = time.perf_counter()
    spec = tiny_spec("diffusers") if args.scale == "tiny" else FULL_SPEC
    # The tiny model keeps its numpy-drawn weights (the tests' model); the full size is drawn
    # and quantized by torch, on the GPU when there is one.
    build_device = None if args.scale == "tiny" else device if cuda else "cpu"
    quants = {args.quant}
    for name in args.variant_list:  # variants may name the other GGUF file
        quants.add(variant_settings(name).get("quant") or args.quant)
    for quant in [args.quant, *sorted(quants - {args.quant})]:
        model_dir = build_model(args.workdir, spec, quant=quant, device=build_device)
    config = spec.transformer
    build_s = time.perf_counter() - started
    print(f"model ready in {model_dir} ({build_s:.1f} s)", flush=True)
    if args.build_only:
        return 0

    device_name = (
        torch.cuda.get_device_name(device)
        if cuda
        else f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()}"
    )
    peak_tflops = args.peak_tflops or (peak_tflops_for(device_name) if cuda else None)
    image, mask = job_inputs(args.size)
    from inpaint.config import Settings

    ctx = Context(
        args=args,
        model_dir=model_dir,
        device=device,
        cuda=cuda,
        image=image,
        mask=mask,
        prompt=Settings().default_prompt,
        timer=RegionTimer(cuda),
    )
    prime_s = prime(ctx)
    crop_variant = args.crop_variant or args.variant_list[-1]
    crop = None
    for name in args.variant_list:
        print(f"measuring {name} ...", flush=True)
        keep = args.crop and name == crop_variant and crop is None
        result, model = measure_variant(ctx, name, keep=keep)
        ctx.results.append(result)
        if args.json:  # after each variant: a run stopped by a time limit keeps what it measured
            _write_json(args.json, {"complete": False, "variants": ctx.results})
        if model is not None:
            crop = {"variant": name, **measure_crop(ctx, model, config)}
            del model
            release(cuda)
    text_tokens = ctx.results[0]["text_tokens"]
    image_tokens = image_tokens_for(args.size, args.size)
    flops = transformer_flops(config, image_tokens, text_tokens)
    bound_step_s = flops / (peak_tflops * 1e12) if peak_tflops else None
    add_ratios(ctx.results, bound_step_s, args.reference)

    import diffusers
    import gguf
    import transformers

    meta = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "scale": args.scale,
        "device": device,
        "cuda": cuda,
        "device_name": device_name,
        "quant": args.quant,
        "dtype": args.dtype,
        "size": args.size,
        "steps": args.steps,
        "repeats": args.repeats,
        "seed": args.seed,
        "tolerance": args.tolerance,
        "reference": args.reference,
        "image_tokens": image_tokens,
        "text_tokens": text_tokens,
        "flops_per_step": flops,
        "peak_tflops": peak_tflops,
        "bound_step_s": bound_step_s,
        "memory_kind": "cuda max_memory_allocated" if cuda else "process peak RSS (VmHWM)",
        "page_cache": "evicted before each load" if args.evict else "warm",
        "import_s": import_s,
        "prime_s": prime_s,
        "cuda_init_s": cuda_init_s,
        "build_s": build_s,
        "threads": torch.get_num_threads(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "gguf": getattr(gguf, "__version__", None) or _dist_version("gguf"),
        },
        "model_dir": str(model_dir),
    }
    report = {"complete": True, "meta": meta, "variants": ctx.results, "crop": crop}
    print()
    print(format_table(report), flush=True)
    if args.json:
        _write_json(args.json, report)
        print(f"\nwrote {args.json}")
    return 0


def _write_json(path: Path, report: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    partial.replace(path)  # atomic: a reader never sees half a file


def _dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
