"""Unit tests: CloudEvent -> JobRequest, against the golden samples in tests/data."""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest
from cloudevents.http import from_http

from inpaint.session.events import (
    Ignored,
    InvalidEventError,
    JobRequest,
    SessionRef,
    parse_event,
    validate_id,
)
from tools import eventlib


def parse(headers, body, **kw):
    return parse_event(from_http(headers, body), **kw)


def test_binary_pubsub_event_gives_job_request():
    req = parse(*eventlib.pubsub_binary("u1", "s1", "evt-1"))
    assert isinstance(req, JobRequest)
    assert req.session == SessionRef("u1", "s1")
    assert req.event_id == "evt-1"
    assert req.event_time is not None and req.event_time.tzinfo is not None


def test_structured_pubsub_event_gives_job_request():
    req = parse(*eventlib.pubsub_structured("u2", "s2", "evt-2"))
    assert isinstance(req, JobRequest)
    assert (req.session.user_id, req.session.session_id, req.event_id) == ("u2", "s2", "evt-2")


def test_golden_structured_sample_decodes_as_is():
    sample = eventlib.golden("pubsub_structured.json")
    req = parse({"content-type": "application/cloudevents+json"}, json.dumps(sample).encode())
    assert req.session == SessionRef("user_1", "session-1")
    assert req.event_time == dt.datetime(2026, 11, 24, 10, 0, 0, 123000, tzinfo=dt.UTC)


def test_unknown_payload_keys_are_ignored():
    req = parse(*eventlib.pubsub_binary("u", "s", extra={"color": "red", "n": 3}))
    assert req.session == SessionRef("u", "s")


def test_trace_from_traceparent_and_header():
    headers, body = eventlib.pubsub_binary("u", "s")
    headers["ce-traceparent"] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert parse(headers, body).trace_id == "0af7651916cd43dd8448eb211c80319c"
    headers.pop("ce-traceparent")
    req = parse(headers, body, trace_header="105445aa7843bc8bf206b12000100000/1;o=1")
    assert req.trace_id == "105445aa7843bc8bf206b12000100000"


@pytest.mark.parametrize(
    ("sample", "kind", "starts"),
    [
        ("firestore_created.pb", "created", True),
        ("firestore_created.pb", "written", True),
        ("firestore_written_requeued.pb", "written", True),
        ("firestore_written_own_write.pb", "written", False),
        ("firestore_written_requeued.pb", "updated", False),
        ("firestore_created.pb", "deleted", False),
    ],
)
@pytest.mark.parametrize("as_json", [False, True], ids=["protobuf", "json"])
def test_firestore_events_start_jobs_only_on_queued(sample, kind, starts, as_json):
    result = parse(
        *eventlib.firestore_event("uf", "sf", sample, "fs-1", kind=kind, as_json=as_json)
    )
    assert isinstance(result, JobRequest) is starts
    if starts:
        assert result.session == SessionRef("uf", "sf")
    else:
        assert isinstance(result, Ignored) and result.reason


def test_firestore_own_writes_never_start_jobs():
    """processing/progress/completed/failed transitions are ignored: no trigger loop."""
    from google.events.cloud.firestore import Document, DocumentEventData, Value

    name = "projects/p/databases/(default)/documents/users/u/sessions/s"
    for old, new in [
        ("queued", "processing"),
        ("processing", "processing"),
        ("processing", "completed"),
        ("processing", "failed"),
        ("queued", "queued"),
    ]:
        ev = DocumentEventData(
            value=Document(name=name, fields={"processingStatus": Value(string_value=new)}),
            old_value=Document(name=name, fields={"processingStatus": Value(string_value=old)}),
        )
        headers = eventlib.golden("firestore_headers.json")
        assert isinstance(parse(headers, DocumentEventData.serialize(ev)), Ignored), (old, new)


def test_firestore_non_session_document_is_ignored():
    from google.events.cloud.firestore import Document, DocumentEventData

    ev = DocumentEventData(value=Document(name="projects/p/databases/(default)/documents/other/x"))
    headers = eventlib.golden("firestore_headers.json")
    assert isinstance(parse(headers, DocumentEventData.serialize(ev)), Ignored)


def _binary_with_data(data_field):
    headers, body = eventlib.pubsub_binary("u", "s")
    doc = json.loads(body)
    doc["message"]["data"] = data_field
    return headers, json.dumps(doc).encode()


def _b64(obj):
    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return base64.b64encode(raw).decode()


