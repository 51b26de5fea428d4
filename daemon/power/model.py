"""A model estimate for hosts with no energy sensor: idle watts plus watts per busy core.

    energy(t) = idle_watts * elapsed_seconds + watts_per_busy_core * busy_cpu_seconds

Busy CPU seconds come from /proc/stat. Both constants are settings (`[power] model_idle_watts`,
`model_watts_per_busy_core`); every figure from this source is labelled `estimated`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from hostwarden.power.cpu_time import CpuUsageReader
from hostwarden.power.types import EnergySourceKind, SourceProbe, ZoneEnergy


class ModelSource:
    name = "model"
    kind: EnergySourceKind = "estimated"

    def __init__(self, cpu_usage: CpuUsageReader, idle_watts: float, watts_per_busy_core: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_watts: float | None = idle_watts
        self._idle_watts = idle_watts
        self._watts_per_busy_core = watts_per_busy_core
        self._cpu_usage = cpu_usage
        self._clock = clock
        self._start_time = clock()
        self._start_busy = cpu_usage.node_busy_seconds()

    def read(self) -> list[ZoneEnergy]:
        elapsed = self._clock() - self._start_time
        busy = self._cpu_usage.node_busy_seconds() - self._start_busy
        return [ZoneEnergy("model", self._idle_watts * elapsed + self._watts_per_busy_core * busy, True)]

    def close(self) -> None:
        """Holds nothing open."""


def open_model(cpu_usage: CpuUsageReader, idle_watts: float, watts_per_busy_core: float) \
        -> tuple[ModelSource, SourceProbe]:
    source = ModelSource(cpu_usage, idle_watts, watts_per_busy_core)
    return source, SourceProbe("model", True, f"estimate: {idle_watts:g} W idle + {watts_per_busy_core:g} W "
                                              "per busy core (labelled estimated)")
