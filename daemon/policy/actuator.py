"""Carrying out ladder decisions on cgroups. The daemon passes an Actuator wired to hostwarden.cgroups."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from hostwarden.policy.ladder import Action, Decision


class Actuator(Protocol):
    def set_memory_high(self, path: str, value: int) -> None: ...
    def freeze(self, path: str) -> None: ...
    def thaw(self, path: str) -> None: ...
    def kill(self, path: str) -> None: ...


def apply(decisions: Iterable[Decision], actuator: Actuator) -> list[Decision]:
    """Act on each decision not marked dry_run, in order; returns the decisions acted on.

    Reports need no action. An actuator error (the call's cgroup vanished, say) propagates to the caller,
    which logs it; decisions before it have been carried out, none after it.
    """
    acted: list[Decision] = []
    for decision in decisions:
        if decision.dry_run or decision.action is Action.REPORT:
            continue
        if decision.action in (Action.THROTTLE, Action.RELEASE):
            assert decision.memory_high is not None, "throttle and release decisions carry memory_high"
            actuator.set_memory_high(decision.cgroup_path, decision.memory_high)
        elif decision.action is Action.FREEZE:
            actuator.freeze(decision.cgroup_path)
        elif decision.action is Action.THAW:
            actuator.thaw(decision.cgroup_path)
        elif decision.action is Action.KILL:
            actuator.kill(decision.cgroup_path)
        acted.append(decision)
    return acted
