from __future__ import annotations

import pytest

from hostwarden.power.baseline import IdleBaseline
from hostwarden.power.cpu_time import parse_cpu_stat_usage, parse_pid_cgroup, parse_proc_stat_busy
from hostwarden.power.model import ModelSource
from hostwarden.power.types import PowerError
from tests.unit.power.fakes import FakeClock, FakeCpuUsage


def test_model_is_idle_plus_busy_cores():
    clock, cpu = FakeClock(), FakeCpuUsage()
    cpu.busy = 7.0
    model = ModelSource(cpu, idle_watts=20.0, watts_per_busy_core=6.0, clock=clock)
    clock.now += 10
    cpu.busy += 15.0
    [zone] = model.read()
    assert zone.joules == pytest.approx(20 * 10 + 6 * 15) and model.kind == "estimated"


def test_baseline_fits_the_intercept():
    baseline = IdleBaseline()
    for i in range(20):
        busy = (i % 5) / 5
        baseline.observe(busy, 40.0 + 100.0 * busy)
    assert baseline.idle_watts() == pytest.approx(40.0)


def test_baseline_without_spread_uses_idle_readings_or_zero():
    baseline = IdleBaseline()
    baseline.observe(0.9, 120.0)
    assert baseline.idle_watts() == 0.0          # nothing known: nothing is hidden as idle
    baseline.observe(0.01, 45.0)
    baseline.observe(0.02, 47.0)
    assert baseline.idle_watts() == 45.0
    assert IdleBaseline(configured_watts=12.0).idle_watts() == 12.0


def test_proc_and_cgroup_parsers():
    stat = "cpu  100 5 50 1000 30 2 3 40 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n"
    assert parse_proc_stat_busy(stat, 100) == pytest.approx((100 + 5 + 50 + 2 + 3) / 100)
    with pytest.raises(PowerError, match="no aggregate"):
        parse_proc_stat_busy("intr 1\n", 100)
    assert parse_cpu_stat_usage("usage_usec 2500000\nuser_usec 1\n") == 2.5
    with pytest.raises(PowerError, match="usage_usec"):
        parse_cpu_stat_usage("nr_periods 0\n")
    assert parse_pid_cgroup("12:cpu:/x\n0::/hostwarden/s1/calls/c1\n") == "/hostwarden/s1/calls/c1"
    assert parse_pid_cgroup("4:memory:/a\n") is None
