"""Table-driven tests of the claim state machine (``inpaint.session.claims``, pure: no I/O).

Every combination of status x lease x attempts x event x age is decided and compared with the
table below; the real-stack tests in tests/e2e prove the same rules through Firestore.
"""

from __future__ import annotations

import datetime as dt
import itertools

import pytest

from inpaint.session import claims, document
from inpaint.session.claims import Decision, Delivery, Lease, Outcome, Policy

NOW = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC)
POLICY = Policy(lease_seconds=180, max_attempts=5, max_event_age_seconds=86400)
ME = "inst1:claim-token"
OURS_OTHER_JOB = "inst1:other-job"
OTHERS = "inst2:their-token"
EVENT = "event-1"

STATUSES = (None, "queued", "processing", "completed", "failed", "cancelled")
LEASES = ("none", "mine", "ours live", "ours dead", "others live", "expired")
ATTEMPTS = {"0": 0, "below": 2, "at budget": 5}
EVENTS = ("same", "new")
AGES = {"fresh": dt.timedelta(seconds=30), "too old": dt.timedelta(days=2)}

# Rows: (status, lease) -> what happens. "new request": a fresh budget (the app queued it, or
# a new event for a failed session); "same request": a redelivery, counted against the budget.
# Age and budget then decide between EXPIRED, EXHAUSTED and ACQUIRED.
NEW, SAME = "new request", "same request"


def expected_rule(status: str | None, lease: str, event: str) -> str | Outcome:
    if status in (None, "queued"):
        return NEW
    if status == "processing":
        live = Outcome.RUNNING if event == "same" else Outcome.BUSY  # both: deliver again later
        return {
            "mine": "recognised",  # our write landed, its reply was lost
            "ours live": live,
            "others live": live,
        }.get(lease, SAME)  # none, expired, ours dead (a release that could not land)
    if status == "completed":
        return Outcome.COMPLETED
    if status == "cancelled":
        return Outcome.CANCELLED
    return Outcome.FAILED if event == "same" else NEW  # failed


def make_doc(status, lease, attempts) -> dict:
    doc: dict = {"attempts": attempts, "eventId": EVENT, "lastError": "TimeoutError"}
    if status is not None:
        doc["processingStatus"] = status
    live, dead = NOW + dt.timedelta(seconds=60), NOW - dt.timedelta(seconds=1)
    owner, expires = {
        "none": (None, None),
        "mine": (ME, live),
        "ours live": (OURS_OTHER_JOB, live),
        "ours dead": (OURS_OTHER_JOB, live),
        "others live": (OTHERS, live),
        "expired": (OTHERS, dead),
    }[lease]
    doc["leaseOwner"], doc["leaseExpiresAt"] = owner, expires
    return doc


def run(status, lease, attempts, event, age) -> Decision:
    doc = make_doc(status, lease, ATTEMPTS[attempts])
    request = Delivery(EVENT if event == "same" else "event-2", NOW - AGES[age], ME)
    running = {ME} | ({OURS_OTHER_JOB} if lease == "ours live" else set())
    return claims.decide(doc, request, NOW, POLICY, running)


CASES = list(itertools.product(STATUSES, LEASES, ATTEMPTS, EVENTS, AGES))


@pytest.mark.parametrize(("status", "lease", "attempts", "event", "age"), CASES)
def test_every_combination_follows_the_table(status, lease, attempts, event, age):
    decision = run(status, lease, attempts, event, age)
    rule = expected_rule(status, lease, event)
    spent = ATTEMPTS[attempts]
    if rule == "recognised":
        assert decision == Decision(Outcome.ACQUIRED, None, spent)  # no second write
    elif isinstance(rule, Outcome):
        assert decision == Decision(rule)  # nothing written
    elif age == "too old":
        assert decision.outcome is Outcome.EXPIRED
        assert decision.fields["processingStatus"] == "failed"
        assert decision.fields["errorCode"] == "expired"
    elif rule == SAME and spent >= POLICY.max_attempts:
        assert decision.outcome is Outcome.EXHAUSTED
        assert decision.fields["errorCode"] == "attempts_exhausted"
        assert decision.fields["leaseOwner"] is None
    else:
        attempt = 1 if rule == NEW else spent + 1
        assert decision.outcome is Outcome.ACQUIRED and decision.attempt == attempt
        assert decision.fields == document.claim_fields(
            decision.fields["eventId"], ME, attempt, NOW, POLICY.lease_seconds
        )


# How each outcome is answered. A 2xx deletes the Pub/Sub message for good, so only outcomes no
# retry can change are acknowledged; ACQUIRED is answered by the job's own end.
ANSWERS = {
    Outcome.ACQUIRED: False,
    Outcome.COMPLETED: True,
    Outcome.FAILED: True,
    Outcome.CANCELLED: True,
    Outcome.EXHAUSTED: True,
    Outcome.EXPIRED: True,
    Outcome.MISSING: True,
    Outcome.RUNNING: False,  # the lease holder's own event again: the holder may be dead
    Outcome.BUSY: False,  # another event: the holder's event may have no live copy left
}


