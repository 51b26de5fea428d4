"""Power budget: throttle lower-priority sandboxes (cpu.max) while node power stays above a budget.

`decide()` is a pure function of the budget, the previous state and this step's readings; it returns
the new state and action records. `apply_actions()` hands the records to an actuator that writes
cpu.max. The daemon turns every record into an event and a metric.

Rules (POLCA-style oversubscription):
- power above `budget_watts` for `sustain_seconds`: shed the excess. The CPU to shed is the excess
  divided by the node's watts per busy core; it is taken from the lowest priority first, each sandbox
  of a priority level keeping a share proportional to its recent use and at least `min_cpus`. The
  highest priority present is never throttled. After a step the clock restarts, so the next step
  sees the effect of the last one.
- power below `budget_watts * release_fraction` for `release_seconds`: release one priority level,
  the highest throttled first (hysteresis: the gap between the two thresholds plus the two durations).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, Protocol

from hostwarden.power.types import PowerError

CPU_MAX_PERIOD_US = 100_000
_MIN_QUOTA_US = 1000  # the kernel's floor for cpu.max quota


@dataclass(frozen=True)
class PowerBudget:
    """The policy's `[power]` budget section."""

    budget_watts: float
    sustain_seconds: float = 5.0
    release_seconds: float = 10.0
    release_fraction: float = 0.9
    min_cpus: float = 0.1

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> PowerBudget:
        """Validate a parsed TOML table; ValueError names the offending key and what is allowed."""
        known = {"budget_watts", "sustain_seconds", "release_seconds", "release_fraction", "min_cpus"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"[power] {unknown[0]}: unknown key; allowed: {', '.join(sorted(known))}")
        if "budget_watts" not in values:
            raise ValueError("[power] budget_watts: required (the node power, in watts, to stay under)")

        def number(key: str, default: float, low: float, high: float = float("inf")) -> float:
            value = values.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"[power] {key}: expected a number, got {value!r}")
            if not low < value <= high:
                raise ValueError(f"[power] {key}: {value} is out of range ({low}, {high}]")
            return float(value)

        return cls(
            budget_watts=number("budget_watts", 0.0, 0.0),
            sustain_seconds=number("sustain_seconds", cls.sustain_seconds, 0.0),
            release_seconds=number("release_seconds", cls.release_seconds, 0.0),
            release_fraction=number("release_fraction", cls.release_fraction, 0.0, 1.0),
            min_cpus=number("min_cpus", cls.min_cpus, 0.0),
        )


@dataclass(frozen=True)
class SandboxLoad:
    sandbox: str
    priority: int        # higher is more important
    cpu_cores: float     # recent CPU use, in cores


@dataclass(frozen=True)
class BudgetAction:
    sandbox: str
    action: Literal["throttle", "release", "over_budget"]
    reason: str
    detail: dict[str, float]
    cpu_max: str | None  # what to write to the sandbox's cpu.max; None for a report-only record


@dataclass(frozen=True)
class BudgetState:
    above_since: float | None = None
    below_since: float | None = None
    throttled: dict[str, float] = field(default_factory=dict)   # sandbox -> granted cores
    priorities: dict[str, int] = field(default_factory=dict)    # priority of each throttled sandbox


def _cpu_max(cores: float) -> str:
    return f"{max(round(cores * CPU_MAX_PERIOD_US), _MIN_QUOTA_US)} {CPU_MAX_PERIOD_US}"


def _throttle(budget: PowerBudget, state: BudgetState, power: float, watts_per_core: float,
              sandboxes: Sequence[SandboxLoad]) -> tuple[BudgetState, list[BudgetAction]]:
    excess = power - budget.budget_watts
    top = max(s.priority for s in sandboxes)
    # Without a rate (no busy CPU seen), shed the same fraction of the CPU as the excess is of the power.
    total_cores = sum(s.cpu_cores for s in sandboxes)
    to_shed = excess / watts_per_core if watts_per_core > 0 else total_cores * excess / power
    detail = {"power_watts": power, "budget_watts": budget.budget_watts}
    throttled, priorities = dict(state.throttled), dict(state.priorities)
    actions: list[BudgetAction] = []
    for priority in sorted({s.priority for s in sandboxes if s.priority < top}):
        if to_shed <= 0:
            break
        level = [s for s in sandboxes if s.priority == priority]
        use = sum(s.cpu_cores for s in level)
        shed = min(to_shed, max(use - budget.min_cpus * len(level), 0.0))
        if shed <= 0:
            continue
        to_shed -= shed
        for s in level:
            cores = max(s.cpu_cores - shed * (s.cpu_cores / use), budget.min_cpus)
            if cores >= throttled.get(s.sandbox, float("inf")):
                continue
            throttled[s.sandbox], priorities[s.sandbox] = cores, priority
            actions.append(BudgetAction(
                s.sandbox, "throttle",
                f"node power {power:.0f} W above the {budget.budget_watts:.0f} W budget for "
                f"{budget.sustain_seconds:g} s; priority {priority} is below {top}",
                {**detail, "cpu_cores_before": s.cpu_cores, "cpu_cores_granted": cores}, _cpu_max(cores)))
    if not actions:
        actions.append(BudgetAction(
            "", "over_budget",
            f"node power {power:.0f} W above the {budget.budget_watts:.0f} W budget and no lower-priority "
            "sandbox has CPU left to shed", detail, None))
    return replace(state, throttled=throttled, priorities=priorities), actions


