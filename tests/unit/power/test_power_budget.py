from __future__ import annotations

import pytest

from hostwarden.power.budget import (
    BudgetState,
    CgroupCpuMax,
    PowerBudget,
    SandboxLoad,
    apply_actions,
    decide,
)
from hostwarden.power.types import PowerError

BUDGET = PowerBudget(budget_watts=100.0, sustain_seconds=5.0, release_seconds=10.0, release_fraction=0.9,
                     min_cpus=0.1)
LOADS = [SandboxLoad("high", 10, 2.0), SandboxLoad("low", 1, 2.0), SandboxLoad("mid", 5, 1.0)]


def _run(steps, state=None):
    """steps: (time, watts); returns the final state and every action, with its time."""
    state = state or BudgetState()
    seen = []
    for now, watts in steps:
        state, actions = decide(BUDGET, state, now, watts, 10.0, LOADS)
        seen += [(now, a) for a in actions]
    return state, seen


def test_nothing_before_power_has_stayed_above_for_the_duration():
    _, seen = _run([(0, 120), (4.9, 120)])
    assert seen == []
    _, seen = _run([(0, 120), (3, 95), (5, 120), (9, 120)])   # dipping below restarts the clock
    assert seen == []


def test_the_lowest_priority_is_throttled_first_and_the_top_never():
    state, seen = _run([(0, 115), (5, 115)])
    [(when, action)] = seen
    assert when == 5 and action.sandbox == "low" and action.action == "throttle"
    assert action.cpu_max == "50000 100000"         # 15 W / 10 W per core = 1.5 cores shed from 2
    assert state.throttled == {"low": pytest.approx(0.5)}


def test_a_large_excess_reaches_the_next_priority_but_not_the_top():
    _, seen = _run([(0, 160), (5, 160)])
    assert [(a.sandbox, a.cpu_max) for _, a in seen] == [("low", "10000 100000"), ("mid", "10000 100000")]


def test_still_above_with_every_lower_priority_at_its_floor_is_reported():
    _, seen = _run([(0, 160), (5, 160), (9, 160), (10, 160)])
    assert [w for w, _ in seen] == [5, 5, 10]
    assert seen[-1][1].action == "over_budget" and seen[-1][1].cpu_max is None


def test_release_after_staying_below_the_lower_threshold():
    state, _ = _run([(0, 160), (5, 160)])
    state, seen = _run([(6, 95), (30, 95)], state)            # below budget but above 0.9 x: hold
    assert seen == [] and state.throttled
    state, seen = _run([(31, 80), (40, 80), (41, 80)], state)
    assert [(w, a.sandbox, a.action, a.cpu_max) for w, a in seen] == [(41, "mid", "release", "max 100000")]
    state, seen = _run([(50, 80), (51, 80)], state)
    assert [(w, a.sandbox) for w, a in seen] == [(51, "low")] and state.throttled == {}


def test_gone_sandboxes_leave_the_state():
    state, _ = _run([(0, 115), (5, 115)])
    state, _ = decide(BUDGET, state, 6, 115, 10.0, [SandboxLoad("high", 10, 2.0)])
    assert state.throttled == {}


def test_from_mapping_validates_each_key():
    assert PowerBudget.from_mapping({"budget_watts": 250, "sustain_seconds": 2}) == PowerBudget(250.0, 2.0)
    for bad, key in (({}, "budget_watts"), ({"budget_watts": -1}, "budget_watts"),
                     ({"budget_watts": 10, "release_fraction": 1.5}, "release_fraction"),
                     ({"budget_watts": 10, "sustain_seconds": "5"}, "sustain_seconds"),
                     ({"budget_watts": True}, "budget_watts"), ({"budget_watts": 10, "watts": 1}, "watts")):
        with pytest.raises(ValueError, match=rf"\[power\] {key}:"):
            PowerBudget.from_mapping(bad)


def test_actions_are_written_to_cpu_max(tmp_path):
    (tmp_path / "low").mkdir()
    _, seen = _run([(0, 115), (5, 115)])
    apply_actions([a for _, a in seen], CgroupCpuMax({"low": tmp_path / "low"}))
    assert (tmp_path / "low" / "cpu.max").read_text() == "50000 100000"
    with pytest.raises(PowerError, match="cpu controller"):
        CgroupCpuMax({"low": tmp_path / "absent"}).set_cpu_max("low", "max 100000")
