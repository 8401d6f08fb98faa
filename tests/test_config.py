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
