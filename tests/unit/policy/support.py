"""Builders for ladder observations shared by the ladder tests."""

from __future__ import annotations

from hostwarden.policy.ladder import CallObservation, MemoryEvents, Observations
from hostwarden.policy.schema import Priority

GIB = 1024**3
MIB = 1024**2


def call(call_id: str, priority: Priority, *, psi: float = 0.0, full: float = 0.0, current: int = 512 * MIB,
         memory_max: int = 2 * GIB, memory_high: int | None = None, events: MemoryEvents | None = None,
         frozen: bool = False, frozen_since: float | None = None) -> CallObservation:
    high = int(memory_max * 0.9) if memory_high is None else memory_high
    return CallObservation(
        call_id=call_id, sandbox=f"sb-{call_id}", cgroup_path=f"/sys/fs/cgroup/hw/sb-{call_id}/calls/{call_id}",
        priority=priority, memory_current=current, memory_max=memory_max, memory_high=high,
        granted_memory_high=int(memory_max * 0.9), events=events or MemoryEvents(), psi_some_avg10=psi,
        psi_full_avg10=full, frozen=frozen, frozen_since=frozen_since,
    )


def host(*calls: CallObservation, available: int = 32 * GIB, total: int = 64 * GIB, psi: float = 0.0,
         full: float = 0.0) -> Observations:
    return Observations(calls=tuple(calls), host_memory_total=total, host_memory_available=available,
                        host_psi_some_avg10=psi, host_psi_full_avg10=full)
