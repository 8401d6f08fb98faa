"""The session store: every read and write a job makes, over two narrow backends.

The session document ``users/{u}/sessions/{s}`` is both the user's view of the job and the lock
that makes at-least-once delivery safe: a job is *claimed* by a conditional write (compare-and-set
on the document's version) that records a lease (owner token + expiry). Only the lease owner may
complete or fail the job, so N concurrent deliveries of one message give exactly one inference,
and a worker that dies leaves a lease that expires so the redelivered event can take over.
Outputs are uploaded under generation preconditions, so a job that lost its lease can never
replace a newer request's files, and takes its own back.

The backends are ``Documents`` (get a document with its version; update it only at that version)
and ``Blobs`` (objects with generations and generation preconditions). ``inpaint.session.firebase``
implements them with Firestore and Cloud Storage; the deterministic simulation
(``tests/sim``) with in-memory fakes that pass the same contract tests
(``tests/e2e/test_store_backends.py``, run against Google's emulator and fake-gcs-server too).

What each write sets is built by ``inpaint.session.document`` (every field of the document, who
writes it and when); this module decides *whether* a write may land and makes it land. The
outputs' protocol (``write_outputs_steps``: generations read before the lease check, conditional
uploads, taken back on a stop) is here too; the job (``jobs``) runs it.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from google.api_core import exceptions as gexc

from inpaint.config import Settings
from inpaint.errors import (
    InvalidImageError,
    LeaseLostError,
    NotFoundError,
    OutputsChangedError,
    OutputsRaceError,
    TransientError,
)
from inpaint.session import claims, document
from inpaint.session.cas import compare_and_set
from inpaint.session.document import (
    CANCELLED,
    EDITED,
    PREVIEW,
    QUEUED,
    UNCHANGED,
    Unchanged,
    output_paths,
)
from inpaint.session.events import JobRequest, SessionRef

log = logging.getLogger(__name__)

PHOTO, MASK = "original.jpg", "mask_auto.png"  # the inputs; the outputs' names: ``document``
OUTPUT_CACHE_CONTROL = "private, max-age=0, no-cache"
T = TypeVar("T")
ClaimOutcome = claims.Outcome
Fields = dict[str, Any]
# Output path -> generation (0: absent).
Outputs = dict[str, int]


class Documents(Protocol):
    """Documents with versions: the compare-and-set every claim and lease write rests on."""

    def get(self, path: str) -> tuple[Fields | None, Any]:
        """The document (None: absent) and its version."""

    def update(self, path: str, fields: Fields, version: Any) -> None:
        """Sets ``fields`` only if the document is still at ``version``: else
        ``google.api_core.exceptions.FailedPrecondition`` (or ``NotFound`` when absent)."""


@dataclass(frozen=True)
class BlobInfo:
    generation: int
    size: int | None


class Blobs(Protocol):
    """Objects with generations; every write and delete can be conditional on one."""

    def stat(self, path: str) -> BlobInfo | None:
        """The object's generation and size (None: absent)."""

    def read(self, path: str, generation: int) -> bytes:
        """The bytes of exactly that generation (``NotFound``/``PreconditionFailed`` else)."""

    def write(self, path: str, data: bytes, if_generation_match: int) -> int:
        """Writes if the current generation is ``if_generation_match`` (0: absent); returns the
        new generation; ``google.api_core.exceptions.PreconditionFailed`` else."""

    def delete(self, path: str, if_generation_match: int | None) -> None:
        """Deletes (that generation only, unless None); ``NotFound``/``PreconditionFailed``."""


@dataclass(frozen=True)
class Claim:
    """The result of ``claim``; ``owner`` is our lease token when ``ACQUIRED``."""

    outcome: ClaimOutcome
    session: SessionRef
    owner: str = ""
    attempt: int = 0
    document: dict[str, Any] = field(default_factory=dict)
    error_code: str | None = None  # the failure this claim recorded (expired, exhausted)


