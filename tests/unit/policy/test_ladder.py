"""Ladder decisions in scenarios: each rung, its timing, and its guards."""

from __future__ import annotations

from dataclasses import replace

from hostwarden.policy.ladder import Action, LadderState, MemoryEvents, Reason, decide
from hostwarden.policy.schema import Policy, Priority, parse_policy
from tests.unit.policy.support import GIB, MIB, call, host

HIGH, NORMAL, LOW = Priority.HIGH, Priority.NORMAL, Priority.LOW
POLICY = parse_policy("""
[ladder]
freeze_psi = 20
freeze_after = "5s"
thaw_psi = 5
thaw_after = "10s"
kill_frozen_after = "60s"
kill_stall_psi = 50
kill_stall_after = "10s"
post_action_delay = "2s"
""")


def run(policy: Policy, rounds: list[tuple[float, object]], state: LadderState | None = None):
    """Feed (time, observations) rounds; returns the decisions of each round and the last state."""
    state = state or LadderState()
    history = []
    for now, observations in rounds:
        decisions, state = decide(policy, observations, state, now)
        history.append(decisions)
    return history, state


def actions(decisions) -> list[tuple[str, str]]:
    return [(d.action.value, d.call_id) for d in decisions]


def test_freeze_waits_for_sustained_pressure_then_freezes_the_lowest_class_only():
    def seen(psi: float):
        return host(call("h", HIGH, psi=psi), call("n", NORMAL), call("l1", LOW), call("l2", LOW))

    history, _ = run(POLICY, [(0, seen(30)), (4.9, seen(30)), (5, seen(30))])
    assert history[0] == [] and history[1] == []
    assert sorted(actions(history[2])) == [("freeze", "l1"), ("freeze", "l2")]
    freeze = history[2][0]
    assert freeze.reason is Reason.HIGHER_PRIORITY_PRESSURE
    assert "sb-h/h (high) has been under memory pressure 30% for 5s" in freeze.detail
    assert "resumes when pressure subsides" in freeze.hint


def test_pressure_that_dips_restarts_the_timer():
    seen = {psi: host(call("h", HIGH, psi=psi), call("l", LOW)) for psi in (30, 10)}
    history, _ = run(POLICY, [(0, seen[30]), (3, seen[10]), (4, seen[30]), (8, seen[30]), (9, seen[30])])
    assert [actions(d) for d in history] == [[], [], [], [], [("freeze", "l")]]


def test_thaw_after_calm_for_thaw_after_and_only_calls_the_ladder_froze():
    pressured = host(call("h", HIGH, psi=30), call("l", LOW), call("x", LOW, frozen=True, frozen_since=0))
    _, state = run(POLICY, [(0, pressured), (5, pressured)])
    assert set(state.frozen_at) == {"l"}
    calm = host(call("h", HIGH, psi=1), call("l", LOW, frozen=True, frozen_since=5),
                call("x", LOW, frozen=True, frozen_since=0))
    history, state = run(POLICY, [(6, calm), (15.9, calm), (16, calm)], state)
    assert history[0] == [] and history[1] == []
    assert actions(history[2]) == [("thaw", "l")]  # "x" was frozen by someone else: never thawed here
    assert history[2][0].reason is Reason.PRESSURE_SUBSIDED
    assert state.frozen_at == {}


def test_the_next_class_up_is_frozen_only_if_pressure_persists_a_full_freeze_after_later():
    seen = host(call("h", HIGH, psi=30), call("n", NORMAL), call("l", LOW))
    _, state = run(POLICY, [(0, seen), (5, seen)])
    assert set(state.frozen_at) == {"l"}
    frozen_low = host(call("h", HIGH, psi=30), call("n", NORMAL), call("l", LOW, frozen=True, frozen_since=5))
    history, state = run(POLICY, [(9.9, frozen_low), (10, frozen_low)], state)
    assert [actions(d) for d in history] == [[], [("freeze", "n")]]


