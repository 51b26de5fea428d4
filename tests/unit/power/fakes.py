"""Fakes shared by the power unit tests: a clock, a CPU usage reader and energy sources."""

from __future__ import annotations

from pathlib import Path

from hostwarden.power.types import EnergySourceKind, ZoneEnergy


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeCpuUsage:
    def __init__(self, cpus: int = 4) -> None:
        self.cpus = cpus
        self.busy = 0.0
        self.cgroups: dict[Path, float] = {}
        self.pids: dict[int, Path] = {}

    def cpu_count(self) -> int:
        return self.cpus

    def node_busy_seconds(self) -> float:
        return self.busy

    def cgroup_cpu_seconds(self, cgroup: Path) -> float:
        return self.cgroups[cgroup]

    def cgroup_of_pid(self, pid: int) -> Path | None:
        return self.pids.get(pid)


class FakeCpuSource:
    """One counted zone whose cumulative joules the test sets."""

    name = "fake"

    def __init__(self, kind: EnergySourceKind = "measured", idle_watts: float | None = None) -> None:
        self.kind = kind
        self.idle_watts = idle_watts
        self.joules = 0.0

    def read(self) -> list[ZoneEnergy]:
        return [ZoneEnergy("package-0", self.joules, True), ZoneEnergy("package-0/core", self.joules / 2, False)]

    def close(self) -> None:
        pass


class FakeGpuSource:
    name = "fake-gpu"

    def __init__(self) -> None:
        self.joules = 0.0
        self.weights: dict[int, float] = {}

    def read(self) -> list[ZoneEnergy]:
        return [ZoneEnergy("gpu0", self.joules, False)]

    def process_weights(self) -> dict[str, dict[int, float]]:
        return {"gpu0": dict(self.weights)}

    def close(self) -> None:
        pass
