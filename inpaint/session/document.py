"""The session document ``users/{userId}/sessions/{sessionId}``: every field, and every write.

The document is both the user's view of a job and the lock that makes at-least-once delivery
safe, and two writers share it: the app (the client SDK, limited by ``firestore.rules``) and this
function (the Admin SDK). ``FIELDS`` says, for each field, its type, which writes set it and what
it means; the functions below are the function's writes themselves, pure (values in, fields
out), so the claim rules (``claims``), the lease writes (``store``) and the job (``jobs``) write
exactly what is declared here. Tests hold the rest to it: each write's keys against ``FIELDS``
(``tests/session/test_document.py``), the rules' lists of app fields and README's field table too.

Field names ``processingStatus``, ``editedImagePath``, ``previewImagePath``, ``cost`` and
``errorMessage``, and the Storage paths, are the contract of the service we replace; the other
fields (``progress``, ``attempts``, ``lease*``, ``timings``, ...) are additions the app may ignore.

Imports nothing of the service's own, so every room (the event parser included) can use it.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

Fields = dict[str, Any]

#: ``processingStatus``: the app writes ``queued``; this service moves it to ``processing`` when
#: it claims the job and to ``completed`` or ``failed`` at the end.
QUEUED, PROCESSING, COMPLETED, FAILED = "queued", "processing", "completed", "failed"
#: The app may write ``cancelled`` on a queued or running session: the job stops, writes nothing.
CANCELLED = "cancelled"
STATUSES = (QUEUED, PROCESSING, COMPLETED, FAILED, CANCELLED)

#: The outputs the path fields name (``users/{u}/sessions/{s}/...``).
EDITED, PREVIEW = "edited.jpg", "preview.jpg"


class Writer(enum.StrEnum):
    """Who writes a field: the app (under the security rules) or this function."""

    APP = "app"
    FUNCTION = "function"


class When(enum.StrEnum):
    """One write to the document: the app's three (``firestore.rules``), the function's six."""

    CREATE = "create"  # app: a new queued session
    REQUEUE = "requeue"  # app: a finished session queued again (a re-edit)
    CANCEL = "cancel"  # app: a queued or running session cancelled
    CLAIM = "claim"  # function: the job claimed under a lease
    HEARTBEAT = "heartbeat"  # function: the lease renewed, progress, the queue position
    COMPLETED = "completed"  # function: the outputs are written
    FAILED = "failed"  # function: a failure the user sees
    RELEASE = "release"  # function: the lease given back after a transient error
    EXPIRED = "expired"  # function: a request older than INPAINT_MAX_EVENT_AGE_SECONDS

    @property
    def writer(self) -> Writer:
        """The app's writes are the three the rules allow; every other is the function's."""
        app = (When.CREATE, When.REQUEUE, When.CANCEL)
        return Writer.APP if self in app else Writer.FUNCTION


@dataclass(frozen=True)
class Field:
    """One field: its Firestore type(s) (``|``-separated), the writes that set it, its meaning."""

    name: str
    type: str
    when: tuple[When, ...]
    meaning: str

    @property
    def writers(self) -> frozenset[Writer]:
        return frozenset(w.writer for w in self.when)


_APP_JOB = (When.CREATE, When.REQUEUE)
_ENDS = (When.COMPLETED, When.FAILED, When.EXPIRED)
_FAILS = (When.FAILED, When.EXPIRED)
_LEASE_WRITES = (When.CLAIM, When.HEARTBEAT, *_ENDS, When.RELEASE)

FIELDS: tuple[Field, ...] = (
    Field(
        "processingStatus",
        "string",
        (*_APP_JOB, When.CANCEL, When.CLAIM, *_ENDS),
        "`queued` (app: new session or re-edit) → `processing` → `completed` or `failed`; the app "
        "may set `cancelled` on a `queued` or `processing` session (the job stops, nothing is "
        "written; `queued` again re-runs it)",
    ),
    Field(
        "editedImagePath",
        "string",
        (When.COMPLETED,),
        "`users/{u}/sessions/{s}/edited.jpg`: the edited photo at its original resolution",
    ),
    Field(
        "previewImagePath",
        "string",
        (When.COMPLETED,),
        "`users/{u}/sessions/{s}/preview.jpg`: the edited photo, longest side 512",
    ),
    Field("cost", "number", (When.COMPLETED,), "US dollars for this job's busy time"),
    Field(
        "errorMessage",
        "string|null",
        (When.CLAIM, *_ENDS),
        "what went wrong, for the user",
    ),
    Field(
        "errorCode",
        "string|null",
        (When.CLAIM, *_ENDS),
        "`invalid_image`, `mask_mismatch`, `invalid_request`, `not_found`, `expired`, "
        "`attempts_exhausted`, `prompt_unavailable` (an image built without text encoders got a "
        "prompt that is not precomputed)",
    ),
    Field(
        "progress",
        "number",
        (When.CLAIM, When.HEARTBEAT, When.COMPLETED),
        "0..1; frozen when the job is cancelled",
    ),
    Field(
        "queuePosition",
        "integer|null",
        (When.CLAIM, When.HEARTBEAT, *_ENDS, When.RELEASE),
        "jobs ahead of it on its instance, written when it changes; `null` from the claim, the "
        "start on the GPU and the end. Read it only while `processing`: a job cancelled while "
        "waiting stops without writing",
    ),
    Field(
        "attempts",
        "integer",
        (When.CLAIM, When.RELEASE),
        "deliveries of the current request (1 for each new edit; at `INPAINT_MAX_ATTEMPTS` the "
        "session is `failed`); a release that was not the job's fault gives one back",
    ),
    Field(
        "eventId",
        "string",
        (When.CLAIM, When.EXPIRED),
        "the event whose claim holds (or last held) the session",
    ),
    Field(
        "leaseOwner",
        "string|null",
        (When.CLAIM, *_ENDS),
        "the lease's holder, `instance:token`; `null` once the job ended",
    ),
    Field(
        "leaseExpiresAt",
        "timestamp|null",
        _LEASE_WRITES,
        "when the lease ends unless renewed; a redelivery may take an expired lease over",
    ),
    Field("startedAt", "timestamp", (When.CLAIM,), "when the current attempt was claimed"),
    Field("completedAt", "timestamp", (When.COMPLETED,), "when the job was recorded completed"),
    Field("failedAt", "timestamp", _FAILS, "when the job was recorded failed"),
    Field("updatedAt", "timestamp", _LEASE_WRITES, "the function's last write"),
    Field(
        "lastError",
        "string|null",
        (When.COMPLETED, When.RELEASE),
        "the transient error the last release gave (cleared on completion)",
    ),
    Field("busySeconds", "number", (When.COMPLETED,), "the job's billed seconds"),
    Field("timings", "map", (When.COMPLETED,), "seconds per stage, and their `total`"),
    Field("seedUsed", "integer", (When.COMPLETED,), "the seed the model ran with"),
    Field("promptUsed", "string", (When.COMPLETED,), "the prompt the model ran with"),
    Field("maskEmpty", "boolean", (When.COMPLETED,), "the mask was empty: the original returned"),
    Field(
        "region",
        "array|null",
        (When.COMPLETED,),
        "the crop the model saw, `[left, top, right, bottom]` in original pixels (`null`: empty "
        "mask)",
    ),
    Field("prompt", "string", _APP_JOB, "the job's prompt (optional)"),
    Field("seed", "integer", _APP_JOB, "the job's seed, 0..2^32-1 (optional)"),
    Field("steps", "integer", _APP_JOB, "the job's denoising steps (optional)"),
    Field("guidance", "number", _APP_JOB, "the job's guidance, 0..100 (optional)"),
    Field("createdAt", "timestamp", (When.CREATE,), "server timestamp of the session's creation"),
    Field(
        "requestedAt",
        "timestamp",
        _APP_JOB,
        "server timestamp of the request: a request is no older than it (the event age limit)",
    ),
)
BY_NAME: Mapping[str, Field] = {f.name: f for f in FIELDS}


def written_at(when: When) -> frozenset[str]:
    """The names of the fields one write may set (the declaration the writes are held to)."""
    return frozenset(f.name for f in FIELDS if when in f.when)


# ---------------------------------------------------------------------------- the writes
class Unchanged(enum.Enum):
    """A heartbeat argument that is left as it is in the document."""

    UNCHANGED = "unchanged"


UNCHANGED = Unchanged.UNCHANGED


class SessionPaths(Protocol):
    """What ``output_paths`` needs of a session (``events.SessionRef``)."""

    def storage_path(self, filename: str) -> str: ...


def output_paths(session: SessionPaths) -> Fields:
    """The document's path fields of a completed job (the replaced service's contract)."""
    return {
        "editedImagePath": session.storage_path(EDITED),
        "previewImagePath": session.storage_path(PREVIEW),
    }


def claim_fields(
    event_id: str, owner: str, attempt: int, now: dt.datetime, lease_seconds: float
) -> Fields:
    """What a successful claim writes: the lease (``owner`` is ``instance:token``), and a
    clean slate of the previous attempt's progress and error."""
    return {
        "processingStatus": PROCESSING,
        "attempts": attempt,
        "leaseOwner": owner,
        "leaseExpiresAt": now + dt.timedelta(seconds=lease_seconds),
        "eventId": event_id,
        "startedAt": now,
        "updatedAt": now,
        "progress": 0.0,
        "queuePosition": None,
        "errorMessage": None,
        "errorCode": None,
    }


