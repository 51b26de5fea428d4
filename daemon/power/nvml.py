"""GPU energy and per-process GPU use through NVML (nvidia-ml-py's `pynvml`).

Read-only by design: nothing here changes a GPU setting (no accounting mode, power limit, clock or
persistence change). Accounting statistics are used only where an operator already turned accounting
on. `NvmlLibrary` is the thin layer over pynvml; the logic in `NvmlSource` is unit-tested against a fake.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Protocol

from hostwarden.power.types import PowerError, SourceProbe, ZoneEnergy


@dataclass(frozen=True)
class ProcessUtilSample:
    pid: int
    sm_util: int           # percent of the sample period the process had kernels running on the SMs
    timestamp_us: int


@dataclass(frozen=True)
class AccountingStat:
    pid: int
    gpu_util: int          # percent, averaged over the process's life
    is_running: bool


class NvmlLibrary(Protocol):
    def device_count(self) -> int: ...

    def total_energy_mj(self, index: int) -> int: ...

    def process_utilization(self, index: int, last_seen_us: int) -> list[ProcessUtilSample]: ...

    def running_compute_pids(self, index: int) -> list[int]: ...

    def accounting_enabled(self, index: int) -> bool: ...

    def accounting_stats(self, index: int) -> list[AccountingStat]: ...

    def shutdown(self) -> None: ...


class PynvmlLibrary:
    """NvmlLibrary over the real driver."""

    def __init__(self, pynvml: Any) -> None:
        self._nv = pynvml
        pynvml.nvmlInit()
        self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]

    def device_count(self) -> int:
        return len(self._handles)

    def total_energy_mj(self, index: int) -> int:
        return int(self._nv.nvmlDeviceGetTotalEnergyConsumption(self._handles[index]))

    def process_utilization(self, index: int, last_seen_us: int) -> list[ProcessUtilSample]:
        try:
            samples = self._nv.nvmlDeviceGetProcessUtilization(self._handles[index], last_seen_us)
        except self._nv.NVMLError_NotFound:
            return []  # no process ran kernels since last_seen_us
        return [ProcessUtilSample(int(s.pid), int(s.smUtil), int(s.timeStamp)) for s in samples]

    def running_compute_pids(self, index: int) -> list[int]:
        return [int(p.pid) for p in self._nv.nvmlDeviceGetComputeRunningProcesses(self._handles[index])]

    def accounting_enabled(self, index: int) -> bool:
        try:
            mode = self._nv.nvmlDeviceGetAccountingMode(self._handles[index])
        except self._nv.NVMLError_NotSupported:
            return False
        return bool(mode == self._nv.NVML_FEATURE_ENABLED)

    def accounting_stats(self, index: int) -> list[AccountingStat]:
        handle = self._handles[index]
        stats = []
        for pid in self._nv.nvmlDeviceGetAccountingPids(handle):
            try:
                stat = self._nv.nvmlDeviceGetAccountingStats(handle, pid)
            except self._nv.NVMLError_NotFound:
                continue  # dropped from the driver's circular buffer in between
            stats.append(AccountingStat(int(pid), int(stat.gpuUtilization), bool(stat.isRunning)))
        return stats

    def shutdown(self) -> None:
        self._nv.nvmlShutdown()


class NvmlSource:
    """Joules per GPU since opening (energy counter deltas) and per-process use weights per interval.

    A process's weight is its mean SM utilisation (percent) over the interval's samples. Where the
    driver gave no samples, processes that exited and that accounting (if already on) knows about
    weigh their lifetime mean utilisation once; failing both, running compute processes share equally.
    """

    name = "nvml"

    def __init__(self, library: NvmlLibrary) -> None:
        self._lib = library
        self._devices = list(range(library.device_count()))
        if not self._devices:
            raise PowerError("NVML sees no GPU")
        self._start_mj = {i: library.total_energy_mj(i) for i in self._devices}
        # The driver keeps a buffer of past samples: start after the newest so old work is not counted.
        self._last_seen_us = {i: max((s.timestamp_us for s in library.process_utilization(i, 0)), default=0)
                              for i in self._devices}
        self._accounted_exits: dict[int, set[int]] = {i: set() for i in self._devices}

    def read(self) -> list[ZoneEnergy]:
        return [ZoneEnergy(f"gpu{i}", (self._lib.total_energy_mj(i) - self._start_mj[i]) / 1000.0, False)
                for i in self._devices]

    def process_weights(self) -> dict[str, dict[int, float]]:
        return {f"gpu{i}": self._device_weights(i) for i in self._devices}

    def _device_weights(self, index: int) -> dict[int, float]:
        samples = self._lib.process_utilization(index, self._last_seen_us[index])
        weights: dict[int, float] = {}
        if samples:
            self._last_seen_us[index] = max(s.timestamp_us for s in samples)
            periods = len({s.timestamp_us for s in samples})
            for s in samples:
                weights[s.pid] = weights.get(s.pid, 0.0) + s.sm_util / periods
        if self._lib.accounting_enabled(index):
            stats = self._lib.accounting_stats(index)
            seen = self._accounted_exits[index]
            for stat in stats:
                if not stat.is_running and stat.pid not in seen:
                    seen.add(stat.pid)
                    if stat.pid not in weights and stat.gpu_util > 0:
                        weights[stat.pid] = float(stat.gpu_util)
            seen.intersection_update(s.pid for s in stats)  # forget pids the driver forgot
        if not any(weights.values()):
            weights = {pid: 1.0 for pid in self._lib.running_compute_pids(index)}
        return {pid: w for pid, w in weights.items() if w > 0}

    def close(self) -> None:
        self._lib.shutdown()


def open_nvml(library: NvmlLibrary | None = None) -> tuple[NvmlSource | None, SourceProbe]:
    """Open NVML (the real driver unless `library` is given), reporting why not where it cannot."""
    if library is None:
        try:
            pynvml = importlib.import_module("pynvml")
        except ImportError:
            return None, SourceProbe("nvml", False, "python module pynvml (nvidia-ml-py) not installed")
        try:
            library = PynvmlLibrary(pynvml)
        except pynvml.NVMLError as exc:
            return None, SourceProbe("nvml", False, f"NVML initialisation failed: {exc} (no NVIDIA driver?)")
    try:
        source = NvmlSource(library)
    except PowerError as exc:
        library.shutdown()
        return None, SourceProbe("nvml", False, str(exc))
    except Exception as exc:  # pynvml raises its own NVMLError subclasses, e.g. NotSupported before Volta
        library.shutdown()
        return None, SourceProbe("nvml", False, f"GPU energy counter unavailable: {exc}")
    return source, SourceProbe("nvml", True, f"{len(source.read())} GPU(s), energy counter and process "
                                             "utilisation")