@dataclass(frozen=True)
class Inputs:
    photo: bytes
    mask: bytes


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class SessionStore:
    """Claims, inputs, lease writes and outputs of session jobs. Thread-safe: one per process.

    ``clock`` is the wall clock written into the document (leases, timestamps); ``sleep`` the
    pause between compare-and-set races. The simulation passes its virtual ones.
    """

    def __init__(
        self,
        settings: Settings,
        documents: Documents,
        blobs: Blobs,
        *,
        instance: str | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._settings = settings
        self._docs = documents
        self._blobs = blobs
        self._instance = instance or uuid.uuid4().hex[:12]
        self._clock = clock
        self._sleep = sleep
        self._running: set[str] = set()
        self._running_lock = threading.Lock()

    # ----------------------------------------------------------------------------- claim
    @property
    def policy(self) -> claims.Policy:
        s = self._settings
        return claims.Policy(s.lease_seconds, s.max_attempts, s.max_event_age_seconds)

    def claim(self, request: JobRequest, *, now: dt.datetime | None = None) -> Claim:
        """Takes the session's lease (compare-and-set), or says why not (``claims.decide``)."""
        owner = f"{self._instance}:{uuid.uuid4().hex}"
        wanted = claims.Delivery(request.event_id, request.event_time, owner)
        path = request.session.document_path
        # Registered before the write: a concurrent claim in this process must see our lease
        # as running, not as a stale lease of ours to take over.
        with self._running_lock:
            self._running.add(owner)
        version: list[Any] = [None]

        def decide(doc: Fields | None) -> tuple[Claim, Fields | None]:
            with self._running_lock:
                running = frozenset(self._running)
            updated = as_datetime(version[0])
            at = now or self._clock()
            decision = claims.decide(doc, wanted, at, self.policy, running, updated)
            if decision.outcome is ClaimOutcome.ACQUIRED and decision.fields is None:
                log.warning("the claim's reply was lost; the lease it wrote is ours")
            mine = owner if decision.outcome is ClaimOutcome.ACQUIRED else ""
            code = (decision.fields or {}).get("errorCode")
            claim = Claim(
                decision.outcome, request.session, mine, decision.attempt, doc or {}, code
            )
            return claim, decision.fields

        acquired = False
        try:
            claim = self._compare_and_set(path, decide, on_read=version.__setitem__)
            acquired = claim.outcome is ClaimOutcome.ACQUIRED
            return claim
        finally:
            if not acquired:
                self._forget(owner)

    # ------------------------------------------------------------------------ inputs
    def load_inputs(self, session: SessionRef) -> Inputs:
        """Downloads the photo and mask, refusing oversized files before downloading them."""
        return Inputs(
            photo=self._download(session.storage_path(PHOTO), "photo"),
            mask=self._download(session.storage_path(MASK), "mask"),
        )

    def _download(self, path: str, what: str) -> bytes:
        info = self._blobs.stat(path)
        if info is None:
            raise NotFoundError(f"The {what} was not found in Storage at {path}.")
        limit = self._settings.max_input_bytes
        if info.size is not None and info.size > limit:
            raise InvalidImageError(
                f"The {what} is {info.size / 1e6:.1f} MB, above the limit of {limit / 1e6:.1f} MB."
            )
        try:
            return self._blobs.read(path, info.generation)
        except (gexc.NotFound, gexc.PreconditionFailed) as exc:
            raise TransientError(f"the {what} changed while it was being read") from exc

    def read_document(self, session: SessionRef) -> Fields | None:
        return self._docs.get(session.document_path)[0]

    # ------------------------------------------------------------------------ outputs
    def output_generations(self, session: SessionRef) -> Outputs:
        """The outputs' current generations (0: absent), the preconditions of their upload."""
        generations: Outputs = {}
        for name in (EDITED, PREVIEW):
            path = session.storage_path(name)
            info = self._blobs.stat(path)
            generations[path] = info.generation if info is not None else 0
        return generations

    def upload_output(self, path: str, data: bytes, expected: int) -> int:
        """Uploads one output only if its generation is still ``expected`` (0: absent);
        returns the generation written, or ``OutputsChangedError`` when it changed."""
        try:
            return self._blobs.write(path, data, expected)
        except gexc.PreconditionFailed as exc:
            raise OutputsChangedError(f"{path} changed while the outputs were written") from exc

    def delete_outputs(self, session: SessionRef, written: Outputs | None) -> None:
        """Takes outputs back: exactly the generations in ``written`` (a job's own uploads, never
        a newer one's), or every output of the session when None (its document is gone)."""
        targets: dict[str, int | None] = (
            dict(written)
            if written is not None
            else {session.storage_path(n): None for n in (EDITED, PREVIEW)}
        )
        for path, generation in targets.items():
            try:
                self._blobs.delete(path, generation)
                log.info("output taken back", extra={"path": path, "generation": generation})
            except (gexc.NotFound, gexc.PreconditionFailed):
                pass

    # ------------------------------------------------------------------ lease updates
    def heartbeat(
        self,
        claim: Claim,
        progress: float | None,
        queue_position: int | Unchanged | None = UNCHANGED,
    ) -> None:
        """Extends our lease and publishes progress and the queue position, only while the
        lease is ours (``queue_position`` None: the job has started, the field is cleared).

        Raises ``LeaseLostError`` when it is not (cancelled, re-queued, taken over): the job
        must stop without writing anything.
        """

        def decide(doc: Fields | None) -> tuple[bool, Fields | None]:
            if not claims.owns(doc, claim.owner):
                return False, None
            lease = self._settings.lease_seconds
            return True, document.heartbeat_fields(self._clock(), lease, progress, queue_position)

        if not self._compare_and_set(claim.session.document_path, decide):
            raise LeaseLostError(self._why_lost(claim))

    def check_lease(self, claim: Claim) -> None:
        """Raises ``LeaseLostError`` unless the lease is still ours (before writing outputs)."""
        if not claims.owns(self.read_document(claim.session), claim.owner):
            raise LeaseLostError(self._why_lost(claim))

    def _why_lost(self, claim: Claim) -> str:
        doc = self.read_document(claim.session)
        if doc is None:
            return "the user deleted the session"
        status = doc.get("processingStatus")
        if status == CANCELLED:
            return "the app cancelled the job"
        if status == QUEUED:
            return "the app queued a new request for the session"
        return f"the lease is no longer ours (status {status!r})"

    def complete(self, claim: Claim, result: Fields) -> bool:
        """Marks the job completed, with its output paths and ``result``
        (``document.result_fields``), if the lease is still ours; False if we lost it."""
        return self._finish(claim, document.completed_fields(claim.session, result, self._clock()))

    def fail(self, claim: Claim, message: str, code: str) -> bool:
        """Records a permanent failure the user sees, if the lease is still ours."""
        return self._finish(claim, document.failed_fields(message, code, self._clock()))

    def release(self, claim: Claim, error: str, *, refund: bool = False) -> bool:
        """Gives the lease up after a transient error so the redelivery can take over;
        ``refund`` gives the attempt back too (the stop was not the job's fault)."""
        return self._finish(
            claim, document.release_fields(error, claim.attempt, refund=refund, now=self._clock())
        )

    def end(self, claim: Claim) -> None:
        """Forgets a claim in this process (its job is no longer running here)."""
        self._forget(claim.owner)

    def _forget(self, owner: str) -> None:
        with self._running_lock:
            self._running.discard(owner)

    def _finish(self, claim: Claim, fields: Fields) -> bool:
        def decide(doc: Fields | None) -> tuple[bool, Fields | None]:
            done, write = claims.finish(doc, claim.owner, fields)
            return done, fields if write else None

        ok = self._compare_and_set(claim.session.document_path, decide)
        if not ok:
            log.warning("lease lost before the job could be recorded", extra={"owner": claim.owner})
        return ok

    def _compare_and_set(
        self,
        path: str,
        decide: Callable[[Fields | None], tuple[T, Fields | None]],
        on_read: Callable[[int, Any], None] | None = None,
    ) -> T:
        """``compare_and_set`` on one document (``on_read(0, version)`` hears each version
        read, before ``decide`` runs)."""

        def read() -> tuple[Fields | None, Any]:
            doc, version = self._docs.get(path)
            if on_read is not None:
                on_read(0, version)
            return doc, version

        def write(fields: Fields, version: Any) -> None:
            self._docs.update(path, fields, version)

        return compare_and_set(
            read,
            write,
            decide,
            give_up_at=time.monotonic() + self._settings.io_deadline_seconds,
            what=path,
            sleep=self._sleep,
        )


def as_datetime(value: Any) -> dt.datetime | None:
    """A document version or timestamp as an aware datetime (None if it is not one)."""
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    to_datetime = getattr(value, "ToDatetime", None)
    return to_datetime(tzinfo=dt.UTC) if to_datetime is not None else None


# ------------------------------------------------------------------------- outputs protocol
OUTPUT_RACES = 5


def write_outputs_steps(
    store: SessionStore, claim: Claim, edited: bytes, preview: bytes
) -> Generator[str, None, Outputs]:
    """Uploads the outputs only while the lease is ours, never over a newer request's files.

    The generations are read *before* the lease check and every upload is conditional on
    them: a newer request's job can only claim after our lease is gone, so anything it
    uploads changes a generation we read, and our late upload then fails instead of
    replacing its files. A changed generation while the lease is still ours is an older job's
    stray upload (it takes its own files back): read again and retry. Whatever this job wrote
    is taken back if it stops before its files are complete.

    A generator that yields the name of each I/O step before doing it: production runs it
    through (``write_outputs``); the deterministic simulation lets other actors act there.
    """
    files = output_paths(claim.session)
    data = {files["editedImagePath"]: edited, files["previewImagePath"]: preview}
    written: Outputs = {}
    try:
        for _ in range(OUTPUT_RACES):
            yield "read generations"
            expected = store.output_generations(claim.session)
            yield "check lease"
            store.check_lease(claim)
            try:
                for path, content in data.items():
                    yield f"upload {path.rsplit('/', 1)[-1]}"
                    written[path] = store.upload_output(path, content, expected[path])
                return written
            except OutputsChangedError:
                log.warning("outputs changed while being written; checking the lease again")
        raise OutputsRaceError("the outputs kept changing while being written")
    except BaseException:
        yield "take back"
        store.delete_outputs(claim.session, written)
        raise


def run_steps(steps: Generator[str, None, T]) -> T:
    """Runs a step generator through, returning its result."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def write_outputs(store: SessionStore, claim: Claim, edited: bytes, preview: bytes) -> Outputs:
    """``write_outputs_steps`` run through."""
    return run_steps(write_outputs_steps(store, claim, edited, preview))
