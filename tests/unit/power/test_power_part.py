"""The energy part inside an in-process daemon on a fake cgroupfs, with a fake powercap tree and /proc/stat.

The sampler thread is kept idle (a one-hour interval): each test takes samples and budget steps itself, so
every figure below follows from the numbers the test writes.
"""

from __future__ import annotations

import os
import sqlite3
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hostwarden.app import Daemon
from hostwarden.cgroups.tree import CgroupTree
from hostwarden.client import Client
from hostwarden.config import Config, ConfigError, DaemonConfig, MetricsConfig
from hostwarden.power import part as power_part
from hostwarden.power.budget import BudgetAction
from hostwarden.power.cpu_time import ProcCpuUsage
from hostwarden.power.part import EnergyPart
from hostwarden.proto import warden_pb2 as pb
from tests.unit.cgroups.fakefs import FakeCgroupFs
from tests.unit.daemon.conftest import create

TICKS = os.sysconf("SC_CLK_TCK")


class FakeNode:
    """A fake /proc/stat and powercap package zone the test advances by hand."""

    def __init__(self, root: Path) -> None:
        self.proc = root / "proc"
        self.proc.mkdir(parents=True)
        self.powercap = root / "powercap"
        self.zone = self.powercap / "intel-rapl:0"
        self.zone.mkdir(parents=True)
        (self.zone / "name").write_text("package-0\n")
        (self.zone / "max_energy_range_uj").write_text(f"{2**32}\n")
        self.busy_ticks = 1000
        self.energy_uj = 0
        self.advance(0, 0)

    def advance(self, busy_seconds: float, joules: float) -> None:
        self.busy_ticks += round(busy_seconds * TICKS)
        self.energy_uj += round(joules * 1e6)
        (self.proc / "stat").write_text(f"cpu  {self.busy_ticks} 0 0 50000 0 0 0 0 0 0\n")
        (self.zone / "energy_uj").write_text(f"{self.energy_uj % 2**32}\n")


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeNode:
    fake = FakeNode(tmp_path / "node")
    monkeypatch.setattr(power_part, "ProcCpuUsage", lambda mount: ProcCpuUsage(mount, proc=fake.proc))
    return fake


def power_daemon(tmp_path: Path, power: dict[str, Any], policy: str | None = None) -> Daemon:
    fs = FakeCgroupFs(tmp_path / "cgroup" / "hostwarden")
    policy_path = tmp_path / "policy.toml"
    if policy is not None:
        policy_path.write_text(policy)
    config = Config(daemon=DaemonConfig(socket=str(tmp_path / "hw.sock"), state_dir=tmp_path / "state",
                                        policy=policy_path),
                    metrics=MetricsConfig(address="127.0.0.1:0"),
                    power={"nvml": False, "sample_interval_seconds": 3600, "perf_pmu_root": str(tmp_path / "none"),
                           **power})
    return Daemon(config, tree=CgroupTree(fs.root, fs), cgroup_mount=tmp_path / "cgroup")


@pytest.fixture
def running(tmp_path: Path, node: FakeNode, request: pytest.FixtureRequest) -> Iterator[tuple[Daemon, Client]]:
    power, policy = request.param
    daemon = power_daemon(tmp_path, {"powercap_root": str(node.powercap), **power}, policy)
    daemon.start()
    try:
        with Client(daemon.config.daemon.socket) as client:
            yield daemon, client
    finally:
        daemon.shutdown()


def energy_part(daemon: Daemon) -> EnergyPart:
    return next(p for p in daemon.parts if isinstance(p, EnergyPart))


def set_cpu(cgroup: Path, seconds: float) -> None:
    (cgroup / "cpu.stat").write_text(f"usage_usec {round(seconds * 1e6)}\nuser_usec 0\nsystem_usec 0\n")


def scrape(daemon: Daemon) -> str:
    with urllib.request.urlopen(f"http://{daemon.metrics_address}/metrics", timeout=5) as response:
        return response.read().decode()


def run_call(daemon: Daemon, client: Client, node: FakeNode, sleeper: Any, *, call_cpu: float,
             node_busy: float, joules: float) -> pb.ToolCall:
    begin = client.call("BeginToolCall", pb.BeginToolCallRequest(sandbox="sb", tool="Bash: make", pid=sleeper.pid))
    set_cpu(daemon.tree.call_path("sb", begin.call_id), call_cpu)
    node.advance(node_busy, joules)
    return client.call("EndToolCall", pb.EndToolCallRequest(call_id=begin.call_id, exit_code=0))


MEASURED = ({"idle_watts": 0, "rate_window_seconds": 60}, None)


