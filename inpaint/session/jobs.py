"""The job, as short numbered steps: claim, read, repaint, write, record.

Every failure ends in exactly one of two ways. A ``PermanentError`` (the user's input) is written
to the session document and the event is acknowledged. Anything else is treated as transient:
the lease is released, and the error propagates so the delivery answers 500 and Eventarc/Pub/Sub
redelivers it; the claim's attempt counter turns a fault that never heals into a recorded failure
after ``INPAINT_MAX_ATTEMPTS`` deliveries.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

from inpaint.config import Settings
from inpaint.errors import (
    DeliverLaterError,
    DeviceStalledError,
    InvalidEventError,
    InvalidRequestError,
    LeaseLostError,
    OutputsRaceError,
    PermanentError,
    ShutdownError,
    TransientError,
    describe_error,
)
from inpaint.logs import log_context
from inpaint.model.params import GenerationParams
from inpaint.photo.repaint import QUEUE_STAGE, Model, Timings, repaint
from inpaint.session.document import result_fields
from inpaint.session.events import Ignored, JobRequest, parse_event
from inpaint.session.gpuqueue import GpuQueue, Ticket
from inpaint.session.heartbeat import Heartbeat
from inpaint.session.store import Claim, ClaimOutcome, Outputs, SessionStore, write_outputs

log = logging.getLogger(__name__)

MAX_SEED = 2**32 - 1


def handle_event(
    event: Any,
    store: Callable[[], SessionStore],
    model: Callable[[], Model],
    settings: Settings,
    *,
    trace_header: str | None = None,
    shutdown: threading.Event | None = None,
    queue: GpuQueue | None = None,
    stalled: Callable[[], str | None] = lambda: None,
) -> None:
    """Entry point for one CloudEvent; what happened goes to the log.

    Malformed events are acknowledged (returning normally), because redelivering them cannot
    help; transient failures raise ``TransientError``. Once ``shutdown`` is set no new job
    starts (the event is answered 500, so it is redelivered to another instance). ``queue`` is
    the instance's GPU queue (one per process); without one the job has the GPU to itself.
    ``stalled`` says why the GPU counts as hung (None while it is not).
    """
    try:
        request = parse_event(event, trace_header=trace_header)
    except InvalidEventError as exc:
        log.warning("event rejected: %s", exc.message, extra={"eventId": _event_id(event)})
        return
    if isinstance(request, Ignored):
        log.info("event ignored: %s", request.reason, extra={"eventId": request.event_id})
        return
    trace = (
        f"projects/{settings.project_id}/traces/{request.trace_id}" if request.trace_id else None
    )
    with log_context(
        eventId=request.event_id,
        userId=request.session.user_id,
        sessionId=request.session.session_id,
        trace=trace,
    ):
        if shutdown is not None and shutdown.is_set():
            log.warning("event refused: the instance is shutting down")
            raise ShutdownError("the instance is shutting down; deliver again")
        JobRunner(settings, store(), model, shutdown, queue, stalled).run(request)


def _event_id(event: Any) -> str | None:
    try:
        return str(event["id"])
    except (KeyError, TypeError):
        return None


class Phase(enum.StrEnum):
    """Where a claimed job is; decides whether a stop spends one of its attempts."""

    INPUTS = "inputs"  # downloading and decoding its photo and mask
    QUEUE = "queue"  # waiting for the GPU
    GPU = "gpu"  # the model call
    OUTPUTS = "outputs"  # pasting back, encoding, uploading, recording


def spends_attempt(phase: Phase, exc: BaseException) -> bool:
    """Whether a transient stop counts toward ``INPAINT_MAX_ATTEMPTS``.

    Only what can be the job's own fault does: an error while it held its inputs, the GPU or its
    outputs. A shutdown (SIGTERM) is the platform's; a job only waiting for the GPU, or stopped
    because the GPU under it hung for another job, or whose outputs were raced by stale jobs'
    uploads, did nothing that could have caused it.
    """
    if isinstance(exc, ShutdownError | DeviceStalledError | OutputsRaceError):
        return False
    return phase is not Phase.QUEUE


class JobRunner:
    """Runs one claimed job end to end (one runner per delivery)."""

    def __init__(
        self,
        settings: Settings,
        store: SessionStore,
        model: Callable[[], Model],
        shutdown: threading.Event | None = None,
        queue: GpuQueue | None = None,
        stalled: Callable[[], str | None] = lambda: None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._model = model
        self._shutdown = shutdown or threading.Event()
        self._queue = queue or GpuQueue()
        self._stalled = stalled
        self._phase = Phase.INPUTS

    def run(self, request: JobRequest) -> None:
        # 1. The pipeline must be ready before we take a lease (else: 500, redelivery).
        model = self._model()
        # 2. A place on this instance, before any claim (else: 503, nothing written).
        ticket = self._queue.admit(request.session.user_id, self._settings.max_queued_jobs)
        try:
            self._run_admitted(request, model, ticket)
        finally:
            self._queue.leave(ticket)

    def _run_admitted(self, request: JobRequest, model: Model, ticket: Ticket) -> None:
        # 3. Claim the session; duplicates, busy sessions and spent retries stop here.
        claim = self._store.claim(request)
        if claim.outcome is not ClaimOutcome.ACQUIRED:
            self.not_acquired(request, claim)
            return
        log.info("job claimed", extra={"attempt": claim.attempt})
        try:
            self._process(claim, model, Timings(), ticket)
        except Exception as exc:
            self.stopped(claim, exc, self._phase)
        finally:
            self._store.end(claim)

    def stopped(self, claim: Claim, exc: Exception, phase: Phase) -> None:
        """8. How a claimed job that raised ends: returns when the delivery is acknowledged,
        raises ``TransientError`` when it must be redelivered."""
        if isinstance(exc, LeaseLostError):
            # 8a. Cancelled, re-queued, deleted or taken over: stop without writing; whoever
            # owns the session now (the app, or the instance holding the lease) decides.
            log.warning("job stopped: %s", exc)
            return
        if isinstance(exc, PermanentError):
            # 8b. The user's input is at fault: record it where the user sees it, acknowledge.
            # Logged with its errorCode only once recorded: the failed-jobs metric counts it.
            if self._store.fail(claim, exc.message, exc.code):
                log.warning("job failed: %s", exc.message, extra={"errorCode": exc.code})
            else:
                log.warning("job failed after its lease was lost: %s", exc.message)
            return
        # 8c. Ours or the platform's: release the lease, answer 500 so it is redelivered,
        # unless this was the last attempt the budget allows: then record the failure. A stop
        # that is not the job's fault gives its attempt back.
        spent = spends_attempt(phase, exc)
        last = claim.attempt >= self._settings.max_attempts
        if spent and last and self._give_up(claim, exc):
            return
        log.error(
            "job interrupted by a transient error; it will be retried",
            exc_info=exc,
            extra={"phase": phase.value, "attemptSpent": spent},
        )
        self._release(claim, exc, refund=not spent)
        raise TransientError(f"transient failure: {describe_error(exc)}") from exc

    def record(self, claim: Claim, written: Outputs, fields: dict[str, Any]) -> None:
        """7b. The status that points at the outputs, with the job's result ``fields``
        (``document.result_fields``); if the lease is gone by then, the outputs are taken back
        and the job stops (``LeaseLostError``). Unknown whether a complete that raised landed:
        the files stay; a redelivery finds the job completed (they are its outputs) or runs it
        again and replaces them."""
        if not self._store.complete(claim, fields):
            self._store.delete_outputs(claim.session, written)
            raise LeaseLostError("the lease was lost before the job could be recorded")

    def _process(self, claim: Claim, model: Model, timings: Timings, ticket: Ticket) -> None:
        s = self._settings
        heartbeat = Heartbeat(
            self._store,
            claim,
            s,
            self._shutdown,
            on_lost=self._queue.wake,
            stalled=lambda: self._stalled() if ticket.running else None,
        )
        with heartbeat:
            # 4. Parameters from the document (bounded), defaults otherwise.
            params = job_params(claim.document, claim.session.session_id, s)
            # 5. Inputs from Storage (size-checked before download), while others use the GPU.
            with timings.stage("download"):
                inputs = self._store.load_inputs(claim.session)

            def on_step(step: int, total: int) -> None:
                self._queue.progress(ticket)
                heartbeat.progress(step, total)

            # 6. Decode and check; wait for the GPU (fair order, position published); repaint
            # the region around the mask; give the GPU to the next job; paste back, encode.
            result = repaint(
                inputs.photo,
                inputs.mask,
                model,
                params,
                s,
                timings=timings,
                on_step=on_step,
                gpu_turn=lambda: self._gpu_turn(ticket, heartbeat, timings),
            )
        # 7. The heartbeat is stopped and joined (no late lease write). Outputs only under our
        # lease and never over a newer request's (``write_outputs``), then the status that
        # points at them; if that status cannot be written, our files are taken back.
        heartbeat.raise_if_lost()
        with timings.stage("upload"):
            written = write_outputs(self._store, claim, result.edited_jpeg, result.preview_jpeg)
        prepared = result.prepared
        busy = timings.busy()
        done = result_fields(
            busy_seconds=busy,
            price_per_second=s.price_per_second,
            stages=timings.stages,
            seed=params.seed,
            prompt=params.prompt,
            mask_empty=prepared.empty,
            region=prepared.region.box if prepared.region else None,
        )
        self.record(claim, written, done)
        log.info(
            "job completed",
            extra={"timings": timings.stages, "busySeconds": round(busy, 3)},
        )

    @contextlib.contextmanager
    def _gpu_turn(self, ticket: Ticket, heartbeat: Heartbeat, timings: Timings) -> Iterator[None]:
        """Waits for the GPU (``queue`` stage, not billed), holds it for the model call only."""

        def check() -> None:
            heartbeat.raise_if_stopped()
            stalled = self._stalled()
            if stalled:
                raise DeviceStalledError(stalled)

        self._phase = Phase.QUEUE
        with timings.stage(QUEUE_STAGE):
            self._queue.wait_turn(ticket, check, heartbeat.queue_position)
        self._phase = Phase.GPU
        if ticket.waited:
            log.info("job left the queue", extra={"queueSeconds": timings.stages[QUEUE_STAGE]})
            heartbeat.left_queue()
        try:
            yield
        finally:
            self._queue.release_gpu(ticket)
            self._phase = Phase.OUTPUTS

    def not_acquired(self, request: JobRequest, claim: Claim) -> None:
        """Acknowledges what no retry can change; keeps a possibly only live copy alive.

        A message for a session without a document is acknowledged with nothing written: the
        user deleted it (or it never existed), and what a user deleted stays deleted. Files a
        crashed job of that session may have left are taken back.
        """
        code = claim.error_code
        extra: dict[str, Any] = {"claim": claim.outcome.name}
        if claim.outcome is ClaimOutcome.MISSING:
            self._store.delete_outputs(request.session, None)
            extra["ignoredReason"] = "session_missing"
        extra |= {"errorCode": code} if code else {}
        # A recorded failure is a WARNING with its errorCode: the failed-jobs metric counts it.
        level = logging.WARNING if code else logging.INFO
        log.log(level, "job not started: %s", claim.outcome.value, extra=extra)
        if not claim.outcome.acknowledges:
            raise DeliverLaterError(claim.outcome.value)

    def _give_up(self, claim: Claim, exc: BaseException) -> bool:
        """Marks the job failed after its last allowed attempt; False if that write fails."""
        message = (
            f"Processing failed after {claim.attempt} attempts because of a temporary problem "
            f"on our side ({describe_error(exc)}). Please try again later."
        )
        try:
            recorded = self._store.fail(claim, message, "attempts_exhausted")
        except Exception:
            log.exception("could not record the failure; the event will be redelivered")
            return False
        if recorded:  # with its errorCode only once recorded (the failed-jobs metric)
            log.error(
                "job failed on its last attempt: %s",
                describe_error(exc),
                exc_info=exc,
                extra={"errorCode": "attempts_exhausted"},
            )
        return recorded

    def _release(self, claim: Claim, exc: BaseException, *, refund: bool) -> None:
        try:
            self._store.release(claim, describe_error(exc), refund=refund)
        except Exception:
            log.exception("could not release the lease; it will expire on its own")


def job_params(document: dict[str, Any], session_id: str, settings: Settings) -> GenerationParams:
    """Validates the optional ``prompt``, ``seed``, ``steps``, ``guidance`` document fields.

    Without a seed the session ID picks one, so a redelivered job paints the same picture.
    """
    prompt = document.get("prompt")
    if prompt is None or (isinstance(prompt, str) and not prompt.strip()):
        prompt = settings.default_prompt
    if not isinstance(prompt, str):
        raise InvalidRequestError("The prompt must be text.")
    if len(prompt) > settings.max_prompt_chars:
        raise InvalidRequestError(
            f"The prompt is {len(prompt)} characters long; the limit is "
            f"{settings.max_prompt_chars}."
        )
    seed = document.get("seed")
    if seed is None:
        seed = int.from_bytes(hashlib.sha256(session_id.encode()).digest()[:4], "big")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise InvalidRequestError(f"The seed must be a whole number from 0 to {MAX_SEED}.")
    steps = document.get("steps", settings.steps)
    if (
        isinstance(steps, bool)
        or not isinstance(steps, int)
        or not 1 <= steps <= settings.max_steps
    ):
        raise InvalidRequestError(
            f"The steps must be a whole number from 1 to {settings.max_steps}."
        )
    guidance = document.get("guidance", settings.guidance)
    if isinstance(guidance, bool) or not isinstance(guidance, int | float):
        raise InvalidRequestError("The guidance must be a number from 0 to 100.")
    # Compared before float(): an integer too large for a float (10**400) raises OverflowError.
    if not 0 <= guidance <= 100:
        raise InvalidRequestError("The guidance must be a number from 0 to 100.")
    return GenerationParams(prompt=prompt.strip(), seed=seed, steps=steps, guidance=float(guidance))
