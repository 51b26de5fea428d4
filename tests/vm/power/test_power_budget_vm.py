"""vm tier: the power budget throttles the low-priority sandbox through a real cpu.max and releases it.

Power comes from the model source (idle watts + watts per busy core over real /proc/stat), so the node's
power follows its real CPU load; the budget sits between the idle and the loaded node.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from hostwarden.capabilities import find_cgroup2_mount
from hostwarden.power.budget import BudgetState, CgroupCpuMax, PowerBudget, SandboxLoad, apply_actions, decide
from hostwarden.power.cpu_time import ProcCpuUsage
from hostwarden.power.meter import EnergyMeter
from hostwarden.power.model import ModelSource
from tests.support import require

IDLE_WATTS, WATTS_PER_CORE = 10.0, 10.0
PRIORITIES = {"high": 10, "low": 1}


def _burner(cgroup: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(["sh", "-c", "read go; while :; do :; done"], stdin=subprocess.PIPE)
    (cgroup / "cgroup.procs").write_text(str(process.pid))
    assert process.stdin is not None
    process.stdin.write(b"go\n")
    process.stdin.flush()
    return process


def _cpu_seconds(cgroup: Path) -> float:
    for line in (cgroup / "cpu.stat").read_text().splitlines():
        if line.startswith("usage_usec "):
            return int(line.split()[1]) / 1e6
    raise AssertionError(f"no usage_usec in {cgroup}/cpu.stat")


def test_budget_throttles_low_priority_and_releases_it_once_the_load_stops():
    mount = find_cgroup2_mount(Path("/proc/self/mountinfo").read_text())
    require(mount is not None and "cpu" in (mount / "cgroup.controllers").read_text().split(),
            "cgroup v2 with the cpu controller")
    assert mount is not None
    (mount / "cgroup.subtree_control").write_text("+cpu")
    top = mount / f"hostwarden-power-vm-{os.getpid()}"
    top.mkdir()
    (top / "cgroup.subtree_control").write_text("+cpu")
    cgroups = {name: top / name for name in PRIORITIES}
    for path in cgroups.values():
        path.mkdir()
    cpu_usage = ProcCpuUsage(mount)
    meter = EnergyMeter(ModelSource(cpu_usage, IDLE_WATTS, WATTS_PER_CORE), cpu_usage)
    for name, path in cgroups.items():
        meter.track_sandbox(name, path)
    busy_watts = IDLE_WATTS + WATTS_PER_CORE * min(2, cpu_usage.cpu_count())
    budget = PowerBudget(budget_watts=(IDLE_WATTS + busy_watts) / 2, sustain_seconds=1.0, release_seconds=1.0,
                         release_fraction=0.9, min_cpus=0.05)
    actuator = CgroupCpuMax(cgroups)
    state = BudgetState()
    log: list[tuple[float, str, str]] = []

    def control(seconds: float) -> None:
        nonlocal state
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(0.25)
            meter.sample()
            snapshot = meter.snapshot()
            loads = [SandboxLoad(n, p, snapshot.sandbox_cpu_cores.get(n, 0.0)) for n, p in PRIORITIES.items()]
            state, actions = decide(budget, state, time.monotonic(), snapshot.node_cpu_power_watts,
                                    snapshot.watts_per_busy_core, loads)
            apply_actions(actions, actuator)
            log.extend((time.monotonic(), a.sandbox, a.action) for a in actions)

    burners = {name: [_burner(path) for _ in range(max(1, cpu_usage.cpu_count() // 2))]
               for name, path in cgroups.items()}
    try:
        start_low = _cpu_seconds(cgroups["low"])
        started = time.monotonic()
        control(0.75)   # not yet sustained: nothing happens
        assert log == []
        free_low_cores = (_cpu_seconds(cgroups["low"]) - start_low) / (time.monotonic() - started)
        control(3.0)
        assert ("low", "throttle") in [(s, a) for _, s, a in log]
        assert "high" not in [s for _, s, _ in log]
        quota = (cgroups["low"] / "cpu.max").read_text().split()
        assert quota[0] != "max"
        before = _cpu_seconds(cgroups["low"])
        measured_from = time.monotonic()
        control(2.0)
        throttled_low_cores = (_cpu_seconds(cgroups["low"]) - before) / (time.monotonic() - measured_from)
        assert throttled_low_cores < 0.5 * free_low_cores, (free_low_cores, throttled_low_cores, quota)
        # Releasing while low still burns would put power back above the budget: stop the load.
        for name in list(burners):
            for process in burners.pop(name):
                process.kill()
                process.wait()
        control(4.0)
        assert (cgroups["low"] / "cpu.max").read_text().split()[0] == "max"
        assert log[-1][1:] == ("low", "release")
    finally:
        for processes in burners.values():
            for process in processes:
                process.kill()
                process.wait()
        for path in cgroups.values():
            path.rmdir()
        top.rmdir()
