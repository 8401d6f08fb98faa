"""The compare-and-set loop (inpaint.session.cas), table-driven against an in-memory document.

The e2e tests prove the loop against the real Firestore emulator (racing claims, a reply lost by
the fault proxy); here every branch is driven one by one: lost races, lost answers whose write
landed or not, errors that must not be retried, the attempt budget and the deadline (a clock the
test owns, no sleeping).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import tenacity
from google.api_core import exceptions as gexc

from inpaint.errors import TransientError
from inpaint.session.cas import compare_and_set

# What one write does: "ok" lands and answers; "race" finds the version changed (someone wrote
# first: their write lands instead); "gone" finds the document deleted; "aborted" is Firestore's
# contention answer; "lost" lands but the answer is lost (UNAVAILABLE); "timeout" does not land
# and times out; "denied" is refused for good.
OK, RACE, GONE, ABORTED, LOST, TIMEOUT, DENIED = (
    "ok",
    "race",
    "gone",
    "aborted",
    "lost",
    "timeout",
    "denied",
)


@dataclass
class Document:
    """One document with a version that every landed write bumps."""

    data: dict[str, Any] | None
    script: list[str]
    version: int = 0
    reads: int = 0
    writes: list[dict[str, Any]] = field(default_factory=list)

    def read(self) -> tuple[dict[str, Any] | None, int]:
        self.reads += 1
        return (dict(self.data) if self.data is not None else None), self.version

    def write(self, fields: dict[str, Any], version: int) -> None:
        assert version == self.version or self.script[0] in (RACE, GONE)
        what = self.script.pop(0)
        if what == RACE:
            self._land({"owner": "someone else"})
            raise gexc.FailedPrecondition("version changed")
        if what == GONE:
            self.data, self.version = None, self.version + 1
            raise gexc.NotFound("no document")
        if what == ABORTED:
            raise gexc.Aborted("contention")
        if what == TIMEOUT:
            raise gexc.DeadlineExceeded("no answer in time")
        if what == DENIED:
            raise gexc.PermissionDenied("rules")
        self._land(fields)
        self.writes.append(fields)
        if what == LOST:
            raise gexc.ServiceUnavailable("reply lost")

    def _land(self, fields: dict[str, Any]) -> None:
        self.data = (self.data or {}) | fields
        self.version += 1


def take_unless_ours(document: dict[str, Any] | None) -> tuple[str, dict[str, Any] | None]:
    """Writes ``owner: us`` once; seeing it already there (our lost answer) writes nothing."""
    if document is None:
        return "absent", None
    if document.get("owner") == "us":
        return "ours", None
    return "taken", {"owner": "us"}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run(doc: Document, *, give_up_at: float = 100.0, clock: Clock | None = None) -> str:
    return compare_and_set(
        doc.read,
        doc.write,
        take_unless_ours,
        give_up_at=give_up_at,
        what="sessions/s1",
        clock=clock or Clock(),
        wait=tenacity.wait_none(),
        attempts=5,
    )


@pytest.mark.parametrize(
    ("script", "result", "reads", "landed"),
    [
        ([OK], "taken", 1, 1),
        ([RACE, OK], "taken", 2, 1),  # lost a race: re-read, decide again, write again
        ([ABORTED, OK], "taken", 2, 1),
        ([TIMEOUT, OK], "taken", 2, 1),  # no answer and not landed: the re-read writes it
        ([LOST], "ours", 2, 1),  # landed, answer lost: the re-read recognises our write
        ([RACE, LOST], "ours", 3, 1),
        ([RACE, RACE, RACE, RACE, OK], "taken", 5, 1),  # the fifth of five attempts
        ([GONE], "absent", 2, 0),  # deleted meanwhile: decide sees None and writes nothing
    ],
)
def test_outcomes(script, result, reads, landed):
    doc = Document({"owner": "nobody"}, list(script))
    assert run(doc) == result
    assert doc.reads == reads and len(doc.writes) == landed
    assert doc.script == []  # no write beyond the script: nothing repeated blindly


def test_nothing_to_write_means_no_write():
    doc = Document({"owner": "us"}, [])
    assert run(doc) == "ours" and doc.reads == 1 and doc.writes == []


def test_an_error_that_is_not_a_lost_race_is_raised_at_once():
    doc = Document({"owner": "nobody"}, [DENIED, OK])
    with pytest.raises(gexc.PermissionDenied):
        run(doc)
    assert doc.reads == 1 and doc.script == [OK]


@pytest.mark.parametrize(
    ("script", "raised"),
    [
        ([RACE] * 5, TransientError),  # always beaten: retry the whole job later
        ([ABORTED] * 5, TransientError),
        ([TIMEOUT] * 5, gexc.DeadlineExceeded),  # never answered: the last real error
    ],
)
def test_the_attempt_budget_ends_in_a_transient_error(script, raised):
    doc = Document({"owner": "nobody"}, list(script))
    with pytest.raises(raised) as info:
        run(doc)
    assert doc.reads == 5 and doc.script == []
    if raised is TransientError:
        assert "sessions/s1 is changing too fast" in str(info.value)


def test_a_lost_answer_after_the_deadline_is_raised_not_re_read():
    clock = Clock()
    doc = Document({"owner": "nobody"}, [TIMEOUT, OK])
    clock.now = 10.0
    with pytest.raises(gexc.DeadlineExceeded):
        run(doc, give_up_at=5.0, clock=clock)
    assert doc.reads == 1 and doc.script == [OK]


def test_a_lost_race_after_the_deadline_still_re_reads():
    """Losing a race is an answer (the write did not land), so it is safe to try again."""
    clock = Clock()
    clock.now = 10.0
    doc = Document({"owner": "nobody"}, [RACE, OK])
    assert run(doc, give_up_at=5.0, clock=clock) == "taken"
