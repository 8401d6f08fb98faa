"""The GPU profiles of the deploy (tools/deploy.py GPU_PROFILES): one substitution, ``_GPU``,
selects the GPU type and everything that must match it. The flags of every profile are checked
against ``gcloud run deploy --help`` by tests/deploy/test_cloudbuild.py
(``test_every_gcloud_flag_exists``); the delivery relations per profile by
tests/deploy/test_delivery_settings.py. Cloud Run's figures below are from its GPU
documentation as read 2026-12 (offline here: re-read the pages before relying on them)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from inpaint.config import Settings, delivery_contradictions
from tests.deploy.test_cloudbuild import config, deploy_args, flag_values, key_values, step
from tools.deploy import DEFAULT_GPU, GPU_PROFILES, DeployError, profile_for

ROOT = Path(__file__).resolve().parents[2]

# (GPU type, minimum vCPU, minimum GiB, driver's CUDA major, regions) per Cloud Run's docs.
DOCUMENTED = {
    "nvidia-l4": (4, 16, 12, {"us-east4", "us-central1", "europe-west1", "europe-west4"}),
    "nvidia-rtx-pro-6000": (20, 80, 13, {"us-central1", "europe-west4", "asia-southeast1"}),
}


def test_the_l4_stays_the_default():
    assert DEFAULT_GPU == "nvidia-l4" == config()["substitutions"]["_GPU"]
    assert config()["substitutions"]["_REGION"] in GPU_PROFILES[DEFAULT_GPU].regions


@pytest.mark.parametrize("gpu", GPU_PROFILES)
def test_each_profile_meets_cloud_runs_minimums_for_its_gpu(gpu):
    profile = GPU_PROFILES[gpu]
    min_cpu, min_gib, _, regions = DOCUMENTED[gpu]
    assert (profile.min_cpu, profile.min_memory_gib) == (min_cpu, min_gib)
    assert profile.cpu >= min_cpu and profile.memory_gib >= min_gib
    assert regions <= set(profile.regions)
    flags = flag_values(deploy_args(gpu))
    assert flags["gpu-type"] == gpu and flags["gpu"] == "1"
    assert flags["cpu"] == str(profile.cpu) and flags["memory"] == f"{profile.memory_gib}Gi"


@pytest.mark.parametrize("gpu", GPU_PROFILES)
def test_the_torch_build_runs_on_the_gpus_driver(gpu):
    """CUDA 12.x wheels on the L4's driver 535 (CUDA 12.2, minor-version compatibility; CUDA 13
    wheels refuse it); the RTX PRO 6000 (sm_120) needs a build with Blackwell kernels, which
    the cu126 build lacks: PyPI's default torch 2.13 wheel is the CUDA 13.0 build (driver 580)."""
    profile = GPU_PROFILES[gpu]
    cuda_major = DOCUMENTED[gpu][2]
    assert f"CUDA {cuda_major}." in profile.driver
    if cuda_major == 12:
        assert re.search(r"/whl/cu12\d$", profile.torch_index)
    else:
        assert profile.torch_index == "https://pypi.org/simple"


def test_the_build_step_takes_the_torch_build_from_the_same_table():
    script = step("build")["args"][1]
    cases = dict(re.findall(r"^\s*([a-z0-9-]+)\) torch_index=(\S+) ;;$", script, re.M))
    assert cases == {gpu: p.torch_index for gpu, p in GPU_PROFILES.items()}
    assert re.search(r'^\s*\*\) echo "unknown _GPU=\$\{_GPU\}" >&2; exit 1 ;;$', script, re.M)
    assert '--build-arg TORCH_INDEX_URL="$$torch_index"' in script


@pytest.mark.parametrize("gpu", GPU_PROFILES)
def test_each_profiles_service_settings_pass_the_start_up_check(gpu):
    env = key_values(flag_values(deploy_args(gpu))["set-env-vars"])
    values = {
        k[len("INPAINT_") :].lower(): v
        for k, v in env.items()
        if k.startswith("INPAINT_") and "$" not in v
    }
    settings = Settings(**values)
    assert delivery_contradictions(settings) == []
    assert settings.seconds_per_step == GPU_PROFILES[gpu].seconds_per_step


def test_the_rtx_pro_6000_runs_the_dequantized_transformer_with_the_encoders_on_the_gpu():
    """96 GB: the bf16 transformer (~24 GB dequantized once at load), T5 (~9.5 GB) and CLIP
    stay on the GPU with a 1 MP job's activations and the VAE (~4.5 GB): no per-step GGUF
    dequantization, no encoder visits. The L4 keeps the GGUF layers and offloads the encoders."""
    rtx = key_values(flag_values(deploy_args("nvidia-rtx-pro-6000"))["set-env-vars"])
    l4 = key_values(flag_values(deploy_args("nvidia-l4"))["set-env-vars"])
    assert rtx.get("INPAINT_DEQUANTIZE") == "true"
    assert "INPAINT_OFFLOAD_TEXT_ENCODERS" not in rtx and "INPAINT_CPU_OFFLOAD" not in rtx
    assert l4.get("INPAINT_OFFLOAD_TEXT_ENCODERS") == "true" and "INPAINT_DEQUANTIZE" not in l4
    gib_on_gpu = 24 + 9.5 + 0.25 + 4.5
    assert gib_on_gpu < 0.5 * 96
    # Its cost field counts what has a published price: 20 vCPU and 80 GiB (not the GPU).
    assert float(rtx["INPAINT_PRICE_PER_SECOND"]) == pytest.approx(20 * 0.000018 + 80 * 0.000002)
    assert "INPAINT_PRICE_PER_SECOND" not in l4, "the L4 price is the setting's default"


@pytest.mark.parametrize(
    ("gpu", "region", "error"),
    [
        ("nvidia-l4", "us-east4", None),
        ("nvidia-rtx-pro-6000", "us-central1", None),
        ("nvidia-rtx-pro-6000", "europe-west4", None),
        ("nvidia-rtx-pro-6000", "us-east4", "not offered by Cloud Run in us-east4"),
        ("nvidia-l4", "asia-south2", "not offered"),
        ("nvidia-h100", "us-central1", "unknown GPU"),
    ],
)
def test_profile_for_refuses_a_gpu_its_region_does_not_offer(gpu, region, error):
    if error is None:
        assert profile_for(gpu, region) is GPU_PROFILES[gpu]
    else:
        with pytest.raises(DeployError, match=error):
            profile_for(gpu, region)


def _service(*extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "deploy.py"),
            "service",
            "--project=p",
            "--service=svc",
            "--image=img",
            "--max-instances=1",
            "--runtime-service-account=rt@p.iam.gserviceaccount.com",
            "--ack-deadline=600",
            "--max-delivery-attempts=100",
            "--gcloud=echo",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_service_command_runs_the_profiles_gcloud_run_deploy():
    proc = _service("--gpu=nvidia-rtx-pro-6000", "--region=us-central1")
    assert proc.returncode == 0, proc.stderr
    sent = proc.stdout.splitlines()[-1].split()
    assert sent[:3] == ["run", "deploy", "svc"]
    assert "--gpu-type=nvidia-rtx-pro-6000" in sent and "--cpu=20" in sent
    assert "--memory=80Gi" in sent and "--concurrency=10" in sent


def test_the_service_command_stops_before_deploying_to_a_region_without_the_gpu():
    proc = _service("--gpu=nvidia-rtx-pro-6000", "--region=us-east4")
    assert proc.returncode == 1
    assert "not offered by Cloud Run in us-east4" in proc.stderr
    assert "run deploy" not in proc.stdout
