"""benchmarks/cold_start.py at tiny scale: every figure is there for both modes, and the modes
are what they claim (before: encoders at start-up; after: ready without them, loaded once).
Timings are printed, never asserted."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_tiny_cold_start_reports_every_figure(tmp_path, tiny_model_dir):
    out = tmp_path / "cold.json"
    cmd = [sys.executable, "-m", "benchmarks.cold_start", "--scale", "tiny"]
    cmd += ["--model-dir", str(tiny_model_dir)]
    cmd += ["--size", "64", "--json", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    data = json.loads(out.read_text())
    modes = {r["mode"]: r for r in data["modes"]}
    assert set(modes) == {"before", "after"}
    for r in modes.values():
        for key in ("load_s", "warmup_s", "ready_s", "default_job_s", "custom_job_s"):
            assert math.isfinite(r[key]) and r[key] > 0, (r["mode"], key)
        for key in ("ready_peak_rss_bytes", "end_peak_rss_bytes"):
            assert r[key] > 0, (r["mode"], key)
        assert r["ready_read_bytes"] >= 0 and r["end_read_bytes"] >= r["ready_read_bytes"]
        assert r["text_encoder_loads"] == 1
    assert modes["before"]["text_encoders_loaded_at_ready"] is True
    assert modes["after"]["text_encoders_loaded_at_ready"] is False
    assert "ready_s" in done.stdout and data["meta"]["dtype"] == "float32"


def run_probe(model_dir, *extra):
    cmd = [sys.executable, "-m", "benchmarks.cold_start_probe", "--mode", "after"]
    cmd += ["--model-dir", str(model_dir), "--quant", "Q8_0", "--dtype", "float32", *extra]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]


RESIDENT = ["rss_anon_bytes", "rss_file_bytes"]


def test_probe_prints_each_figure_as_a_json_line(tiny_model_dir):
    """``--until step``: import, load, ready (after one warm-up step), then the one-step job."""
    lines = run_probe(tiny_model_dir, "--warmup-steps", "1", "--until", "step")
    assert [sorted(x) for x in lines] == [
        ["import_s", "mode"],
        sorted(
            [
                "fp8",
                "load_s",
                "mode",
                "peak_rss_bytes",
                "read_bytes",
                "text_encoders_loaded",
                *RESIDENT,
            ]
        ),
        sorted(["mode", "peak_rss_bytes", "read_bytes", "ready_s", "warmup_s", *RESIDENT]),
        sorted(["mode", "peak_rss_bytes", "step_read_bytes", "step_s", *RESIDENT]),
    ]
    load, ready, step = lines[1], lines[2], lines[3]
    assert load["fp8"] == "off"
    assert load["text_encoders_loaded"] is False  # the tiny builder precomputed the default
    assert load["load_s"] >= 0 and ready["warmup_s"] >= 0 and load["peak_rss_bytes"] > 0
    assert ready["ready_s"] >= load["load_s"] and ready["read_bytes"] >= load["read_bytes"]
    assert step["step_s"] >= 0 and step["step_read_bytes"] >= 0
    assert step["peak_rss_bytes"] >= ready["peak_rss_bytes"] >= load["peak_rss_bytes"]
    # The split itself (that the weights are file pages) is proven in test_model_mapped.py.
    assert all(line[key] > 0 for line in lines[1:] for key in RESIDENT)


def test_probe_reports_the_fp8_conversion(tiny_model_dir):
    """``--fp8 weight-only``: the load line says how many layers became float8, in what time,
    and how many bytes of the mapped file's pages the conversion released."""
    lines = run_probe(tiny_model_dir, "--until", "load", "--fp8", "weight-only")
    load = lines[1]
    assert load["fp8"] == "weight-only" and load["fp8_layers"] > 10
    assert load["fp8_s"] >= 0 and load["fp8_bytes"] > 0 and load["fp8_released_file_bytes"] > 0
