"""The heartbeat of a running job: it keeps the job's lease alive, publishes its progress and
queue position, and is the job's stop signal (the lease lost, SIGTERM, a hung model call, a job
past ``INPAINT_MAX_JOB_SECONDS``).

``heartbeat_tick`` and ``heartbeat_interval`` are its decisions, pure: the deterministic
simulation's heartbeat (``tests/sim``) uses them too.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable

from inpaint.config import Settings
from inpaint.errors import LeaseLostError, ShutdownError, describe_error
from inpaint.session.document import UNCHANGED
from inpaint.session.store import Claim, SessionStore

log = logging.getLogger(__name__)


class Tick(enum.StrEnum):
    """What a heartbeat does at its next beat."""

    RENEW = "renew"  # extend the lease, publish progress and queue position
    OVERRUN = "overrun"  # past INPAINT_MAX_JOB_SECONDS: stop renewing, let the lease expire
    STALLED = "stalled"  # this job's model call hung: give the lease back now


def heartbeat_tick(now: float, deadline: float, stalled: str | None) -> Tick:
    """The heartbeat's decision (pure; the simulation's heartbeat uses it too)."""
    if now > deadline:
        return Tick.OVERRUN
    return Tick.STALLED if stalled else Tick.RENEW


def heartbeat_interval(settings: Settings) -> float:
    """Seconds between beats: ``INPAINT_PROGRESS_INTERVAL_SECONDS``, and at least three
    renewals per lease."""
    return max(0.2, min(settings.progress_interval_seconds, settings.lease_seconds / 3))


class Heartbeat:
    """Keeps the lease alive and publishes progress while a job runs; the job's stop signal.

    A background thread writes at most every ``progress_interval_seconds`` (and at least three
    times per lease), each write conditional on the lease still being ours. When it is not
    (the app cancelled or re-queued, or another instance took over), or the instance is
    shutting down, the next denoising step raises and the job stops before writing outputs.
    Leaving the block stops the thread and waits for it, so no heartbeat lands after the job.
    """

    def __init__(
        self,
        store: SessionStore,
        claim: Claim,
        settings: Settings,
        shutdown: threading.Event | None = None,
        on_lost: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        stalled: Callable[[], str | None] = lambda: None,
    ) -> None:
        self._store = store
        self._stalled = stalled
        self._claim = claim
        self._clock = clock
        self._deadline = clock() + settings.max_job_seconds
        self._max_job_seconds = settings.max_job_seconds
        self._interval = heartbeat_interval(settings)
        self._shutdown = shutdown or threading.Event()
        self._on_lost = on_lost
        self._progress: float | None = None
        self._sent: float | None = None
        self._position: int | None = None
        self._position_sent: int | None = None
        self._lost: str | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def queue_position(self, position: int | None) -> None:
        """Jobs ahead of this one on the instance (None: it has the GPU); written at once."""
        self._position = position
        self._wake.set()

    def left_queue(self) -> None:
        """The job has the GPU: ``queuePosition`` is cleared *before* the model call (a crash
        from here on counts toward the attempts; one while the document says "waiting" does not:
        ``claims.attempts_so_far``). Written now, not by the next beat; if that write fails the
        next beat retries it (the job goes on)."""
        self._position = self._position_sent = None
        try:
            self._store.heartbeat(self._claim, None, None)
        except LeaseLostError:
            raise
        except Exception as exc:
            log.warning("could not clear the queue position: %s", describe_error(exc))
            self._position_sent = UNCHANGED  # type: ignore[assignment]
            self._wake.set()

    def progress(self, step: int, total: int) -> None:
        """Pipeline step callback: (steps done, total); raises when the job must stop."""
        self.raise_if_stopped()
        self._progress = min(1.0, max(0.0, step / max(total, 1))) * 0.95

    def raise_if_lost(self) -> None:
        """``LeaseLostError`` once the heartbeat found the lease gone."""
        if self._lost is not None:
            raise LeaseLostError(self._lost)

    def raise_if_stopped(self) -> None:
        """``LeaseLostError`` once the lease is gone, ``ShutdownError`` once SIGTERM came."""
        self.raise_if_lost()
        if self._shutdown.is_set():
            raise ShutdownError("the instance is shutting down")

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join()  # bounded by the I/O deadline of one heartbeat

    def _loop(self) -> None:
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            stalled = self._stalled()
            tick = heartbeat_tick(self._clock(), self._deadline, stalled)
            if tick is Tick.OVERRUN:
                self._give_up_lease()
                return
            if tick is Tick.STALLED:
                self._release_stalled(stalled or "")
                return
            progress = self._progress if self._progress != self._sent else None
            position = self._position
            changed = position != self._position_sent
            try:
                self._store.heartbeat(self._claim, progress, position if changed else UNCHANGED)
                self._sent = self._progress if progress is not None else self._sent
                self._position_sent = position
            except LeaseLostError as exc:
                self._lost = str(exc)
                if self._on_lost is not None:
                    self._on_lost()  # a job waiting for the GPU stops now, not at its turn
                return
            except Exception as exc:  # the job goes on; the lease check at the end decides
                log.warning("heartbeat failed: %s", describe_error(exc))

    def _release_stalled(self, why: str) -> None:
        """This job's model call hung: its lease goes back now (the attempt stays spent: it held
        the GPU), so the redelivery runs on a sound instance instead of waiting the lease out."""
        self._lost = f"the job's model call hung: {why}"
        log.error("job hung on the GPU: %s", why)
        try:
            self._store.release(self._claim, self._lost, refund=False)
        except Exception as exc:
            log.warning("could not release the hung job's lease: %s", describe_error(exc))
        if self._on_lost is not None:
            self._on_lost()

    def _give_up_lease(self) -> None:
        """A hung job stops renewing: its lease expires and a redelivery takes the job over."""
        self._lost = (
            f"the job ran past INPAINT_MAX_JOB_SECONDS ({self._max_job_seconds:.0f} s); "
            "its lease is left to expire"
        )
        log.error("job overran: %s", self._lost)
        if self._on_lost is not None:
            self._on_lost()