@pytest.mark.parametrize(
    ("data_field", "message"),
    [
        (None, "no data"),
        ("", "no data"),
        ("!!!not base64!!!", "not valid base64"),
        (_b64(b"not json"), "not a JSON object"),
        (_b64([1, 2]), "not a JSON object"),
        (_b64({"sessionId": "s"}), "userId is missing"),
        (_b64({"userId": "u"}), "sessionId is missing"),
        (_b64({"userId": "", "sessionId": "s"}), "userId is missing or empty"),
        (_b64({"userId": 7, "sessionId": "s"}), "userId is missing"),
        (_b64({"userId": "a/b", "sessionId": "s"}), "userId 'a/b' is invalid"),
        (_b64({"userId": "u", "sessionId": ".."}), "sessionId '..' is invalid"),
        (_b64({"userId": "u%2Fx", "sessionId": "s"}), "invalid"),
        (_b64({"userId": "u\x00", "sessionId": "s"}), "invalid"),
        (_b64({"userId": "ü", "sessionId": "s"}), "invalid"),
        (_b64({"userId": "u" * 129, "sessionId": "s"}), "invalid"),
        (_b64({"userId": "u" * 10_000, "sessionId": "s"}), "..."),
    ],
)
def test_bad_pubsub_payloads_are_rejected_with_a_reason(data_field, message):
    with pytest.raises(InvalidEventError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse(*_binary_with_data(data_field))


def test_pubsub_event_without_message_is_rejected():
    headers, _ = eventlib.pubsub_binary("u", "s")
    with pytest.raises(InvalidEventError, match="no message"):
        parse(headers, b'{"subscription": "x"}')


def test_unknown_event_type_is_rejected():
    headers, body = eventlib.pubsub_binary("u", "s")
    headers["ce-type"] = "google.cloud.storage.object.v1.finalized"
    with pytest.raises(InvalidEventError, match="unsupported event type"):
        parse(headers, body)


def test_firestore_json_event_that_is_not_a_document_event_is_rejected():
    headers = eventlib.golden("firestore_headers.json") | {"content-type": "application/json"}
    with pytest.raises(InvalidEventError, match="DocumentEventData"):
        parse(headers, json.dumps({"value": {"fields": "not a map"}}).encode())


def test_firestore_event_with_garbage_protobuf_is_rejected():
    headers = eventlib.golden("firestore_headers.json")
    with pytest.raises(InvalidEventError, match="DocumentEventData"):
        parse(headers, b"\xff\xfe garbage")


@pytest.mark.parametrize("good", ["a", "A-z_0-9", "x" * 128, "abcDEF123_-"])
def test_valid_ids(good):
    assert validate_id("userId", good) == good


def test_session_ref_builds_only_contract_paths():
    ref = SessionRef("u", "s")
    assert ref.document_path == "users/u/sessions/s"
    assert ref.storage_path("edited.jpg") == "users/u/sessions/s/edited.jpg"
    with pytest.raises(ValueError):
        ref.storage_path("../../other.jpg")
    with pytest.raises(InvalidEventError):
        SessionRef("u/../v", "s")


# --------------------------------------------------------------------------------------------
# hostile messages (issue 30): every one is an InvalidEventError, nothing raw escapes
# --------------------------------------------------------------------------------------------


def _deep(depth: int) -> object:
    value: object = "x"
    for _ in range(depth):
        value = {"a": value}
    return value


def _pubsub_event(message: dict) -> object:
    from cloudevents.http import CloudEvent

    attributes = {
        "type": "google.cloud.pubsub.topic.v1.messagePublished",
        "source": "//pubsub.googleapis.com/projects/p/topics/t",
        "id": "evt-hostile",
    }
    return CloudEvent(
        attributes, {"subscription": "projects/p/subscriptions/s", "message": message}
    )


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


GOOD_DATA = _b64(json.dumps({"userId": "u", "sessionId": "s"}))

HOSTILE_MESSAGES = {
    "data: JSON nested 100,000 deep": {"data": _b64("[" * 100_000 + "]" * 100_000)},
    "data: object nested 100,000 deep": {"data": _b64('{"a":' * 100_000 + "1" + "}" * 100_000)},
    "publishTime: garbage": {"data": GOOD_DATA, "publishTime": "garbage"},
    "publish_time: a number": {"data": GOOD_DATA, "publish_time": 12},
    "attributes: not strings": {"data": GOOD_DATA, "attributes": {"a": 1}},
    "attributes: a list": {"data": GOOD_DATA, "attributes": ["a"]},
    "messageId: an object": {"data": GOOD_DATA, "messageId": {"x": 1}},
    "a field nested 5,000 deep": {"data": GOOD_DATA, "extra": _deep(5_000)},
    "data: not UTF-8": {"data": base64.b64encode(b"\xff\xfe{").decode()},
}


@pytest.mark.parametrize("case", HOSTILE_MESSAGES, ids=list(HOSTILE_MESSAGES))
def test_hostile_message_fields_are_invalid_events(case):
    with pytest.raises(InvalidEventError):
        parse_event(_pubsub_event(HOSTILE_MESSAGES[case]))


def test_body_nested_deeper_than_the_recursion_limit_is_an_invalid_event():
    from cloudevents.http import CloudEvent

    attributes = {"type": "google.cloud.pubsub.topic.v1.messagePublished", "source": "s", "id": "i"}
    deep = b'{"message":' * 5_000 + b"1" + b"}" * 5_000
    with pytest.raises(InvalidEventError, match="not JSON"):
        parse_event(CloudEvent(attributes, deep))
