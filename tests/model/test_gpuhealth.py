"""The device-health decision (``inpaint.model.gpuhealth``): which errors break an instance."""

from __future__ import annotations

import pytest

from inpaint.model.gpuhealth import (
    MAX_OOM_IN_A_ROW,
    SOUND,
    DeviceHealth,
    Failure,
    Verdict,
    classify,
    judge,
)


class OutOfMemoryError(RuntimeError):
    """Named as torch's (``torch.OutOfMemoryError``): classified by name, without torch."""


class AcceleratorError(RuntimeError):
    """Named as torch's CUDA error type (``torch.AcceleratorError``)."""


@pytest.mark.parametrize(
    ("exc", "failure"),
    [
        (OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), Failure.OOM),
        (RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"), Failure.OOM),
        (AcceleratorError("CUDA error: an illegal memory access was encountered"), Failure.FATAL),
        (RuntimeError("CUDA error: device-side assert triggered"), Failure.FATAL),
        (RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED when calling cublasGemmEx"), Failure.FATAL),
        (RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR"), Failure.FATAL),
        (RuntimeError("CUDA error: unspecified launch failure"), Failure.FATAL),
        (ValueError("image size (100, 100) must be positive multiples of 16"), Failure.OTHER),
        (RuntimeError("the instance is shutting down"), Failure.OTHER),
    ],
)
def test_classify(exc, failure):
    assert classify(exc) is failure


BROKEN = Verdict(0, "fatal device error: earlier")


@pytest.mark.parametrize(
    ("previous", "failure", "oom_in_a_row", "broken"),
    [
        (SOUND, Failure.NONE, 0, False),
        (SOUND, Failure.OOM, 1, False),  # one job too large for what is free
        (Verdict(MAX_OOM_IN_A_ROW - 2, None), Failure.OOM, MAX_OOM_IN_A_ROW - 1, False),
        (Verdict(MAX_OOM_IN_A_ROW - 1, None), Failure.OOM, MAX_OOM_IN_A_ROW, True),
        (Verdict(2, None), Failure.NONE, 0, False),  # a success resets the count
        (Verdict(2, None), Failure.OTHER, 2, False),  # a stopped job says nothing either way
        (SOUND, Failure.FATAL, 0, True),  # the CUDA context is gone at once
        (Verdict(1, None), Failure.FATAL, 0, True),
        (BROKEN, Failure.NONE, 0, True),  # broken for good
        (BROKEN, Failure.OOM, 0, True),
    ],
)
def test_judge(previous, failure, oom_in_a_row, broken):
    verdict = judge(previous, failure, "the error")
    assert verdict.oom_in_a_row == oom_in_a_row
    assert (verdict.broken is not None) is broken
    if broken and previous is not BROKEN:
        assert "the error" in verdict.broken


def test_device_health_records_outcomes_in_order():
    health = DeviceHealth()
    oom = OutOfMemoryError("CUDA out of memory")
    for _ in range(MAX_OOM_IN_A_ROW - 1):
        assert health.record(oom) is Failure.OOM
    assert health.record(None) is Failure.NONE
    assert health.broken is None
    for _ in range(MAX_OOM_IN_A_ROW):
        health.record(oom)
    assert health.broken and "out of memory in 3 jobs in a row" in health.broken
