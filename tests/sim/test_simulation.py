"""The deterministic simulation, driven by Hypothesis (issue 27).

Hypothesis chooses the schedule: which users create, cancel, re-queue, delete or re-publish
sessions, which messages Pub/Sub delivers again after their acknowledgement, which instances
crash, are stopped or hang, which requests or replies get lost, and how much virtual time passes
between these. After every step the safety invariants are checked; at the end the world runs
until nothing is left to happen and the liveness invariants are checked (``World.check_*``).

Profiles (tests/conftest.py): the default explores a bounded number of schedules, derandomized
so that a CI run is reproducible; ``--hypothesis-profile=sim-long`` explores many more.
"""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from tests.sim.world import Config, World

USERS = st.sampled_from(["u1", "u2", "u3", "u4", "u5", "u6"])
PICK = st.integers(min_value=0, max_value=1000)


class ServiceMachine(RuleBasedStateMachine):
    """One run: a world, the actions Hypothesis picks, the invariants after each."""

    world: World

    @initialize(instances=st.sampled_from([1, 2]), concurrency=st.sampled_from([2, 4]))
    def start(self, instances: int, concurrency: int) -> None:
        self.world = World(Config(instances=instances, concurrency=concurrency))

    @rule(user=USERS)
    def create(self, user: str) -> None:
        self.world.create(user)

    @rule(pick=PICK)
    def cancel(self, pick: int) -> None:
        self.world.cancel(pick)

    @rule(pick=PICK)
    def requeue(self, pick: int) -> None:
        self.world.requeue(pick)

    @rule(pick=PICK)
    def delete(self, pick: int) -> None:
        self.world.delete(pick)

    @rule(pick=PICK)
    def reedit(self, pick: int) -> None:
        self.world.reedit(pick)

    @rule(user=USERS, jobs=st.integers(min_value=2, max_value=8))
    def eager(self, user: str, jobs: int) -> None:
        self.world.eager(user, jobs)

    @rule(pick=PICK)
    def republish(self, pick: int) -> None:
        self.world.republish(pick)

    @rule(pick=PICK)
    def redeliver(self, pick: int) -> None:
        self.world.redeliver(pick)

    @rule(seconds=st.sampled_from([5.0, 60.0, 300.0]))
    def slow_upload(self, seconds: float) -> None:
        self.world.slow_upload(seconds)

    @rule(pick=PICK)
    def duplicate_after_ack(self, pick: int) -> None:
        self.world.duplicate_after_ack(pick)

    @precondition(lambda self: self.world.oracle.hangs + self._crashes < 4)
    @rule(pick=PICK)
    def crash(self, pick: int) -> None:
        self._crashes += 1
        self.world.crash(pick)

    @rule(pick=PICK)
    def sigterm(self, pick: int) -> None:
        self.world.stop(pick)

    @precondition(lambda self: self.world.oracle.hangs + self._crashes < 4)
    @rule(pick=PICK)
    def hang(self, pick: int) -> None:
        self.world.hang(pick)

    @rule(
        operation=st.sampled_from(["update", "write", "get"]),
        when=st.sampled_from(["before", "after"]),
    )
    def lose(self, operation: str, when: str) -> None:
        self.world.faults.fail_next(operation, when)

    @rule(seconds=st.sampled_from([0.05, 0.5, 3.0, 10.0, 35.0, 200.0, 700.0]))
    def advance(self, seconds: float) -> None:
        self.world.advance(seconds)

    @invariant()
    def safe(self) -> None:
        assert not self.world.oracle.violations, self.world.oracle.violations

    def teardown(self) -> None:
        self.world.settle()
        self.world.check_settled()
        assert not self.world.oracle.violations, self.world.oracle.violations

    _crashes = 0


TestService = ServiceMachine.TestCase
TestService.settings = settings(stateful_step_count=40, deadline=None)
