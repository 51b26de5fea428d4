"""The daemon's energy part: opens the sources `[power]` asks for, samples them on a timer thread, gives
every tool call and sandbox its joules, exports the power metrics, and runs the policy's power budget.

Threads: the sampler thread runs `EnergyMeter.sample()` and one budget step every
`sample_interval_seconds`; the Observer hooks run on the request threads (the meter is thread-safe, the
budget state is only touched under `_budget_lock`). Budget steps become actions through
`Warden.record_action` (ledger row, event and metric each); cpu.max is written in the sandbox's cgroup,
so the limit holds for its whole subtree (agent and calls).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hostwarden.capabilities import Capability
from hostwarden.config import ConfigError
from hostwarden.policy.schema import Priority
from hostwarden.power import metrics as power_metrics
from hostwarden.power.budget import (
    BudgetAction,
    BudgetState,
    CgroupCpuMax,
    SandboxLoad,
    decide,
    parse_cpu_max,
    release_all,
)
from hostwarden.power.cpu_time import CpuUsageReader, ProcCpuUsage
from hostwarden.power.meter import EnergyMeter, PowerSnapshot
from hostwarden.power.settings import PowerSettings, open_sources
from hostwarden.power.types import CpuEnergySource, GpuEnergySource, PowerError, SourceProbe
from hostwarden.service import Observer, RunningCall, Sandbox

if TYPE_CHECKING:
    from hostwarden.app import Daemon

log = logging.getLogger(__name__)

BUDGET_REASON = "power_budget"  # the action metric's reason label: bounded

_HELP = {
    power_metrics.SANDBOX_ENERGY: "Energy attributed to the sandbox's cgroup subtree (CPU time share + GPU use)",
    power_metrics.NODE_ENERGY: "Node energy per zone since the daemon started",
    power_metrics.NODE_IDLE_ENERGY: "Node idle energy, kept apart and charged to no sandbox",
    power_metrics.NODE_POWER: "Node power per zone over the last rate window",
}

_HINTS = {
    "throttle": "the node is over its power budget: this sandbox's CPU is capped until power falls; its work "
                "runs slower. Raise its priority, or the policy's [power] budget_watts",
    "release": "the CPU cap is lifted",
    "over_budget": "nothing lower-priority is left to throttle: raise [power] budget_watts or move work off "
                   "this node",
}


class PowerCollector(Collector):
    """Energy counters and power gauges read from the meter at scrape time (deleted sandboxes vanish)."""

    def __init__(self, meter: EnergyMeter) -> None:
        self._meter = meter

    def collect(self) -> Iterable[Metric]:
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
        for sample in power_metrics.snapshot_samples(self._meter.snapshot()):
            family = families.get(sample.name)
            if family is None:
                labels = sorted(sample.labels)
                if sample.name == power_metrics.NODE_POWER:
                    family = GaugeMetricFamily(sample.name, _HELP[sample.name], labels=labels)
                else:  # counters: prometheus_client adds the _total suffix itself
                    family = CounterMetricFamily(sample.name.removesuffix("_total"), _HELP[sample.name],
                                                 labels=labels)
                families[sample.name] = family
            family.add_metric([sample.labels[k] for k in sorted(sample.labels)], sample.value)
        yield from families.values()


def _capabilities(probes: list[SourceProbe], cpu: CpuEnergySource,
                  gpu: GpuEnergySource | None) -> tuple[Capability, Capability]:
    by_name = {p.name: p for p in probes}
    rapl_probes = [by_name["powercap"], by_name["perf_power"]]
    if cpu.name in ("powercap", "perf_power"):
        rapl = Capability("rapl", True, f"in use via {cpu.name}: {by_name[cpu.name].detail}", in_use=True)
    else:
        why = "; ".join(f"{p.name}: {p.detail}" for p in rapl_probes)
        rapl = Capability("rapl", any(p.available for p in rapl_probes),
                          f"not in use ({why}); CPU energy is estimated by the model: {by_name['model'].detail}")
    nvml_probe = by_name["nvml"]
    nvml = Capability("nvml", nvml_probe.available,
                      ("in use: " if gpu is not None else "not in use: ") + nvml_probe.detail, in_use=gpu is not None)
    return rapl, nvml


class EnergyPart(Observer):
    def __init__(self, daemon: Daemon, settings: PowerSettings, cpu_usage: CpuUsageReader) -> None:
        self._daemon = daemon
        self._settings = settings
        self._cpu_source, self._gpu_source, probes = open_sources(settings, cpu_usage)
        self.meter = EnergyMeter(self._cpu_source, cpu_usage, gpu_source=self._gpu_source,
                                 idle_watts=settings.idle_watts, gpu_idle_watts=settings.gpu_idle_watts,
                                 rate_window_seconds=settings.rate_window_seconds,
                                 history_seconds=max(30.0, 2 * settings.rate_window_seconds))
        rapl, nvml = _capabilities(probes, self._cpu_source, self._gpu_source)
        daemon.capabilities["rapl"], daemon.capabilities["nvml"] = rapl, nvml
        self._call_energy = Histogram(power_metrics.TOOL_CALL_ENERGY, "Energy of each tool call (CPU share + GPU)",
                                      ["tool"], buckets=power_metrics.TOOL_CALL_ENERGY_BUCKETS,
                                      registry=daemon.metrics.registry)
        daemon.metrics.register(PowerCollector(self.meter))
        self._budget_lock = threading.Lock()
        self._budget_state = BudgetState()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="energy-sampler", daemon=True)

    # -- Part ------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._cpu_source.close()
        if self._gpu_source is not None:
            self._gpu_source.close()

    def _run(self) -> None:
        while not self._stop.wait(self._settings.sample_interval_seconds):
            try:
                self.meter.sample()
                self.budget_step(time.monotonic())
            except Exception:  # a bad reading must not end energy accounting for the daemon's lifetime
                log.exception("energy sample failed")

    # -- Observer ----------------------------------------------------------------------------------------

    def sandbox_added(self, sandbox: Sandbox) -> None:
        try:
            self.meter.track_sandbox(sandbox.name, sandbox.path)
        except PowerError as exc:
            log.warning("sandbox %s: no energy accounting: %s", sandbox.name, exc)
        self._adopt_throttle(sandbox)

    def sandbox_removed(self, sandbox: Sandbox) -> None:
        self.meter.forget_sandbox(sandbox.name)

    def call_started(self, call: RunningCall) -> None:
        try:
            self.meter.begin(call.call_id, call.path)
        except PowerError as exc:
            log.warning("call %s: no energy measurement: %s", call.call_id, exc)

    def call_ending(self, call: RunningCall, summary: dict[str, Any]) -> None:
        try:
            share = self.meter.end(call.call_id)
        except PowerError:
            # Begun before this daemon started (recovered after a restart): its start was never read.
            summary["energy_source"] = "unavailable: the call began before this daemon started"
            return
        summary["energy_joules"] = share.joules
        summary["energy_source"] = share.source
        self._call_energy.labels(self._daemon.metrics.tools.label(call.tool)).observe(share.joules)

    # -- read-outs for the API ---------------------------------------------------------------------------

    def sandbox_energy(self, name: str) -> tuple[float, str] | None:
        return self.meter.sandbox_energy(name)

    # -- power budget ------------------------------------------------------------------------------------

    def _adopt_throttle(self, sandbox: Sandbox) -> None:
        """A throttle left in a sandbox's cpu.max by an earlier daemon run is taken over, so the budget
        releases it as it would its own (only the budget writes a sandbox-level cpu.max)."""
        try:
            cores = parse_cpu_max((sandbox.path / "cpu.max").read_text())
        except (OSError, PowerError):
            return  # no cpu controller here, or not a limit the budget could have written
        if cores is None:
            return
        with self._budget_lock:
            state = self._budget_state
            self._budget_state = replace(state, throttled={**state.throttled, sandbox.name: cores},
                                         priorities={**state.priorities, sandbox.name: Priority(sandbox.priority).rank})

    def budget_step(self, now: float) -> list[BudgetAction]:
        """Decide on the latest readings under the current policy, apply, and record each action."""
        policy = self._daemon.policy.current()
        sandboxes = dict(self._daemon.warden.sandboxes)
        with self._budget_lock:
            if policy.power is None:
                if not self._budget_state.throttled:
                    return []
                self._budget_state, actions = release_all(self._budget_state,
                                                          "the policy no longer sets a power budget")
            else:
                snapshot = self.meter.snapshot()
                self._budget_state, actions = decide(policy.power, self._budget_state, now,
                                                     snapshot.node_cpu_power_watts, snapshot.watts_per_busy_core,
                                                     self._loads(sandboxes, snapshot))
        actuator = CgroupCpuMax({name: sandbox.path for name, sandbox in sandboxes.items()})
        for action in actions:
            self._apply(action, actuator, dry_run=policy.dry_run)
        return actions

    @staticmethod
    def _loads(sandboxes: dict[str, Sandbox], snapshot: PowerSnapshot) -> list[SandboxLoad]:
        return [SandboxLoad(name, Priority(sandbox.priority).rank, snapshot.sandbox_cpu_cores.get(name, 0.0))
                for name, sandbox in sandboxes.items()]

    def _apply(self, action: BudgetAction, actuator: CgroupCpuMax, *, dry_run: bool) -> None:
        detail = action.reason
        if action.cpu_max is not None:
            detail += f"; cpu.max {action.cpu_max!r} (" + ", ".join(f"{k} {v:.3g}" for k, v in action.detail.items()) \
                + ")"
            if not dry_run:
                try:
                    actuator.set_cpu_max(action.sandbox, action.cpu_max)
                except (PowerError, KeyError) as exc:
                    detail += f"; not enforced: {exc}"
        self._daemon.warden.record_action(None, action.action, BUDGET_REASON, detail, _HINTS[action.action],
                                          dry_run=dry_run, sandbox=action.sandbox)


def build_energy(daemon: Daemon) -> EnergyPart:
    """The energy part; always on (the model estimates where no sensor exists). A bad `[power]` table is a
    ConfigError naming the key."""
    try:
        settings = PowerSettings.from_mapping(daemon.config.power)
    except ValueError as exc:
        raise ConfigError(f"{exc} (see docs/power.md)") from exc
    return EnergyPart(daemon, settings, ProcCpuUsage(daemon.warden.cgroup_mount))
