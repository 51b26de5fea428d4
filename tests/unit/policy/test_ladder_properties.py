"""Ladder invariants over random runs: a simulated host applies each decision, hypothesis drives the load."""

from __future__ import annotations

from dataclasses import replace
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from hostwarden.policy.actuator import apply
from hostwarden.policy.ladder import ESCALATIONS, Action, LadderState, MemoryEvents, decide
from hostwarden.policy.schema import Priority, default_policy
from tests.unit.policy.support import GIB, call, host

POLICY = default_policy()
POLICY = replace(POLICY, ladder=replace(POLICY.ladder, freeze_after=2.0, thaw_after=3.0, kill_frozen_after=6.0,
                                        kill_stall_after=2.0, post_action_delay=1.5))

CALL_IDS = ["c0", "c1", "c2", "c3", "c4"]

round_strategy = st.fixed_dictionaries({
    "dt": st.floats(0.0, 4.0),
    "psi": st.lists(st.sampled_from([0.0, 3.0, 15.0, 60.0, 90.0]), min_size=5, max_size=5),
    "full": st.lists(st.sampled_from([0.0, 30.0, 70.0]), min_size=5, max_size=5),
    "max_hits": st.lists(st.integers(0, 3), min_size=5, max_size=5),
    "available_gib": st.sampled_from([0.5, 4.0, 32.0]),
    "host_psi": st.sampled_from([0.0, 20.0, 80.0]),
})
run_strategy = st.fixed_dictionaries({
    "priorities": st.lists(st.sampled_from(list(Priority)), min_size=5, max_size=5),
    "externally_frozen": st.lists(st.booleans(), min_size=5, max_size=5),
    "rounds": st.lists(round_strategy, min_size=1, max_size=25),
})


class SimulatedHost:
    """Carries out decisions like the daemon's actuator would, so the next observation reflects them."""

    def __init__(self, priorities: list[Priority], externally_frozen: list[bool]) -> None:
        self.priority = dict(zip(CALL_IDS, priorities, strict=True))
        self.frozen_since: dict[str, float | None] = {
            cid: (0.0 if frozen else None) for cid, frozen in zip(CALL_IDS, externally_frozen, strict=True)}
        self.memory_high: dict[str, int] = {cid: int(2 * GIB * 0.9) for cid in CALL_IDS}
        self.max_hits = dict.fromkeys(CALL_IDS, 0)
        self.killed: set[str] = set()
        self.now = 0.0
        self.acted: list[str] = []

    def set_memory_high(self, path: str, value: int) -> None:
        self.memory_high[path] = value
        self.acted.append("memory_high")

    def freeze(self, path: str) -> None:
        self.frozen_since[path] = self.now
        self.acted.append("freeze")

    def thaw(self, path: str) -> None:
        self.frozen_since[path] = None
        self.acted.append("thaw")

    def kill(self, path: str) -> None:
        self.killed.add(path)
        self.acted.append("kill")

    def observe(self, step: dict):
        calls = []
        for index, cid in enumerate(CALL_IDS):
            if cid in self.killed:
                continue
            self.max_hits[cid] += step["max_hits"][index]
            observed = call(cid, self.priority[cid], psi=step["psi"][index], full=step["full"][index],
                            current=GIB, memory_high=self.memory_high[cid],
                            events=MemoryEvents(max=self.max_hits[cid]),
                            frozen=self.frozen_since[cid] is not None, frozen_since=self.frozen_since[cid])
            # The simulated actuator addresses calls by id: the test's cgroup path is the call id.
            calls.append(replace(observed, cgroup_path=cid))
        return host(*calls, available=int(step["available_gib"] * GIB), psi=step["host_psi"])


def simulate(policy, scenario, check) -> SimulatedHost:
    simulated = SimulatedHost(scenario["priorities"], scenario["externally_frozen"])
    state = LadderState()
    for step in scenario["rounds"]:
        simulated.now += step["dt"]
        observations = simulated.observe(step)
        decisions, state = decide(policy, observations, state, simulated.now)
        check(observations, decisions, simulated.now)
        apply(decisions, simulated)
    return simulated


@settings(max_examples=150, deadline=None)
@given(run_strategy)
def test_kills_are_single_and_never_above_a_call_that_could_be_frozen(scenario):
    def check(observations, decisions, _now):
        kills = [d for d in decisions if d.action is Action.KILL]
        assert len(kills) <= 1
        by_id = {c.call_id: c for c in observations.calls}
        for kill in kills:
            victim = by_id[kill.call_id]
            unfrozen_lower = [c.call_id for c in observations.calls
                              if not c.frozen and c.priority.rank < victim.priority.rank]
            assert not unfrozen_lower, f"killed {victim.priority} {kill.call_id} while {unfrozen_lower} ran"
        assert {d.call_id for d in decisions} <= set(by_id)
        assert all(not d.dry_run for d in decisions)

    simulate(POLICY, scenario, check)


@settings(max_examples=150, deadline=None)
@given(run_strategy)
def test_escalations_are_spaced_by_the_post_action_delay(scenario):
    escalated_at: list[float] = []

    def check(_observations, decisions, now):
        if any(d.action in ESCALATIONS for d in decisions):
            escalated_at.append(now)

    simulate(POLICY, scenario, check)
    gaps = [later - earlier for earlier, later in pairwise(escalated_at)]
    assert all(gap >= POLICY.ladder.post_action_delay for gap in gaps)


@settings(max_examples=150, deadline=None)
@given(run_strategy)
def test_dry_run_never_acts(scenario):
    def check(_observations, decisions, _now):
        assert all(d.dry_run for d in decisions)

    simulated = simulate(replace(POLICY, dry_run=True), scenario, check)
    assert simulated.acted == [] and simulated.killed == set()


@settings(max_examples=100, deadline=None)
@given(run_strategy)
def test_the_ladder_thaws_only_what_it_froze(scenario):
    froze: set[str] = set()

    def check(_observations, decisions, _now):
        for decision in decisions:
            if decision.action is Action.FREEZE:
                froze.add(decision.call_id)
            elif decision.action is Action.THAW:
                assert decision.call_id in froze

    simulate(POLICY, scenario, check)
