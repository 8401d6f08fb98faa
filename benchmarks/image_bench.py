"""Figures of the production image built with the tiny weights (tools/image.py, real engine).

Prints:

* build time: cold (``--cold``: an empty engine data root, the local base made by debootstrap
  included, timed separately), cached (nothing changed), and after a code change (a copy of the
  build context with one comment added to ``inpaint/photo/imaging.py``), with the steps each build
  ran; the weights step must come from the cache after a code change;
* image size per layer group (base, packages, weights, code), uncompressed and gzip-compressed
  (level 6, as ``docker push`` does), and the computed size with the real Q4_0 / Q8_0 weights
  (tiny weights swapped for the real files' sizes; weights barely compress, so their
  compressed size is taken as equal to their size, an upper bound);
* cold start: ``docker run`` to the first 200 from ``/ready``, median of ``--starts`` (3).

Run: ``.venv/bin/python benchmarks/image_bench.py [--cold]`` (``make image-bench``) as root.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import requests

from tools.engine import DATA_ROOT, Engine
from tools.image import build, ensure_base, step_states
from tools.image_layers import layer_sizes
from tools.stack import free_port

ROOT = Path(__file__).resolve().parents[1]
TAG = "pawfect-edit-inpaint:bench"
# The real weights directory (docs: FACTS / the weights command): the GGUF transformer plus
# base/ (T5-XXL encoder 9.52 GB in bf16, CLIP-L 0.246 GB, VAE 0.168 GB, configs/tokenizers).
REAL_BASE_BYTES = 9_520_000_000 + 246_000_000 + 168_000_000 + 5_000_000
GGUF_BYTES = {"Q4_0": 6_799_304_032, "Q8_0": 12_700_000_000}
CONTEXT_FILES = ("Dockerfile", ".dockerignore", "requirements.txt", "constraints.txt")
CONTEXT_FILES += ("gunicorn.conf.py", "main.py")


def timed_build(engine: Engine, label: str, context: Path = ROOT) -> dict[str, object]:
    result = build(engine, tag=TAG, weights="tiny", context=context)
    states = step_states(result.log)
    ran = sorted(
        t
        for t, s in states.items()
        if s == "DONE" and not t.startswith("[internal]") and " FROM " not in t
    )
    cached = sorted(t for t, s in states.items() if s == "CACHED")
    print(f"build {label}: {result.seconds:.1f} s; ran {len(ran)} steps, {len(cached)} cached")
    for title in ran:
        print(f"    ran: {title[:110]}")
    weights_steps = {t: s for t, s in states.items() if "inpaint tiny" in t}
    print(f"    weights step: {weights_steps or 'not in the log'}")
    return {"seconds": result.seconds, "ran": ran, "weights": weights_steps}


def code_change_context(tmp: Path) -> Path:
    """A copy of the build context with one comment added to the code."""
    context = tmp / "context"
    context.mkdir()
    for name in CONTEXT_FILES:
        shutil.copy2(ROOT / name, context / name)
    shutil.copytree(ROOT / "inpaint", context / "inpaint", ignore=shutil.ignore_patterns("*.pyc"))
    # A module the weights commands do not import (their own modules do invalidate the weights
    # stage, on purpose: the Dockerfile copies exactly those into it).
    module = context / "inpaint" / "photo" / "imaging.py"
    module.write_text(module.read_text() + f"# {uuid.uuid4().hex}\n")
    return context


def sizes(engine: Engine) -> None:
    rows = layer_sizes(engine, TAG)
    groups: dict[str, list[int]] = {}
    for row in rows:
        total = groups.setdefault(str(row["group"]), [0, 0])
        total[0] += int(row["bytes"])  # type: ignore[call-overload]
        total[1] += int(row["gzip_bytes"])  # type: ignore[call-overload]
    print("image size per layer group (tiny weights):")
    for group in ("base", "packages", "weights", "code"):
        raw, gz = groups.get(group, [0, 0])
        print(f"    {group:9s} {raw / 1e9:7.3f} GB   gzip {gz / 1e9:7.3f} GB")
    raw_total = sum(v[0] for v in groups.values())
    gz_total = sum(v[1] for v in groups.values())
    print(f"    {'total':9s} {raw_total / 1e9:7.3f} GB   gzip {gz_total / 1e9:7.3f} GB")
    tiny_raw, tiny_gz = groups.get("weights", [0, 0])
    for quant, gguf in GGUF_BYTES.items():
        weights = REAL_BASE_BYTES + gguf
        print(
            f"    computed with real {quant} weights ({weights / 1e9:.2f} GB): "
            f"{(raw_total - tiny_raw + weights) / 1e9:.2f} GB, "
            f"gzip <= {(gz_total - tiny_gz + weights) / 1e9:.2f} GB"
        )


def cold_starts(engine: Engine, count: int) -> None:
    seconds = []
    for _ in range(count):
        port = free_port()
        name = f"inpaint-bench-{uuid.uuid4().hex[:8]}"
        argv = ["run", "--detach", "--name", name, "--network", "host", "--read-only"]
        argv += ["--tmpfs", "/tmp", "--env", f"PORT={port}", "--env", "INPAINT_QUANT=Q4_0"]
        argv += ["--env", "INPAINT_DEVICE=cpu"]  # the image requires a GPU; this engine has none
        started = time.monotonic()
        engine.docker(*argv, TAG)
        try:
            while True:
                try:
                    if requests.get(f"http://127.0.0.1:{port}/ready", timeout=2).ok:
                        break
                except (requests.ConnectionError, requests.Timeout):
                    pass
                if time.monotonic() - started > 300:
                    raise TimeoutError(engine.docker("logs", name, check=False).stderr[-3000:])
                time.sleep(0.05)
            seconds.append(time.monotonic() - started)
        finally:
            engine.docker("rm", "--force", name, check=False)
    runs = ", ".join(f"{s:.1f}" for s in seconds)
    print(
        f"cold start docker run -> /ready 200: median {statistics.median(seconds):.1f} s ({runs})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold", action="store_true", help="also a build from an empty engine")
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--parts", default="builds,sizes,starts", help="comma-separated subset")
    args = parser.parse_args()
    print(f"machine: {len(os.sched_getaffinity(0))} cores, {time.strftime('%Y-%m-%d %H:%M')}")
    if args.cold:
        DATA_ROOT.parent.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix="bench-docker-", dir=DATA_ROOT.parent)
        with Engine(data_root=Path(tmp) / "docker", host="") as cold:
            started = time.monotonic()
            ensure_base(cold)
            print(f"local base (debootstrap + import): {time.monotonic() - started:.1f} s")
            timed_build(cold, "cold (empty engine, base ready)")
        shutil.rmtree(tmp)
    parts = set(args.parts.split(","))
    with Engine() as engine:
        timed_build(engine, "first in this engine")
        if "builds" in parts:
            timed_build(engine, "cached (no change)")
            with tempfile.TemporaryDirectory(prefix="bench-context-") as tmp:
                timed_build(engine, "after a code change", code_change_context(Path(tmp)))
            timed_build(engine, "back to the repository's code")
        if "sizes" in parts:
            sizes(engine)
        if "starts" in parts:
            cold_starts(engine, args.starts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
