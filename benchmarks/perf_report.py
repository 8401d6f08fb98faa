"""The perf benchmark's report: the table printed after a run, and the short summary of a run's
JSON file (``python -m benchmarks.perf_report --summary FILE``; also of a run stopped by a time
limit, whose file holds the variants measured so far)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# --- output --------------------------------------------------------------------------------------


def _fmt(value: Any, kind: str = "s") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if kind == "gib":
        return f"{value / 2**30:.2f}"
    if kind == "x":
        return f"{value:.2f}x"
    if kind == "px":
        return f"{value:.2f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.4f}"


def format_table(report: Mapping[str, Any]) -> str:
    meta = report["meta"]
    results = report["variants"]
    cuda = meta["cuda"]
    ref = meta.get("reference", "baseline")
    mem = "peak GPU mem allocated (GiB)" if cuda else "peak process RSS (GiB, CPU)"
    rows: list[tuple[str, str, str]] = [
        ("cold start: load + warm-up (s)", "cold_start_s", "s"),
        ("  load from disk (s)", "load_s", "s"),
        ("  warm-up (s)", "warmup_s", "s"),
        ("    compile: 1st warm-up inference (s)", "compile_s", "s"),
        ("    recompile: 2nd size, dynamic (s)", "recompile_s", "s"),
        ("first job at size (s)", "first_job_s", "s"),
        ("  graphs it compiled (0: none)", "first_job_new_graphs", "px"),
        (f"warm job, median of {meta['repeats']} (s)", "job_s", "s"),
        (f"  speed-up vs {ref}", "speedup_job", "x"),
        ("transformer step (s)", "step_s", "s"),
        ("  x bf16 compute bound", "compute_bound_multiple", "x"),
        ("text encoding per job (s)", "text_encode_s", "s"),
        ("text encoding, new prompt (s)", "text_encode_miss_s", "s"),
        ("VAE encode + decode (s)", "vae_s", "s"),
        (mem, "peak_mem_bytes", "gib"),
        ("  during warm jobs (GiB)", "peak_mem_job_bytes", "gib"),
        (f"max |pixel diff| vs {ref}", "diff_max", "px"),
        (f"mean |pixel diff| vs {ref}", "diff_mean", "px"),
        (f"  within tolerance ({meta['tolerance']})", "within_tolerance", "s"),
    ]
    if cuda:
        rows.insert(16, ("  reserved (GiB)", "peak_mem_reserved_bytes", "gib"))
    ratio_rows = [
        (f"ratio job ours/{ref}", "job_s"),
        ("ratio step", "step_s"),
        ("ratio cold start", "cold_start_s"),
        ("ratio peak memory", "peak_mem_bytes"),
    ]
    widths = [max(10, len(r["variant"])) + 2 for r in results]
    label = 36
    lines = [
        f"FLUX.1-Fill-dev perf bench - scale {meta['scale']}, {meta['device_name']}, "
        f"{meta['size']}x{meta['size']}, {meta['steps']} steps, {meta['quant']}, "
        f"{meta['date']}",
        f"transformer FLOPs/step {meta['flops_per_step'] / 1e12:.3f} T "
        f"({meta['image_tokens']} image + {meta['text_tokens']} text tokens); "
        + (
            f"bf16 peak {meta['peak_tflops']:.0f} TFLOPS -> bound {meta['bound_step_s']:.4f} s"
            if meta["peak_tflops"]
            else "compute bound: n/a (no GPU peak known for this device)"
        ),
        "",
        " " * label + "".join(r["variant"].rjust(w) for r, w in zip(results, widths, strict=True)),
    ]
    for title, key, kind in rows:
        cells = "".join(
            _fmt(r.get(key), kind).rjust(w) for r, w in zip(results, widths, strict=True)
        )
        lines.append(title.ljust(label) + cells)
    for title, key in ratio_rows:
        cells = "".join(
            _fmt((r.get("ratios") or {}).get(key), "x").rjust(w)
            for r, w in zip(results, widths, strict=True)
        )
        lines.append(title.ljust(label) + cells)
    lines.append("")
    for r in results:
        lines.append(f"  {r['variant']}: {r['env']}  applied={r['applied']}")
    crop = report.get("crop")
    if crop:
        lines += [
            "",
            f"crop-to-mask ({crop['variant']}): {crop['photo_size'][0]}x{crop['photo_size'][1]} "
            f"photo, mask {crop['mask_fraction'] * 100:.1f} % of it, budget "
            f"{crop['work_megapixels']:.3f} MP",
            f"  crop box {crop['crop_box']} -> model {crop['crop_work_size']}; whole photo at the "
            f"same budget -> {crop['full_budget_work_size']} (same cost, "
            f"{crop['detail_gain']:.2f}x less linear detail on the mask)",
            f"  whole photo at the crop's detail -> {crop['full_equal_detail_size']}: "
            f"{crop['model_pixels_full_equal_detail'] / crop['model_pixels_crop']:.2f}x the "
            f"pixels, {crop['flops_ratio_equal_detail']:.2f}x the FLOPs",
            f"  timed, {crop['steps']} steps: crop {crop['crop_job_s']:.3f} s "
            f"(step {crop['crop_step_s']:.4f} s), whole photo {crop['full_equal_detail_job_s']:.3f}"
            f" s (step {crop['full_equal_detail_step_s']:.4f} s): speed-up "
            f"{_fmt(crop['speedup_equal_detail'], 'x')}",
        ]
    return "\n".join(lines)


# --- summary -------------------------------------------------------------------------------------

SUMMARY_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("job (s)", "job_s", "s"),
    ("step (s)", "step_s", "s"),
    ("first job (s)", "first_job_s", "s"),
    ("load (s)", "load_s", "s"),
    ("warm-up (s)", "warmup_s", "s"),
    ("peak mem (GiB)", "peak_mem_bytes", "gib"),
    ("jobs peak (GiB)", "peak_mem_job_bytes", "gib"),
    ("diff mean", "diff_mean", "px"),
    ("diff max", "diff_max", "px"),
    ("diff p99", "diff_p99", "px"),
)


def format_summary(report: Mapping[str, Any], expected: Sequence[str] = ()) -> str:
    """One line per variant: time per job and per step, peak memory and the pixel difference to
    the reference (the first variant measured); a variant of ``expected`` that the run did not
    reach is listed as such."""
    results = {r["variant"]: r for r in report.get("variants", [])}
    meta = report.get("meta") or {}
    order = list(results) + [name for name in expected if name not in results]
    reference = meta.get("reference") or (next(iter(results)) if results else "n/a")
    memory = meta.get("memory_kind", "GPU max_memory_allocated; on CPU peak RSS")
    width = max([len(name) for name in order] + [10]) + 2
    lines = [
        f"FP8 run summary: {'complete' if report.get('complete') else 'INCOMPLETE'}; "
        f"pixel differences vs {reference} (0..255); memory: {memory}",
    ]
    if meta:
        lines.append(
            f"{meta.get('device_name')}, {meta.get('size')}x{meta.get('size')}, "
            f"{meta.get('steps')} steps, median of {meta.get('repeats')}, {meta.get('date')}"
        )
    header = "variant".ljust(width) + "".join(title.rjust(16) for title, _, _ in SUMMARY_COLUMNS)
    lines += [header + "  settings in effect"]
    for name in order:
        r = results.get(name)
        if r is None:
            lines.append(name.ljust(width) + "not measured (time limit or failure)")
            continue
        cells = "".join(_fmt(r.get(key), kind).rjust(16) for _, key, kind in SUMMARY_COLUMNS)
        applied = r.get("applied", {})
        fp8 = applied.get("fp8")
        if applied.get("fp8_layers"):
            fp8 = f"{fp8} ({applied['fp8_layers']} layers in {_fmt(applied.get('fp8_s'))} s)"
        lines.append(
            name.ljust(width)
            + cells
            + f"  fp8={fp8} compiled={applied.get('compiled')} {r.get('env')}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Summary of a perf_bench JSON file")
    parser.add_argument("--summary", type=Path, required=True, help="perf_bench --json file")
    parser.add_argument("--expect", default="", help="comma-separated variants the run planned")
    args = parser.parse_args(argv)
    expected = [v for v in args.expect.split(",") if v]
    if not args.summary.exists():
        print(f"no results: {args.summary} was not written")
        print(format_summary({"variants": []}, expected))
        return 1
    report = json.loads(args.summary.read_text())
    print(format_summary(report, expected))
    missing = [name for name in expected if name not in {r["variant"] for r in report["variants"]}]
    return 0 if report.get("complete") and not missing else 1


if __name__ == "__main__":
    sys.exit(main())
