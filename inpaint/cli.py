"""Command line: ``python -m inpaint {run,weights,tiny}``.

``run`` repaints a local photo with the same code path as the cloud function (settings, model
loading, ``inpaint.photo.repaint.repaint``); ``weights`` fetches the production weights; ``tiny``
builds the random tiny model used by tests and the demo.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from inpaint.config import Settings
from inpaint.errors import ModelFilesMissingError, PermanentError
from inpaint.model.weights_download import WeightsDownloadError
from inpaint.model.weights_layout import QUANTS

log = logging.getLogger("inpaint.cli")
DEFAULT_TINY_DIR = Path("build/tiny-model")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m inpaint",
        description="FLUX.1-Fill-dev pet-photo inpainting (the cloud function's code, locally).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="repaint a local photo", description=run_description())
    run.add_argument("--image", type=Path, required=True, help="photo (JPEG, PNG, WebP, ...)")
    run.add_argument("--mask", type=Path, required=True, help="mask: white = repaint")
    run.add_argument("--out", type=Path, required=True, help="folder for edited/preview.jpg")
    run.add_argument("--prompt", help="what to paint (default: INPAINT_DEFAULT_PROMPT)")
    run.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    run.add_argument("--steps", type=int, help="denoising steps (default INPAINT_STEPS, 28)")
    run.add_argument("--guidance", type=float, help="guidance (default INPAINT_GUIDANCE, 30)")
    source = run.add_mutually_exclusive_group()
    source.add_argument(
        "--model-dir", type=Path, help="weights folder (default INPAINT_MODEL_DIR, ./weights)"
    )
    source.add_argument(
        "--tiny",
        nargs="?",
        const=DEFAULT_TINY_DIR,
        type=Path,
        metavar="DIR",
        help=f"use the random tiny model (paints noise), built into DIR ({DEFAULT_TINY_DIR})",
    )
    run.add_argument("--quant", choices=QUANTS, help="GGUF quantization (default Q4_0)")
    run.add_argument("--device", help="auto, cpu, cuda or cuda:N (default auto)")
    run.add_argument("--dtype", choices=("auto", "bfloat16", "float16", "float32"))
    run.add_argument("--cpu-offload", action="store_true", help="for GPUs under 24 GB")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    weights = sub.add_parser("weights", help="download the production weights")
    weights.add_argument("--dest", type=Path, required=True, help="weights folder to create")
    weights.add_argument("--quant", choices=QUANTS, default="Q4_0", help="default Q4_0")
    weights.add_argument(
        "--token-file", type=Path, help="file holding the HF token (else $HF_TOKEN)"
    )
    from inpaint.model.weights_download import add_embedding_options

    add_embedding_options(weights)

    tiny = sub.add_parser("tiny", help="build the random tiny model (tests, demo)")
    tiny.add_argument("--dest", type=Path, default=DEFAULT_TINY_DIR)
    tiny.add_argument("--layout", choices=("diffusers", "bfl"), default="diffusers")
    tiny.add_argument("--quant", choices=("Q8_0", "Q4_0"), default="Q8_0")
    return parser


def run_description() -> str:
    return (
        "Writes OUT/edited.jpg (original size, JPEG quality 95) and OUT/preview.jpg (longest side "
        "512 px, quality 85). Settings not given as options come from the INPAINT_* environment "
        "variables (see the README)."
    )


def main(argv: list[str] | None = None) -> int:
    from inpaint.logs import configure_logging

    configure_logging(os.environ.get("INPAINT_LOG_LEVEL", "WARNING"))
    args = build_parser().parse_args(argv)
    try:
        return {"run": cmd_run, "weights": cmd_weights, "tiny": cmd_tiny}[args.command](args)
    except PermanentError as exc:
        sys.stderr.write(f"error: {exc.message}\n")
        return 2
    except ModelFilesMissingError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 3
    except WeightsDownloadError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 4


def cmd_run(args: argparse.Namespace) -> int:
    from inpaint.model.inpainter import InpaintModel
    from inpaint.model.params import GenerationParams
    from inpaint.photo.repaint import Timings, repaint

    overrides: dict[str, Any] = {
        k: v
        for k, v in {
            "model_dir": args.model_dir,
            "quant": args.quant,
            "device": args.device,
            "dtype": args.dtype,
            "steps": args.steps,
            "guidance": args.guidance,
        }.items()
        if v is not None
    }
    if args.cpu_offload:
        overrides["cpu_offload"] = True
    if args.tiny is not None:
        from inpaint.randmodel import build_tiny_model

        overrides |= {"model_dir": build_tiny_model(args.tiny), "quant": "Q8_0"}
    settings = Settings(**overrides)
    photo, mask = _read(args.image, "photo"), _read(args.mask, "mask")
    params = GenerationParams(
        prompt=args.prompt or settings.default_prompt,
        seed=args.seed,
        steps=settings.steps,
        guidance=settings.guidance,
    )
    model = InpaintModel.load(settings)
    bar = _Bar(settings.steps, disabled=args.no_progress)
    timings = Timings()
    try:
        result = repaint(
            photo, mask, model, params, settings, timings=timings, on_step=bar.update_to
        )
    finally:
        bar.close()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "edited.jpg").write_bytes(result.edited_jpeg)
    (args.out / "preview.jpg").write_bytes(result.preview_jpeg)
    summary = {
        "edited": str(args.out / "edited.jpg"),
        "preview": str(args.out / "preview.jpg"),
        "maskEmpty": result.prepared.empty,
        "region": list(result.prepared.region.box) if result.prepared.region else None,
        "timings": timings.stages,
        "device": model.device,
    }
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise PermanentError(f"cannot read the {what} {path}: {exc.strerror}") from exc


class _Bar:
    """tqdm bar driven by the pipeline's (done, total) step callback."""

    def __init__(self, total: int, disabled: bool) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=total, desc="denoising", unit="step", disable=disabled)

    def update_to(self, done: int, total: int) -> None:
        self._bar.total = total
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        self._bar.close()


def cmd_weights(args: argparse.Namespace) -> int:
    from inpaint.model.weights_download import download, precompute_embeddings, resolve_token

    if not args.embeddings_only:
        download(args.dest, args.quant, resolve_token(token_file=args.token_file))
    precompute_embeddings(args)
    sys.stdout.write(f"weights ready in {args.dest}\n")
    return 0


def cmd_tiny(args: argparse.Namespace) -> int:
    # The model's runtime first: its import sets the offline environment and sends torch's,
    # torchao's and diffusers' log records to the JSON handler before the builder imports them.
    import inpaint.model.runtime  # noqa: F401
    from inpaint.randmodel import build_tiny_model

    dest = build_tiny_model(args.dest, layout=args.layout, quant=args.quant)
    sys.stdout.write(f"tiny model ({args.layout}, {args.quant}) in {dest}\n")
    return 0