def _release(budget: PowerBudget, state: BudgetState, power: float) -> tuple[BudgetState, list[BudgetAction]]:
    level = max(state.priorities[name] for name in state.throttled)
    released = sorted(name for name in state.throttled if state.priorities[name] == level)
    reason = (f"node power {power:.0f} W below {budget.release_fraction:g} x the {budget.budget_watts:.0f} W "
              f"budget for {budget.release_seconds:g} s")
    actions = [BudgetAction(name, "release", reason, {"power_watts": power, "budget_watts": budget.budget_watts,
                                                      "cpu_cores_granted": state.throttled[name]},
                            f"max {CPU_MAX_PERIOD_US}") for name in released]
    return replace(state, throttled={n: c for n, c in state.throttled.items() if n not in released},
                   priorities={n: p for n, p in state.priorities.items() if n not in released}), actions


def decide(budget: PowerBudget, state: BudgetState, now: float, power_watts: float, watts_per_core: float,
           sandboxes: Sequence[SandboxLoad]) -> tuple[BudgetState, list[BudgetAction]]:
    """One control step: the next state and what to do (an empty list: nothing)."""
    present = {s.sandbox for s in sandboxes}
    state = replace(state, throttled={n: c for n, c in state.throttled.items() if n in present},
                    priorities={n: p for n, p in state.priorities.items() if n in present})
    if power_watts > budget.budget_watts:
        since = state.above_since if state.above_since is not None else now
        if now - since < budget.sustain_seconds or not sandboxes:
            return replace(state, above_since=since, below_since=None), []
        state, actions = _throttle(budget, state, power_watts, watts_per_core, sandboxes)
        return replace(state, above_since=now, below_since=None), actions
    if power_watts < budget.budget_watts * budget.release_fraction:
        since = state.below_since if state.below_since is not None else now
        if now - since < budget.release_seconds or not state.throttled:
            return replace(state, above_since=None, below_since=since), []
        state, actions = _release(budget, state, power_watts)
        return replace(state, above_since=None, below_since=now), actions
    return replace(state, above_since=None, below_since=None), []


def release_all(state: BudgetState, reason: str) -> tuple[BudgetState, list[BudgetAction]]:
    """Lift every throttle at once (the policy no longer sets a budget); the state starts afresh."""
    actions = [BudgetAction(name, "release", reason, {"cpu_cores_granted": cores}, f"max {CPU_MAX_PERIOD_US}")
               for name, cores in sorted(state.throttled.items())]
    return BudgetState(), actions


def parse_cpu_max(text: str) -> float | None:
    """cpu.max text ("50000 100000", "max 100000") -> cores granted, None for no limit."""
    quota, _, period = text.strip().partition(" ")
    if quota == "max":
        return None
    try:
        return int(quota) / int(period or CPU_MAX_PERIOD_US)
    except ValueError as exc:
        raise PowerError(f"bad cpu.max {text.strip()!r}: expected '<quota> <period>' or 'max <period>'") from exc


class CpuMaxActuator(Protocol):
    def set_cpu_max(self, sandbox: str, value: str) -> None: ...


class CgroupCpuMax:
    """Writes cpu.max in each sandbox's cgroup (the whole subtree: agent and calls)."""

    def __init__(self, sandbox_cgroups: Mapping[str, Path]) -> None:
        self._cgroups = sandbox_cgroups

    def set_cpu_max(self, sandbox: str, value: str) -> None:
        path = self._cgroups[sandbox] / "cpu.max"
        try:
            path.write_text(value)
        except OSError as exc:
            raise PowerError(f"cannot write {value!r} to {path}: {exc.strerror} (the cpu controller must be "
                             "enabled in the parent's cgroup.subtree_control)") from exc


def apply_actions(actions: Sequence[BudgetAction], actuator: CpuMaxActuator) -> None:
    for action in actions:
        if action.cpu_max is not None:
            actuator.set_cpu_max(action.sandbox, action.cpu_max)