@pytest.mark.parametrize(("outcome", "acknowledged"), ANSWERS.items())
def test_only_what_no_retry_can_change_is_acknowledged(outcome, acknowledged):
    assert outcome.acknowledges is acknowledged


def test_the_answer_table_names_every_outcome():
    assert set(ANSWERS) == set(Outcome)


def test_a_crashed_holders_redelivery_is_kept_until_the_lease_expires_then_taken_over():
    """The story of issue 19: holder dies mid-job, its event comes back."""
    doc = {"processingStatus": "queued"}
    first = claims.decide(doc, Delivery(EVENT, NOW, "inst2:a"), NOW, POLICY)
    doc |= first.fields  # inst2 runs it... and dies (no release, no heartbeat)
    again = claims.decide(doc, Delivery(EVENT, NOW, ME), NOW + dt.timedelta(seconds=10), POLICY)
    assert again == Decision(Outcome.RUNNING) and not again.outcome.acknowledges
    later = NOW + dt.timedelta(seconds=POLICY.lease_seconds + 1)
    takeover = claims.decide(doc, Delivery(EVENT, NOW, ME), later, POLICY)
    assert takeover.outcome is Outcome.ACQUIRED and takeover.attempt == 2


def test_the_table_covers_every_dimension_the_issue_names():
    assert len(CASES) == 6 * 6 * 3 * 2 * 2


def test_a_missing_document_is_reported_not_created_here():
    assert claims.decide(None, Delivery(EVENT, NOW, ME), NOW, POLICY) == Decision(Outcome.MISSING)


def test_ten_re_edits_of_one_session_each_get_a_fresh_budget():
    """The app re-queues a completed session: attempts restart at 1 every time."""
    doc: dict = {"processingStatus": "queued"}
    for edit in range(10):
        request = Delivery(f"edit-{edit}", NOW, f"inst1:{edit}")
        decision = claims.decide(doc, request, NOW, POLICY)
        assert decision.outcome is Outcome.ACQUIRED and decision.attempt == 1
        doc |= decision.fields | {"processingStatus": "completed", "leaseOwner": None}
        doc["processingStatus"] = "queued"  # the app's next edit


def test_redeliveries_of_one_request_spend_its_budget_then_fail_it():
    doc: dict = {"processingStatus": "queued"}
    for attempt in range(1, POLICY.max_attempts + 1):
        decision = claims.decide(doc, Delivery(EVENT, NOW, f"inst1:{attempt}"), NOW, POLICY)
        assert decision.outcome is Outcome.ACQUIRED and decision.attempt == attempt
        doc |= decision.fields | {"leaseExpiresAt": NOW, "lastError": "ServiceUnavailable"}
    decision = claims.decide(doc, Delivery(EVENT, NOW, "inst1:last"), NOW, POLICY)
    assert decision.outcome is Outcome.EXHAUSTED
    assert (
        "after 5 attempts; the last error was: ServiceUnavailable"
        in (decision.fields["errorMessage"])
    )


def test_expired_message_names_the_age_and_the_limit():
    old = Delivery(EVENT, NOW - dt.timedelta(hours=30), ME)
    decision = claims.decide({"processingStatus": "queued"}, old, NOW, POLICY)
    assert decision.fields["errorMessage"] == (
        "The request expired: it was sent 30 hours ago, more than the limit of 24 hours. "
        "Please try again."
    )
    assert decision.fields["eventId"] == EVENT


@pytest.mark.parametrize(
    ("lease", "state"),
    [
        ("none", Lease.NONE),
        ("mine", Lease.MINE),
        ("ours live", Lease.OURS_LIVE),
        ("ours dead", Lease.OURS_DEAD),
        ("others live", Lease.OTHERS_LIVE),
        ("expired", Lease.EXPIRED),
    ],
)
def test_lease_states(lease, state):
    running = {ME} | ({OURS_OTHER_JOB} if lease == "ours live" else set())
    doc = make_doc("processing", lease, 1)
    assert claims.lease_state(doc, Delivery(EVENT, NOW, ME), NOW, running) is state


COMPLETE = {"processingStatus": "completed", "updatedAt": NOW, "leaseOwner": None}