def heartbeat_fields(
    now: dt.datetime,
    lease_seconds: float,
    progress: float | None,
    queue_position: int | Unchanged | None = UNCHANGED,
) -> Fields:
    """A renewed lease; ``progress`` (None: unchanged) and ``queue_position`` (``UNCHANGED``:
    left out; None: cleared, the job has the GPU) only when they are news."""
    fields: Fields = {
        "leaseExpiresAt": now + dt.timedelta(seconds=lease_seconds),
        "updatedAt": now,
    }
    if progress is not None:
        fields["progress"] = round(progress, 4)
    if not isinstance(queue_position, Unchanged):
        fields["queuePosition"] = queue_position
    return fields


def result_fields(
    *,
    busy_seconds: float,
    price_per_second: float,
    stages: Mapping[str, float],
    seed: int,
    prompt: str,
    mask_empty: bool,
    region: Sequence[int] | None,
) -> Fields:
    """What a completed job records about its work: cost, time per stage, what it ran with."""
    return {
        "cost": round(busy_seconds * price_per_second, 6),
        "busySeconds": round(busy_seconds, 3),
        "timings": dict(stages) | {"total": round(busy_seconds, 4)},
        "seedUsed": seed,
        "promptUsed": prompt,
        "maskEmpty": mask_empty,
        "region": list(region) if region is not None else None,
    }


