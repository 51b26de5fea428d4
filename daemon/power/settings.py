"""The daemon configuration's `[power]` table and opening the sources it asks for."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from hostwarden.power.cpu_time import CpuUsageReader
from hostwarden.power.model import open_model
from hostwarden.power.nvml import open_nvml
from hostwarden.power.perf_pmu import DEFAULT_PMU_ROOT, open_perf_power
from hostwarden.power.powercap import DEFAULT_POWERCAP_ROOT, open_powercap
from hostwarden.power.types import CpuEnergySource, GpuEnergySource, SourceProbe


@dataclass(frozen=True)
class PowerSettings:
    powercap_root: Path = DEFAULT_POWERCAP_ROOT
    perf_pmu_root: Path = DEFAULT_PMU_ROOT
    nvml: bool = True
    idle_watts: float | None = None          # CPU-side idle power; None: learned from the readings
    gpu_idle_watts: float | None = None      # per GPU; None: only GPU-unused intervals count as idle
    model_idle_watts: float = 10.0
    model_watts_per_busy_core: float = 5.0
    sample_interval_seconds: float = 0.25
    rate_window_seconds: float = 1.0

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> PowerSettings:
        """Validate a parsed `[power]` table; ValueError names the offending key."""
        types = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(values) - set(types))
        if unknown:
            raise ValueError(f"[power] {unknown[0]}: unknown key; allowed: {', '.join(sorted(types))}")
        parsed: dict[str, object] = {}
        for key, value in values.items():
            if key.endswith("_root"):
                if not isinstance(value, str) or not value.startswith("/"):
                    raise ValueError(f"[power] {key}: expected an absolute path, got {value!r}")
                parsed[key] = Path(value)
            elif key == "nvml":
                if not isinstance(value, bool):
                    raise ValueError(f"[power] nvml: expected true or false, got {value!r}")
                parsed[key] = value
            else:
                if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                    raise ValueError(f"[power] {key}: expected a number >= 0, got {value!r}")
                if key.endswith("_seconds") and value <= 0:
                    raise ValueError(f"[power] {key}: must be above 0, got {value!r}")
                parsed[key] = float(value)
        return cls(**parsed)  # type: ignore[arg-type]


def open_sources(settings: PowerSettings, cpu_usage: CpuUsageReader) \
        -> tuple[CpuEnergySource, GpuEnergySource | None, list[SourceProbe]]:
    """The best CPU-side source (powercap, else the perf PMU, else the model), NVML where present, and
    every probe's result for the capabilities table."""
    powercap, powercap_probe = open_powercap(settings.powercap_root)
    perf, perf_probe = (None, SourceProbe("perf_power", False, "not needed: powercap is in use")) \
        if powercap is not None else open_perf_power(settings.perf_pmu_root)
    measured: CpuEnergySource | None = powercap or perf
    if measured is not None:
        cpu_source = measured
        model_probe = SourceProbe("model", True, f"not in use: {measured.name} measures energy")
    else:
        cpu_source, model_probe = open_model(cpu_usage, settings.model_idle_watts,
                                             settings.model_watts_per_busy_core)
    gpu, gpu_probe = open_nvml() if settings.nvml else (None, SourceProbe("nvml", False, "[power] nvml = false"))
    return cpu_source, gpu, [powercap_probe, perf_probe, model_probe, gpu_probe]
