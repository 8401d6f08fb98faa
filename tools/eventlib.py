"""Builds HTTP deliveries from the golden sample events in tools/golden, with chosen IDs."""

from __future__ import annotations

import base64
import copy
import json
import uuid
from pathlib import Path
from typing import Any

from google.events.cloud.firestore import DocumentEventData

DATA = Path(__file__).parent / "golden"


def golden(name: str) -> Any:
    path = DATA / name
    return path.read_bytes() if path.suffix == ".pb" else json.loads(path.read_text())


def _payload(user: Any, session: Any, extra: dict | None = None) -> str:
    body = {"userId": user, "sessionId": session} | (extra or {})
    return base64.b64encode(json.dumps(body).encode()).decode()


def _message_data(data: dict, payload: str, event_id: str) -> dict:
    data = copy.deepcopy(data)
    data["message"]["data"] = payload
    for key in ("messageId", "message_id"):
        if key in data["message"]:
            data["message"][key] = event_id
    return data


def now_iso() -> str:
    import datetime as dt

    return dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")


def pubsub_binary(user, session, event_id=None, *, time=None, extra=None):
    """(headers, body bytes) of an Eventarc Pub/Sub event in binary mode."""
    event_id = event_id or uuid.uuid4().hex
    sample = golden("pubsub_binary.json")
    headers = dict(sample["headers"]) | {"ce-id": event_id, "ce-time": time or now_iso()}
    body = _message_data(sample["body"], _payload(user, session, extra), event_id)
    return headers, json.dumps(body).encode()


def pubsub_structured(user, session, event_id=None, *, time=None):
    """(headers, body bytes) of the same event in structured mode."""
    event_id = event_id or uuid.uuid4().hex
    sample = golden("pubsub_structured.json")
    sample["id"] = event_id
    sample["time"] = time or now_iso()
    sample["data"] = _message_data(sample["data"], _payload(user, session), event_id)
    return {"content-type": "application/cloudevents+json"}, json.dumps(sample).encode()


def pubsub_push(user, session, event_id=None):
    """(headers, body bytes) of a raw Pub/Sub push request (no CloudEvent headers)."""
    event_id = event_id or uuid.uuid4().hex
    sample = golden("pubsub_push.json")
    sample["message"]["data"] = _payload(user, session)
    sample["message"]["messageId"] = event_id
    sample["message"]["publishTime"] = now_iso()
    return {"content-type": "application/json"}, json.dumps(sample).encode()


def firestore_event(
    user, session, sample="firestore_created.pb", event_id=None, *, kind="written", as_json=False
):
    """(headers, body) of a Firestore event for users/{user}/sessions/{session}: protobuf, or
    with ``as_json`` the JSON form a trigger created without ``--event-data-content-type``
    sends."""
    decoded = DocumentEventData.deserialize(golden(sample))
    for part in ("value", "old_value"):
        if part in decoded:
            doc = getattr(decoded, part)
            doc.name = doc.name.replace(
                "users/user_1/sessions/session-1", f"users/{user}/sessions/{session}"
            )
    headers = golden("firestore_headers.json") | {
        "ce-id": event_id or uuid.uuid4().hex,
        "ce-time": now_iso(),
        "ce-type": f"google.cloud.firestore.document.v1.{kind}",
        "ce-subject": f"documents/users/{user}/sessions/{session}",
        "ce-document": f"users/{user}/sessions/{session}",
    }
    if as_json:
        headers["content-type"] = "application/json"
        return headers, DocumentEventData.to_json(decoded).encode()
    return headers, DocumentEventData.serialize(decoded)
