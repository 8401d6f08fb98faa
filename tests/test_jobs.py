"""Unit tests of the job parameter rules (whole jobs run in tests/e2e, on real servers)."""

from __future__ import annotations

import pytest

from inpaint.config import Settings
from inpaint.errors import InvalidRequestError, PermanentError, TransientError
from inpaint.jobs import MAX_SEED, _describe, job_params

SETTINGS = Settings(default_prompt="default prompt", steps=28, max_steps=50, guidance=30.0)


def test_defaults_when_the_document_has_no_parameters():
    p = job_params({}, "session-1", SETTINGS)
    assert (p.prompt, p.steps, p.guidance) == ("default prompt", 28, 30.0)
    assert 0 <= p.seed <= MAX_SEED


def test_seed_derived_from_session_is_stable_and_differs_between_sessions():
    assert job_params({}, "a", SETTINGS).seed == job_params({}, "a", SETTINGS).seed
    assert job_params({}, "a", SETTINGS).seed != job_params({}, "b", SETTINGS).seed


def test_document_values_are_used():
    doc = {"prompt": "  a corgi  ", "seed": 7, "steps": 4, "guidance": 12}
    p = job_params(doc, "s", SETTINGS)
    assert (p.prompt, p.seed, p.steps, p.guidance) == ("a corgi", 7, 4, 12.0)


def test_blank_prompt_falls_back_to_default():
    assert job_params({"prompt": "   "}, "s", SETTINGS).prompt == "default prompt"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"prompt": 42}, "The prompt must be text."),
        ({"prompt": "x" * 100_000}, "The prompt is 100000 characters long; the limit is 2000."),
        ({"seed": "12"}, "The seed must be a whole number"),
        ({"seed": 1.5}, "The seed must be a whole number"),
        ({"seed": True}, "The seed must be a whole number"),
        ({"seed": -1}, "The seed must be a whole number"),
        ({"seed": MAX_SEED + 1}, "The seed must be a whole number"),
        ({"steps": 0}, "The steps must be a whole number from 1 to 50."),
        ({"steps": 51}, "The steps must be a whole number from 1 to 50."),
        ({"guidance": "high"}, "The guidance must be a number"),
        ({"guidance": 101}, "The guidance must be a number"),
    ],
)
def test_bad_parameters_are_permanent_errors_with_specific_messages(doc, message):
    with pytest.raises(InvalidRequestError) as info:
        job_params(doc, "s", SETTINGS)
    assert info.value.message.startswith(message)
    assert isinstance(info.value, PermanentError)
    assert not isinstance(info.value, TransientError)


def test_describe_is_one_short_line():
    text = _describe(RuntimeError("first line\nsecond line " + "x" * 1000))
    assert text.startswith("RuntimeError: first line") and "second" not in text
    assert _describe(TimeoutError()) == "TimeoutError"