def test_frozen_call_is_killed_at_the_deadline_one_per_decision_biggest_first():
    pressured = host(call("h", HIGH, psi=40), call("l1", LOW, current=GIB), call("l2", LOW, current=2 * GIB))
    _, state = run(POLICY, [(0, pressured), (5, pressured)])
    assert set(state.frozen_at) == {"l1", "l2"}

    frozen = host(call("h", HIGH, psi=40), call("l1", LOW, current=GIB, frozen=True, frozen_since=5),
                  call("l2", LOW, current=2 * GIB, frozen=True, frozen_since=5))
    history, state = run(POLICY, [(64.9, frozen), (65, frozen)], state)
    assert history[0] == []
    assert actions(history[1]) == [("kill", "l2")]
    kill = history[1][0]
    assert kill.reason is Reason.FROZEN_TOO_LONG
    assert "frozen for 1m" in kill.detail and "2 GiB" in kill.detail

    # The next kill waits for the post-action delay.
    without_l2 = replace(frozen, calls=tuple(c for c in frozen.calls if c.call_id != "l2"))
    history, state = run(POLICY, [(66, without_l2), (67, without_l2)], state)
    assert [actions(d) for d in history] == [[], [("kill", "l1")]]


def test_no_kill_at_the_deadline_once_pressure_subsided():
    pressured = host(call("h", HIGH, psi=40), call("l", LOW))
    _, state = run(POLICY, [(0, pressured), (5, pressured)])
    calm = host(call("h", HIGH, psi=1), call("l", LOW, frozen=True, frozen_since=5))
    history, _ = run(POLICY, [(60, calm), (66, calm)], state)
    assert [actions(d) for d in history] == [[], []]


def stalled(call_id: str, priority: Priority, hits: int, **kwargs):
    return call(call_id, priority, psi=80, full=70, current=2 * GIB, events=MemoryEvents(max=hits), **kwargs)


def test_a_call_stalled_at_its_memory_max_is_killed():
    history, _ = run(POLICY, [(0, host(stalled("h", HIGH, 1))), (5, host(stalled("h", HIGH, 9))),
                              (10, host(stalled("h", HIGH, 12)))])
    assert [actions(d) for d in history] == [[], [], [("kill", "h")]]
    kill = history[2][0]
    assert kill.reason is Reason.STALLED_AT_MEMORY_MAX
    assert "killed at 2 GiB against memory.max 2 GiB: hit the limit 12 times" in kill.detail
    assert "fewer workers" in kill.hint


def test_a_stalled_call_is_not_killed_while_a_lower_priority_call_runs_unfrozen():
    quick = replace(POLICY, ladder=replace(POLICY.ladder, kill_stall_after=2.0))
    history, state = run(quick, [(0, host(stalled("h", HIGH, 1), call("l", LOW))),
                                 (2, host(stalled("h", HIGH, 3), call("l", LOW)))])
    # The kill is due at 2 s, but "l" could still be frozen: it is frozen first, before the pressure timer.
    assert actions(history[1]) == [("freeze", "l")]
    history, _ = run(quick, [(4, host(stalled("h", HIGH, 5), call("l", LOW, frozen=True, frozen_since=2)))], state)
    assert actions(history[0]) == [("kill", "h")]


def test_a_throttled_call_that_stalls_at_its_lowered_memory_high_is_killed():
    high = call("h", HIGH, current=4 * GIB, memory_max=8 * GIB)

    def held(hits: int):  # at the memory.high the ladder set, hitting it again and again, stalled
        return host(high, call("l", LOW, current=GIB, memory_high=int(GIB * 0.9), psi=80, full=70,
                               events=MemoryEvents(high=hits)), available=2 * GIB)

    history, state = run(POLICY, [(0, host(high, call("l", LOW, current=GIB), available=2 * GIB))])
    assert actions(history[0]) == [("throttle", "l")]
    history, _ = run(POLICY, [(2, held(5)), (7, held(9)), (12, held(14))], state)
    kills = [[d for d in decisions if d.action is Action.KILL] for decisions in history]
    assert [[d.call_id for d in k] for k in kills] == [[], [], ["l"]]
    assert kills[2][0].reason is Reason.STALLED_WHILE_THROTTLED
    assert "held at memory.high 922 MiB" in kills[2][0].detail


def test_a_throttled_call_that_does_not_stall_is_not_killed():
    high = call("h", HIGH, current=4 * GIB, memory_max=8 * GIB)
    quiet = host(high, call("l", LOW, current=GIB, memory_high=int(GIB * 0.9), events=MemoryEvents(high=3)),
                 available=2 * GIB)
    history, state = run(POLICY, [(0, host(high, call("l", LOW, current=GIB), available=2 * GIB))])
    history, _ = run(POLICY, [(2, quiet), (30, quiet)], state)
    assert not [d for decisions in history for d in decisions if d.action is Action.KILL]


def test_stall_needs_memory_max_hits_not_just_pressure():
    busy = host(call("l", LOW, psi=80, full=70))
    history, _ = run(POLICY, [(0, busy), (30, busy)])
    assert history == [[], []]


