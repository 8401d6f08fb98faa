"""Error taxonomy: the one decision every failure needs is "retry or record".

Permanent errors are the user's (bad photo, missing document, mask of another shape): retrying
cannot help, so they are written to the session's ``errorMessage`` and the event is acknowledged.
Transient errors are ours or the platform's (Firestore/Storage unreachable, model not ready):
they propagate so that Eventarc/Pub/Sub redelivers the event with backoff.
"""

from __future__ import annotations


class InpaintError(Exception):
    """Base class of every error this package raises on purpose."""


class PermanentError(InpaintError):
    """A failure that no retry can fix. ``message`` is shown to the user as is."""

    def __init__(self, message: str, *, code: str = "invalid_input") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class InvalidImageError(PermanentError):
    """The photo or mask bytes cannot be used (not an image, truncated, too large, ...)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="invalid_image")


class MaskMismatchError(PermanentError):
    """The mask cannot be aligned with the photo (another aspect ratio)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="mask_mismatch")


class InvalidRequestError(PermanentError):
    """The event or the session document asks for something we refuse (bad IDs, limits)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="invalid_request")


class InvalidEventError(InvalidRequestError):
    """The event cannot be turned into a job: logged and acknowledged, never retried."""


class NotFoundError(PermanentError):
    """The session document or one of its input files does not exist."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="not_found")


class PromptUnavailableError(PermanentError):
    """A prompt that is not precomputed, in a deployment built without text encoders."""

    def __init__(self) -> None:
        super().__init__(
            "This prompt cannot be used: this deployment paints only with its preset prompts "
            "(it has no text encoders to read new ones). Leave the prompt empty to use the "
            "default prompt.",
            code="prompt_unavailable",
        )


class StartupError(InpaintError):
    """The deployment cannot serve as configured; loading again cannot help, so warm-up fails
    at once and ``/health`` answers 503 (Cloud Run replaces the instance)."""


class ModelFilesMissingError(StartupError):
    """Weights are not where the settings say; the message names the file and the fix."""


class DeviceUnavailableError(StartupError):
    """The configured device cannot be used (e.g. INPAINT_DEVICE=cuda and CUDA is broken)."""


class TransientError(InpaintError):
    """A failure worth retrying: the event is answered with 5xx and redelivered."""


class DeviceFailedError(TransientError):
    """The GPU failed under a job (a fatal CUDA error, or out of memory): the job is
    redelivered, and ``inpaint.model.gpuhealth`` decides whether this instance is still sound."""


class DeviceStalledError(TransientError):
    """The GPU's holder made no progress past ``INPAINT_GPU_STALL_SECONDS`` (a hung model call):
    jobs waiting for it give their leases back, without spending an attempt, and the instance
    reports itself unhealthy."""


class ShutdownError(TransientError):
    """The instance is shutting down (SIGTERM): the job gives its lease back for redelivery."""


class OutputsRaceError(TransientError):
    """The outputs kept changing under us (stray uploads of jobs that lost their leases)."""


class DeliverLaterError(TransientError):
    """Not a failure: this delivery may be the only live copy of a job that is still running
    under a lease, so it must not be acknowledged. Answered 503 without a traceback."""


# Neither permanent nor transient: the job stops without writing (whoever owns the session now
# decides), or the step that raised reads again.


class LeaseLostError(Exception):
    """Our lease is gone (another instance took over, or the app cancelled or re-queued)."""


class OutputsChangedError(Exception):
    """An output's generation changed between our read and our conditional upload."""


def describe_error(exc: BaseException) -> str:
    """One short line for logs and the recorded error: the type and the first line of text."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__
