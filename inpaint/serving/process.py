"""Process-wide state of the serving process: the warmed pipeline and the Firebase store.

The pipeline is loaded by a background thread that starts when ``main`` is imported, so the port is
bound at once and ``/ready`` can answer 503 while the model loads; the warm-up inference
(``INPAINT_WARMUP_STEPS``; 0 skips it) must pass before ``/ready`` says 200. A load that fails for a
reason a retry can fix is retried a few times; after that (or at once for missing files or an
unusable device) warm-up has failed for good and ``/health`` answers 503, so Cloud Run replaces the
instance instead of feeding it events. The same happens later when the GPU fails under jobs
(``inpaint.model.gpuhealth``: a fatal CUDA error, or out of memory several jobs in a row).

The loader runs in the process that serves requests. Production (``inpaint.serving.app`` under
gunicorn, no preload) creates the app in its worker and starts loading there. Only the
functions-framework CLI imports ``main.py`` before forking its worker; ``main.py`` then registers
``warm_up_in_forked_workers`` so the child loads and the parent does not: a CUDA context does not
survive a fork.
"""

from __future__ import annotations

import enum
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tenacity

from inpaint.config import Settings, get_settings
from inpaint.errors import StartupError, TransientError
from inpaint.photo.imaging import work_size_for
from inpaint.session.firebase import FirebaseStore
from inpaint.session.gpuqueue import GpuQueue

log = logging.getLogger(__name__)

LOAD_ATTEMPTS = 3
LOAD_BACKOFF_SECONDS = 5.0


def _log_failed_load(state: tenacity.RetryCallState) -> None:
    """Each failed load attempt, with its traceback (the last one too)."""
    error = state.outcome.exception() if state.outcome else None
    log.error(
        "model warm-up failed (attempt %d/%d)",
        state.attempt_number,
        LOAD_ATTEMPTS,
        exc_info=error,
    )


class State(enum.StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    # Loaded, then its GPU failed under a job (``inpaint.model.gpuhealth``): replace the instance.
    BROKEN = "broken"


class Warmup:
    """Loads and warms the model once per process, in the background."""

    def __init__(
        self, loader: Callable[[], Any], stall: Callable[[], str | None] = lambda: None
    ) -> None:
        self._loader = loader
        self._stall = stall
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._pid: int | None = None
        self._generation = 0
        self.state = State.LOADING
        self.error: str | None = None
        self.model: Any = None
        self.seconds: float | None = None

    def start(self) -> None:
        """Starts loading in this process unless it already has (idempotent, fork-aware)."""
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._generation += 1
            generation = self._generation
            self._ready.clear()
            self.state, self.error, self.model = State.LOADING, None, None
        threading.Thread(
            target=self._run, args=(generation,), name="model-warmup", daemon=True
        ).start()

    def abandon_if_loading(self) -> None:
        """In a parent after fork: the child loads its own copy, so stop this one.

        Only while still loading: a fork after warm-up is some library's, not a server's.
        """
        with self._lock:
            if self.state is State.LOADING:
                self._generation += 1

    def _run(self, generation: int) -> None:
        t0 = time.monotonic()
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_not_exception_type(StartupError),
            stop=tenacity.stop_after_attempt(LOAD_ATTEMPTS),
            wait=tenacity.wait_incrementing(LOAD_BACKOFF_SECONDS, LOAD_BACKOFF_SECONDS),
            after=_log_failed_load,
            reraise=True,
        )
        try:
            model = retrying(self._loader)
        except StartupError as exc:
            self._fail(generation, str(exc))
            return
        except Exception as exc:
            self._fail(generation, f"{type(exc).__name__}: {exc}")
            return
        with self._lock:
            if generation != self._generation:
                return
            self.model, self.state = model, State.READY
            self.seconds = round(time.monotonic() - t0, 3)
        self._ready.set()
        log.info("model ready", extra={"warmupSeconds": self.seconds})

    def _fail(self, generation: int, error: str) -> None:
        with self._lock:
            if generation != self._generation:
                return
            self.state, self.error = State.FAILED, error
        log.critical("model warm-up failed for good: %s", error)

    def _current(self) -> tuple[State, str | None]:
        """The state, ``BROKEN`` once the loaded model's device health says so."""
        health = getattr(self.model, "device_health", None)
        broken = health.broken if health is not None else None
        if self.state is State.READY and not broken:
            broken = self._stall()
        if self.state is State.READY and broken:
            return State.BROKEN, broken
        return self.state, self.error

    def require(self, timeout: float) -> Any:
        """The ready model, waiting up to ``timeout``; else ``TransientError`` (redelivery).
        A broken device takes no job: its redelivery should land on a sound instance."""
        self.start()
        if self._ready.wait(timeout) and self.model is not None:
            state, error = self._current()
            if state is State.BROKEN:
                raise TransientError(f"this instance's GPU failed ({error}); deliver elsewhere")
            return self.model
        raise TransientError(f"the inpainting pipeline is not ready ({self.state.value})")

    def health(self) -> tuple[int, dict[str, Any]]:
        """Liveness: sound unless warm-up failed for good or the GPU failed under a job."""
        self.start()
        state, error = self._current()
        unhealthy = state in (State.FAILED, State.BROKEN)
        body: dict[str, Any] = {"status": "unhealthy" if unhealthy else "ok", "model": state.value}
        if unhealthy and error:
            body["error"] = error
        return (503 if unhealthy else 200), body

    def readiness(self) -> tuple[int, dict[str, Any]]:
        """Readiness: 200 once the model is loaded and its warm-up inference (if any) passed."""
        self.start()
        state, error = self._current()
        body: dict[str, Any] = {"model": state.value}
        if error:
            body["error"] = error
        if self.seconds is not None:
            body["warmupSeconds"] = self.seconds
        return (200 if state is State.READY else 503), body


