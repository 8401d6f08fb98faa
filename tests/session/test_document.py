"""The session document's declaration (``inpaint.session.document.FIELDS``) against everything that
writes or describes the document: the function's writes, ``firestore.rules`` (the app's writes)
and README's field table."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest

from inpaint.session import document
from inpaint.session.document import (
    FIELDS,
    STATUSES,
    UNCHANGED,
    When,
    Writer,
    written_at,
)
from inpaint.session.events import SessionRef

ROOT = Path(__file__).resolve().parents[2]
NOW = dt.datetime(2026, 12, 7, tzinfo=dt.UTC)
SESSION = SessionRef("u1", "s1")
RESULT = document.result_fields(
    busy_seconds=12.345678,
    price_per_second=0.000321,
    stages={"download": 0.5, "queue": 3.0, "denoise": 11.0},
    seed=7,
    prompt="a corgi",
    mask_empty=False,
    region=(16, 32, 528, 544),
)

# Each of the function's writes, called so that it writes every field it can.
WRITES = {
    When.CLAIM: document.claim_fields("e1", "inst:token", 2, NOW, 30.0),
    When.HEARTBEAT: document.heartbeat_fields(NOW, 30.0, 0.5, 3),
    When.COMPLETED: document.completed_fields(SESSION, RESULT, NOW),
    When.FAILED: document.failed_fields("The mask is empty.", "invalid_request", NOW),
    When.RELEASE: document.release_fields("boom", 2, refund=True, now=NOW),
    When.EXPIRED: document.expired_fields("e1", 90_000.0, 86_400.0, NOW),
}
# The same writes when they write the least.
FEWEST = {
    When.HEARTBEAT: document.heartbeat_fields(NOW, 30.0, None),
    When.RELEASE: document.release_fields("boom", 2, refund=False, now=NOW),
}
STATUS_WRITTEN = {When.CLAIM: "processing", When.COMPLETED: "completed", When.FAILED: "failed"}
STATUS_WRITTEN[When.EXPIRED] = "failed"
TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "timestamp": dt.datetime,
    "map": dict,
    "array": list,
    "null": type(None),
}


def test_every_function_write_is_covered():
    function_writes = {w for w in When if w.writer is Writer.FUNCTION}
    assert set(WRITES) == function_writes


@pytest.mark.parametrize("when", list(WRITES), ids=str)
def test_each_write_sets_exactly_the_fields_declared_for_it(when):
    assert set(WRITES[when]) == written_at(when)
    assert set(FEWEST.get(when, WRITES[when])) <= written_at(when)


@pytest.mark.parametrize("when", list(WRITES), ids=str)
def test_each_written_value_has_its_declared_type(when):
    for name, value in WRITES[when].items():
        declared = document.BY_NAME[name].type.split("|")
        assert isinstance(value, tuple(_flatten(TYPES[t] for t in declared))), (name, value)
        if "integer" in declared or "number" in declared:
            assert not isinstance(value, bool), name


def _flatten(types):
    for t in types:
        yield from t if isinstance(t, tuple) else (t,)


@pytest.mark.parametrize(("when", "status"), list(STATUS_WRITTEN.items()), ids=str)
def test_the_status_each_write_sets(when, status):
    assert WRITES[when]["processingStatus"] == status
    assert status in STATUSES


def test_fields_are_unique_typed_and_written_by_someone():
    names = [f.name for f in FIELDS]
    assert len(names) == len(set(names))
    for field in FIELDS:
        assert field.when and field.meaning, field.name
        assert set(field.type.split("|")) <= set(TYPES), field.name


@pytest.mark.parametrize(
    ("name", "writers"),
    [
        ("processingStatus", {Writer.APP, Writer.FUNCTION}),
        ("prompt", {Writer.APP}),
        ("requestedAt", {Writer.APP}),
        ("leaseOwner", {Writer.FUNCTION}),
        ("editedImagePath", {Writer.FUNCTION}),
    ],
)
def test_writers(name, writers):
    assert document.BY_NAME[name].writers == writers


# --- the writes' values -------------------------------------------------------------------------


def test_the_claim_takes_a_lease_and_clears_the_previous_attempt():
    fields = WRITES[When.CLAIM]
    assert fields["leaseOwner"] == "inst:token" and fields["attempts"] == 2
    assert fields["leaseExpiresAt"] == NOW + dt.timedelta(seconds=30)
    assert fields["progress"] == 0.0
    assert all(fields[k] is None for k in ("queuePosition", "errorMessage", "errorCode"))


@pytest.mark.parametrize(
    ("progress", "position", "written"),
    [
        (0.123456, UNCHANGED, {"progress": 0.1235}),
        (None, 2, {"queuePosition": 2}),
        (None, None, {"queuePosition": None}),  # the job has the GPU: cleared
        (None, UNCHANGED, {}),
    ],
)
def test_a_heartbeat_writes_only_news(progress, position, written):
    fields = document.heartbeat_fields(NOW, 30.0, progress, position)
    lease = {"leaseExpiresAt": NOW + dt.timedelta(seconds=30), "updatedAt": NOW}
    assert fields == lease | written


def test_the_result_of_a_completed_job():
    expected = {
        "cost": round(12.345678 * 0.000321, 6),
        "busySeconds": 12.346,
        "timings": {"download": 0.5, "queue": 3.0, "denoise": 11.0, "total": 12.3457},
        "seedUsed": 7,
        "promptUsed": "a corgi",
        "maskEmpty": False,
        "region": [16, 32, 528, 544],
    }
    assert expected == RESULT
    empty = {"busy_seconds": 0.0, "price_per_second": 1.0, "stages": {}, "seed": 1}
    fields = document.result_fields(**empty, prompt="", mask_empty=True, region=None)
    assert fields["region"] is None and fields["maskEmpty"] is True


def test_the_completion_points_at_the_outputs_and_clears_the_lease():
    fields = WRITES[When.COMPLETED]
    assert fields["editedImagePath"] == "users/u1/sessions/s1/edited.jpg"
    assert fields["previewImagePath"] == "users/u1/sessions/s1/preview.jpg"
    assert fields["progress"] == 1.0 and fields["completedAt"] == NOW
    assert fields["leaseOwner"] is None and fields["lastError"] is None
    assert RESULT.items() <= fields.items()


@pytest.mark.parametrize(
    ("attempt", "refund", "attempts"), [(1, True, 0), (5, True, 4), (3, False, None)]
)
def test_release_fields_give_the_attempt_back_only_on_a_refund(attempt, refund, attempts):
    fields = document.release_fields("boom", attempt, refund=refund, now=NOW)
    assert fields["leaseExpiresAt"] == NOW and fields["lastError"] == "boom"
    assert fields.get("attempts") == attempts


def test_a_release_keeps_the_error_short():
    assert len(document.release_fields("x" * 2000, 1, refund=False, now=NOW)["lastError"]) == 500


@pytest.mark.parametrize(
    ("age", "limit", "words"),
    [
        (90_000.0, 86_400.0, "25 hours ago, more than the limit of 24 hours"),
        (600.0, 300.0, "10 minutes ago, more than the limit of 5 minutes"),
    ],
)
def test_an_expired_request_fails_naming_its_age_and_event(age, limit, words):
    fields = document.expired_fields("e9", age, limit, NOW)
    assert fields == document.failed_fields(fields["errorMessage"], "expired", NOW) | {
        "eventId": "e9"
    }
    assert words in fields["errorMessage"]


# --- firestore.rules: the app's writes ----------------------------------------------------------

RULE_TARGETS = {
    ("create", "queued"): When.CREATE,
    ("update", "queued"): When.REQUEUE,
    ("update", "cancelled"): When.CANCEL,
}


def _session_rules() -> str:
    text = (ROOT / "firestore.rules").read_text()
    return text[text.index("match /sessions/{sessionId}") :]


def rules_app_writes() -> dict[When, set[str]]:
    """Each session ``allow create|update`` rule's ``hasOnly`` list, keyed by the write it
    allows (which status it sets)."""
    found: dict[When, set[str]] = {}
    for statement in re.findall(r"allow (create|update)\b(.*?);", _session_rules(), flags=re.S):
        kind, body = statement
        status = re.search(r"request\.resource\.data\.processingStatus == '(\w+)'", body)
        listed = re.search(r"hasOnly\(\s*\[(.*?)\]\s*\)", body, flags=re.S)
        assert status and listed, f"an 'allow {kind}' rule the test does not understand"
        when = RULE_TARGETS[(kind, status[1])]
        assert when not in found, f"two rules for {when}"
        found[when] = set(re.findall(r"'(\w+)'", listed[1]))
    return found


def test_the_rules_let_the_app_write_exactly_its_declared_fields():
    found = rules_app_writes()
    assert set(found) == {w for w in When if w.writer is Writer.APP}
    for when, names in found.items():
        assert names == written_at(when), when


def test_the_rules_bound_only_app_fields():
    bounded = set(re.findall(r"'(\w+)' in data", _session_rules()))
    assert bounded and bounded <= {f.name for f in FIELDS if Writer.APP in f.writers}


# --- README's table -----------------------------------------------------------------------------

TABLE_HEADING = "### Session document fields"
OCCASIONS = {"app"} | {w.value for w in When if w.writer is Writer.FUNCTION}


def readme_rows() -> list[tuple[list[str], str, str]]:
    """README's field table: (field names, written, meaning) per row."""
    text = (ROOT / "README.md").read_text()
    lines = text[text.index(TABLE_HEADING) :].splitlines()[1:]
    table = [line for line in _leading_table(lines)][2:]  # no header, no separator
    rows = []
    for line in table:
        names, written, meaning = (cell.strip() for cell in line.strip("|").split(" | ", 2))
        rows.append((re.findall(r"`([^`]+)`", names), written, meaning))
    return rows


def _leading_table(lines):
    started = False
    for line in lines:
        if line.startswith("|"):
            started = True
            yield line
        elif started:
            return


def _occasions(fields) -> set[str]:
    return {w.value if w.writer is Writer.FUNCTION else "app" for f in fields for w in f.when}


def test_the_readme_table_names_every_field_once():
    names = [name for row, _, _ in readme_rows() for name in row]
    assert sorted(names) == sorted(f.name for f in FIELDS)


@pytest.mark.parametrize("row", readme_rows(), ids=lambda r: r[0][0])
def test_each_readme_row_says_who_writes_it_and_when(row):
    names, written, meaning = row
    fields = [document.BY_NAME[name] for name in names]
    assert set(re.findall(r"[a-z]+", written)) & OCCASIONS == _occasions(fields)
    if len(fields) == 1:  # a row of its own: README's meaning is the declared one
        assert meaning == fields[0].meaning
