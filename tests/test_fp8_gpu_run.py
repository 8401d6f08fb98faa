"""benchmarks/fp8_gpu_run.sh, the prepared FP8 GPU run, end to end on CPU at tiny scale
(SCALE=tiny DEVICE=cpu): every variant's figures reach its JSON file and its summary, so the
command works before any GPU time is spent on it. No timing is asserted."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "fp8_gpu_run.sh"
VARIANTS = ["bf16", "ours-l4-gguf", "fp8", "fp8+compile", "fp8+compile+stepcache", "ours-l4"]
FIGURES = ["job_s", "step_s", "first_job_s", "load_s", "peak_mem_bytes", "peak_mem_job_bytes"]


def run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = os.environ | {
        "SCALE": "tiny",
        "DEVICE": "cpu",
        "OUT": str(tmp_path / "out"),
        "PYTHON": sys.executable,
        **env,
    }
    return subprocess.run(
        ["bash", str(SCRIPT)],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=1200,
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model_dir):
    out = tmp_path_factory.mktemp("fp8-gpu-run")
    done = run(out, LIMIT_S="1100")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    return out / "out", done.stdout


def test_every_variant_has_its_figures(tiny_run):
    out, _ = tiny_run
    report = json.loads((out / "fp8-gpu.json").read_text())
    assert report["complete"] is True
    assert report["meta"]["reference"] == "bf16"
    assert (report["meta"]["size"], report["meta"]["steps"]) == (64, 2)
    results = {r["variant"]: r for r in report["variants"]}
    assert list(results) == VARIANTS
    for name, r in results.items():
        for key in FIGURES:
            assert isinstance(r[key], int | float) and r[key] > 0, (name, key, r[key])
        for key in ("diff_mean", "diff_max", "diff_p99"):
            assert math.isfinite(r[key]) and r[key] >= 0, (name, key)
    assert results["bf16"]["diff_max"] == 0 and results["bf16"]["applied"]["dequantized"]
    for name in ("fp8", "fp8+compile", "fp8+compile+stepcache", "ours-l4"):
        assert results[name]["applied"]["fp8"] == "weight-only", name  # CPU: auto -> weight-only
        assert results[name]["applied"]["fp8_layers"] > 10 and results[name]["applied"]["fp8_s"] > 0
        assert results[name]["settings"]["quant"] == "Q8_0", name
    assert results["ours-l4-gguf"]["applied"]["fp8"] == "off"
    assert results["ours-l4-gguf"]["applied"]["fp8_layers"] == 0
    assert results["ours-l4-gguf"]["settings"]["quant"] == "Q4_0"
    # FP8 weight-only stays close to the bf16 reference on the tiny model (tests/model/test_fp8.py
    # bounds the same comparison; the step cache may add its own approximation).
    assert results["fp8"]["diff_mean"] <= 2.0


def test_summary_lists_every_variant_and_the_files_exist(tiny_run):
    out, stdout = tiny_run
    summary = (out / "summary.txt").read_text()
    assert summary.startswith("FP8 run summary: complete; pixel differences vs bf16")
    for name in VARIANTS:
        line = next(li for li in summary.splitlines() if li.startswith(name + " "))
        assert "not measured" not in line and "fp8=" in line, line
        if name.startswith(("fp8", "ours-l4 ")) or name == "ours-l4":
            assert "layers in" in line, line
    for name in ("fp8-gpu.log", "build.log", "versions.txt"):
        assert (out / name).stat().st_size > 0, name
    assert "torchao 0.18.0" in (out / "versions.txt").read_text()
    assert summary in stdout


def test_a_budget_too_small_measures_nothing_and_says_so(tmp_path, tiny_model_dir):
    done = run(tmp_path, LIMIT_S="0")
    assert done.returncode != 0
    summary = (tmp_path / "out" / "summary.txt").read_text()
    for name in VARIANTS:
        assert f"{name}" in summary
    assert summary.count("not measured") == len(VARIANTS)


def test_summary_of_a_run_cut_short_names_what_is_missing():
    from benchmarks.perf_report import format_summary

    measured = {
        "variant": "bf16",
        "job_s": 1.5,
        "step_s": 0.05,
        "peak_mem_bytes": 2**30,
        "diff_mean": 0.0,
        "diff_max": 0.0,
        "applied": {"fp8": "off", "compiled": False},
        "env": "INPAINT_DEQUANTIZE=true",
    }
    text = format_summary({"complete": False, "variants": [measured]}, VARIANTS)
    lines = text.splitlines()
    assert lines[0].startswith("FP8 run summary: INCOMPLETE; pixel differences vs bf16")
    assert "1.50" in next(li for li in lines if li.startswith("bf16 "))
    assert sum("not measured" in li for li in lines) == len(VARIANTS) - 1
