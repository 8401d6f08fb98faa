"""The claim rules as a pure state machine: document + delivery + now -> outcome + fields.

Every delivery of an event asks "may I run this session's job now?". The answer depends on the
session document (status, lease, attempts, which event last claimed it), on the delivery (its
event ID, its age, the lease token this claim would write) and on the clock. Keeping the rules
here, without I/O, lets a table-driven test cover every combination; the fields a decision writes
are built by ``document`` (which declares every field), and ``store`` only reads the document and
writes them with a precondition.

Words used below:

- A *request* is one thing the app asked for: the app sets ``processingStatus: "queued"`` (and
  publishes a message). Each request has its own attempt budget; redeliveries of it, and other
  events for the same request (a re-publish, a Firestore trigger) count against it.
- A *delivery* is one copy of an event reaching the function. ``Delivery`` is the part of it
  these rules read (event ID, event time, the lease token the claim would write);
  ``events.JobRequest`` is the whole parsed event, which ``store`` turns into a ``Delivery``.
- A *lease* is ``leaseOwner`` (``instance:token``) + ``leaseExpiresAt``. The claim that wrote a
  lease recognises it by its token, so a claim whose reply was lost still knows it won.

Every outcome also says how the delivery is answered (``acknowledges``). For a Pub/Sub push a
2xx *is* the acknowledgement: the message is deleted and never delivered again. So only what no
retry can change is acknowledged; a delivery that may be the only live copy of a job (the lease
holder may have died, or its delivery outlived the ack deadline) answers non-2xx until the job
ends or its lease expires, and a later delivery then finds ``completed`` or takes the job over.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from inpaint.session import document
from inpaint.session.document import CANCELLED, COMPLETED, FAILED, PROCESSING, QUEUED


class Outcome(enum.StrEnum):
    """What a claim found; only ``ACQUIRED`` means "run the job"."""

    ACQUIRED = "acquired"
    COMPLETED = "already completed"
    FAILED = "already failed for this event (or an event sent before the failure)"
    CANCELLED = "cancelled by the app"
    RUNNING = "this event's job runs under an unexpired lease; deliver again later"
    BUSY = "another event's job runs under an unexpired lease; deliver again later"
    MISSING = "session document not found"
    EXHAUSTED = "attempts exhausted"
    EXPIRED = "event too old"

    @property
    def acknowledges(self) -> bool:
        """Whether the delivery is answered 2xx (Pub/Sub then deletes the message).

        ``ACQUIRED`` is answered by the job's own end (``jobs``): 2xx once it is recorded
        completed or failed, non-2xx after a transient error. ``RUNNING``: the lease holder's
        own event came again, so its first delivery failed (the holder may be dead) or outlived
        the ack deadline; this copy may be the only live one. ``BUSY``: another event of the same
        session; the holder's event may come from a trigger without retries, or be
        dead-lettered, so this copy is kept too until the job ends (it then finds ``completed``).
        Everything else is final for this event: a retry could only find the same.
        """
        return self not in (Outcome.ACQUIRED, Outcome.RUNNING, Outcome.BUSY)


class Lease(enum.StrEnum):
    """The document's lease, seen from one claim of one instance."""

    NONE = "none"
    MINE = "written by this very claim"  # our write landed, its reply was lost
    OURS_LIVE = "this instance's, its job still running here"
    OURS_DEAD = "this instance's, its job no longer running"  # a release that could not land
    OTHERS_LIVE = "another instance's, unexpired"
    EXPIRED = "expired"


@dataclass(frozen=True)
class Policy:
    """The settings the rules need (from ``Settings``)."""

    lease_seconds: float
    max_attempts: int
    max_event_age_seconds: float


@dataclass(frozen=True)
class Delivery:
    """What the claim rules need of one delivery: its event, when the event was sent, and the
    lease token this claim would write. (``events.JobRequest`` is the whole parsed event, the
    session it names included; ``store`` builds this view of it for each claim.)"""

    event_id: str
    event_time: dt.datetime | None
    owner: str  # "instance:token", unique per claim


@dataclass(frozen=True)
class Decision:
    """The outcome, the fields to write (None: write nothing) and the attempt number."""

    outcome: Outcome
    fields: dict[str, Any] | None = None
    attempt: int = 0


def instance_of(owner: object) -> str:
    """The instance part of a lease token (``instance:token``)."""
    return str(owner or "").split(":", 1)[0]


def lease_state(
    doc: dict[str, Any], delivery: Delivery, now: dt.datetime, running: Collection[str]
) -> Lease:
    """Classifies the document's lease; ``running`` are the lease tokens of jobs running here."""
    owner = doc.get("leaseOwner")
    expires = doc.get("leaseExpiresAt")
    if not owner or not isinstance(expires, dt.datetime):
        return Lease.NONE
    if owner == delivery.owner:
        return Lease.MINE
    if expires <= now:
        return Lease.EXPIRED
    if instance_of(owner) == instance_of(delivery.owner):
        return Lease.OURS_LIVE if owner in running else Lease.OURS_DEAD
    return Lease.OTHERS_LIVE


