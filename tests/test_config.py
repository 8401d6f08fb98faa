"""The settings object: defaults, environment names, validation at start-up."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from inpaint.config import L4_INSTANCE_PRICE_PER_SECOND, Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for key in (
        "GOOGLE_CLOUD_PROJECT",
        "GCLOUD_PROJECT",
        "FIREBASE_STORAGE_BUCKET",
        "FIRESTORE_EMULATOR_HOST",
        "FIREBASE_CREDENTIALS",
    ):
        monkeypatch.delenv(key, raising=False)
    import os

    for key in list(os.environ):
        if key.startswith("INPAINT_"):
            monkeypatch.delenv(key)


def test_defaults_match_the_contract():
    s = Settings()
    assert (s.quant, s.guidance, s.steps, s.work_megapixels) == ("Q4_0", 30.0, 28, 1.0)
    assert s.gguf_path == Path("weights/flux1-fill-dev-Q4_0.gguf")
    assert s.base_dir == Path("weights/base")
    assert s.price_per_second == pytest.approx(0.0001867 + 8 * 0.000018 + 32 * 0.000002)
    assert s.price_per_second == L4_INSTANCE_PRICE_PER_SECOND
    assert s.bucket_name is None and not s.using_emulators


def test_environment_overrides_and_platform_names(monkeypatch):
    monkeypatch.setenv("INPAINT_QUANT", "Q8_0")
    monkeypatch.setenv("INPAINT_MODEL_DIR", "/models")
    monkeypatch.setenv("INPAINT_STEPS", "12")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "pawfect-edit")
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", "127.0.0.1:1")
    s = Settings()
    assert s.gguf_path == Path("/models/flux1-fill-dev-Q8_0.gguf") and s.steps == 12
    assert s.project_id == "pawfect-edit"
    assert s.bucket_name == "pawfect-edit.firebasestorage.app"
    assert s.using_emulators
    monkeypatch.setenv("FIREBASE_STORAGE_BUCKET", "pawfect-edit.appspot.com")
    assert Settings().bucket_name == "pawfect-edit.appspot.com"


def test_explicit_gguf_file_wins(monkeypatch):
    monkeypatch.setenv("INPAINT_GGUF_FILE", "/x/custom.gguf")
    assert Settings().gguf_path == Path("/x/custom.gguf")


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("INPAINT_QUANT", "Q2_K", "quant"),
        ("INPAINT_STEPS", "0", "steps"),
        ("INPAINT_STEPS", "60", "exceeds INPAINT_MAX_STEPS"),
        ("INPAINT_DEVICE", "tpu", "device"),
        ("INPAINT_GUIDANCE", "-1", "guidance"),
        ("INPAINT_WORK_MEGAPIXELS", "0", "work_megapixels"),
        ("INPAINT_MAX_ATTEMPTS", "abc", "max_attempts"),
    ],
)
def test_bad_values_fail_at_start_naming_the_setting(monkeypatch, key, value, fragment):
    monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError, match=fragment):
        Settings()


def test_settings_are_immutable():
    with pytest.raises(ValidationError):
        Settings().steps = 3


def test_a_prompt_limit_below_the_default_prompt_is_refused_at_start_up():
    """Else every job without its own prompt would fail with "the prompt is too long"."""
    from inpaint.config import DEFAULT_PROMPT

    with pytest.raises(ValidationError, match="exceeds INPAINT_MAX_PROMPT_CHARS=50"):
        Settings(max_prompt_chars=50)
    assert Settings(max_prompt_chars=len(DEFAULT_PROMPT)).max_prompt_chars == len(DEFAULT_PROMPT)
    assert Settings(max_prompt_chars=20, default_prompt="a cat").default_prompt == "a cat"


# --- the delivery contract (issue 28): settings checked against each other ---------------------


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({}, []),
        ({"max_attempts": 99}, []),
        (
            {"max_attempts": 100},
            [("INPAINT_MAX_ATTEMPTS=100", "INPAINT_MAX_DELIVERY_ATTEMPTS=100")],
        ),
        (
            {"max_attempts": 10, "max_delivery_attempts": 10},
            [("INPAINT_MAX_ATTEMPTS=10", "INPAINT_MAX_DELIVERY_ATTEMPTS=10")],
        ),
        ({"lease_seconds": 600}, []),
        (
            {"lease_seconds": 601},
            [("INPAINT_LEASE_SECONDS=601", "INPAINT_ACK_DEADLINE_SECONDS=600")],
        ),
        (
            {"lease_seconds": 180, "ack_deadline_seconds": 120},
            [("INPAINT_LEASE_SECONDS=180", "INPAINT_ACK_DEADLINE_SECONDS=120")],
        ),
        # The deployed L4 profile: (4 + 1) x (50 x 2 s + 10 s) = 550 s <= 600 s.
        ({"seconds_per_step": 2.0}, []),
        # A job waits for at most turn_bound(admitted) = admitted others, then runs its own.
        ({"seconds_per_step": 2.0, "max_queued_jobs": 4}, []),  # 5 x 110 = 550 s
        (
            {"seconds_per_step": 2.0, "max_queued_jobs": 5},  # 6 x 110 = 660 s
            [("INPAINT_MAX_QUEUED_JOBS=5", "INPAINT_ACK_DEADLINE_SECONDS=600")],
        ),
        (
            {"seconds_per_step": 2.0, "max_steps": 100},  # 5 x 210 s
            [("INPAINT_MAX_STEPS=100", "INPAINT_ACK_DEADLINE_SECONDS=600")],
        ),
        (
            {"seconds_per_step": 2.0, "ack_deadline_seconds": 300},
            [("INPAINT_SECONDS_PER_STEP=2", "INPAINT_ACK_DEADLINE_SECONDS=300")],
        ),
        (
            {"seconds_per_step": 2.0, "job_overhead_seconds": 60.0},  # 5 x 160 s
            [("INPAINT_JOB_OVERHEAD_SECONDS=60", "INPAINT_MAX_QUEUED_JOBS=4")],
        ),
        # The heartbeat (every min(3 s, lease / 3)) plus one write's I/O deadline within the lease.
        ({"lease_seconds": 64}, []),  # 3 + 60 < 64
        (
            {"lease_seconds": 63},
            [("INPAINT_LEASE_SECONDS=63", "INPAINT_IO_DEADLINE_SECONDS=60")],
        ),
        (
            {"lease_seconds": 4, "io_deadline_seconds": 4, "progress_interval_seconds": 0.2},
            [("INPAINT_LEASE_SECONDS=4", "INPAINT_IO_DEADLINE_SECONDS=4")],
        ),
        ({"lease_seconds": 4, "io_deadline_seconds": 1.5, "progress_interval_seconds": 0.2}, []),
        # Unknown step time (development, tests): only that check is skipped.
        ({"max_queued_jobs": 64, "max_steps": 200}, []),
        (
            {"max_attempts": 100, "lease_seconds": 700},
            [
                ("INPAINT_MAX_ATTEMPTS=100", "INPAINT_MAX_DELIVERY_ATTEMPTS=100"),
                ("INPAINT_LEASE_SECONDS=700", "INPAINT_ACK_DEADLINE_SECONDS=600"),
            ],
        ),
    ],
)
def test_delivery_settings_are_checked_against_each_other(values, named):
    from inpaint.config import delivery_contradictions

    settings = Settings.model_construct(**(Settings().model_dump() | values))
    problems = delivery_contradictions(settings)
    assert len(problems) == len(named), problems
    for problem, (first, second) in zip(problems, named, strict=True):
        assert first in problem and second in problem, problem
    if named:
        with pytest.raises(ValidationError, match=named[0][0]):
            Settings(**values)
    else:
        Settings(**values)


def test_a_contradiction_in_the_environment_fails_at_start_naming_both_settings(monkeypatch):
    monkeypatch.setenv("INPAINT_MAX_ATTEMPTS", "20")
    monkeypatch.setenv("INPAINT_MAX_DELIVERY_ATTEMPTS", "20")
    with pytest.raises(ValidationError) as raised:
        Settings()
    assert "INPAINT_MAX_ATTEMPTS=20" in str(raised.value)
    assert "INPAINT_MAX_DELIVERY_ATTEMPTS=20" in str(raised.value)
