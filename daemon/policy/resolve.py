"""Intent resolution: what a tool call asks for, capped by policy, with one reason per limit. Pure."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hostwarden.policy.schema import Defaults, Limits, Policy, Priority, Rule, SandboxInfo
from hostwarden.policy.units import format_duration, format_size

CPU_PERIOD_US = 100_000


class IntentError(ValueError):
    """An intent field out of range (the server answers INVALID_ARGUMENT with this message)."""


@dataclass(frozen=True)
class Intent:
    """What the agent declares; None means "not said". memory_max is the expected peak (headroom is added)."""

    memory_max: int | None = None
    memory_high: int | None = None
    cpu_cores: float | None = None
    timeout_s: float | None = None
    priority: Priority | None = None
    auto: bool = False

    def validate(self) -> None:
        for name in ("memory_max", "memory_high", "cpu_cores", "timeout_s"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise IntentError(f"intent.{name} must be a positive number, got {value}; leave it unset "
                                  "to get the policy default")


@dataclass(frozen=True)
class Grant:
    """Concrete limits for one call. `reasons` has one sentence per key of kernel_files() plus timeout, priority."""

    memory_max: int
    memory_high: int
    memory_low: int
    cpu_quota_us: int
    cpu_period_us: int
    cpu_weight: int
    pids_max: int
    timeout_s: float
    priority: Priority
    rule: str | None
    reasons: dict[str, str]
    memory_oom_group: bool = True  # the whole call dies on OOM, never half of it; the agent lives

    def kernel_files(self) -> dict[str, str]:
        """cgroup v2 interface file -> value to write, in a safe order (high before max, so no transient OOM)."""
        return {
            "memory.high": str(self.memory_high),
            "memory.max": str(self.memory_max),
            "memory.low": str(self.memory_low),
            "memory.oom.group": "1" if self.memory_oom_group else "0",
            "cpu.max": f"{self.cpu_quota_us} {self.cpu_period_us}",
            "cpu.weight": str(self.cpu_weight),
            "pids.max": str(self.pids_max),
        }


def percentile(values: Sequence[int], percent: float) -> int:
    """Nearest-rank percentile (always one of the values, never an interpolation)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[rank - 1]


class _Resolver:
    def __init__(self, policy: Policy, rule: Rule | None) -> None:
        self.policy = policy
        self.rule = rule
        self.defaults: Defaults = rule.defaults if rule else policy.defaults
        self.limits: Limits = rule.limits if rule else policy.limits

    def origin(self, key: str) -> str:
        """Who set a policy value: the rule that overrides it, or the policy itself."""
        if self.rule is not None and key in self.rule.overridden:
            return f"rule '{self.rule.name}' ({key})"
        return f"policy ({key})"

    def clamp(self, value: float, floor_key: str | None, cap_key: str,
              describe: Callable[[float], str]) -> tuple[float, str]:
        """Apply a cap and an optional floor; returns the value and the words to append to its reason."""
        cap = getattr(self.limits, cap_key)
        if value > cap:
            return cap, f", capped to {describe(cap)} by {self.origin(f'limits.{cap_key}')}"
        if floor_key is not None and value < getattr(self.limits, floor_key):
            floor = getattr(self.limits, floor_key)
            return floor, f", raised to the floor {describe(floor)} of {self.origin(f'limits.{floor_key}')}"
        return value, ""

    def defaulted(self, key: str, shown: str) -> str:
        origin = f" by rule '{self.rule.name}'" if self.rule and f"defaults.{key}" in self.rule.overridden else ""
        return f"defaulted to {shown}{origin}"

    def memory_max(self, intent: Intent, history_peaks: Sequence[int]) -> tuple[int, str]:
        headroom = self.limits.headroom
        auto = self.policy.auto
        default = self.defaults.memory_max
        if intent.memory_max is not None:
            value = intent.memory_max * headroom
            reason = f"requested {format_size(intent.memory_max)} x headroom {headroom:g} = {format_size(int(value))}"
        elif intent.auto and not auto.enabled:
            value = default
            reason = f"auto is off in this policy (auto.enabled); {self.defaulted('memory_max', format_size(default))}"
        elif intent.auto:
            recent = list(history_peaks)[-auto.window:]
            if len(recent) < auto.min_samples:
                value = default
                reason = (f"auto: only {len(recent)} earlier calls of this tool, {auto.min_samples} needed; "
                          f"{self.defaulted('memory_max', format_size(default))}")
            else:
                peak = percentile(recent, auto.percentile)
                value = peak * headroom
                reason = (f"learned: p{auto.percentile:g} of last {len(recent)} calls = {format_size(peak)} "
                          f"x headroom {headroom:g} = {format_size(int(value))}")
        else:
            value, reason = default, self.defaulted("memory_max", format_size(default))
        clamped, suffix = self.clamp(value, "memory_floor", "memory_max", lambda v: format_size(int(v)))
        return int(clamped), reason + suffix

    def priority(self, sandbox: SandboxInfo, intent: Intent) -> tuple[Priority, str]:
        if intent.priority is not None:
            wanted, reason = intent.priority, f"requested {intent.priority}"
        else:
            wanted, reason = self.defaults.priority, self.defaulted("priority", str(self.defaults.priority))
        if wanted.rank > sandbox.priority.rank:
            return sandbox.priority, f"{reason}, capped to {sandbox.priority} (the sandbox's priority)"
        if wanted.rank > self.limits.priority.rank:
            capped = self.limits.priority
            return capped, f"{reason}, capped to {capped} by {self.origin('limits.priority')}"
        return wanted, reason

    def requested_or_default(self, requested: float | None, key: str, describe: Callable[[float], str],
                             floor_key: str | None) -> tuple[float, str]:
        default = getattr(self.defaults, key)
        if requested is None:
            value, reason = default, self.defaulted(key, describe(default))
        else:
            value, reason = requested, f"requested {describe(requested)}"
        clamped, suffix = self.clamp(value, floor_key, key, describe)
        return clamped, reason + suffix