# The warm-up's side on the CPU: a full-size step there takes minutes, and the CPU path serves
# tests and demos.
CPU_WARMUP_SIDE = 256


def warmup_side(on_gpu: bool, work_megapixels: float) -> int:
    """The warm-up image's side. On a GPU the largest working size (a square of
    ``work_megapixels``): an out-of-memory must show at warm-up, not in the first user's job,
    and compiled kernels are then built for that size. On the CPU ``CPU_WARMUP_SIDE``."""
    return work_size_for((1024, 1024), work_megapixels)[0] if on_gpu else CPU_WARMUP_SIDE


def load_and_warm(settings: Settings | None = None) -> Any:
    """Loads the production pipeline and warms it up (one inference unless disabled)."""
    from inpaint.model.inpainter import InpaintModel  # torch is imported here, in the loader thread

    settings = settings or get_settings()
    model = InpaintModel.load(settings)
    model.warm_up(warmup_side(model.device.startswith("cuda"), settings.work_megapixels))
    return model


class _Store:
    """Lazily created FirebaseStore (its clients connect on first use)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._store: FirebaseStore | None = None

    def __call__(self) -> FirebaseStore:
        with self._lock:
            if self._store is None:
                self._store = FirebaseStore(get_settings())
            return self._store


# The instance's one GPU, shared fairly by the jobs Cloud Run admits at once (--concurrency).
GPU_QUEUE = GpuQueue()


def gpu_stall() -> str | None:
    """Why the GPU counts as hung (its holder silent past INPAINT_GPU_STALL_SECONDS), or None."""
    return stall_reason(GPU_QUEUE.stalled_for(), get_settings().gpu_stall_seconds)


def stall_reason(silent_seconds: float, limit: float) -> str | None:
    """The verdict on a GPU holder silent for ``silent_seconds`` (pure)."""
    if silent_seconds <= limit:
        return None
    return (
        f"the model call has made no progress for {silent_seconds:.0f} s "
        f"(INPAINT_GPU_STALL_SECONDS={limit:.0f}): the GPU is hung"
    )


WARMUP = Warmup(load_and_warm, stall=gpu_stall)
STORE = _Store()
# Set on SIGTERM: no new job starts, and a running job gives its lease back at its next step.
SHUTDOWN = threading.Event()


def stop_on_sigterm() -> None:
    """Sets ``SHUTDOWN`` on SIGTERM, then lets the server's own handler run (graceful exit).

    Cloud Run sends SIGTERM and kills the instance 10 s later; a job that is still denoising
    then releases its lease at its next step, so its redelivery need not wait the lease out.
    Call it from the main thread of the serving process, after the server set its handlers.
    """
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: Any) -> None:
        if not SHUTDOWN.is_set():
            log.warning("SIGTERM: taking no new jobs; a running job releases its lease")
        SHUTDOWN.set()
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)


# For the functions-framework CLI only (local runs); production's gunicorn loads the app in its
# worker and calls WARMUP.start() directly.


def launched_by_forking_cli() -> bool:
    """True in the parent process of ``functions-framework --target ...``.

    That CLI imports ``main.py`` in gunicorn's master and then forks the worker; loading there
    would be wasted (and on a GPU, a CUDA context does not survive the fork).
    """
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return program == "functions-framework" or sys.argv[0].endswith(
        "functions_framework/__main__.py"
    )


def warm_up_in_forked_workers() -> None:
    """Loads in each forked worker instead of this process (a load already begun is dropped)."""
    os.register_at_fork(after_in_parent=WARMUP.abandon_if_loading, after_in_child=WARMUP.start)


def require_model() -> Any:
    return WARMUP.require(get_settings().ready_wait_seconds)