def completed_fields(session: SessionPaths, result: Fields, now: dt.datetime) -> Fields:
    """The completion: status, the output paths and ``result`` (``result_fields``); the lease
    and the previous attempts' errors are cleared."""
    return (
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
        | output_paths(session)
        | result
    )


def failed_fields(message: str, code: str, now: dt.datetime) -> Fields:
    """A failure the user sees; the lease is cleared."""
    return {
        "processingStatus": FAILED,
        "errorMessage": message,
        "errorCode": code,
        "failedAt": now,
        "updatedAt": now,
        "queuePosition": None,
        "leaseOwner": None,
        "leaseExpiresAt": None,
    }


def release_fields(error: str, attempt: int, *, refund: bool, now: dt.datetime) -> Fields:
    """A lease given back after a transient error, the lease expiring now so a redelivery can
    take over at once; ``refund`` gives the attempt back (a stop that was not the job's fault:
    a shutdown, waiting for the GPU)."""
    fields: Fields = {
        "leaseExpiresAt": now,
        "lastError": error[:500],
        "updatedAt": now,
        "queuePosition": None,
    }
    if refund:
        fields["attempts"] = max(attempt - 1, 0)
    return fields


def expired_fields(event_id: str, age: float, limit: float, now: dt.datetime) -> Fields:
    """The request waited ``age`` seconds, longer than ``limit``
    (``INPAINT_MAX_EVENT_AGE_SECONDS``): failed, naming this event."""
    message = (
        f"The request expired: it was sent {_duration(age)} ago, more than the limit of "
        f"{_duration(limit)}. Please try again."
    )
    return failed_fields(message, "expired", now) | {"eventId": event_id}


def _duration(seconds: float) -> str:
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.0f} hours"
    return f"{seconds / 60:.0f} minutes"
