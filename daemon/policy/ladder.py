"""The escalation ladder as a pure function: observations + state in, decisions + new state out.

Rungs, mildest first (docs/policy.md has the whole story):
  report   the kernel throttled a call at memory.high or OOM-killed it (nothing to do; the agent is told why)
  throttle host memory is short: lower memory.high of the lowest-priority calls (in-kernel reclaim)
  release  host memory recovered: give throttled calls their granted memory.high back
  freeze   a higher-priority call (or the host, when short of memory) stays under PSI pressure: freeze the
           lowest-priority class below it
  thaw     that pressure stays below thaw_psi for thaw_after: thaw the calls the ladder froze
  kill     a call stalls at its own memory.max, or a frozen call's pressure never subsides: at most one kill
           per decision, never of a call while a lower-priority call is still running unfrozen
Escalations (throttle, freeze, kill) are spaced by post_action_delay. In dry-run the decisions are marked
dry_run and the state pretends they happened, so the report shows what the ladder would go on to do.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from hostwarden.policy.schema import Ladder, Policy, Priority
from hostwarden.policy.units import format_duration, format_size


class Action(StrEnum):
    REPORT = "report"
    THROTTLE = "throttle"
    RELEASE = "release"
    FREEZE = "freeze"
    THAW = "thaw"
    KILL = "kill"


ESCALATIONS = frozenset({Action.THROTTLE, Action.FREEZE, Action.KILL})


class Reason(StrEnum):
    KERNEL_THROTTLED = "kernel_throttled"
    KERNEL_OOM_KILL = "kernel_oom_kill"
    HOST_MEMORY_SHORT = "host_memory_short"
    HOST_MEMORY_RECOVERED = "host_memory_recovered"
    HIGHER_PRIORITY_PRESSURE = "higher_priority_pressure"
    PRESSURE_SUBSIDED = "pressure_subsided"
    STALLED_AT_MEMORY_MAX = "stalled_at_memory_max"
    STALLED_WHILE_THROTTLED = "stalled_while_throttled"
    FROZEN_TOO_LONG = "frozen_too_long"


@dataclass(frozen=True)
class MemoryEvents:
    """memory.events counters of a call cgroup (cumulative since the call began)."""

    low: int = 0
    high: int = 0
    max: int = 0
    oom: int = 0
    oom_kill: int = 0


@dataclass(frozen=True)
class CallObservation:
    call_id: str
    sandbox: str
    cgroup_path: str
    priority: Priority
    memory_current: int
    memory_max: int
    memory_high: int  # as set now
    granted_memory_high: int  # as granted at BeginToolCall: what release restores
    events: MemoryEvents
    psi_some_avg10: float  # memory.pressure, percent
    psi_full_avg10: float
    frozen: bool
    frozen_since: float | None = None


@dataclass(frozen=True)
class Observations:
    calls: tuple[CallObservation, ...]
    host_memory_total: int
    host_memory_available: int
    host_psi_some_avg10: float
    host_psi_full_avg10: float


@dataclass(frozen=True)
class Decision:
    action: Action
    call_id: str
    sandbox: str
    cgroup_path: str
    reason: Reason
    detail: str  # what was seen, with the numbers
    hint: str  # what the agent can do about it
    dry_run: bool
    memory_high: int | None = None  # the value to write, for throttle and release


def _frozen_map(items: Mapping[str, float] | None = None) -> Mapping[str, float]:
    return MappingProxyType(dict(items or {}))


@dataclass(frozen=True)
class LadderState:
    """What the ladder remembers between decisions (timers per call id). Start with LadderState()."""

    last_escalation_at: float | None = None
    pressure_since: Mapping[str, float] = field(default_factory=_frozen_map)
    stall_since: Mapping[str, float] = field(default_factory=_frozen_map)
    calm_since: Mapping[str, float] = field(default_factory=_frozen_map)
    # Calls the ladder froze (only those does it thaw or kill; a freeze by integrity policy is not its own).
    frozen_at: Mapping[str, float] = field(default_factory=_frozen_map)
    # Calls the ladder throttled, with the memory.high it set (release restores the grant).
    throttled_to: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    killed: frozenset[str] = frozenset()
    seen_events: Mapping[str, MemoryEvents] = field(default_factory=lambda: MappingProxyType({}))
    host_pressure_since: float | None = None
    host_calm_since: float | None = None


class _Round:
    """One decision: the policy, what is seen (with dry-run's pretended actions applied) and the output."""

    def __init__(self, policy: Policy, observations: Observations, state: LadderState, now: float) -> None:
        self.settings: Ladder = policy.ladder
        self.dry_run = policy.dry_run
        self.observations = observations
        self.now = now
        self.calls = {c.call_id: c for c in observations.calls if c.call_id not in state.killed}
        live = set(self.calls)

        def keep(mapping: Mapping[str, float]) -> dict[str, float]:  # forget calls that ended
            return {key: value for key, value in mapping.items() if key in live}

        self.previous = state
        self.pressure_since = keep(state.pressure_since)
        self.stall_since = keep(state.stall_since)
        self.calm_since = keep(state.calm_since)
        self.frozen_at = keep(state.frozen_at)
        self.throttled_to = {key: value for key, value in state.throttled_to.items() if key in live}
        present = {c.call_id for c in observations.calls}
        self.killed = set(state.killed & present)  # a killed call lingers until its cgroup is gone
        self.decisions: list[Decision] = []
        total = max(observations.host_memory_total, 1)
        self.host_short = observations.host_memory_available < self.settings.host_short * total
        self.host_pressure_since: float | None = None
        self.host_calm_since: float | None = None

    def is_frozen(self, call: CallObservation) -> bool:
        return call.frozen or (self.dry_run and call.call_id in self.frozen_at)

    def memory_high(self, call: CallObservation) -> int:
        if self.dry_run and call.call_id in self.throttled_to:
            return min(call.memory_high, self.throttled_to[call.call_id])
        return call.memory_high

    def running(self) -> list[CallObservation]:
        return [c for c in self.calls.values() if not self.is_frozen(c) and c.call_id not in self.killed]

    def emit(self, action: Action, call: CallObservation, reason: Reason, detail: str, hint: str,
             memory_high: int | None = None) -> None:
        self.decisions.append(Decision(action, call.call_id, call.sandbox, call.cgroup_path, reason, detail,
                                       hint, self.dry_run, memory_high))

    # -- timers -------------------------------------------------------------------------------------------

    def since(self, timers: dict[str, float], call_id: str, condition: bool) -> None:
        if condition:
            timers.setdefault(call_id, self.now)
        else:
            timers.pop(call_id, None)

    def sustained(self, timers: Mapping[str, float], call_id: str, duration: float) -> bool:
        return call_id in timers and self.now - timers[call_id] >= duration

    def update_timers(self) -> None:
        settings = self.settings
        for call in self.calls.values():
            seen = self.previous.seen_events.get(call.call_id, MemoryEvents())
            running = not self.is_frozen(call)
            self.since(self.pressure_since, call.call_id, running and call.psi_some_avg10 >= settings.freeze_psi)
            stalling = running and call.psi_full_avg10 >= settings.kill_stall_psi
            # A call held at a memory.high the ladder lowered cannot shrink without swap: stalling there is
            # a stall at a limit like memory.max, and the kill rung must be able to end it.
            hit_limit_again = call.events.max > seen.max or (
                call.call_id in self.throttled_to and call.events.high > seen.high)
            self.since(self.stall_since, call.call_id,
                       stalling and (hit_limit_again or call.call_id in self.stall_since))
            if call.call_id in self.frozen_at:
                self.since(self.calm_since, call.call_id, self.calm_for(call))
            else:
                self.calm_since.pop(call.call_id, None)

    def calm_for(self, frozen: CallObservation) -> bool:
        """No call above `frozen`'s priority is under pressure, and the host is not short and pressured."""
        above = [c.psi_some_avg10 for c in self.running() if c.priority.rank > frozen.priority.rank]
        host = self.observations.host_psi_some_avg10 if self.host_short else 0.0
        return max([*above, host]) < self.settings.thaw_psi

    def update_host_timers(self) -> None:
        host_psi = self.observations.host_psi_some_avg10
        pressured = self.host_short and host_psi >= self.settings.freeze_psi
        calm = not self.host_short and host_psi < self.settings.thaw_psi
        previous = self.previous
        pressure_since = self.now if previous.host_pressure_since is None else previous.host_pressure_since
        calm_since = self.now if previous.host_calm_since is None else previous.host_calm_since
        self.host_pressure_since = pressure_since if pressured else None
        self.host_calm_since = calm_since if calm else None

    # -- rungs --------------------------------------------------------------------------------------------

    def report_kernel_actions(self) -> None:
        for call in self.calls.values():
            seen = self.previous.seen_events.get(call.call_id, MemoryEvents())
            if call.events.oom_kill > seen.oom_kill:
                self.emit(Action.REPORT, call, Reason.KERNEL_OOM_KILL,
                          f"the kernel OOM-killed processes of the call at its memory.max "
                          f"{format_size(call.memory_max)} (oom_kill={call.events.oom_kill})",
                          f"the call needs more than {format_size(call.memory_max)}: declare a larger memory "
                          "intent or run fewer workers in parallel")
            if call.events.high > 0 and seen.high == 0:
                self.emit(Action.REPORT, call, Reason.KERNEL_THROTTLED,
                          f"the kernel throttles the call at memory.high {format_size(call.memory_high)} "
                          f"(using {format_size(call.memory_current)})",
                          "the call is slowed by memory reclaim; declare a larger memory intent to avoid it")

    def thaw(self) -> None:
        ready = [self.calls[call_id] for call_id in self.frozen_at
                 if self.sustained(self.calm_since, call_id, self.settings.thaw_after)]
        if ready:
            top = max(c.priority.rank for c in ready)  # thaw the highest class first, one class per decision
            for call in (c for c in ready if c.priority.rank == top):
                quiet = format_duration(self.now - self.calm_since[call.call_id])
                self.emit(Action.THAW, call, Reason.PRESSURE_SUBSIDED,
                          f"pressure on higher-priority work below {self.settings.thaw_psi:g}% for {quiet}",
                          "resumed; nothing to do")
                del self.frozen_at[call.call_id]
                del self.calm_since[call.call_id]
        if self.host_calm_since is not None and self.now - self.host_calm_since >= self.settings.thaw_after:
            for call_id in list(self.throttled_to):
                call = self.calls[call_id]
                self.emit(Action.RELEASE, call, Reason.HOST_MEMORY_RECOVERED,
                          f"host memory available again ({format_size(self.observations.host_memory_available)}"
                          f" of {format_size(self.observations.host_memory_total)})",
                          "memory.high restored to the grant; nothing to do",
                          memory_high=call.granted_memory_high)
                del self.throttled_to[call_id]

    def lower_unfrozen_exists(self, call: CallObservation) -> bool:
        return any(other.priority.rank < call.priority.rank for other in self.running())

    def kill(self) -> CallObservation | None:
        """Kill at most one call; returns a call whose kill waits for lower-priority calls to be frozen."""
        settings = self.settings
        candidates: list[tuple[CallObservation, Reason]] = []
        for call in self.calls.values():
            if self.sustained(self.stall_since, call.call_id, settings.kill_stall_after):
                candidates.append((call, Reason.STALLED_WHILE_THROTTLED if call.call_id in self.throttled_to
                                   else Reason.STALLED_AT_MEMORY_MAX))
            elif (call.call_id in self.frozen_at and call.call_id not in self.calm_since
                  and self.now - self.frozen_since(call) >= settings.kill_frozen_after):
                candidates.append((call, Reason.FROZEN_TOO_LONG))
        if not candidates:
            return None
        candidates.sort(key=lambda item: (item[0].priority.rank, -item[0].memory_current))
        allowed = [item for item in candidates if not self.lower_unfrozen_exists(item[0])]
        if not allowed:
            return candidates[0][0]
        call, reason = allowed[0]
        if reason is Reason.STALLED_AT_MEMORY_MAX:
            stalled = format_duration(self.now - self.stall_since[call.call_id])
            self.emit(Action.KILL, call, reason,
                      f"killed at {format_size(call.memory_current)} against memory.max "
                      f"{format_size(call.memory_max)}: hit the limit {call.events.max} times and stalled "
                      f"{call.psi_full_avg10:.0f}% of the time for {stalled}",
                      f"the call needs more than {format_size(call.memory_max)}: rerun with fewer workers or "
                      "a larger memory intent")
        elif reason is Reason.STALLED_WHILE_THROTTLED:
            stalled = format_duration(self.now - self.stall_since[call.call_id])
            self.emit(Action.KILL, call, reason,
                      f"killed at {format_size(call.memory_current)}: held at memory.high "
                      f"{format_size(self.throttled_to[call.call_id])} while the host was short of memory, it "
                      f"stalled {call.psi_full_avg10:.0f}% of the time for {stalled} and could not shrink",
                      "the host was short of memory for higher-priority work: rerun later, or with less memory")
        else:
            frozen_for = format_duration(self.now - self.frozen_since(call))
            self.emit(Action.KILL, call, reason,
                      f"frozen for {frozen_for} (kill_frozen_after {format_duration(settings.kill_frozen_after)})"
                      f" while higher-priority work stayed under memory pressure; it held "
                      f"{format_size(call.memory_current)}",
                      "the host was short of memory for higher-priority work: rerun later, or with less memory")
        self.killed.add(call.call_id)
        for timers in (self.pressure_since, self.stall_since, self.calm_since, self.frozen_at, self.throttled_to):
            timers.pop(call.call_id, None)
        return None

    def frozen_since(self, call: CallObservation) -> float:
        return call.frozen_since if call.frozen_since is not None else self.frozen_at[call.call_id]

    def freeze(self, waiting_kill: CallObservation | None) -> None:
        running = self.running()
        freeze_after = self.settings.freeze_after
        sources = [c for c in running if self.sustained(self.pressure_since, c.call_id, freeze_after)]
        if waiting_kill is not None:
            sources.append(waiting_kill)
        host_pressured = self.host_pressure_since is not None and self.now - self.host_pressure_since >= freeze_after
        if host_pressured and running:
            sources.append(max(running, key=lambda c: c.priority.rank))
        if not sources:
            return
        source = max(sources, key=lambda c: (c.priority.rank, c.psi_some_avg10))
        below = [c for c in running if c.priority.rank < source.priority.rank]
        if not below:
            return
        lowest = min(c.priority.rank for c in below)
        for call in (c for c in below if c.priority.rank == lowest):
            if source is waiting_kill:
                why = f"{source.sandbox}/{source.call_id} ({source.priority}) stalls at its memory.max"
            elif source.call_id in self.pressure_since:
                why = (f"{source.sandbox}/{source.call_id} ({source.priority}) has been under memory pressure "
                       f"{source.psi_some_avg10:.0f}% for "
                       f"{format_duration(self.now - self.pressure_since[source.call_id])}")
            else:
                why = (f"the host is short of memory ({format_size(self.observations.host_memory_available)} "
                       f"available, pressure {self.observations.host_psi_some_avg10:.0f}%)")
            self.emit(Action.FREEZE, call, Reason.HIGHER_PRIORITY_PRESSURE,
                      f"frozen ({call.priority} priority, using {format_size(call.memory_current)}): {why}",
                      f"paused to protect higher-priority work; it resumes when pressure subsides, or is killed "
                      f"after {format_duration(self.settings.kill_frozen_after)} frozen")
            self.frozen_at[call.call_id] = self.now
            self.pressure_since.pop(call.call_id, None)
            self.stall_since.pop(call.call_id, None)
        # PSI averages lag: judge this freeze for a whole freeze_after before freezing the next class up.
        for call_id in self.pressure_since:
            self.pressure_since[call_id] = self.now
        if self.host_pressure_since is not None:
            self.host_pressure_since = self.now

    def throttle(self) -> None:
        running = self.running()
        if not self.host_short or not running:
            return
        top = max(c.priority.rank for c in running)
        settings = self.settings
        for rank in sorted({c.priority.rank for c in running if c.priority.rank < top}):
            targets = []
            for call in (c for c in running if c.priority.rank == rank):
                target = max(int(call.memory_current * (1 - settings.throttle_step)), settings.throttle_floor)
                if target < self.memory_high(call):
                    targets.append((call, target))
            for call, target in targets:
                self.emit(Action.THROTTLE, call, Reason.HOST_MEMORY_SHORT,
                          f"host memory is short ({format_size(self.observations.host_memory_available)} of "
                          f"{format_size(self.observations.host_memory_total)} available); memory.high lowered "
                          f"to {format_size(target)} (using {format_size(call.memory_current)})",
                          "the call runs slower while the host is short of memory; use less memory "
                          "(fewer workers) to avoid being frozen",
                          memory_high=target)
                self.throttled_to[call.call_id] = target
            if targets:
                return  # the lowest class with room yields first; the next one only when it has none left


def decide(policy: Policy, observations: Observations, state: LadderState,
           now: float) -> tuple[list[Decision], LadderState]:
    """One step of the ladder. Call it on every observation tick (and on PSI/memory.events wake-ups) with a
    monotonic `now`; feed back the returned state. Pure: it acts on nothing."""
    step = _Round(policy, observations, state, now)
    step.update_timers()
    step.update_host_timers()
    step.report_kernel_actions()
    step.thaw()
    last = state.last_escalation_at
    if last is None or now - last >= policy.ladder.post_action_delay:
        waiting_kill = step.kill()
        step.freeze(waiting_kill)
        step.throttle()
        if any(decision.action in ESCALATIONS for decision in step.decisions):
            last = now
    new_state = LadderState(
        last_escalation_at=last,
        pressure_since=_frozen_map(step.pressure_since),
        stall_since=_frozen_map(step.stall_since),
        calm_since=_frozen_map(step.calm_since),
        frozen_at=_frozen_map(step.frozen_at),
        throttled_to=MappingProxyType(dict(step.throttled_to)),
        killed=frozenset(step.killed),
        seen_events=MappingProxyType({c.call_id: c.events for c in observations.calls}),
        host_pressure_since=step.host_pressure_since,
        host_calm_since=step.host_calm_since,
    )
    return step.decisions, new_state