def test_host_short_throttles_the_lowest_class_first_then_releases_when_it_recovers():
    def seen(available: int, low_high: int | None = None):
        return host(call("h", HIGH, current=4 * GIB, memory_max=8 * GIB), call("n", NORMAL, current=GIB),
                    call("l", LOW, current=GIB, memory_high=low_high), available=available)

    history, state = run(POLICY, [(0, seen(2 * GIB))])
    assert actions(history[0]) == [("throttle", "l")]
    throttle = history[0][0]
    assert throttle.memory_high == int(GIB * 0.9)
    assert throttle.reason is Reason.HOST_MEMORY_SHORT
    # The low call is at its new memory.high and uses less; next round (after the delay) it is squeezed again.
    history, state = run(POLICY, [(1, seen(2 * GIB, int(GIB * 0.9)))], state)
    assert history[0] == []  # post-action delay
    history, state = run(POLICY, [(10, seen(40 * GIB, int(GIB * 0.9))), (20, seen(40 * GIB, int(GIB * 0.9)))],
                         state)
    assert history[0] == []
    assert actions(history[1]) == [("release", "l")] and history[1][0].memory_high == int(2 * GIB * 0.9)


def test_throttle_moves_up_a_class_when_the_lowest_is_at_its_floor():
    floor = parse_policy('[ladder]\nthrottle_floor = "1G"').ladder.throttle_floor
    seen = host(call("h", HIGH), call("n", NORMAL, current=2 * GIB, memory_max=4 * GIB),
                call("l", LOW, current=GIB, memory_high=floor), available=GIB)
    history, _ = run(parse_policy('[ladder]\nthrottle_floor = "1G"'), [(0, seen)])
    assert actions(history[0]) == [("throttle", "n")]


def test_host_pressure_freezes_below_the_top_class_present():
    seen = host(call("n", NORMAL), call("l", LOW), available=GIB, psi=50)
    history, _ = run(POLICY, [(0, seen), (5, seen)])
    assert ("freeze", "l") in actions(history[1]) and ("freeze", "n") not in actions(history[1])
    assert "the host is short of memory" in next(d for d in history[1] if d.action is Action.FREEZE).detail


def test_kernel_oom_kill_and_first_throttle_are_reported_once():
    seen = host(call("l", LOW, events=MemoryEvents(high=3, max=5, oom=1, oom_kill=1), memory_max=GIB))
    history, _ = run(POLICY, [(0, seen), (1, seen)])
    assert sorted(d.reason.value for d in history[0]) == ["kernel_oom_kill", "kernel_throttled"]
    assert all(d.action is Action.REPORT for d in history[0])
    assert "declare a larger memory intent" in history[0][0].hint
    assert history[1] == []


def test_dry_run_reports_what_it_would_do_and_follows_through_without_acting():
    dry = replace(POLICY, dry_run=True)
    pressured = host(call("h", HIGH, psi=30), call("l", LOW))
    history, state = run(dry, [(0, pressured), (5, pressured), (8, pressured)])
    assert actions(history[1]) == [("freeze", "l")] and history[1][0].dry_run
    assert history[2] == []  # it pretends "l" is frozen: no second freeze report
    calm = host(call("h", HIGH, psi=0), call("l", LOW))
    history, _ = run(dry, [(9, calm), (19, calm)], state)
    assert actions(history[1]) == [("thaw", "l")] and history[1][0].dry_run


def test_killed_calls_are_not_decided_on_again_while_they_linger():
    seen = host(stalled("l", LOW, 1))
    later = host(stalled("l", LOW, 5))
    history, state = run(POLICY, [(0, seen), (10, later), (20, later)])
    assert actions(history[1]) == [("kill", "l")]
    assert history[2] == [] and state.killed == {"l"}
    _, state = run(POLICY, [(21, host())], state)
    assert state.killed == frozenset()


def test_state_forgets_calls_that_ended():
    pressured = host(call("h", HIGH, psi=30), call("l", LOW))
    _, state = run(POLICY, [(0, pressured)])
    assert set(state.pressure_since) == {"h"}
    _, state = run(POLICY, [(1, host())], state)
    assert state.pressure_since == {} and state.seen_events == {}


def test_memory_sizes_in_details_are_human():
    seen = host(call("l", LOW, events=MemoryEvents(oom_kill=1), memory_max=512 * MIB))
    history, _ = run(POLICY, [(0, seen)])
    assert "512 MiB" in history[0][0].detail
