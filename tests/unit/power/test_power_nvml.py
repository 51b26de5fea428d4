from __future__ import annotations

from types import SimpleNamespace

import pytest

from hostwarden.power.nvml import AccountingStat, NvmlSource, ProcessUtilSample, PynvmlLibrary, open_nvml


class FakeNvml:
    def __init__(self) -> None:
        self.energy_mj = [1_000_000]
        self.samples: list[ProcessUtilSample] = [ProcessUtilSample(7, 90, 50)]  # before the source opened
        self.seen_requests: list[int] = []
        self.compute_pids: list[int] = []
        self.accounting = False
        self.stats: list[AccountingStat] = []
        self.stats_read = 0
        self.shut = False

    def device_count(self) -> int:
        return len(self.energy_mj)

    def total_energy_mj(self, index: int) -> int:
        return self.energy_mj[index]

    def process_utilization(self, index: int, last_seen_us: int) -> list[ProcessUtilSample]:
        self.seen_requests.append(last_seen_us)
        return [s for s in self.samples if s.timestamp_us > last_seen_us]

    def running_compute_pids(self, index: int) -> list[int]:
        return self.compute_pids

    def accounting_enabled(self, index: int) -> bool:
        return self.accounting

    def accounting_stats(self, index: int) -> list[AccountingStat]:
        self.stats_read += 1
        return self.stats

    def shutdown(self) -> None:
        self.shut = True


def test_energy_is_the_counter_delta_in_joules():
    fake = FakeNvml()
    source = NvmlSource(fake)
    fake.energy_mj[0] += 2500
    [zone] = source.read()
    assert zone.zone == "gpu0" and zone.joules == pytest.approx(2.5)


def test_utilisation_weights_carry_the_last_seen_timestamp():
    fake = FakeNvml()
    source = NvmlSource(fake)
    fake.samples += [ProcessUtilSample(1, 80, 100), ProcessUtilSample(2, 20, 100),
                     ProcessUtilSample(1, 60, 200)]
    assert source.process_weights() == {"gpu0": {1: pytest.approx(70.0), 2: pytest.approx(10.0)}}
    fake.samples.append(ProcessUtilSample(2, 40, 300))
    assert source.process_weights() == {"gpu0": {2: pytest.approx(40.0)}}
    assert fake.seen_requests == [0, 50, 200]   # the open skipped the old sample at 50


def test_accounting_counts_an_exited_process_once_and_only_when_already_on():
    fake = FakeNvml()
    source = NvmlSource(fake)
    fake.compute_pids = [9]
    assert source.process_weights() == {"gpu0": {9: 1.0}}   # no samples: running processes share
    assert fake.stats_read == 0
    fake.accounting = True
    fake.stats = [AccountingStat(5, 30, False), AccountingStat(9, 50, True)]
    assert source.process_weights() == {"gpu0": {5: 30.0}}
    assert source.process_weights() == {"gpu0": {9: 1.0}}   # pid 5 was counted already


def test_open_reports_a_device_without_energy_counter():
    class NoEnergy(FakeNvml):
        def total_energy_mj(self, index: int) -> int:
            raise RuntimeError("Not Supported")

    fake = NoEnergy()
    source, probe = open_nvml(fake)
    assert source is None and "Not Supported" in probe.detail and fake.shut


class _NotFound(Exception):
    pass


def test_pynvml_layer_only_reads():
    calls: list[str] = []

    def record(name, result):
        def call(*args):
            calls.append(name)
            if isinstance(result, Exception):
                raise result
            return result
        return call

    pynvml = SimpleNamespace(
        NVMLError_NotFound=_NotFound, NVMLError_NotSupported=_NotFound, NVML_FEATURE_ENABLED=1,
        nvmlInit=record("nvmlInit", None), nvmlShutdown=record("nvmlShutdown", None),
        nvmlDeviceGetCount=record("nvmlDeviceGetCount", 1),
        nvmlDeviceGetHandleByIndex=record("nvmlDeviceGetHandleByIndex", "h0"),
        nvmlDeviceGetTotalEnergyConsumption=record("nvmlDeviceGetTotalEnergyConsumption", 4000),
        nvmlDeviceGetProcessUtilization=record("nvmlDeviceGetProcessUtilization", _NotFound()),
        nvmlDeviceGetComputeRunningProcesses=record("nvmlDeviceGetComputeRunningProcesses",
                                                    [SimpleNamespace(pid=3)]),
        nvmlDeviceGetAccountingMode=record("nvmlDeviceGetAccountingMode", 0),
    )
    source, probe = open_nvml(PynvmlLibrary(pynvml))
    assert probe.available and source is not None
    assert source.process_weights() == {"gpu0": {3: 1.0}}
    source.close()
    assert not [c for c in calls if "Set" in c or "Clear" in c or "Reset" in c]
    assert calls[-1] == "nvmlShutdown"