@pytest.mark.parametrize("running", [MEASURED], indirect=True)
def test_a_call_gets_its_cpu_share_of_measured_energy(running, node, sleeper):
    daemon, client = running
    create(client, "sb")
    # The node burns 2 busy CPU-seconds for 20 J (10 W per busy core); the call used 0.5 of them.
    summary = run_call(daemon, client, node, sleeper, call_cpu=0.5, node_busy=2.0, joules=20.0)
    assert summary.energy_source == "measured"
    assert summary.energy_joules == pytest.approx(5.0, rel=1e-6)
    assert daemon.ledger.get_call(summary.call_id).summary["energy_joules"] == pytest.approx(5.0, rel=1e-6)
    listed = client.call("ListToolCalls", pb.ListToolCallsRequest(sandbox="sb"))
    assert listed.calls[0].energy_joules == pytest.approx(5.0, rel=1e-6)

    set_cpu(daemon.tree.sandbox_path("sb"), 1.5)   # the sandbox's subtree, agent included
    energy_part(daemon).meter.sample()


def two_sandboxes_over_budget(daemon: Daemon, client: Client, node: FakeNode) -> tuple[EnergyPart, list[BudgetAction]]:
    """Sandboxes hi and lo with the node far above the 100 W budget (~1000 J over ~0.15 s while each uses its
    CPU) for two samples; returns the part and its first budget step (at 0 s). The next step is due at 2 s."""
    create(client, "hi", priority=pb.PRIORITY_HIGH)
    create(client, "lo", priority=pb.PRIORITY_LOW)
    part = energy_part(daemon)
    load_step(daemon, node, {"hi": 0.1, "lo": 0.2}, busy=0.3, joules=1000)
    first = part.budget_step(0.0)
    load_step(daemon, node, {"hi": 0.2, "lo": 0.4}, busy=0.3, joules=1000)
    return part, first
    usage = client.call("GetUsage", pb.GetUsageRequest(sandbox="sb"))
    assert usage.energy_source == "measured" and usage.energy_joules == pytest.approx(15.0, rel=1e-6)

    text = scrape(daemon)
    assert 'hostwarden_tool_call_energy_joules_count{tool="bash_make"} 1.0' in text
    assert 'hostwarden_tool_call_energy_joules_sum{tool="bash_make"} 5.0' in text
    assert 'hostwarden_node_energy_joules_total{source="measured",zone="package-0"} 20.0' in text
    assert 'hostwarden_sandbox_energy_joules_total{sandbox="sb",source="measured"} 15.0' in text
    assert "hostwarden_node_idle_energy_joules_total 0.0" in text
    assert 'hostwarden_node_power_watts{zone="package-0"}' in text

    caps = {c.name: c for c in client.call("GetCapabilities", pb.GetCapabilitiesRequest()).capabilities}
    assert caps["rapl"].in_use and "powercap" in caps["rapl"].detail
    assert not caps["nvml"].in_use and "[power] nvml = false" in caps["nvml"].detail

    client.call("DeleteSandbox", pb.DeleteSandboxRequest(name="sb"))
    assert 'sandbox="sb"' not in scrape(daemon).replace('tool="bash_make"', "")


@pytest.mark.parametrize("running", [({"powercap_root": "/nonexistent-powercap", "model_idle_watts": 10,
                                       "model_watts_per_busy_core": 4}, None)], indirect=True)
def test_without_a_sensor_the_model_estimates_and_says_so(running, node, sleeper):
    daemon, client = running
    create(client, "sb")
    summary = run_call(daemon, client, node, sleeper, call_cpu=0.5, node_busy=2.0, joules=0.0)
    assert summary.energy_source == "estimated"
    # The model's idle part (10 W x elapsed) is idle, not the call's: only 4 W per busy core is left.
    assert summary.energy_joules == pytest.approx(2.0, rel=1e-3)
    caps = {c.name: c for c in client.call("GetCapabilities", pb.GetCapabilitiesRequest()).capabilities}
    assert not caps["rapl"].in_use and "estimated by the model" in caps["rapl"].detail
    assert "no powercap tree at /nonexistent-powercap" in caps["rapl"].detail


def test_a_bad_power_table_stops_the_daemon_with_the_key_named(tmp_path, node):
    with pytest.raises(ConfigError, match=r"\[power\] idle_watts: expected a number >= 0"):
        power_daemon(tmp_path, {"idle_watts": "lots"})


BUDGET_POLICY = """
dry_run = {dry_run}
[power]
budget_watts = 100
sustain_seconds = 1
release_seconds = 1
min_cpus = 0.1
"""


def sandbox_actions(daemon: Daemon, sandbox: str) -> list[tuple[str, str, bool]]:
    with sqlite3.connect(daemon.config.daemon.state_dir / "ledger.sqlite3") as db:
        rows = db.execute("SELECT kind, reason, dry_run FROM actions WHERE sandbox=? AND call_id IS NULL ORDER BY id",
                          (sandbox,)).fetchall()
    return [(kind, reason, bool(dry_run)) for kind, reason, dry_run in rows]