@pytest.mark.parametrize(
    ("doc", "result"),
    [
        ({"processingStatus": "processing", "leaseOwner": ME}, (True, True)),
        # Our completion landed but its reply was lost: recognised, not written again.
        ({"processingStatus": "completed", "updatedAt": NOW, "leaseOwner": None}, (True, False)),
        # Someone else's completion, a cancel, a re-queue, a takeover, no document: lost.
        ({"processingStatus": "completed", "updatedAt": NOW - dt.timedelta(1)}, (False, False)),
        ({"processingStatus": "cancelled", "leaseOwner": ME}, (False, False)),
        ({"processingStatus": "queued", "leaseOwner": ME}, (False, False)),
        ({"processingStatus": "processing", "leaseOwner": OTHERS}, (False, False)),
        (None, (False, False)),
    ],
)
def test_finish_recognises_its_own_write_and_nothing_else(doc, result):
    assert claims.finish(doc, ME, COMPLETE) == result


FAILED_AT = NOW - dt.timedelta(seconds=5)


@pytest.mark.parametrize(
    ("event_id", "sent", "expected"),
    [
        (EVENT, NOW - dt.timedelta(seconds=60), Outcome.FAILED),  # the failed event itself
        # Another event sent before the failure: a copy of the same request that was kept (503)
        # while the job ran. It must not start the request again.
        ("event-2", FAILED_AT - dt.timedelta(seconds=30), Outcome.FAILED),
        ("event-2", FAILED_AT, Outcome.FAILED),
        # Sent after the failure: the user's retry, with a fresh budget.
        ("event-2", FAILED_AT + dt.timedelta(seconds=1), Outcome.ACQUIRED),
        ("event-2", None, Outcome.ACQUIRED),  # no send time: as before, a retry
    ],
)
def test_an_event_sent_before_the_failure_is_not_a_retry(event_id, sent, expected):
    doc = {"processingStatus": "failed", "eventId": EVENT, "failedAt": FAILED_AT, "attempts": 5}
    decision = claims.decide(doc, Delivery(event_id, sent, ME), NOW, POLICY)
    assert decision.outcome is expected
    assert decision.outcome.acknowledges is (expected is Outcome.FAILED)
    if expected is Outcome.ACQUIRED:
        assert decision.attempt == 1


# --- the age of the request a delivery would run (issue 27, defect 6) -------------------------

OLD_EVENT = NOW - dt.timedelta(days=3)
DAY_AGO = NOW - dt.timedelta(days=1, hours=1)
MINUTE_AGO = NOW - dt.timedelta(minutes=1)


@pytest.mark.parametrize(
    ("doc", "event_time", "updated_at", "age_seconds"),
    [
        # a fresh event: its own age
        ({"processingStatus": "queued"}, MINUTE_AGO, MINUTE_AGO, 60),
        # a stale copy of an earlier request's event, the new request queued a minute ago
        ({"processingStatus": "queued"}, OLD_EVENT, MINUTE_AGO, 60),
        ({"processingStatus": "queued", "requestedAt": MINUTE_AGO}, OLD_EVENT, None, 60),
        # a request queued long ago and never touched since: old, whatever the copy says
        ({"processingStatus": "queued"}, OLD_EVENT, DAY_AGO, 90000),
        # a running request's takeover: its requestedAt bounds it, not the document's writes
        ({"processingStatus": "processing", "requestedAt": MINUTE_AGO}, OLD_EVENT, NOW, 60),
        ({"processingStatus": "processing"}, OLD_EVENT, NOW, 3 * 86400),
        # no times at all: not judged old
        ({"processingStatus": "queued"}, None, None, 0),
    ],
)
def test_request_age(doc, event_time, updated_at, age_seconds):
    request = Delivery(EVENT, event_time, ME)
    assert claims.request_age(doc, request, NOW, updated_at) == pytest.approx(age_seconds)


def test_regression_a_stale_copy_does_not_expire_the_new_request():
    """Issue 27, defect 6: before, the copy's age failed the new request as expired."""
    doc = {"processingStatus": "queued", "eventId": "previous-request"}
    stale = Delivery("previous-request", OLD_EVENT, ME)
    decision = claims.decide(doc, stale, NOW, POLICY, updated_at=MINUTE_AGO)
    assert decision.outcome is Outcome.ACQUIRED and decision.attempt == 1


@pytest.mark.parametrize(
    ("position", "attempt"),
    [(2, 3), (0, 3), (None, 4), (True, 4)],  # recorded as waiting: that attempt is given back
)
def test_a_job_that_died_while_only_waiting_for_the_gpu_gets_its_attempt_back(position, attempt):
    doc = {
        "processingStatus": "processing",
        "eventId": EVENT,
        "attempts": 3,
        "leaseOwner": OTHERS,
        "leaseExpiresAt": NOW - dt.timedelta(seconds=1),
        "queuePosition": position,
    }
    decision = claims.decide(doc, Delivery(EVENT, NOW, ME), NOW, POLICY)
    assert decision.outcome is Outcome.ACQUIRED and decision.attempt == attempt
