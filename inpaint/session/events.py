"""CloudEvent -> typed job request.

Three shapes reach the function: Eventarc Pub/Sub events (binary or structured mode), raw Pub/Sub
push bodies (functions-framework converts them to the same Pub/Sub event type) and Firestore
document events (protobuf or JSON data; legacy background events are converted to these by
functions-framework). Each is decoded with google-events' own types, and the IDs are
validated here, before anything can build a Firestore or Storage path from them.

Outcomes: a ``JobRequest`` (work to do), ``Ignored`` (a well-formed event that asks for no work,
e.g. the function's own Firestore writes) or ``InvalidEventError`` (malformed; the caller logs and
acknowledges it, because redelivering a malformed event can only fail again).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
from dataclasses import dataclass
from typing import Any

from google.events.cloud.firestore import DocumentEventData
from google.events.cloud.pubsub import MessagePublishedData

from inpaint.errors import InvalidEventError
from inpaint.session.document import QUEUED

PUBSUB_TYPE = "google.cloud.pubsub.topic.v1.messagePublished"
FIRESTORE_PREFIX = "google.cloud.firestore.document.v1."
FIRESTORE_STARTING_TYPES = frozenset({FIRESTORE_PREFIX + "created", FIRESTORE_PREFIX + "written"})
FIRESTORE_OTHER_TYPES = frozenset({FIRESTORE_PREFIX + "updated", FIRESTORE_PREFIX + "deleted"})

# The one definition of the user and session IDs the function processes; firestore.rules
# refuses every other ID with the same pattern (tests/e2e/test_firestore_rules.py compares them).
ID_PATTERN = r"[A-Za-z0-9_-]{1,128}"
_ID_RE = re.compile(ID_PATTERN)
_DOC_RE = re.compile(r"(?:^|/documents/)users/([^/]+)/sessions/([^/]+)$")
_TRACEPARENT_RE = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")
_MAX_ID_ECHO = 40


@dataclass(frozen=True)
class SessionRef:
    """A session's validated IDs: the only way to name a session's document or files."""

    user_id: str
    session_id: str

    def __post_init__(self) -> None:
        validate_id("userId", self.user_id)
        validate_id("sessionId", self.session_id)

    @property
    def document_path(self) -> str:
        return f"users/{self.user_id}/sessions/{self.session_id}"

    def storage_path(self, filename: str) -> str:
        """``users/{u}/sessions/{s}/{filename}`` for one of the contract's file names."""
        if filename not in SESSION_FILES:
            raise ValueError(f"not a session file: {filename!r}")
        return f"{self.document_path}/{filename}"


SESSION_FILES = frozenset({"original.jpg", "mask_auto.png", "edited.jpg", "preview.jpg"})


@dataclass(frozen=True)
class JobRequest:
    """One unit of work, parsed from a delivered event: which session, which event asked for it
    (ID, type, time) and its trace. The claim rules read only part of it (``claims.Delivery``,
    with the lease token the claim would write)."""

    session: SessionRef
    event_id: str
    event_type: str
    event_time: dt.datetime | None
    trace_id: str | None = None


@dataclass(frozen=True)
class Ignored:
    """A valid event that asks for no work; ``reason`` is logged."""

    reason: str
    event_id: str


def validate_id(name: str, value: object) -> str:
    """Accepts 1..128 characters of ``[A-Za-z0-9_-]``; anything else could escape a path."""
    if not isinstance(value, str) or not value:
        raise InvalidEventError(f"{name} is missing or empty")
    if not _ID_RE.fullmatch(value):
        shown = value[:_MAX_ID_ECHO].encode("unicode_escape").decode("ascii")
        raise InvalidEventError(
            f"{name} {shown!r}{'...' if len(value) > _MAX_ID_ECHO else ''} is invalid: "
            "IDs are 1 to 128 characters of A-Z, a-z, 0-9, '_' and '-'"
        )
    return value


def parse_event(event: Any, *, trace_header: str | None = None) -> JobRequest | Ignored:
    """Turns a ``cloudevents`` event into a job request; raises ``InvalidEventError``.

    The publisher controls the message, so nothing else may escape: a library's own error on a
    hostile message (``RecursionError`` from JSON nested thousands deep, protobuf's
    ``ParseError`` for a field of the wrong type, ...) is an ``InvalidEventError`` too, logged
    and acknowledged rather than answered 500 and redelivered until dead-lettered.
    """
    try:
        return _parse(event, trace_header)
    except (InvalidEventError, MemoryError):
        raise
    except Exception as exc:
        raise InvalidEventError(f"the event is malformed ({type(exc).__name__})") from exc


def _parse(event: Any, trace_header: str | None) -> JobRequest | Ignored:
    """``parse_event`` without its guard."""
    event_type = str(event["type"])
    event_id = str(event["id"])
    trace_id = _trace_id(event, trace_header)
    if event_type == PUBSUB_TYPE:
        session, published = _from_pubsub(event.data)
        return JobRequest(session, event_id, event_type, _event_time(event) or published, trace_id)
    if event_type in FIRESTORE_STARTING_TYPES:
        found = _from_firestore(event.data, event_type)
        if isinstance(found, str):
            return Ignored(found, event_id)
        return JobRequest(found, event_id, event_type, _event_time(event), trace_id)
    if event_type in FIRESTORE_OTHER_TYPES:
        return Ignored(f"{event_type} events never start a job", event_id)
    raise InvalidEventError(f"unsupported event type {event_type[:100]!r}")


