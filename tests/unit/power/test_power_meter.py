from __future__ import annotations

from pathlib import Path

import pytest

from hostwarden.power.meter import EnergyMeter
from hostwarden.power.types import PowerError
from tests.unit.power.fakes import FakeClock, FakeCpuSource, FakeCpuUsage, FakeGpuSource

SANDBOX = Path("/cg/s1")
CALL = SANDBOX / "calls" / "c1"


class Node:
    """Drives the fakes: the node burns `busy_cores` at `watts_per_core` on top of `idle_watts`."""

    def __init__(self, idle_watts: float = 0.0, kind: str = "measured", gpu: bool = False) -> None:
        self.clock, self.cpu = FakeClock(), FakeCpuUsage(cpus=4)
        self.source = FakeCpuSource(kind, idle_watts if kind == "estimated" else None)
        self.gpu = FakeGpuSource() if gpu else None
        self.idle_watts = idle_watts
        self.cpu.cgroups = {SANDBOX: 0.0, CALL: 0.0}
        self.meter = EnergyMeter(self.source, self.cpu, gpu_source=self.gpu, clock=self.clock,
                                 idle_watts=idle_watts if kind == "measured" else None)

    def run(self, seconds: float, busy_cores: float, watts_per_core: float, call_cores: float = 0.0) -> None:
        self.clock.now += seconds
        self.cpu.busy += busy_cores * seconds
        self.source.joules += (self.idle_watts + watts_per_core * busy_cores) * seconds
        for cgroup in (SANDBOX, CALL):
            self.cpu.cgroups[cgroup] += call_cores * seconds

    def warm_up(self, watts_per_core: float) -> None:
        for _ in range(8):
            self.run(0.25, 2.0, watts_per_core)
            self.meter.sample()


def test_a_50ms_call_gets_its_cpu_time_times_the_rate():
    node = Node()
    node.warm_up(10.0)
    node.meter.begin("c1", CALL)
    node.run(0.05, 2.0, 10.0, call_cores=0.8)
    share = node.meter.end("c1")
    assert share.cpu_seconds == pytest.approx(0.04)
    assert share.joules == pytest.approx(0.4) and share.source == "measured"


def test_a_long_call_uses_its_own_window():
    node = Node()
    node.warm_up(10.0)
    node.meter.begin("c1", CALL)
    for _ in range(8):
        node.run(0.25, 2.0, 20.0, call_cores=1.0)
        node.meter.sample()
    share = node.meter.end("c1")
    assert share.joules == pytest.approx(2.0 * 20.0)   # the earlier 10 W/core second is not mixed in


def test_idle_energy_is_kept_apart_and_the_model_is_labelled_estimated():
    node = Node(idle_watts=30.0, kind="estimated")
    node.warm_up(10.0)
    node.meter.begin("c1", CALL)
    node.run(0.5, 2.0, 10.0, call_cores=1.0)
    share = node.meter.end("c1")
    assert share.joules == pytest.approx(5.0) and share.source == "estimated"
    assert node.meter.idle_energy_joules == pytest.approx(30.0 * 2.5)


def test_sandboxes_are_charged_on_the_timer_and_forgotten():
    node = Node()
    node.meter.track_sandbox("s1", SANDBOX)
    for _ in range(8):
        node.run(0.25, 2.0, 10.0, call_cores=0.5)
        node.meter.sample()
    snapshot = node.meter.snapshot()
    assert snapshot.sandbox_energy_joules == {("s1", "measured"): pytest.approx(2.0 * 0.5 * 10.0)}
    assert snapshot.sandbox_cpu_cores == {"s1": pytest.approx(0.5)}
    assert snapshot.node_power_watts["package-0"] == pytest.approx(20.0)
    assert snapshot.node_power_watts["package-0/core"] == pytest.approx(10.0)
    assert snapshot.node_cpu_power_watts == pytest.approx(20.0)
    assert snapshot.watts_per_busy_core == pytest.approx(10.0)
    node.meter.forget_sandbox("s1")
    assert node.meter.snapshot().sandbox_energy_joules == {}


def test_gpu_energy_follows_process_use_into_cgroups():
    node = Node(gpu=True)
    assert node.gpu is not None
    node.cpu.pids = {11: CALL, 12: Path("/cg/other")}
    node.meter.track_sandbox("s1", SANDBOX)
    node.meter.begin("c1", CALL)
    node.gpu.weights = {11: 75.0, 12: 25.0, 13: 0.0}
    node.run(0.25, 0.0, 0.0)
    node.gpu.joules += 100.0
    node.meter.sample()
    node.gpu.weights = {}
    node.run(0.25, 0.0, 0.0)
    node.gpu.joules += 50.0
    node.meter.sample()
    share = node.meter.end("c1")
    assert share.gpu_joules == pytest.approx(75.0) and share.joules == pytest.approx(75.0)
    snapshot = node.meter.snapshot()
    assert snapshot.sandbox_energy_joules[("s1", "measured")] == pytest.approx(75.0)
    assert snapshot.idle_energy_joules == pytest.approx(50.0)
    assert snapshot.node_energy_joules[("gpu0", "measured")] == pytest.approx(150.0)


def test_call_bookkeeping_errors():
    node = Node()
    node.meter.begin("c1", CALL)
    with pytest.raises(PowerError, match="already begun"):
        node.meter.begin("c1", CALL)
    node.meter.end("c1")
    with pytest.raises(PowerError, match="no energy measurement"):
        node.meter.end("c1")


def test_window_settings_are_checked():
    node = Node()
    with pytest.raises(ValueError, match="rate_window_seconds"):
        EnergyMeter(node.source, node.cpu, rate_window_seconds=1.0, history_seconds=1.5)