def resolve(policy: Policy, sandbox: SandboxInfo, tool: str, intent: Intent,
            history_peaks: Sequence[int] = ()) -> Grant:
    """The limits a call gets. history_peaks: peak memory (bytes) of earlier calls of this tool in this
    sandbox, oldest first (the last auto.window are used). Raises IntentError for out-of-range intents."""
    intent.validate()
    resolver = _Resolver(policy, policy.rule_for(sandbox, tool))
    reasons: dict[str, str] = {}

    priority, reasons["priority"] = resolver.priority(sandbox, intent)
    memory_max, reasons["memory.max"] = resolver.memory_max(intent, history_peaks)

    if intent.memory_high is not None:
        memory_high, reasons["memory.high"] = intent.memory_high, f"requested {format_size(intent.memory_high)}"
    else:
        share = resolver.defaults.memory_high
        memory_high = share.of(memory_max)
        reasons["memory.high"] = resolver.defaulted("memory_high", f"{share.describe()} = {format_size(memory_high)}")
    if memory_high > memory_max:
        memory_high = memory_max
        reasons["memory.high"] += f", lowered to memory.max {format_size(memory_max)}"

    priority_class = policy.priorities[priority]
    memory_low = priority_class.memory_low.of(memory_max)
    reasons["memory.low"] = (f"protection for {priority} priority: {priority_class.memory_low.describe()} = "
                             f"{format_size(memory_low)} (priorities.{priority}.memory_low)" if memory_low
                             else f"no protection for {priority} priority (priorities.{priority}.memory_low)")
    reasons["cpu.weight"] = f"{priority} priority (priorities.{priority}.cpu_weight)"

    cores, reasons["cpu.max"] = resolver.requested_or_default(intent.cpu_cores, "cpu_cores",
                                                              lambda c: f"{c:g} cores", "cpu_floor")
    timeout, reasons["timeout"] = resolver.requested_or_default(intent.timeout_s, "timeout", format_duration,
                                                                "timeout_floor")
    pids_max, reasons["pids.max"] = resolver.requested_or_default(None, "pids_max", lambda p: f"{p:g}", None)

    return Grant(
        memory_max=memory_max, memory_high=memory_high, memory_low=memory_low,
        cpu_quota_us=max(1000, round(cores * CPU_PERIOD_US)), cpu_period_us=CPU_PERIOD_US,
        cpu_weight=priority_class.cpu_weight, pids_max=int(pids_max), timeout_s=timeout,
        priority=priority, rule=resolver.rule.name if resolver.rule else None, reasons=reasons,
    )
