"""One cold start, printed as it happens: a JSON line per figure as soon as it is known.

``benchmarks/cold_start.py`` reports at the end of each mode, after a default and a custom job;
at full size on a 2-core CPU one bf16 step takes minutes, so that run can outlast a session.
This probe runs the same start-up in this process (the same ``evict``, ``proc_io_read_bytes``
and ``peak_rss_bytes``, the same ``InpaintModel.load`` and ``warm_up``) and stops at ``--until``
(``load`` or ``ready``). Run one fresh process per mode::

    python -m benchmarks.cold_start_probe --mode before --until load
    python -m benchmarks.cold_start_probe --mode after --until ready
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.cold_start import evict, peak_rss_bytes, proc_io_read_bytes

ROOT = Path(__file__).resolve().parents[1]


def emit(**figures: object) -> None:
    print(json.dumps(figures), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("before", "after"), required=True)
    parser.add_argument("--until", choices=("load", "ready"), default="ready")
    parser.add_argument("--model-dir", type=Path)
    parser.add_argument("--quant", default="Q4_0")
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args(argv)
    if args.model_dir is None:
        from inpaint.randmodel import MODEL_VERSION

        args.model_dir = ROOT / "build" / f"full-model-v{MODEL_VERSION}"

    started = time.perf_counter()
    import inpaint.model as model_module
    from inpaint.config import Settings

    emit(mode=args.mode, import_s=round(time.perf_counter() - started, 2))
    settings = Settings(
        model_dir=args.model_dir,
        quant=args.quant,
        device="cpu",
        dtype=args.dtype,
        warmup_steps=1,
        prompt_embeddings=args.mode == "after",
    )
    evict(args.model_dir)
    read0 = proc_io_read_bytes()
    started = time.perf_counter()
    model = model_module.InpaintModel.load(settings)
    load_s = time.perf_counter() - started
    emit(
        mode=args.mode,
        load_s=round(load_s, 2),
        read_bytes=proc_io_read_bytes() - read0,
        peak_rss_bytes=peak_rss_bytes(),
        text_encoders_loaded=model.text_encoders_loaded,
    )
    if args.until == "ready":
        started = time.perf_counter()
        model.warm_up()
        warmup_s = time.perf_counter() - started
        emit(
            mode=args.mode,
            warmup_s=round(warmup_s, 2),
            ready_s=round(load_s + warmup_s, 2),
            read_bytes=proc_io_read_bytes() - read0,
            peak_rss_bytes=peak_rss_bytes(),
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
