"""The perf benchmark's report: the table printed after a run."""

from __future__ import annotations

from collections.abc import Mapping
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
    mem = "peak GPU mem allocated (GiB)" if cuda else "peak process RSS (GiB, CPU)"
    rows: list[tuple[str, str, str]] = [
        ("cold start: load + warm-up (s)", "cold_start_s", "s"),
        ("  load from disk (s)", "load_s", "s"),
        ("  warm-up (s)", "warmup_s", "s"),
        ("first job at size (s)", "first_job_s", "s"),
        (f"warm job, median of {meta['repeats']} (s)", "job_s", "s"),
        ("  speed-up vs baseline", "speedup_job", "x"),
        ("transformer step (s)", "step_s", "s"),
        ("  x bf16 compute bound", "compute_bound_multiple", "x"),
        ("text encoding per job (s)", "text_encode_s", "s"),
        ("text encoding, new prompt (s)", "text_encode_miss_s", "s"),
        ("VAE encode + decode (s)", "vae_s", "s"),
        (mem, "peak_mem_bytes", "gib"),
        ("  during warm jobs (GiB)", "peak_mem_job_bytes", "gib"),
        ("max |pixel diff| vs baseline", "diff_max", "px"),
        ("mean |pixel diff| vs baseline", "diff_mean", "px"),
        (f"  within tolerance ({meta['tolerance']})", "within_tolerance", "s"),
    ]
    if cuda:
        rows.insert(13, ("  reserved (GiB)", "peak_mem_reserved_bytes", "gib"))
    ratio_rows = [
        ("ratio job ours/baseline", "job_s"),
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
