"""Firestore and Storage, behind the few narrow operations a job needs.

The session document ``users/{u}/sessions/{s}`` is both the user's view of the job and the lock
that makes at-least-once delivery safe: a job is *claimed* by a conditional write (compare-and-set
on the document's update time) that records a lease
(owner token + expiry). Only the lease owner may complete or fail the job, so N concurrent
deliveries of one message give exactly one inference, and a worker that dies leaves a lease that
expires so the redelivered event can take over.

Field names (``processingStatus``, ``editedImagePath``, ``previewImagePath``, ``cost``,
``errorMessage``) and Storage paths are the contract of the service we replace; the other fields
(``progress``, ``attempts``, ``lease*``, ``timings``, ...) are additions the app may ignore.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import enum
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import firebase_admin
import google.auth.credentials
from firebase_admin import credentials, firestore, storage
from google.api_core import exceptions as gexc
from google.api_core.retry import Retry, if_transient_error

from inpaint import claims
from inpaint.cas import compare_and_set
from inpaint.config import Settings
from inpaint.errors import InvalidImageError, NotFoundError, TransientError
from inpaint.events import JobRequest, SessionRef
from inpaint.types import CANCELLED, COMPLETED, QUEUED

log = logging.getLogger(__name__)

PHOTO, MASK, EDITED, PREVIEW = "original.jpg", "mask_auto.png", "edited.jpg", "preview.jpg"
OUTPUT_CACHE_CONTROL = "private, max-age=0, no-cache"
T = TypeVar("T")
ClaimOutcome = claims.Outcome


class Unchanged(enum.Enum):
    """A heartbeat argument that is left as it is in the document."""

    UNCHANGED = "unchanged"


UNCHANGED = Unchanged.UNCHANGED


class LeaseLostError(Exception):
    """Our lease is gone (another instance took over, or the app cancelled or re-queued)."""


# Output path -> generation (0: absent; None in ``delete_outputs``: whatever is there).
Outputs = dict[str, int]


class OutputsChangedError(Exception):
    """An output's generation changed between our read and our conditional upload."""

    def __init__(self, path: str, written: Outputs) -> None:
        super().__init__(f"{path} changed while the outputs were written")
        self.written = written


def output_paths(session: SessionRef) -> dict[str, str]:
    """The document's path fields of a completed job (the replaced service's contract)."""
    return {
        "editedImagePath": session.storage_path(EDITED),
        "previewImagePath": session.storage_path(PREVIEW),
    }


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


