"""Whether the GPU under this instance is still sound, judged from the errors jobs meet.

A CUDA error such as an illegal memory access leaves the CUDA context unusable: every later job
on this process fails the same way, and each redelivery that lands here spends one of its
attempts. Out of memory is usually one job's size, but the same error several jobs in a row means
the memory is gone for good (fragmentation, a leak). In both cases the instance must go:
``/health`` answers 503 and Cloud Run replaces it, while the jobs are redelivered elsewhere.

Pure (no torch import): errors are recognised by their type name and message, as torch raises
them (``torch.OutOfMemoryError``; ``torch.AcceleratorError`` or ``RuntimeError`` with "CUDA error").
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass

# Out-of-memory errors in a row (no successful job between them) before the instance is
# given up: one is a job too large for what is free, three in a row is a GPU that no longer
# has room for any job.
MAX_OOM_IN_A_ROW = 3

_FATAL_MARKERS = (
    "cuda error",
    "illegal memory access",
    "device-side assert",
    "unspecified launch failure",
    "cublas_status_",
    "cudnn_status_",
    "nccl error",
    "ecc error",
    "uncorrectable",
    "gpu has fallen off the bus",
)


class Failure(enum.StrEnum):
    """What an exception says about the device."""

    NONE = "none"  # the job succeeded
    OTHER = "other"  # it failed, not for the device (stopped, cancelled, a bug of ours)
    OOM = "out_of_memory"
    FATAL = "fatal"


def classify(exc: BaseException) -> Failure:
    """The device failure ``exc`` stands for, from its type name and message."""
    name = type(exc).__name__
    text = str(exc).lower()
    if name == "OutOfMemoryError" or "out of memory" in text:
        return Failure.OOM
    if name == "AcceleratorError" or any(marker in text for marker in _FATAL_MARKERS):
        return Failure.FATAL
    return Failure.OTHER


@dataclass(frozen=True)
class Verdict:
    """The device's health after one more job outcome."""

    oom_in_a_row: int
    broken: str | None  # why the instance must be replaced; None while sound


SOUND = Verdict(0, None)


def judge(previous: Verdict, failure: Failure, error: str = "") -> Verdict:
    """The next verdict: a fatal error breaks the device for good; ``MAX_OOM_IN_A_ROW`` out of
    memory errors in a row do too; a success resets that count, and a failure that is not the
    device's (a job stopped by its callback) leaves it as it was."""
    if previous.broken:
        return previous
    if failure is Failure.FATAL:
        return Verdict(0, f"fatal device error: {error}")
    if failure is Failure.OOM:
        count = previous.oom_in_a_row + 1
        if count >= MAX_OOM_IN_A_ROW:
            return Verdict(count, f"out of memory in {count} jobs in a row: {error}")
        return Verdict(count, None)
    if failure is Failure.OTHER:
        return previous
    return SOUND


class DeviceHealth:
    """The verdict of one loaded model, updated by every job (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._verdict = SOUND

    def record(self, exc: BaseException | None) -> Failure:
        """Updates the verdict with a job's outcome (None: it succeeded); returns its class."""
        failure = Failure.NONE if exc is None else classify(exc)
        error = "" if exc is None else f"{type(exc).__name__}: {exc}"[:300]
        with self._lock:
            self._verdict = judge(self._verdict, failure, error)
        return failure

    @property
    def broken(self) -> str | None:
        """Why the instance must be replaced, or None while the device is sound."""
        with self._lock:
            return self._verdict.broken
