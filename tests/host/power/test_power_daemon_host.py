"""Host tier: a real daemon process measures `hostwarden exec` calls against a fake powercap tree whose
counter follows this machine's real busy CPU time at a fixed wattage (and wraps during the run)."""

from __future__ import annotations

import json
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.host.daemon.conftest import DaemonProcess, configured_daemon
from tests.host.power.fake_rapl import FakeRaplTree

WATTS_PER_CORE = 10.0
BURN = "import sys, time\nstart = time.process_time()\nwhile time.process_time() - start < float(sys.argv[1]): pass"


@pytest.fixture
def powered_daemon(tmp_path: Path, cgroup_root: Path) -> Iterator[tuple[DaemonProcess, FakeRaplTree]]:
    # Wraps every busy-second (every half second of wall time at most, on 2 CPUs): several times over the
    # daemon's start and the two calls. Two wraps between two samples cannot be told from one (as with real
    # RAPL, whose range lasts minutes): the daemon samples every 50 ms, so only a stall of its sampler over
    # 450 ms could lose one. (A wrap every half busy-second with 100 ms sampling lost one in a few runs.)
    with FakeRaplTree(tmp_path / "powercap", WATTS_PER_CORE, range_uj=int(WATTS_PER_CORE * 1.0e6)) as tree:
        daemon = configured_daemon(tmp_path, cgroup_root, f"""
[power]
powercap_root = "{tree.root}"
nvml = false
idle_watts = 0
sample_interval_seconds = 0.05
""")
        daemon.start()
        try:
            yield daemon, tree
        finally:
            daemon.stop()


def test_exec_calls_get_energy_in_proportion_to_their_cpu_time(powered_daemon, tmp_path):
    daemon, tree = powered_daemon
    daemon.cli("sandbox", "create", "sb")
    summaries = {}
    for name, seconds in (("short", 0.3), ("long", 0.9)):
        out = tmp_path / f"{name}.json"
        daemon.cli("exec", "--sandbox", "sb", "--tool", name, "--summary-json", str(out), "--",
                   sys.executable, "-c", BURN, str(seconds))
        summaries[name] = json.loads(out.read_text())
    assert tree.wraps >= 2
    for summary in summaries.values():
        assert summary["energy_source"] == "measured"
        # The fake tree's ground truth: 10 J per busy CPU-second, and the call's CPU time is its cgroup's.
        assert summary["energy_joules"] == pytest.approx(WATTS_PER_CORE * summary["cpu_seconds"], rel=0.1)
    short, long = summaries["short"], summaries["long"]
    assert long["energy_joules"] / short["energy_joules"] == pytest.approx(
        long["cpu_seconds"] / short["cpu_seconds"], rel=0.1)
    listed = {c["tool"]: c for c in json.loads(daemon.cli("calls", "--sandbox", "sb", "--json").stdout)}
    assert listed["long"]["energy_joules"] == pytest.approx(long["energy_joules"])
    status = json.loads(daemon.cli("status", "--json").stdout)
    rapl = status["capabilities"]["rapl"]
    assert rapl["in_use"] and str(tree.root) in rapl["detail"], rapl
    with urllib.request.urlopen(f"http://{status['daemon']['metrics_address']}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    assert 'hostwarden_tool_call_energy_joules_count{tool="long"} 1.0' in metrics
    assert 'hostwarden_sandbox_energy_joules_total{sandbox="sb",source="measured"}' in metrics
    assert 'hostwarden_node_energy_joules_total{source="measured",zone="package-0"}' in metrics
