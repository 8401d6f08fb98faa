"""One cold start, printed as it happens: a JSON line per figure as soon as it is known.

``benchmarks/cold_start.py`` reports at the end of each mode, after a default and a custom job;
at full size on a 2-core CPU one bf16 step takes minutes, so that run can outlast a session.
This probe runs the same start-up in this process (the same ``evict``, ``proc_io_read_bytes``
and ``peak_rss_bytes``, the same ``InpaintModel.load`` and ``warm_up``) and stops at ``--until``
(``load``, ``ready``, or ``step``: then one default-prompt job of one step at 256 px). Each line
also splits the resident memory of that moment into private memory and mapped file pages (the
memory-mapped GGUF weights count as the latter: clean pages the kernel can drop and re-read).
Run one fresh process per mode::

    python -m benchmarks.cold_start_probe --mode before --until load
    python -m benchmarks.cold_start_probe --mode after --warmup-steps 0 --until step
    python -m benchmarks.cold_start_probe --mode after --until load --fp8 weight-only

``--fp8`` sets ``INPAINT_FP8`` (issue 20): the load then includes the conversion to float8, and
its line reports the layers converted, the conversion's seconds and the file bytes released.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.cold_start import evict, mode_settings, peak_rss_bytes, proc_io_read_bytes

ROOT = Path(__file__).resolve().parents[1]


def resident_bytes() -> dict[str, int]:
    """This moment's resident memory: private (anonymous) and mapped file pages."""
    fields = {"RssAnon:": "rss_anon_bytes", "RssFile:": "rss_file_bytes"}
    found = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        parts = line.split()
        if parts and parts[0] in fields:
            found[fields[parts[0]]] = int(parts[1]) * 1024
    return found


def emit(**figures: object) -> None:
    print(json.dumps(figures), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("before", "after"), required=True)
    parser.add_argument("--until", choices=("load", "ready", "step"), default="ready")
    parser.add_argument("--warmup-steps", type=int, default=1)
    parser.add_argument("--model-dir", type=Path)
    parser.add_argument("--quant", default="Q4_0")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument(
        "--fp8",
        choices=("off", "auto", "weight-only", "dynamic"),
        default="off",
        help="INPAINT_FP8",
    )
    args = parser.parse_args(argv)
    if args.model_dir is None:
        from inpaint.randmodel import MODEL_VERSION

        args.model_dir = ROOT / "build" / f"full-model-v{MODEL_VERSION}"

    started = time.perf_counter()
    from inpaint.model.inpainter import InpaintModel

    emit(mode=args.mode, import_s=round(time.perf_counter() - started, 2))
    settings = mode_settings(
        args.mode,
        args.model_dir,
        quant=args.quant,
        dtype=args.dtype,
        warmup_steps=args.warmup_steps,
    ).model_copy(update={"fp8": args.fp8})
    evict(args.model_dir)
    read0 = proc_io_read_bytes()
    started = time.perf_counter()
    model = InpaintModel.load(settings)
    load_s = time.perf_counter() - started
    emit(
        mode=args.mode,
        load_s=round(load_s, 2),
        read_bytes=proc_io_read_bytes() - read0,
        peak_rss_bytes=peak_rss_bytes(),
        text_encoders_loaded=model.prompts.text_encoders_loaded,
        **fp8_figures(model),
        **resident_bytes(),
    )
    if args.until in ("ready", "step"):
        started = time.perf_counter()
        model.warm_up()
        warmup_s = time.perf_counter() - started
        emit(
            mode=args.mode,
            warmup_s=round(warmup_s, 2),
            ready_s=round(load_s + warmup_s, 2),
            read_bytes=proc_io_read_bytes() - read0,
            peak_rss_bytes=peak_rss_bytes(),
            **resident_bytes(),
        )
    if args.until == "step":
        emit(mode=args.mode, **one_step(model, settings.default_prompt), **resident_bytes())
    return 0


def fp8_figures(model: object) -> dict[str, object]:
    """INPAINT_FP8's conversion, as ``InpaintModel.load`` recorded it (nothing when off)."""
    conversion = getattr(model, "fp8_conversion", None)
    if conversion is None:
        return {"fp8": "off"}
    return {
        "fp8": conversion.mode,
        "fp8_layers": conversion.layers,
        "fp8_s": round(conversion.seconds, 2),
        "fp8_bytes": conversion.fp8_bytes,
        "fp8_released_file_bytes": conversion.released_bytes,
    }


def one_step(model: object, prompt: str) -> dict[str, object]:
    """One default-prompt job of one step at 256 px (the issue's "one step" figure)."""
    from PIL import Image

    from inpaint.model.inpainter import WARMUP_SIZE
    from inpaint.model.params import GenerationParams

    size = WARMUP_SIZE
    image = Image.new("RGB", (size, size), (128, 128, 128))
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
    read0 = proc_io_read_bytes()
    started = time.perf_counter()
    model.generate(image, mask, GenerationParams(prompt=prompt, seed=0, steps=1, guidance=30.0))
    return {
        "step_s": round(time.perf_counter() - started, 2),
        "step_read_bytes": proc_io_read_bytes() - read0,
        "peak_rss_bytes": peak_rss_bytes(),
    }


if __name__ == "__main__":
    raise SystemExit(main())
