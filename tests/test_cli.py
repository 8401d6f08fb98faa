"""The local CLI end to end on the tiny model: the same code path as the function."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "inpaint", *map(str, args)],
        cwd=ROOT,
        # INPAINT_DEVICE=cpu: the exact-output assertions hold for the CPU path, GPU or not.
        env=os.environ
        | {"INPAINT_STEPS": "2", "INPAINT_WORK_MEGAPIXELS": "0.0625", "INPAINT_DEVICE": "cpu"}
        | (env or {}),
        capture_output=True,
        text=True,
        timeout=300,
    )


def write_inputs(tmp_path: Path, size=(640, 480)) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    photo.save(tmp_path / "photo.jpg", quality=92)
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle((200, 150, 360, 300), fill=255)
    mask.save(tmp_path / "mask.png")
    return tmp_path / "photo.jpg", tmp_path / "mask.png"


def test_help_documents_every_option():
    out = run_cli("run", "--help").stdout
    for option in (
        "--image",
        "--mask",
        "--out",
        "--prompt",
        "--seed",
        "--steps",
        "--guidance",
        "--model-dir",
        "--tiny",
        "--quant",
        "--device",
        "--dtype",
        "--cpu-offload",
    ):
        assert option in out, option


def test_run_writes_edited_and_preview_with_a_progress_bar(tmp_path, tiny_model_dir):
    photo, mask = write_inputs(tmp_path)
    result = run_cli(
        "run",
        "--image",
        photo,
        "--mask",
        mask,
        "--out",
        tmp_path / "out",
        "--model-dir",
        tiny_model_dir,
        "--quant",
        "Q8_0",
        "--seed",
        "3",
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert "denoising" in result.stderr and "2/2" in result.stderr  # tqdm progress bar
    edited = Image.open(tmp_path / "out" / "edited.jpg")
    preview = Image.open(tmp_path / "out" / "preview.jpg")
    assert edited.format == "JPEG" and edited.size == (640, 480)
    assert preview.size == (512, 384)
    assert summary["maskEmpty"] is False and summary["device"] == "cpu"
    # Same inputs and seed -> identical output.
    again = run_cli(
        "run",
        "--image",
        photo,
        "--mask",
        mask,
        "--out",
        tmp_path / "again",
        "--model-dir",
        tiny_model_dir,
        "--quant",
        "Q8_0",
        "--seed",
        "3",
    )
    assert again.returncode == 0, again.stderr
    first = (tmp_path / "out" / "edited.jpg").read_bytes()
    assert (tmp_path / "again" / "edited.jpg").read_bytes() == first


def test_bad_input_exits_non_zero_with_the_reason(tmp_path, tiny_model_dir):
    photo, _ = write_inputs(tmp_path)
    other = tmp_path / "other.png"
    buf = io.BytesIO()
    Image.new("L", (300, 300), 255).save(buf, "PNG")
    other.write_bytes(buf.getvalue())
    result = run_cli(
        "run",
        "--image",
        photo,
        "--mask",
        other,
        "--out",
        tmp_path / "out",
        "--model-dir",
        tiny_model_dir,
        "--quant",
        "Q8_0",
    )
    assert result.returncode == 2
    assert "aspect ratio" in result.stderr
    assert not (tmp_path / "out" / "edited.jpg").exists()


def test_missing_weights_name_the_file_and_the_command(tmp_path):
    photo, mask = write_inputs(tmp_path)
    result = run_cli(
        "run",
        "--image",
        photo,
        "--mask",
        mask,
        "--out",
        tmp_path / "out",
        "--model-dir",
        tmp_path / "nothing",
    )
    assert result.returncode == 3
    assert "flux1-fill-dev-Q4_0.gguf" in result.stderr
    assert "python -m inpaint weights --dest" in result.stderr