def _from_pubsub(data: Any) -> tuple[SessionRef, dt.datetime | None]:
    """Unwraps ``MessagePublishedData`` -> base64 JSON ``{"userId", "sessionId"}``."""
    if isinstance(data, bytes | bytearray):
        try:
            data = json.loads(data)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise InvalidEventError("the Pub/Sub event body is not JSON") from exc
    if not isinstance(data, dict) or not isinstance(data.get("message"), dict):
        raise InvalidEventError("the Pub/Sub event has no message")
    raw = data["message"].get("data")
    if not isinstance(raw, str) or not raw:
        raise InvalidEventError("the Pub/Sub message has no data")
    try:
        base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidEventError("the Pub/Sub message data is not valid base64") from exc
    try:
        message = MessagePublishedData.from_json(json.dumps(data), ignore_unknown_fields=True)
    except Exception as exc:  # protobuf's ParseError (a field of the wrong type), RecursionError
        raise InvalidEventError(
            f"the Pub/Sub message is malformed ({type(exc).__name__}: {_first_line(exc)})"
        ) from exc
    try:
        payload = json.loads(message.message.data)
    except (ValueError, RecursionError) as exc:
        raise InvalidEventError("the Pub/Sub message data is not a JSON object") from exc
    if not isinstance(payload, dict):
        raise InvalidEventError("the Pub/Sub message data is not a JSON object")
    session = SessionRef(
        validate_id("userId", payload.get("userId")),
        validate_id("sessionId", payload.get("sessionId")),
    )
    published = message.message.publish_time if "publish_time" in message.message else None
    return session, _as_utc(published)


def _first_line(exc: BaseException) -> str:
    """A library's message, shortened for a log line (it may quote the hostile input)."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else "")[:200]


def _decode_document_event(data: Any) -> DocumentEventData:
    """``DocumentEventData`` from protobuf bytes or from its JSON form.

    JSON arrives when the trigger was created without ``--event-data-content-type`` (gcloud's
    default is ``application/json``) and from legacy Firestore background events, which
    functions-framework converts to this event type with the legacy ``data`` as is.
    """
    try:
        if isinstance(data, bytes | bytearray):
            return DocumentEventData.deserialize(bytes(data))
        if isinstance(data, dict):
            if not {"value", "oldValue", "old_value"} & data.keys():
                raise ValueError("no document in the JSON data")
            return DocumentEventData.from_json(json.dumps(data), ignore_unknown_fields=True)
    except Exception as exc:  # protobuf raises DecodeError, ParseError and friends
        raise InvalidEventError("the Firestore event data is not a DocumentEventData") from exc
    raise InvalidEventError("a Firestore event must carry protobuf or JSON document data")


def _from_firestore(data: Any, event_type: str) -> SessionRef | str:
    """A session document created or set to ``queued`` -> its IDs; otherwise a reason to skip.

    Only a transition *into* ``queued`` starts a job, and the function itself never writes
    ``queued``, so its own writes (processing, progress, completed, failed) cannot loop.
    """
    decoded = _decode_document_event(data)
    if "value" not in decoded or not decoded.value.name:
        return "the document was deleted"
    match = _DOC_RE.search(decoded.value.name)
    if not match:
        return "the document is not a session document"
    session = SessionRef(validate_id("userId", match[1]), validate_id("sessionId", match[2]))
    status = _string_field(decoded.value, "processingStatus")
    if "old_value" in decoded and decoded.old_value.name:
        old_status = _string_field(decoded.old_value, "processingStatus")
        if status == QUEUED and old_status != QUEUED:
            return session
        return f"processingStatus {old_status!r} -> {status!r} does not start a job"
    if status in (None, QUEUED):
        return session
    return f"document created with processingStatus {status!r}"


def _string_field(document: Any, name: str) -> str | None:
    if name not in document.fields:
        return None
    value = document.fields[name]
    return value.string_value if "string_value" in value else None


def _event_time(event: Any) -> dt.datetime | None:
    raw = event.get("time")
    if not raw:
        return None
    try:
        return _as_utc(dt.datetime.fromisoformat(str(raw).replace("Z", "+00:00")))
    except ValueError:
        return None


def _as_utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return dt.datetime.fromtimestamp(value.timestamp(), tz=dt.UTC)


def _trace_id(event: Any, trace_header: str | None) -> str | None:
    """W3C ``traceparent`` extension, else Cloud Run's ``X-Cloud-Trace-Context`` header."""
    match = _TRACEPARENT_RE.match(str(event.get("traceparent") or ""))
    if match:
        return match[1]
    if trace_header:
        candidate = trace_header.split("/", 1)[0]
        if re.fullmatch(r"[0-9a-fA-F]{32}", candidate):
            return candidate.lower()
    return None