def load_step(daemon: Daemon, node: FakeNode, cpu: dict[str, float], *, busy: float, joules: float) -> None:
    """Advance the node and each sandbox's CPU time, and let more than the rate window pass."""
    for name, seconds in cpu.items():
        set_cpu(daemon.tree.sandbox_path(name), seconds)
    node.advance(busy, joules)
    time.sleep(0.15)
    energy_part(daemon).meter.sample()


@pytest.mark.parametrize("running", [({"idle_watts": 0, "rate_window_seconds": 0.1},
                                      BUDGET_POLICY.format(dry_run="false"))], indirect=True)
def test_power_budget_throttles_the_low_priority_sandbox_and_releases_it(running, node):
    daemon, client = running
    events = daemon.bus.subscribe(kinds=["action"])
    part, first = two_sandboxes_over_budget(daemon, client, node)
    assert first == []              # above the budget, not yet for sustain_seconds
    lo_cpu_max = daemon.tree.sandbox_path("lo") / "cpu.max"
    [throttle] = part.budget_step(2.0)
    assert (throttle.sandbox, throttle.action) == ("lo", "throttle")
    assert lo_cpu_max.read_text().split()[0] != "max"
    assert (daemon.tree.sandbox_path("hi") / "cpu.max").read_text().startswith("max")
    # Power drops to nothing: after release_seconds below the threshold the cap is lifted.
    load_step(daemon, node, {}, busy=0.0, joules=0)
    assert part.budget_step(3.0) == []
    load_step(daemon, node, {}, busy=0.0, joules=0)
    [release] = part.budget_step(5.0)
    assert (release.sandbox, release.action) == ("lo", "release")
    assert lo_cpu_max.read_text().split() == ["max", "100000"]

    assert sandbox_actions(daemon, "lo") == [("throttle", "power_budget", False), ("release", "power_budget", False)]
    seen = [events.get(1.0) for _ in range(2)]
    assert [(e.sandbox, e.attributes["action"]) for e in seen if e] == [("lo", "throttle"), ("lo", "release")]
    assert "cpu.max" in seen[0].message
    text = scrape(daemon)
    assert 'hostwarden_enforcement_actions_total{action="throttle",reason="power_budget"} 1.0' in text


@pytest.mark.parametrize("running", [({"idle_watts": 0, "rate_window_seconds": 0.1},
                                      BUDGET_POLICY.format(dry_run="true"))], indirect=True)
def test_dry_run_budget_records_the_throttle_without_writing_cpu_max(running, node):
    daemon, client = running
    part, _ = two_sandboxes_over_budget(daemon, client, node)
    assert [a.action for a in part.budget_step(2.0)] == ["throttle"]
    assert (daemon.tree.sandbox_path("lo") / "cpu.max").read_text().startswith("max")
    assert sandbox_actions(daemon, "lo") == [("throttle", "power_budget", True)]


@pytest.mark.parametrize("running", [({"idle_watts": 0, "rate_window_seconds": 0.1},
                                      BUDGET_POLICY.format(dry_run="false"))], indirect=True)
def test_removing_the_budget_from_the_policy_releases_every_throttle(running, node):
    daemon, client = running
    part, _ = two_sandboxes_over_budget(daemon, client, node)
    part.budget_step(2.0)
    client.call("SetPolicy", pb.SetPolicyRequest(toml="dry_run = false\n"))
    [release] = part.budget_step(2.1)   # power is still high: only the policy change lifts it
    assert (release.sandbox, release.action) == ("lo", "release")
    assert (daemon.tree.sandbox_path("lo") / "cpu.max").read_text().split() == ["max", "100000"]


@pytest.mark.parametrize("running", [({"idle_watts": 0, "rate_window_seconds": 0.1},
                                      BUDGET_POLICY.format(dry_run="false"))], indirect=True)
def test_a_throttle_left_by_an_earlier_run_is_released_by_the_next(running, node):
    daemon, client = running
    create(client, "lo", priority=pb.PRIORITY_LOW)
    lo = daemon.warden.sandboxes["lo"]
    (lo.path / "cpu.max").write_text("20000 100000\n")
    part = energy_part(daemon)
    part.sandbox_added(lo)      # as recovery after a restart announces it
    load_step(daemon, node, {}, busy=0.0, joules=0)
    part.budget_step(0.0)
    load_step(daemon, node, {}, busy=0.0, joules=0)
    assert [(a.sandbox, a.action) for a in part.budget_step(2.0)] == [("lo", "release")]
    assert (lo.path / "cpu.max").read_text().split() == ["max", "100000"]
