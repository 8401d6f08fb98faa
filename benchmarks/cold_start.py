"""Cold start before and after precomputed prompt embeddings (issue 12), one fresh process each.

``before`` is the service as it was: CLIP and T5 loaded at start-up and the default prompt
encoded during warm-up (``INPAINT_PROMPT_EMBEDDINGS=false``). ``after`` is the default: ready
from the precomputed embedding, the text encoders loaded on the first other prompt. Each mode
runs in its own process (clean peak RSS, page cache of the weights evicted first, as on a fresh
instance) and reports:

* ``load_s`` (``InpaintModel.load``), ``warmup_s`` and ``ready_s`` (their sum: what ``/ready``
  waits for, after the imports, which both modes share), ``ready_read_bytes`` (bytes the process
  read from storage meanwhile, from /proc/self/io) and ``ready_peak_rss_bytes`` (VmHWM);
* ``default_job_s``: one job with the default prompt at ``--size`` and ``--steps``;
* ``custom_job_s``: one job with a new prompt (``after``: includes loading CLIP + T5), and the
  peak RSS and bytes read at the end.

Nothing is asserted (the test-suite runs ``--scale tiny`` and checks every figure is there)::

    .venv/bin/python -m benchmarks.cold_start --scale tiny
    python -m benchmarks.perf_bench --scale full --build-only          # once, ~16 GB
    nice -n 10 python -m benchmarks.cold_start --scale full --json out/cold-start-full.json

``--scale full`` uses perf_bench's random full-size model (``build/full-model-v<N>``) on the CPU in
bfloat16 at 256 px, one step and one warm-up step (about 14 GB of memory for ``before``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from inpaint.config import Settings

ROOT = Path(__file__).resolve().parents[1]

MODES = ("before", "after")
CUSTOM_PROMPT = "a tabby cat asleep on a sofa"
FIGURES = (
    "load_s",
    "warmup_s",
    "ready_s",
    "ready_read_bytes",
    "ready_peak_rss_bytes",
    "default_job_s",
    "custom_job_s",
    "end_peak_rss_bytes",
    "end_read_bytes",
)


def proc_io_read_bytes() -> int:
    """Bytes this process caused to be read from storage (page faults on mmaps included)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    return 0


def peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def evict(folder: Path) -> None:
    """Drops ``folder``'s files from the page cache, so loading reads the disk."""
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def mode_settings(
    mode: str, model_dir: Path, *, quant: str, dtype: str, warmup_steps: int
) -> Settings:
    """The service's settings for ``mode`` on CPU: ``before`` turns the precomputed prompt off."""
    from inpaint.config import Settings

    return Settings(
        model_dir=model_dir,
        quant=quant,
        device="cpu",
        dtype=dtype,
        warmup_steps=warmup_steps,
        prompt_embeddings=mode == "after",
    )


def child(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """One mode in this (fresh) process: load, warm up, a default-prompt job, a custom one."""
    from PIL import Image

    from inpaint.model.params import GenerationParams

    started = time.perf_counter()
    from inpaint.model.inpainter import InpaintModel  # torch/diffusers: the same in both modes

    settings = mode_settings(
        mode, args.model_dir, quant=args.quant, dtype=args.dtype, warmup_steps=args.steps
    )
    import_s = time.perf_counter() - started
    evict(args.model_dir)
    read0 = proc_io_read_bytes()
    loaded = time.perf_counter()
    model = InpaintModel.load(settings)
    load_s = time.perf_counter() - loaded
    warm = time.perf_counter()
    model.warm_up()
    warmup_s = time.perf_counter() - warm
    result: dict[str, Any] = {
        "mode": mode,
        "import_s": import_s,
        "load_s": load_s,
        "warmup_s": warmup_s,
        "ready_s": load_s + warmup_s,
        "ready_read_bytes": proc_io_read_bytes() - read0,
        "ready_peak_rss_bytes": peak_rss_bytes(),
        "text_encoders_loaded_at_ready": model.prompts.text_encoders_loaded,
    }
    size = args.size
    image = Image.new("RGB", (size, size), (120, 90, 60))
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
    for key, prompt in (
        ("default_job_s", settings.default_prompt),
        ("custom_job_s", CUSTOM_PROMPT),
    ):
        params = GenerationParams(
            prompt=prompt, seed=0, steps=args.steps, guidance=settings.guidance
        )
        started = time.perf_counter()
        model.generate(image, mask, params)
        result[key] = time.perf_counter() - started
    result["end_peak_rss_bytes"] = peak_rss_bytes()
    result["end_read_bytes"] = proc_io_read_bytes() - read0
    result["text_encoder_loads"] = model.prompts.loads
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--model-dir", type=Path, help="default: the scale's build folder")
    parser.add_argument("--quant", default=None, help="tiny Q8_0, full Q4_0")
    parser.add_argument("--dtype", default=None, help="tiny float32, full bfloat16")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    full = args.scale == "full"
    args.quant = args.quant or ("Q4_0" if full else "Q8_0")
    args.dtype = args.dtype or ("bfloat16" if full else "float32")
    if args.model_dir is None:
        from inpaint.randmodel import MODEL_VERSION

        name = f"full-model-v{MODEL_VERSION}" if full else f"tiny-model-v{MODEL_VERSION}"
        args.model_dir = ROOT / "build" / name
    return args


def prepare(args: argparse.Namespace) -> None:
    """The weights with this dtype's embeddings (the builders' own code; idempotent)."""
    if args.scale == "tiny":
        from inpaint.randmodel import build_tiny_model

        build_tiny_model(args.model_dir, quant=args.quant)
    elif not (args.model_dir / "base" / "model_index.json").is_file():
        raise SystemExit(f"{args.model_dir}: build it with perf_bench.py --scale full --build-only")
    from inpaint.model.embeddings import write_builder_embeddings

    write_builder_embeddings(args.model_dir, (args.dtype,))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args)), flush=True)
        return 0
    prepare(args)
    results = []
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        print(f"measuring {mode} ...", flush=True)
        cmd = [sys.executable, "-m", "benchmarks.cold_start"]
        cmd += argv if argv is not None else sys.argv[1:]
        cmd += ["--child", mode, "--model-dir", str(args.model_dir)]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.stderr.write(done.stdout[-2000:] + done.stderr[-4000:])
            return done.returncode
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    meta = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()} x{os.cpu_count()} CPUs",
        "scale": args.scale,
        "dtype": args.dtype,
        "quant": args.quant,
        "size": args.size,
        "steps": args.steps,
        "model_dir": str(args.model_dir),
    }
    print(format_table(meta, results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "modes": results}, indent=2) + "\n")
    return 0


def format_table(meta: dict[str, Any], results: list[dict[str, Any]]) -> str:
    lines = [
        f"cold start, scale {meta['scale']}, {meta['machine']}, {meta['dtype']}, {meta['quant']},"
        f" {meta['size']} px, {meta['steps']} step(s), {meta['date']}",
        "".ljust(34) + "".join(r["mode"].rjust(12) for r in results),
    ]
    for key in FIGURES:
        cells = []
        for r in results:
            value = r[key]
            cells.append(f"{value / 1e9:.2f} GB" if key.endswith("bytes") else f"{value:.2f} s")
        lines.append(key.ljust(34) + "".join(c.rjust(12) for c in cells))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
