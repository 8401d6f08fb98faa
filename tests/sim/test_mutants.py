"""Each named regression fails with its fix reverted: the fix is undone by monkeypatching (a
mutant), the schedule is replayed, and the simulation must report the defect. This is what
keeps the regressions (and the invariants behind them) from passing vacuously."""

from __future__ import annotations

import pytest

import inpaint.session.claims as claims
import inpaint.session.gpuqueue as gpuqueue
import inpaint.session.jobs as jobs
import inpaint.session.store as store
import tests.sim.world as world
from tests.sim import test_regressions as regressions


def _no_memory_no_bound(mp: pytest.MonkeyPatch) -> None:
    admit = gpuqueue.FairQueue.admit

    def forgetful_admit(self, user, capacity):
        self._users_last.clear()  # users who come back start at the current round again
        return admit(self, user, capacity)

    mp.setattr(gpuqueue.FairQueue, "admit", forgetful_admit)
    mp.setattr(gpuqueue.FairQueue, "max_passes", lambda self: 10**6)


def _no_stall_check(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(world, "stall_reason", lambda *args: None)


def _record_missing(mp: pytest.MonkeyPatch) -> None:
    not_acquired = jobs.JobRunner.not_acquired

    def recreate(self, request, claim):
        if claim.outcome is claims.Outcome.MISSING:  # the old record_missing
            self._store._docs.set(request.session.document_path, {"processingStatus": "failed"})
            return
        not_acquired(self, request, claim)

    mp.setattr(jobs.JobRunner, "not_acquired", recreate)


def _unconditional_upload(mp: pytest.MonkeyPatch) -> None:
    def upload_output(self, path, data, expected):
        info = self._blobs.stat(path)
        return self._blobs.write(path, data, info.generation if info else 0)

    mp.setattr(store.SessionStore, "upload_output", upload_output)


def _every_stop_spends(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(jobs, "spends_attempt", lambda phase, exc: True)


def _age_of_the_copy(mp: pytest.MonkeyPatch) -> None:
    def request_age(doc, request, now, updated_at):
        return (now - request.event_time).total_seconds() if request.event_time else 0.0

    mp.setattr(claims, "request_age", request_age)


def _waiting_counts(mp: pytest.MonkeyPatch) -> None:
    def attempts_so_far(doc, event_id):
        if claims.is_new_request(doc, event_id):
            return 0
        return claims._int(doc.get("attempts"))

    mp.setattr(claims, "attempts_so_far", attempts_so_far)


MUTANTS = {
    "test_a_users_second_job_is_not_starved_by_users_who_come_straight_back": (
        _no_memory_no_bound,
        "turns",
    ),
    "test_a_hung_model_call_does_not_hold_the_jobs_behind_it": (_no_stall_check, "waited"),
    "test_a_deleted_session_stays_deleted_when_its_message_comes_again": (
        _record_missing,
        "has a document again",
    ),
    "test_a_slow_upload_of_a_cancelled_job_never_replaces_the_new_requests_files": (
        _unconditional_upload,
        "holds",
    ),
    "test_a_sigterm_does_not_spend_an_attempt": (_every_stop_spends, "attempts exhausted"),
    "test_a_stale_copy_of_an_old_event_does_not_expire_the_new_request": (
        _age_of_the_copy,
        "expired",
    ),
    "test_a_crash_while_only_waiting_does_not_spend_an_attempt": (
        _waiting_counts,
        "attempts exhausted",
    ),
}


def test_every_regression_has_a_mutant():
    named = {n for n in dir(regressions) if n.startswith("test_")}
    assert named == set(MUTANTS)


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_the_regression_fails_with_its_fix_reverted(name, monkeypatch):
    revert, violation = MUTANTS[name]
    revert(monkeypatch)
    with pytest.raises(AssertionError, match=violation):
        getattr(regressions, name)()