class FirebaseStore:
    """Firestore + Storage for session jobs. Thread-safe: one instance per process."""

    def __init__(self, settings: Settings, app: firebase_admin.App | None = None) -> None:
        self._settings = settings
        self._app = app or _initialize_app(settings)
        self._db = firestore.client(self._app)
        self._bucket = storage.bucket(settings.bucket_name, app=self._app)
        self._instance = uuid.uuid4().hex[:12]
        self._running: set[str] = set()
        self._running_lock = threading.Lock()
        deadline = settings.io_deadline_seconds
        self._retry = Retry(predicate=if_transient_error, initial=0.25, maximum=4, timeout=deadline)
        self._timeout = settings.io_timeout_seconds

    # ----------------------------------------------------------------------------- claim
    @property
    def policy(self) -> claims.Policy:
        s = self._settings
        return claims.Policy(s.lease_seconds, s.max_attempts, s.max_event_age_seconds)

    def claim(self, request: JobRequest, *, now: dt.datetime | None = None) -> Claim:
        """Takes the session's lease (compare-and-set), or says why not (``claims.decide``)."""
        owner = f"{self._instance}:{uuid.uuid4().hex}"
        wanted = claims.Request(request.event_id, request.event_time, owner)
        ref = self._ref(request.session)
        # Registered before the write: a concurrent claim in this process must see our lease
        # as running, not as a stale lease of ours to take over.
        with self._running_lock:
            self._running.add(owner)

        version: list[Any] = [None]

        def decide(doc: dict[str, Any] | None) -> tuple[Claim, dict[str, Any] | None]:
            with self._running_lock:
                running = frozenset(self._running)
            updated = _as_datetime(version[0])
            decision = claims.decide(doc, wanted, now or utcnow(), self.policy, running, updated)
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
            claim = self._compare_and_set(ref, decide, on_read=version.__setitem__)
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
        blob = self._bucket.get_blob(path, retry=self._retry, timeout=self._timeout)
        if blob is None:
            raise NotFoundError(f"The {what} was not found in Storage at {path}.")
        limit = self._settings.max_input_bytes
        if blob.size is not None and blob.size > limit:
            raise InvalidImageError(
                f"The {what} is {blob.size / 1e6:.1f} MB, above the limit of {limit / 1e6:.1f} MB."
            )
        try:
            return blob.download_as_bytes(
                retry=self._retry, timeout=self._timeout, if_generation_match=blob.generation
            )
        except (gexc.NotFound, gexc.PreconditionFailed) as exc:
            raise TransientError(f"the {what} changed while it was being read") from exc

    def read_document(self, session: SessionRef) -> dict[str, Any] | None:
        snap = self._ref(session).get(retry=self._retry, timeout=self._timeout)
        return snap.to_dict() if snap.exists else None

    # ------------------------------------------------------------------------ outputs
    def output_generations(self, session: SessionRef) -> Outputs:
        """The outputs' current generations (0: absent), the preconditions of their upload."""
        generations: Outputs = {}
        for name in (EDITED, PREVIEW):
            path = session.storage_path(name)
            blob = self._bucket.get_blob(path, retry=self._retry, timeout=self._timeout)
            generations[path] = int(blob.generation) if blob is not None else 0
        return generations

    def upload_outputs(
        self, session: SessionRef, edited: bytes, preview: bytes, expected: Outputs
    ) -> Outputs:
        """Uploads edited.jpg then preview.jpg, each only if its generation is still
        ``expected``'s; returns the generations written. ``OutputsChangedError`` (with what was
        written so far) when one changed meanwhile."""
        written: Outputs = {}
        for name, data in ((EDITED, edited), (PREVIEW, preview)):
            path = session.storage_path(name)
            blob = self._bucket.blob(path)
            blob.cache_control = OUTPUT_CACHE_CONTROL
            try:
                blob.upload_from_string(
                    data,
                    content_type="image/jpeg",
                    if_generation_match=expected.get(path, 0),
                    retry=self._retry,
                    timeout=self._timeout,
                )
            except gexc.PreconditionFailed as exc:
                raise OutputsChangedError(path, written) from exc
            written[path] = int(blob.generation)
        return written

    def delete_outputs(self, session: SessionRef, written: Outputs | None) -> None:
        """Takes outputs back: exactly the generations in ``written`` (a job's own uploads, never
        a newer one's), or every output of the session when None (its document is gone)."""
        targets = (
            written
            if written is not None
            else {session.storage_path(n): None for n in (EDITED, PREVIEW)}
        )
        for path, generation in targets.items():
            try:
                self._bucket.blob(path).delete(
                    if_generation_match=generation, retry=self._retry, timeout=self._timeout
                )
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

        def decide(doc: dict[str, Any] | None) -> tuple[bool, dict[str, Any] | None]:
            if not claims.owns(doc, claim.owner):
                return False, None
            now = utcnow()
            fields: dict[str, Any] = {
                "leaseExpiresAt": now + dt.timedelta(seconds=self._settings.lease_seconds),
                "updatedAt": now,
            }
            if progress is not None:
                fields["progress"] = round(progress, 4)
            if not isinstance(queue_position, Unchanged):
                fields["queuePosition"] = queue_position
            return True, fields

        if not self._compare_and_set(self._ref(claim.session), decide):
            raise LeaseLostError(self._why_lost(claim))

    def check_lease(self, claim: Claim) -> None:
        """Raises ``LeaseLostError`` unless the lease is still ours (before writing outputs)."""
        if not claims.owns(self.read_document(claim.session), claim.owner):
            raise LeaseLostError(self._why_lost(claim))

    def _why_lost(self, claim: Claim) -> str:
        doc = self.read_document(claim.session) or {}
        status = doc.get("processingStatus")
        if status == CANCELLED:
            return "the app cancelled the job"
        if status == QUEUED:
            return "the app queued a new request for the session"
        return f"the lease is no longer ours (status {status!r})"

    def complete(self, claim: Claim, fields: dict[str, Any]) -> bool:
        """Marks the job completed if the lease is still ours; False if we lost it."""
        now = utcnow()
        return self._finish(
            claim,
            {
                "processingStatus": COMPLETED,
                "progress": 1.0,
                "queuePosition": None,
                "errorMessage": None,
                "errorCode": None,
                "lastError": None,
                "completedAt": now,
                "updatedAt": now,
                "leaseOwner": None,
                "leaseExpiresAt": None,
            }
            | fields,
        )

    def fail(self, claim: Claim, message: str, code: str) -> bool:
        """Records a permanent failure the user sees, if the lease is still ours."""
        return self._finish(claim, claims.failed_fields(message, code, utcnow()))

    def release(self, claim: Claim, error: str, *, refund: bool = False) -> bool:
        """Gives the lease up after a transient error so the redelivery can take over;
        ``refund`` gives the attempt back too (the stop was not the job's fault)."""
        return self._finish(
            claim, claims.release_fields(error, claim.attempt, refund=refund, now=utcnow())
        )

    def end(self, claim: Claim) -> None:
        """Forgets a claim in this process (its job is no longer running here)."""
        self._forget(claim.owner)

    def _forget(self, owner: str) -> None:
        with self._running_lock:
            self._running.discard(owner)

    def _finish(self, claim: Claim, fields: dict[str, Any]) -> bool:
        ref = self._ref(claim.session)

        def decide(doc: dict[str, Any] | None) -> tuple[bool, dict[str, Any] | None]:
            done, write = claims.finish(doc, claim.owner, fields)
            return done, fields if write else None

        ok = self._compare_and_set(ref, decide)
        if not ok:
            log.warning("lease lost before the job could be recorded", extra={"owner": claim.owner})
        return ok

    def _compare_and_set(
        self,
        ref: Any,
        decide: Callable[[dict[str, Any] | None], tuple[T, dict[str, Any] | None]],
        on_read: Callable[[int, Any], None] | None = None,
    ) -> T:
        """``compare_and_set`` on one Firestore document, its version being ``update_time``
        (``on_read(0, version)`` hears each version read, before ``decide`` runs)."""

        def read() -> tuple[dict[str, Any] | None, Any]:
            snap = ref.get(retry=self._retry, timeout=self._timeout)
            if on_read is not None:
                on_read(0, snap.update_time)
            return (snap.to_dict() if snap.exists else None), snap.update_time

        def write(fields: dict[str, Any], version: Any) -> None:
            option = self._db.write_option(last_update_time=version)
            # No automatic retry: if the write landed and only its reply was lost, a blind
            # retry fails its precondition; re-reading lets ``decide`` recognise our write.
            ref.update(fields, option=option, retry=None, timeout=self._timeout)

        return compare_and_set(
            read,
            write,
            decide,
            give_up_at=time.monotonic() + self._settings.io_deadline_seconds,
            what=ref.path,
        )

    def _ref(self, session: SessionRef) -> Any:
        return self._db.document(session.document_path)


