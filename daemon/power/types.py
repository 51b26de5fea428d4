"""Plain types shared by the energy sources, the meter and the budget controller."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

# Every figure says where it came from: a sensor ("measured") or the CPU-time model ("estimated").
EnergySourceKind = Literal["measured", "estimated"]


class PowerError(Exception):
    """A power source or the meter cannot do what was asked; the message says what to do."""


@dataclass(frozen=True)
class SourceProbe:
    """One source's probe result, for the capabilities table."""

    name: str
    available: bool
    detail: str


@dataclass(frozen=True)
class ZoneEnergy:
    """Cumulative energy of one zone since its source was opened, corrected for counter wrap-around.

    `in_node_total` marks the zones whose sum is the node's CPU-side energy (packages and DRAM); the
    others (core, uncore, psys) overlap with a package and are reported only.
    """

    zone: str
    joules: float
    in_node_total: bool


class CpuEnergySource(Protocol):
    """A node-wide CPU-side energy source (RAPL through powercap or perf, or the model)."""

    name: str
    kind: EnergySourceKind
    # The known idle power of the counted zones, where the source knows it (the model); None: learn it.
    idle_watts: float | None

    def read(self) -> list[ZoneEnergy]: ...

    def close(self) -> None: ...


class GpuEnergySource(Protocol):
    """GPU energy per device plus who used each device since the previous call."""

    name: str

    def read(self) -> list[ZoneEnergy]: ...

    def process_weights(self) -> dict[str, dict[int, float]]:
        """Per zone (device), pid -> share weight of the device's use since the previous call."""
        ...

    def close(self) -> None: ...