def is_new_request(doc: dict[str, Any], event_id: str) -> bool:
    """True when this delivery starts a request with a fresh budget.

    The app queues a request by writing ``queued`` (new session or re-edit); a new event for a
    ``failed`` session is the user's retry. Anything else (``processing`` with a dead lease) is
    the same request delivered again.
    """
    status = doc.get("processingStatus")
    if status in (None, QUEUED):
        return True
    return status == FAILED and doc.get("eventId") != event_id


def sent_before_failure(doc: dict[str, Any], delivery: Delivery) -> bool:
    """An event sent before the session failed is a copy of the failed request (a second
    trigger's event, a duplicate publish), kept while the job ran: not the user's retry."""
    failed_at = doc.get("failedAt")
    if delivery.event_time is None or not isinstance(failed_at, dt.datetime):
        return False
    return delivery.event_time <= failed_at


def attempts_so_far(doc: dict[str, Any], event_id: str) -> int:
    """Attempts already spent on this delivery's request (0 for a new request).

    A job whose document still says it was waiting for the GPU (``queuePosition`` a number: it
    is cleared before the model call starts) died while only waiting, not through any fault of
    its own (its instance crashed under another job, or was stopped before it could release):
    that attempt is given back.
    """
    if is_new_request(doc, event_id):
        return 0
    attempts = _int(doc.get("attempts"))
    if doc.get("processingStatus") == PROCESSING and _is_count(doc.get("queuePosition")):
        return max(attempts - 1, 0)
    return attempts


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def request_age(
    doc: dict[str, Any], delivery: Delivery, now: dt.datetime, updated_at: dt.datetime | None
) -> float:
    """Seconds since the request this delivery would run was made.

    A copy of an older request's event (kept by Pub/Sub, or a duplicate) may run the newest
    request: its age is that request's, not the copy's. The request was made no earlier than
    its event, the app's ``requestedAt`` (a server timestamp the rules enforce) and, while it
    is ``queued``, the document's last write (the app's: the function never writes a queued
    document); the newest of these is when it was made.
    """
    candidates = [delivery.event_time, doc.get("requestedAt")]
    if doc.get("processingStatus") == QUEUED:
        candidates.append(updated_at)
    times = [t for t in candidates if isinstance(t, dt.datetime)]
    return (now - max(times)).total_seconds() if times else 0.0


def decide(
    doc: dict[str, Any] | None,
    delivery: Delivery,
    now: dt.datetime,
    policy: Policy,
    running: Collection[str] = (),
    updated_at: dt.datetime | None = None,
) -> Decision:
    """The claim's state machine (see the module docstring for the words); ``updated_at`` is
    the document's last update time."""
    if doc is None:
        return Decision(Outcome.MISSING)
    status = doc.get("processingStatus")
    lease = lease_state(doc, delivery, now, running)
    if status == PROCESSING and lease is Lease.MINE:
        return Decision(Outcome.ACQUIRED, None, _int(doc.get("attempts")))
    if status == COMPLETED:
        return Decision(Outcome.COMPLETED)
    if status == CANCELLED:
        return Decision(Outcome.CANCELLED)
    if status == FAILED and (
        doc.get("eventId") == delivery.event_id or sent_before_failure(doc, delivery)
    ):
        return Decision(Outcome.FAILED)
    if status == PROCESSING and lease in (Lease.OURS_LIVE, Lease.OTHERS_LIVE):
        holder_event = doc.get("eventId") == delivery.event_id
        return Decision(Outcome.RUNNING if holder_event else Outcome.BUSY)
    age = request_age(doc, delivery, now, updated_at)
    if age > policy.max_event_age_seconds:
        fields = document.expired_fields(delivery.event_id, age, policy.max_event_age_seconds, now)
        return Decision(Outcome.EXPIRED, fields)
    spent = attempts_so_far(doc, delivery.event_id)
    if spent >= policy.max_attempts:
        reason = doc.get("lastError") or "a temporary error"
        message = (
            f"Processing failed after {spent} attempts; the last error was: {reason}. "
            "Please try again later."
        )
        fields = document.failed_fields(message, "attempts_exhausted", now)
        return Decision(Outcome.EXHAUSTED, fields, spent)
    attempt = spent + 1
    fields = document.claim_fields(
        delivery.event_id, delivery.owner, attempt, now, policy.lease_seconds
    )
    return Decision(Outcome.ACQUIRED, fields, attempt)


def owns(doc: dict[str, Any] | None, owner: str) -> bool:
    """The lease is ``owner``'s and the job is still ``processing`` (else: stop, do not write)."""
    if not doc:
        return False
    return doc.get("leaseOwner") == owner and doc.get("processingStatus") == PROCESSING


def finish(doc: dict[str, Any] | None, owner: str, fields: dict[str, Any]) -> tuple[bool, bool]:
    """A lease owner's final or lease write: (done, write needed).

    Recognises its own earlier write whose reply was lost (every field already as written), so
    a retried completion is not mistaken for a lost lease.
    """
    if owns(doc, owner):
        return True, True
    if doc and all(doc.get(key) == value for key, value in fields.items()):
        return True, False
    return False, False


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