def _as_datetime(value: Any) -> dt.datetime | None:
    """A Firestore timestamp (``DatetimeWithNanoseconds`` or protobuf) as an aware datetime."""
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    to_datetime = getattr(value, "ToDatetime", None)
    return to_datetime(tzinfo=dt.UTC) if to_datetime is not None else None


def _initialize_app(settings: Settings) -> firebase_admin.App:
    """FIREBASE_CREDENTIALS (base64 service-account JSON) > emulators > Application Default."""
    options: dict[str, Any] = {}
    if settings.project_id:
        options["projectId"] = settings.project_id
    if settings.bucket_name:
        options["storageBucket"] = settings.bucket_name
    credential: Any
    if settings.firebase_credentials is not None:
        credential = credentials.Certificate(_decode_service_account(settings))
    elif settings.using_emulators:
        # firebase-admin 7 still wants a credential with the emulators: an anonymous one.
        credential = google.auth.credentials.AnonymousCredentials()
    else:
        credential = credentials.ApplicationDefault()
    name = f"inpaint-{uuid.uuid4().hex[:8]}"
    return firebase_admin.initialize_app(credential, options=options, name=name)


def _decode_service_account(settings: Settings) -> dict[str, Any]:
    assert settings.firebase_credentials is not None
    raw = settings.firebase_credentials.get_secret_value().strip()
    try:
        info = json.loads(raw if raw.startswith("{") else base64.b64decode(raw, validate=True))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("FIREBASE_CREDENTIALS is neither base64 nor JSON") from exc
    if not isinstance(info, dict) or info.get("type") != "service_account":
        raise ValueError("FIREBASE_CREDENTIALS is not a service-account key")
    return info
