"""Host tier: real processes in real cgroups, energy from a fake powercap tree driven by real CPU time."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from hostwarden.capabilities import find_cgroup2_mount
from hostwarden.power.cpu_time import ProcCpuUsage
from hostwarden.power.meter import EnergyMeter
from hostwarden.power.powercap import open_powercap
from tests.host.power.fake_rapl import Burner, FakeRaplTree, make_cgroup, remove_cgroups
from tests.support import require

WATTS_PER_CORE = 10.0


def _cgroup_mount() -> Path:
    mount = find_cgroup2_mount(Path("/proc/self/mountinfo").read_text())
    require(mount is not None and os.geteuid() == 0, "root and a cgroup2 mount")
    assert mount is not None
    return mount


@pytest.fixture
def test_cgroup():
    top = _cgroup_mount() / f"hostwarden-power-test-{os.getpid()}"
    top.mkdir()
    yield top
    remove_cgroups(top)


def _sample_every(meter: EnergyMeter, seconds: float, stop: threading.Event) -> None:
    while not stop.wait(seconds):
        meter.sample()


def test_two_calls_get_energy_proportional_to_their_cpu_time(tmp_path, test_cgroup):
    mount = _cgroup_mount()
    # The counter wraps every half busy-second: several times during the run.
    with FakeRaplTree(tmp_path / "powercap", WATTS_PER_CORE, range_uj=int(WATTS_PER_CORE * 0.5e6)) as tree:
        source, probe = open_powercap(tree.root)
        assert source is not None, probe.detail
        cpu_usage = ProcCpuUsage(mount)
        assert cpu_usage.cgroup_of_pid(os.getpid()) is not None
        meter = EnergyMeter(source, cpu_usage, idle_watts=0.0)   # the fake tree draws nothing when idle
        meter.track_sandbox("sandbox", test_cgroup)
        stop = threading.Event()
        sampler = threading.Thread(target=_sample_every, args=(meter, 0.1, stop), daemon=True)
        sampler.start()
        time.sleep(1.0)
        results = {}
        try:
            for name, cpu_seconds in (("short", 0.3), ("long", 0.9)):
                cgroup = make_cgroup(test_cgroup, name)
                burner = Burner.start(cpu_seconds)
                (cgroup / "cgroup.procs").write_text(str(burner.process.pid))
                meter.begin(name, cgroup)
                truth_cpu = burner.go_and_wait()
                results[name] = (meter.end(name), truth_cpu)
        finally:
            stop.set()
            sampler.join()
        meter.sample()
        assert tree.wraps >= 2
    for share, truth_cpu in results.values():
        assert share.source == "measured"
        assert share.joules == pytest.approx(WATTS_PER_CORE * truth_cpu, rel=0.1)
    (short, short_cpu), (long, long_cpu) = results["short"], results["long"]
    assert long.joules / short.joules == pytest.approx(long_cpu / short_cpu, rel=0.1)
    sandbox_joules = meter.snapshot().sandbox_energy_joules[("sandbox", "measured")]
    assert sandbox_joules == pytest.approx(short.joules + long.joules, rel=0.1)

