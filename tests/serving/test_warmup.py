"""The model warm-up's retries (tenacity): which failures are retried, how often, what is kept."""

from __future__ import annotations

import pytest

from inpaint.errors import DeviceUnavailableError, ModelFilesMissingError, TransientError
from inpaint.serving import process


def loader_failing(times: int, error: Exception):
    calls: list[int] = []

    def load():
        calls.append(1)
        if len(calls) <= times:
            raise error
        return "model"

    return load, calls


@pytest.mark.parametrize(
    ("failures", "error", "state", "calls", "message"),
    [
        (0, RuntimeError("boom"), process.State.READY, 1, None),
        (2, RuntimeError("boom"), process.State.READY, 3, None),
        (3, RuntimeError("boom"), process.State.FAILED, 3, "RuntimeError: boom"),
        (1, ModelFilesMissingError("run the weights command"), process.State.FAILED, 1, None),
        (1, DeviceUnavailableError("INPAINT_DEVICE=cuda"), process.State.FAILED, 1, None),
    ],
    ids=["first try", "third try", "attempts spent", "missing files: no retry", "no GPU: no retry"],
)
def test_warmup_retries_what_a_retry_can_fix(monkeypatch, failures, error, state, calls, message):
    monkeypatch.setattr(process, "LOAD_BACKOFF_SECONDS", 0.0)
    load, made = loader_failing(failures, error)
    warmup = process.Warmup(load)
    warmup._run(warmup._generation)
    assert warmup.state is state
    assert len(made) == calls
    if state is process.State.READY:
        assert warmup.model == "model" and warmup.error is None
    else:
        assert warmup.error == (message or str(error))


@pytest.mark.parametrize(
    ("on_gpu", "megapixels", "side"),
    [
        (True, 1.0, 992),  # the largest 1 MP working size: 992 x 992 (multiples of 16)
        (True, 0.0625, 240),  # the test servers' budget
        (True, 2.0, 1408),
        (False, 1.0, 256),  # CPU: small, a full-size step there takes minutes
        (False, 0.0625, 256),
    ],
)
def test_warmup_side(on_gpu, megapixels, side):
    assert process.warmup_side(on_gpu, megapixels) == side


@pytest.mark.parametrize(
    ("silent", "limit", "hung"), [(0.0, 300, False), (300, 300, False), (301, 300, True)]
)
def test_stall_reason(silent, limit, hung):
    reason = process.stall_reason(silent, limit)
    assert (reason is not None) is hung
    if hung:
        assert "INPAINT_GPU_STALL_SECONDS=300" in reason


def test_a_hung_gpu_call_makes_health_503_and_refuses_jobs():
    """Issue 27, defect 2: before, /health looked only at warm-up and device errors."""
    hung: list[str | None] = [None]
    warmup = process.Warmup(lambda: object(), stall=lambda: hung[0])
    warmup.start()
    assert warmup.require(10) is not None
    assert warmup.health()[0] == 200
    hung[0] = "the model call has made no progress for 301 s"
    code, body = warmup.health()
    assert code == 503 and body["model"] == "broken" and "no progress" in body["error"]
    with pytest.raises(TransientError, match="GPU failed"):
        warmup.require(10)
