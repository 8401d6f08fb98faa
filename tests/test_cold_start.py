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
