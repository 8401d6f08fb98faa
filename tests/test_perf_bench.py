"""benchmarks/perf_bench.py: the tiny-scale run reports every figure, and its building blocks
(variant names, FLOP model, torch GGUF quantizers, random model builder) are right.

No timing is asserted anywhere: the figures are for reading, not for failing a build.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from benchmarks import perf_bench, perf_measure, perf_variants
from inpaint import randmodel

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "perf_bench.py"

VARIANTS = ["baseline", "ours-cache", "ours-cache+dequant", "ours", "ours-l4"]
POSITIVE = [
    "load_s",
    "warmup_s",
    "cold_start_s",
    "first_job_s",
    "job_s",
    "step_s",
    "text_encode_miss_s",
    "vae_encode_s",
    "vae_decode_s",
    "vae_s",
    "peak_mem_bytes",
    "peak_mem_job_bytes",
    "speedup_job",
]
NON_NEGATIVE = ["text_encode_s", "diff_max", "diff_mean", "diff_p99"]
CROP_POSITIVE = [
    "mask_fraction",
    "work_megapixels",
    "detail_gain",
    "model_pixels_crop",
    "model_pixels_full_budget",
    "model_pixels_full_equal_detail",
    "flops_ratio_equal_detail",
    "flops_ratio_equal_budget",
    "crop_job_s",
    "full_equal_detail_job_s",
    "crop_step_s",
    "full_equal_detail_step_s",
    "speedup_equal_detail",
]


def positive(value) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory, tiny_model_dir):
    out = tmp_path_factory.mktemp("perf") / "perf.json"
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--scale",
        "tiny",
        "--workdir",
        str(tiny_model_dir),
        "--size",
        "128",
        "--steps",
        "2",
        "--repeats",
        "3",
        "--crop-steps",
        "1",
        "--variants",
        ",".join(VARIANTS),
        "--json",
        str(out),
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout


def test_tiny_run_reports_every_figure_for_every_variant(report):
    data, _ = report
    results = data["variants"]
    assert [r["variant"] for r in results] == VARIANTS
    for r in results:
        for key in POSITIVE:
            assert positive(r[key]), (r["variant"], key, r[key])
        for key in NON_NEGATIVE:
            assert math.isfinite(r[key]) and r[key] >= 0, (r["variant"], key, r[key])
        assert r["steps_per_job"] == 2
        assert len(r["job_s_runs"]) == 3 and all(positive(x) for x in r["job_s_runs"])
        assert set(r["ratios"]) == {
            "job_s",
            "step_s",
            "cold_start_s",
            "text_encode_s",
            "peak_mem_bytes",
        }
        for key in ("job_s", "step_s", "cold_start_s", "peak_mem_bytes"):
            assert positive(r["ratios"][key]), (r["variant"], key)
        assert r["compute_bound_multiple"] is None  # CPU: no bf16 peak to compare with
        assert isinstance(r["within_tolerance"], bool)
        assert r["page_cache_evicted"] is True
        assert r["text_tokens"] == 32
    by_name = {r["variant"]: r for r in results}
    # The baseline encodes the prompt in every job; the cache makes that zero.
    assert by_name["baseline"]["text_encode_s"] > 0
    assert by_name["ours-cache"]["text_encode_s"] == 0
    assert by_name["ours-cache+dequant"]["applied"]["dequantized"] is True
    assert by_name["baseline"]["ratios"]["job_s"] == 1.0
    # On CPU the exact rewrites give identical pixels (same seed).
    assert by_name["ours-cache+dequant"]["diff_max"] == 0


def test_tiny_run_reports_meta_and_crop_figures(report):
    data, _ = report
    meta = data["meta"]
    assert meta["scale"] == "tiny" and meta["cuda"] is False
    assert (meta["size"], meta["steps"], meta["repeats"]) == (128, 2, 3)
    assert meta["image_tokens"] == 64 and meta["text_tokens"] == 32
    assert positive(meta["flops_per_step"]) and meta["peak_tflops"] is None
    assert meta["memory_kind"].startswith("process peak RSS")
    for key in ("torch", "diffusers", "transformers", "gguf"):
        assert meta["versions"][key]
    crop = data["crop"]
    assert crop["variant"] == VARIANTS[-1]
    for key in CROP_POSITIVE:
        assert positive(crop[key]), (key, crop[key])
    assert abs(crop["mask_fraction"] - 0.05) < 0.005
    # Same budget: about the same model pixels; equal detail: the whole photo costs more.
    assert crop["model_pixels_full_equal_detail"] > crop["model_pixels_crop"]
    assert crop["flops_ratio_equal_detail"] > 1 and crop["detail_gain"] > 1


def test_tiny_run_prints_the_table(report):
    _, stdout = report
    for name in VARIANTS:
        assert name in stdout
    for heading in (
        "cold start",
        "warm job, median of 3",
        "transformer step",
        "x bf16 compute bound",
        "text encoding per job",
        "VAE encode + decode",
        "peak process RSS (GiB, CPU)",
        "mean |pixel diff| vs baseline",
        "ratio job ours/baseline",
        "crop-to-mask",
    ):
        assert heading in stdout, heading


def test_variant_names_map_to_settings():
    assert perf_variants.variant_settings("baseline")["prompt_cache_size"] == 0
    ours = perf_variants.variant_settings("ours")
    assert ours["dequantize"] and ours["compile"] and ours["prompt_cache_size"] > 0
    l4 = perf_variants.variant_settings("ours-l4")
    assert l4["offload_text_encoders"] and l4["compile"] and not l4["dequantize"]
    # issue 20: the L4 profile is FP8 from the Q8_0 file, with the step cache; the old one stays
    assert l4["fp8"] == "auto" and l4["quant"] == "Q8_0" and l4["step_cache_threshold"] == 0.08
    gguf_l4 = perf_variants.variant_settings("ours-l4-gguf")
    assert gguf_l4["fp8"] == "off" and gguf_l4["quant"] == "Q4_0" and gguf_l4["compile"]
    assert gguf_l4["offload_text_encoders"] and gguf_l4["step_cache_threshold"] == 0
    ladder = [perf_variants.variant_settings(n) for n in ("fp8", "fp8+compile")]
    ladder.append(perf_variants.variant_settings("fp8+compile+stepcache"))
    assert [(v["fp8"], v["compile"], v["step_cache_threshold"] > 0) for v in ladder] == [
        ("auto", False, False),
        ("auto", True, False),
        ("auto", True, True),
    ]
    assert all(v["quant"] == "Q8_0" and not v["offload_text_encoders"] for v in ladder)
    bf16 = perf_variants.variant_settings("bf16")
    assert bf16["dequantize"] and bf16["quant"] == "Q8_0" and bf16["fp8"] == "off"
    assert perf_variants.variant_settings("ours-fp8-weight-only")["fp8"] == "weight-only"
    assert perf_variants.variant_settings("ours-fp8-dynamic")["fp8"] == "dynamic"
    assert perf_variants.variant_settings("baseline")["fp8"] == "off"
    pinned = perf_variants.variant_settings("ours-cache+pin-te")
    assert pinned["pin_text_encoders"] and pinned["offload_text_encoders"]
    assert not perf_variants.variant_settings("ours-l4")["pin_text_encoders"]
    custom = perf_variants.variant_settings("ours-cache+attn-_native_cudnn+stepcache-0.08+Q8_0")
    assert custom["attention_backend"] == "_native_cudnn"
    assert custom["step_cache_threshold"] == 0.08 and custom["quant"] == "Q8_0"
    for bad in ("fast", "ours-turbo", "ours-stepcache-x"):
        with pytest.raises(ValueError):
            perf_variants.variant_settings(bad)
    env = perf_variants.env_form({"quant": "Q4_0", **perf_variants.variant_settings("ours")})
    assert "INPAINT_DEQUANTIZE=true" in env and "INPAINT_COMPILE=true" in env


def test_the_reference_variant_is_measured_first():
    args = perf_bench.parse_args(["--variants", "ours,baseline,ours-l4"])
    assert args.reference == "baseline" and args.variant_list == ["baseline", "ours", "ours-l4"]
    args = perf_bench.parse_args(["--variants", "fp8,bf16", "--reference", "bf16"])
    assert args.variant_list == ["bf16", "fp8"]
    assert perf_bench.parse_args(["--variants", "fp8,bf16"]).reference == "fp8"
    with pytest.raises(SystemExit):
        perf_bench.parse_args(["--variants", "fp8", "--reference", "bf16"])


def test_full_scale_on_a_cpu_runs_in_bfloat16():
    assert perf_bench.parse_args(["--scale", "full", "--device", "cpu"]).dtype == "bfloat16"
    assert perf_bench.parse_args(["--scale", "full"]).dtype == "auto"
    assert perf_bench.parse_args(["--scale", "tiny"]).dtype == "auto"
    assert perf_bench.parse_args(
        ["--scale", "full", "--device", "cpu", "--dtype", "float32"]
    ).dtype == ("float32")
    assert perf_variants.variant_settings("baseline")["prompt_embeddings"] is False
    assert perf_variants.variant_settings("ours")["prompt_embeddings"] is True


def test_flop_model_matches_the_published_compute_bound():
    flops = perf_variants.transformer_flops(
        randmodel.FULL_TRANSFORMER_CONFIG, perf_variants.image_tokens_for(1024, 1024), 512
    )
    assert flops == pytest.approx(74e12, rel=0.01)
    assert perf_variants.peak_tflops_for("NVIDIA H100 80GB HBM3") == 989
    assert perf_variants.peak_tflops_for("NVIDIA H100 PCIe") == 756
    assert perf_variants.peak_tflops_for("NVIDIA L4") == 121
    assert perf_variants.peak_tflops_for("NVIDIA H200") == 989
    assert perf_variants.peak_tflops_for("Some CPU") is None


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0"])
def test_torch_quantizers_give_gguf_py_bytes(qtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((48, 256)).astype(np.float32)
    x[0, :32] = 0.0  # an all-zero block
    x[1, :32] = 0.5  # ties in magnitude, both signs
    x[1, 7] = -0.5
    x[2] = np.repeat(np.arange(-4, 4, dtype=np.float32) * 127 / 64, 32)  # rounding halves
    quantize = {"Q8_0": randmodel.quantize_q8_0, "Q4_0": randmodel.quantize_q4_0}[qtype]
    expected = gguf.quants.quantize(x, gguf.GGMLQuantizationType[qtype])
    assert np.array_equal(quantize(torch.from_numpy(x)).numpy(), expected)


NARROW = randmodel.ModelSpec(
    "narrow-test",
    "diffusers",
    {
        **randmodel.FULL_TRANSFORMER_CONFIG,
        "num_layers": 1,
        "num_single_layers": 1,
        "num_attention_heads": 2,
        "joint_attention_dim": 64,
        "pooled_projection_dim": 32,
    },
    {
        **randmodel.T5_XXL_CONFIG,
        "d_model": 64,
        "d_kv": 16,
        "d_ff": 128,
        "num_layers": 1,
        "num_heads": 4,
    },
    {
        **randmodel.CLIP_L_CONFIG,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "projection_dim": 32,
    },
    {
        **randmodel.FLUX_VAE_CONFIG,
        "block_out_channels": [16, 16, 32, 32],
        "layers_per_block": 1,
        "norm_num_groups": 8,
    },
    512,
)


def test_random_gguf_in_bfl_layout_has_the_published_names_and_types(tmp_path):
    specs = randmodel.tensor_specs(NARROW.transformer, "bfl")
    path = tmp_path / "bfl.gguf"
    randmodel.write_random_gguf(path, specs, quant="Q4_0", layout="bfl", device="cpu", seed=0)
    reader = gguf.GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    assert set(tensors) == set(specs)
    q = gguf.GGMLQuantizationType
    assert tensors["double_blocks.0.img_attn.qkv.weight"].tensor_type == q.Q4_0
    assert tensors["single_blocks.0.linear1.weight"].tensor_type == q.Q4_0
    assert tensors["img_in.weight"].tensor_type == q.F16
    assert tensors["double_blocks.0.img_attn.norm.query_norm.scale"].tensor_type == q.F32
    qkv = tensors["double_blocks.0.img_attn.qkv.weight"]
    values = gguf.quants.dequantize(qkv.data, q.Q4_0)
    bound = 1 / math.sqrt(values.shape[-1])
    assert values.shape == specs["double_blocks.0.img_attn.qkv.weight"]
    assert np.abs(values).max() <= bound * 1.01 and values.std() > bound / 4
    scale = np.asarray(tensors["double_blocks.0.img_attn.norm.query_norm.scale"].data)
    assert np.all(scale == 1.0)


def test_build_model_writes_a_weights_dir_the_production_loader_runs(tmp_path):
    from inpaint.config import Settings
    from inpaint.model.inpainter import InpaintModel
    from inpaint.model.params import GenerationParams

    dest = randmodel.build_model(tmp_path / "m", NARROW, quant="Q8_0", device="cpu")
    marker = json.loads((dest / randmodel.MARKER_NAME).read_text())
    assert marker["quants"] == ["Q8_0"] and marker["layout"] == "diffusers"
    mtime = (dest / "flux1-fill-dev-Q8_0.gguf").stat().st_mtime_ns
    randmodel.build_model(dest, NARROW, quant="Q8_0", device="cpu")  # cached
    assert (dest / "flux1-fill-dev-Q8_0.gguf").stat().st_mtime_ns == mtime
    model = InpaintModel.load(Settings(model_dir=dest, quant="Q8_0", device="cpu"))
    assert model.prompts.max_sequence_length == 512  # FLUX's T5 length, not the tiny model's 32
    assert not model.prompts.text_encoders_loaded  # the builder precomputed the default prompt
    image, mask = perf_measure.job_inputs(32)
    out = model.generate(image, mask, GenerationParams("a cat", 1, 1, 30.0))
    assert out.size == (32, 32)
    assert model.pipe.text_encoder_2.config.d_model == 64  # loaded for "a cat"
    (tmp_path / "foreign" / "base").mkdir(parents=True)
    with pytest.raises(FileExistsError):
        randmodel.build_model(tmp_path / "foreign", NARROW, quant="Q8_0", device="cpu")
