"""One validated settings object, read from the environment in one place.

Every tunable of the service lives here with its default and bounds, so that a bad deployment
fails at start-up with a message naming the variable instead of half-way through a job. Our own
variables carry the ``INPAINT_`` prefix; ``FIREBASE_CREDENTIALS``, ``GOOGLE_CLOUD_PROJECT`` and
``FIREBASE_STORAGE_BUCKET`` keep the names the platform and the replaced service use.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from inpaint.model.weights_layout import Quant, gguf_filename

# Cloud Run, us-east4 tier-1 instance-based billing (CPU always allocated), Nov 2026 price list:
# NVIDIA L4 without zonal redundancy $0.0001867/s + 8 vCPU x $0.000018/s + 32 GiB x $0.000002/s.
L4_INSTANCE_PRICE_PER_SECOND = 0.0001867 + 8 * 0.000018 + 32 * 0.000002

DEFAULT_PROMPT = (
    "a natural, seamless continuation of the photo, realistic fur, lighting and background, "
    "high detail"
)


class Settings(BaseSettings):
    """Service settings; docs/configuration.md lists every variable (generated from this class)."""

    model_config = SettingsConfigDict(
        env_prefix="INPAINT_", extra="ignore", frozen=True, populate_by_name=True
    )

    # --- model -----------------------------------------------------------------------------
    model_dir: Path = Field(
        Path("weights"),
        description="Directory written by `python -m inpaint weights` (base/ + the GGUF file).",
    )
    quant: Quant = Field(
        "Q4_0",
        description="GGUF quantization: loads flux1-fill-dev-<QUANT>.gguf from the model dir.",
    )
    gguf_file: Path | None = Field(None, description="Explicit GGUF path; overrides quant.")
    device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description="auto: CUDA when present, else CPU.",
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="auto: bfloat16 on CUDA, float32 on CPU."
    )
    cpu_offload: bool = Field(
        False,
        description="Experimental (not yet measured on a GPU). "
        "Model CPU offload, for GPUs under 24 GB.",
    )
    dequantize: bool = Field(
        False,
        description="Experimental (not yet measured on a GPU). "
        "Dequantize GGUF weights once at load (faster steps; ~24 GB in bf16).",
    )
    warmup_steps: int = Field(
        2,
        ge=0,
        le=50,
        description="Steps of the warm-up inference before /ready; 0 skips it (ready once "
        "loaded; the first job then pays the first-call costs and, on CPU, reads the weights).",
    )
    prompt_cache_size: int = Field(
        32,
        ge=0,
        le=4096,
        description="Prompts whose CLIP/T5 embeddings stay in memory; 0 turns it off.",
    )
    prompt_embeddings: bool = Field(
        True,
        description="Use the prompt embeddings precomputed in the weights directory (then the "
        "service is ready without CLIP and T5, which load on the first other prompt).",
    )
    extra_prompts: tuple[str, ...] = Field(
        (),
        description="Prompts the weights command precomputes besides the default one (JSON list).",
    )
    text_encoders_background: bool = Field(
        False,
        description="Load CLIP and T5 in the background right after warm-up instead of on the "
        "first prompt that needs them.",
    )

    # --- generation ------------------------------------------------------------------------
    default_prompt: str = Field(
        DEFAULT_PROMPT, min_length=1, description="Used when the session document has no prompt."
    )
    guidance: float = Field(
        30.0, ge=0.0, le=100.0, description="Default guidance scale (FLUX Fill needs about 30)."
    )
    steps: int = Field(
        28, ge=1, le=100, description="Default denoising steps; at most INPAINT_MAX_STEPS."
    )
    max_steps: int = Field(50, ge=1, le=200, description="Most steps a document may ask for.")
    max_prompt_chars: int = Field(
        2000, ge=1, le=100_000, description="Longer prompts are refused; the default must fit."
    )

    # --- images ----------------------------------------------------------------------------
    max_input_bytes: int = Field(
        40 * 1024 * 1024,
        ge=1024,
        description="Per input file, checked from Storage metadata before the download.",
    )
    max_input_pixels: int = Field(
        50_000_000, ge=1, description="Per image, checked from its header before decoding."
    )
    work_megapixels: float = Field(
        1.0,
        gt=0.01,
        le=4.0,
        description="The model's resolution budget for the crop around the mask.",
    )
    crop_margin: float = Field(
        0.5,
        ge=0.0,
        le=10.0,
        description="Context around the mask's bounding box, a fraction of its size.",
    )
    feather_px: int = Field(
        8, ge=0, le=256, description="Paste-back blend width, in original pixels."
    )
    dilate_px: int = Field(
        4,
        ge=0,
        le=256,
        description="The mask grows by this before the paste-back, in original pixels.",
    )

    # --- Firebase --------------------------------------------------------------------------
    project_id: str | None = Field(
        None,
        validation_alias=AliasChoices(
            "INPAINT_PROJECT_ID", "GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT"
        ),
        description="Firebase (Google Cloud) project.",
    )
    bucket: str | None = Field(
        None,
        validation_alias=AliasChoices("INPAINT_BUCKET", "FIREBASE_STORAGE_BUCKET"),
        description="Storage bucket; unset: <project>.firebasestorage.app (projects created "
        "before October 2024 need <project>.appspot.com).",
    )
    firebase_credentials: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("FIREBASE_CREDENTIALS"),
        description="Service-account JSON, plain or base64; unset: Application Default "
        "Credentials (anonymous with the emulators).",
    )

    # --- job lifecycle ---------------------------------------------------------------------
    lease_seconds: float = Field(
        180.0,
        gt=0.5,
        le=3600.0,
        description="Claim lease, renewed by the heartbeat while a job runs.",
    )
    max_attempts: int = Field(
        5,
        ge=1,
        le=100,
        description="Deliveries of one request (each re-edit has its own budget) before a "
        "transient fault marks the session failed.",
    )
    # 24 h: the retention of the Eventarc trigger's subscription. A burst queues jobs for
    # N x job time; none of them may be failed as "expired" while Pub/Sub still redelivers it.
    max_event_age_seconds: float = Field(
        86400.0, gt=0.0, description='Older events are marked failed ("The request expired").'
    )
    price_per_second: float = Field(
        L4_INSTANCE_PRICE_PER_SECOND,
        ge=0.0,
        description="US dollars per busy second, for the cost field (default: a Cloud Run L4 "
        "instance with 8 vCPU and 32 GiB).",
    )
    progress_interval_seconds: float = Field(
        3.0, ge=0.0, description="At most one progress write per interval (and 3 per lease)."
    )
    max_event_bytes: int = Field(
        1024 * 1024, ge=1024, description="Larger request bodies are acknowledged, not processed."
    )
    io_timeout_seconds: float = Field(30.0, gt=0.0, description="One Firestore/Storage call.")
    io_deadline_seconds: float = Field(
        60.0, gt=0.0, description="Retries of one call give up after this (then redelivery)."
    )
    max_job_seconds: float = Field(
        1200.0,
        gt=0.0,
        description="A job still running after this stops renewing its lease, so a hung job "
        "cannot hold its session forever: the lease expires and a redelivery takes over. Above "
        "the 600 s ack deadline, after which Pub/Sub has already delivered the job again.",
    )
    gpu_stall_seconds: float = Field(
        300.0,
        gt=0.0,
        description="A job holding the GPU with no denoising step for this long is a hung "
        "model call (driver or lock): /health answers 503 so Cloud Run replaces the instance, "
        "the hung job gives its lease back and the jobs waiting behind it are redelivered "
        "without spending an attempt. Far above one step (prompt encoding included).",
    )
    max_queued_jobs: int = Field(
        4,
        ge=1,
        le=64,
        description="Jobs admitted on one instance at once: one on the GPU, the others "
        "waiting with their inputs decoded. Cloud Run's --concurrency is 2 more (quick answers); "
        "a delivery beyond it is answered 503 before it claims anything.",
    )
    ready_wait_seconds: float = Field(
        30.0, ge=0.0, description="How long an event waits for warm-up before a 500."
    )

    # --- speed-ups (measured one at a time by benchmarks/perf_bench.py; docs/performance.md) ---
    # Each is one object in inpaint/model/options.py; those not yet proven on a GPU say
    # "Experimental" here (tests/model/test_model_options.py checks it against the objects).
    compile: bool = Field(
        False,
        description="Experimental (not yet measured on a GPU). "
        "Regional torch.compile of the transformer's repeated blocks (CUDA only; "
        "ignored on CPU). Costs compile time at warm-up and on each new image size.",
    )
    offload_text_encoders: bool = Field(
        False,
        description="Experimental (not yet measured on a GPU). "
        "Keep CLIP and T5 in CPU memory and move them to the GPU only to encode an "
        "uncached prompt (~9.5 GB less GPU memory; a cache miss pays the transfers).",
    )
    pin_text_encoders: bool = Field(
        False,
        description="Experimental (not yet measured on a GPU). "
        "With INPAINT_OFFLOAD_TEXT_ENCODERS on a GPU: keep CLIP and T5 in page-locked "
        "CPU memory, so a new prompt's visit to the GPU copies faster (~11.5 GB of locked host "
        "memory; off until the GPU benchmark shows it pays).",
    )
    attention_backend: str | None = Field(
        None,
        pattern=r"^[a-z0-9_]+$",
        description="Experimental (not yet measured on a GPU). "
        "diffusers attention backend for the transformer (e.g. native, "
        "_native_cudnn, _native_flash, flash); unset keeps diffusers' default (PyTorch SDPA).",
    )
    fp8: Literal["off", "auto", "weight-only", "dynamic"] = Field(
        "off",
        description="Experimental (not yet measured on a GPU). "
        "Transformer weights in float8 e4m3 (torchao), converted from the GGUF file "
        "at load, one layer at a time (a Q8_0 file is the better source). dynamic: FP8 weights "
        "and activations, FP8 matmuls (CUDA compute capability >= 8.9, e.g. L4, H100, and "
        "bfloat16); weight-only: FP8 weights, matmuls in the compute dtype (any device); auto: "
        "dynamic where supported, else weight-only. Refused with INPAINT_DEQUANTIZE or "
        "INPAINT_CPU_OFFLOAD.",
    )
    step_cache_threshold: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Experimental (not yet measured on a GPU). "
        "First-block cache threshold (skips steps whose first block barely "
        "changes; approximate, changes the output). 0 turns it off.",
    )

    # --- delivery contract (issue 28) -------------------------------------------------------
    # Set by the deploy (cloudbuild.yaml, tools/deploy.py) from the same values it gives the
    # trigger's subscription, and checked against the settings above by ``_check_delivery``.
    ack_deadline_seconds: int = Field(
        600,
        ge=10,
        le=600,
        description="Ack deadline of the trigger's subscription (set by the deploy; also Cloud "
        "Run's request timeout): a push unanswered by then is delivered again.",
    )
    max_delivery_attempts: int = Field(
        100,
        ge=5,
        le=100,
        description="The subscription's delivery attempts before a message is dead-lettered "
        "(set by the deploy). Every refused push (429, 503) counts.",
    )
    seconds_per_step: float | None = Field(
        None,
        gt=0.0,
        description="Estimated seconds of one denoising step at INPAINT_WORK_MEGAPIXELS on the "
        "deployed GPU profile (set by the deploy). With it, the start-up check bounds the "
        "longest job (INPAINT_MAX_STEPS steps + INPAINT_JOB_OVERHEAD_SECONDS) times "
        "INPAINT_MAX_QUEUED_JOBS by the ack deadline; unset: that check is skipped.",
    )
    job_overhead_seconds: float = Field(
        10.0,
        ge=0.0,
        description="A job's time outside the denoising steps (download, decode, VAE, upload), "
        "for the start-up check with INPAINT_SECONDS_PER_STEP.",
    )

    @model_validator(mode="after")
    def _check_delivery(self) -> Settings:
        problems = delivery_contradictions(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # --- end of the delivery contract -------------------------------------------------------

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.steps > self.max_steps:
            raise ValueError(
                f"INPAINT_STEPS={self.steps} exceeds INPAINT_MAX_STEPS={self.max_steps}"
            )
        if len(self.default_prompt) > self.max_prompt_chars:
            # Else every job without its own prompt fails with "the prompt is too long".
            raise ValueError(
                f"INPAINT_DEFAULT_PROMPT ({len(self.default_prompt)} characters) exceeds "
                f"INPAINT_MAX_PROMPT_CHARS={self.max_prompt_chars}"
            )
        return self

    @property
    def gguf_path(self) -> Path:
        """The transformer's GGUF file: explicit, or the weights command's file name."""
        return self.gguf_file or self.model_dir / gguf_filename(self.quant)

    @property
    def base_dir(self) -> Path:
        """Local copy of black-forest-labs/FLUX.1-Fill-dev (without transformer weights)."""
        return self.model_dir / "base"

    @property
    def using_emulators(self) -> bool:
        """True when the Firebase emulator variables point at local servers."""
        return bool(os.environ.get("FIRESTORE_EMULATOR_HOST"))

    @property
    def bucket_name(self) -> str | None:
        """Configured bucket, else the Firebase default bucket of the project."""
        if self.bucket:
            return self.bucket
        return f"{self.project_id}.firebasestorage.app" if self.project_id else None


# The fair GPU queue's bound (``inpaint.session.gpuqueue`` applies it; here because the delivery
# check below needs it and the image's weights stage imports this module without the queue). Passes
# by later-admitted jobs after which a job goes next: one keeps the fair order's point (a user's
# second job yields once to another user's first) while the wait stays within one more job than
# first come, first served.
MAX_PASSES = 1


def turn_bound(admitted: int) -> int:
    """The most model calls that can start between a job being ready and its own: the jobs
    admitted before it, plus ``MAX_PASSES``."""
    return max(admitted - 1, 0) + MAX_PASSES


def delivery_contradictions(s: Settings) -> list[str]:
    """The delivery settings that contradict each other, each message naming both sides
    (empty: they agree). Pure: table-driven in tests/test_config.py, and applied to the
    deployed values in tests/deploy/test_delivery_settings.py."""
    problems = []
    if s.max_attempts >= s.max_delivery_attempts:
        problems.append(
            f"INPAINT_MAX_ATTEMPTS={s.max_attempts} must be below "
            f"INPAINT_MAX_DELIVERY_ATTEMPTS={s.max_delivery_attempts}: Pub/Sub would dead-letter "
            "a failing job before the service records its failure on the session"
        )
    if s.lease_seconds > s.ack_deadline_seconds:
        problems.append(
            f"INPAINT_LEASE_SECONDS={s.lease_seconds:g} exceeds "
            f"INPAINT_ACK_DEADLINE_SECONDS={s.ack_deadline_seconds}: the redelivery of a job "
            "whose instance died would find its lease still held"
        )
    # The heartbeat renews the lease every min(progress interval, lease / 3)
    # (inpaint/session/heartbeat.py); one renewal may retry its write for up to the I/O deadline.
    heartbeat = max(0.2, min(s.progress_interval_seconds, s.lease_seconds / 3))
    if heartbeat + s.io_deadline_seconds >= s.lease_seconds:
        problems.append(
            f"INPAINT_LEASE_SECONDS={s.lease_seconds:g} must exceed the heartbeat interval "
            f"({heartbeat:g} s, from INPAINT_PROGRESS_INTERVAL_SECONDS="
            f"{s.progress_interval_seconds:g}) + INPAINT_IO_DEADLINE_SECONDS="
            f"{s.io_deadline_seconds:g}: a renewal still retrying would let a running job's "
            "lease expire"
        )
    if s.seconds_per_step is not None:
        longest = s.max_steps * s.seconds_per_step + s.job_overhead_seconds
        # A job waits for at most turn_bound(admitted) others (the fair queue's bound), then runs.
        jobs = turn_bound(s.max_queued_jobs) + 1
        if jobs * longest > s.ack_deadline_seconds:
            problems.append(
                f"INPAINT_MAX_QUEUED_JOBS={s.max_queued_jobs} (a job waits for up to "
                f"{jobs - 1} others) x the longest job "
                f"({longest:g} s: INPAINT_MAX_STEPS={s.max_steps} x "
                f"INPAINT_SECONDS_PER_STEP={s.seconds_per_step:g} + "
                f"INPAINT_JOB_OVERHEAD_SECONDS={s.job_overhead_seconds:g}) exceeds "
                f"INPAINT_ACK_DEADLINE_SECONDS={s.ack_deadline_seconds}: the last admitted job "
                "would be delivered again while it waits for the GPU"
            )
    return problems


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
