"""Energy attribution: node energy split over cgroups by CPU time, GPU energy by per-process GPU use.

How a call's share is computed
------------------------------
Node active energy per busy CPU-second (a rate, J/CPU-s, i.e. watts per busy core) times the call's
own CPU time (cgroup cpu.stat usage_usec, read at begin and end, exact to the microsecond):

    share = cpu_time(call) * (A(t_end) - A(t_start)) / (B(t_end) - B(t_start))

A is the node's cumulative active energy (total minus idle), B the node's cumulative busy CPU seconds
(/proc/stat). For a call of at least `rate_window_seconds` the window is the call itself. For a shorter
call the window is the trailing `rate_window_seconds` before the call's end: /proc/stat counts in
10 ms ticks and energy counters update in steps (RAPL about every millisecond, a file-based counter
whenever its writer runs), so a 50 ms window's ratio would be mostly quantisation noise, while the
call's own CPU time is exact. A and B at a window start that falls between two samples are linearly
interpolated between them; begin() and end() each take a sample, so the window's end is a real reading.

Idle energy (the idle baseline, configured or learned, times elapsed time) is kept apart and never
charged to workloads. Sandboxes are charged per timer interval with the same rule, over their whole
subtree (agent and calls). GPU energy per interval is split over processes by their GPU use and
charged to the tracked cgroup (sandbox, call) that contains each process.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hostwarden.power.baseline import IdleBaseline
from hostwarden.power.cpu_time import CpuUsageReader
from hostwarden.power.types import CpuEnergySource, EnergySourceKind, GpuEnergySource, PowerError

# Shortest span over which the idle baseline learns from a (busy fraction, watts) reading.
_BASELINE_SPAN_SECONDS = 0.25


@dataclass(frozen=True)
class EnergyShare:
    """A call's energy: CPU-side share plus GPU share, and where the figure came from."""

    joules: float
    source: EnergySourceKind
    cpu_joules: float
    gpu_joules: float
    cpu_seconds: float


@dataclass(frozen=True)
class PowerSnapshot:
    """Everything the metrics and the budget controller need, as plain data."""

    sandbox_energy_joules: dict[tuple[str, EnergySourceKind], float]
    node_energy_joules: dict[tuple[str, EnergySourceKind], float]
    idle_energy_joules: float
    node_power_watts: dict[str, float]
    node_cpu_power_watts: float
    watts_per_busy_core: float
    sandbox_cpu_cores: dict[str, float]


@dataclass(frozen=True)
class _Point:
    time: float
    busy: float                 # node busy CPU seconds, cumulative
    total: float                # CPU-side node energy (counted zones), cumulative joules
    active: float               # the part of `total` above the idle baseline
    zones: dict[str, float]     # every zone's cumulative joules (CPU and GPU)


@dataclass
class _Call:
    cgroup: Path
    begin: _Point
    cpu_begin: float
    gpu_joules: float = 0.0


@dataclass
class _Sandbox:
    cgroup: Path
    cpu_seconds: float
    cpu_joules: float = 0.0
    gpu_joules: float = 0.0
    cpu_history: deque[tuple[float, float]] = field(default_factory=deque)


def _contains(ancestor: Path, cgroup: Path) -> bool:
    return cgroup == ancestor or ancestor in cgroup.parents


class EnergyMeter:
    """Thread-safe: sample() runs on the daemon's timer thread, begin()/end() on request threads.

    sample() should run every 100-500 ms (and at least once per counter wrap period); begin() and end()
    sample the node themselves, so a call's window edges are exact readings.
    """

    def __init__(self, cpu_source: CpuEnergySource, cpu_usage: CpuUsageReader, *,
                 gpu_source: GpuEnergySource | None = None, idle_watts: float | None = None,
                 gpu_idle_watts: float | None = None, rate_window_seconds: float = 1.0,
                 history_seconds: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        if rate_window_seconds <= 0 or history_seconds < 2 * rate_window_seconds:
            raise ValueError("rate_window_seconds must be > 0 and history_seconds at least twice as long")
        self._cpu_source = cpu_source
        self._gpu_source = gpu_source
        self._cpu_usage = cpu_usage
        self._clock = clock
        self._rate_window = rate_window_seconds
        self._history_seconds = history_seconds
        known_idle = idle_watts if idle_watts is not None else cpu_source.idle_watts
        self._baseline = IdleBaseline(known_idle)
        self._gpu_idle_watts = gpu_idle_watts
        self._lock = threading.RLock()
        self._calls: dict[str, _Call] = {}
        self._sandboxes: dict[str, _Sandbox] = {}
        self._cpu_idle_joules = 0.0
        self._gpu_idle_joules = 0.0
        self._gpu_unattributed_joules = 0.0
        first = self._read_point(None)
        self._gpu_zones = {z.zone for z in gpu_source.read()} if gpu_source is not None else set()
        self._history: deque[_Point] = deque([first])
        self._baseline_point = first
        self._timer_point = first

    # -- sampling ---------------------------------------------------------------------------------

    def _read_point(self, previous: _Point | None) -> _Point:
        now = self._clock()
        busy = self._cpu_usage.node_busy_seconds()
        cpu_zones = self._cpu_source.read()
        zones = {z.zone: z.joules for z in cpu_zones}
        if self._gpu_source is not None:
            zones.update((z.zone, z.joules) for z in self._gpu_source.read())
        total = sum(z.joules for z in cpu_zones if z.in_node_total)
        if previous is None:
            return _Point(now, busy, total, 0.0, zones)
        energy = max(total - previous.total, 0.0)
        idle = min(energy, self._baseline.idle_watts() * max(now - previous.time, 0.0))
        self._cpu_idle_joules += idle
        return _Point(now, busy, total, previous.active + energy - idle, zones)

    def _sample_node(self) -> _Point:
        point = self._read_point(self._history[-1])
        self._history.append(point)
        while len(self._history) > 2 and self._history[1].time < point.time - self._history_seconds:
            self._history.popleft()
        span = point.time - self._baseline_point.time
        if span >= _BASELINE_SPAN_SECONDS:
            previous = self._baseline_point
            busy_fraction = (point.busy - previous.busy) / (span * self._cpu_usage.cpu_count())
            self._baseline.observe(busy_fraction, (point.total - previous.total) / span)
            self._baseline_point = point
        return point

    def sample(self) -> None:
        """Read the node, charge tracked sandboxes for the interval, and split GPU energy."""
        with self._lock:
            previous = self._timer_point
            point = self._sample_node()
            for sandbox in self._sandboxes.values():
                self._charge_sandbox_cpu(sandbox, previous, point)
            if self._gpu_source is not None:
                self._charge_gpu(previous, point)
            self._timer_point = point

    def _charge_sandbox_cpu(self, sandbox: _Sandbox, previous: _Point, point: _Point) -> None:
        try:
            cpu = self._cpu_usage.cgroup_cpu_seconds(sandbox.cgroup)
        except PowerError:
            return  # removed before forget_sandbox(): its totals stay as they were
        used = max(cpu - sandbox.cpu_seconds, 0.0)
        sandbox.cpu_seconds = cpu
        sandbox.cpu_joules += used * self._joules_per_cpu_second(previous, point)
        sandbox.cpu_history.append((point.time, cpu))
        while len(sandbox.cpu_history) > 2 and sandbox.cpu_history[1][0] <= point.time - self._rate_window:
            sandbox.cpu_history.popleft()

    def _charge_gpu(self, previous: _Point, point: _Point) -> None:
        assert self._gpu_source is not None
        elapsed = point.time - previous.time
        for zone, weights in self._gpu_source.process_weights().items():
            energy = max(point.zones.get(zone, 0.0) - previous.zones.get(zone, 0.0), 0.0)
            total_weight = sum(weights.values())
            if total_weight <= 0:
                self._gpu_idle_joules += energy
                continue
            idle = min(energy, (self._gpu_idle_watts or 0.0) * elapsed)
            self._gpu_idle_joules += idle
            for pid, weight in weights.items():
                self._charge_gpu_process(pid, (energy - idle) * weight / total_weight)

    def _charge_gpu_process(self, pid: int, joules: float) -> None:
        cgroup = self._cpu_usage.cgroup_of_pid(pid)
        charged = False
        if cgroup is not None:
            for call in self._calls.values():
                if _contains(call.cgroup, cgroup):
                    call.gpu_joules += joules
                    charged = True
            for sandbox in self._sandboxes.values():
                if _contains(sandbox.cgroup, cgroup):
                    sandbox.gpu_joules += joules
                    charged = True
        if not charged:
            self._gpu_unattributed_joules += joules

    # -- the rate -----------------------------------------------------------------------------------

    def _interpolate(self, at: float) -> tuple[float, float]:
        """(busy seconds, active joules) at time `at`, linear between the samples around it."""
        index = bisect.bisect_left(self._history, at, key=lambda point: point.time)
        if index == 0:
            return self._history[0].busy, self._history[0].active
        if index == len(self._history):
            return self._history[-1].busy, self._history[-1].active
        before, after = self._history[index - 1], self._history[index]
        weight = (at - before.time) / (after.time - before.time) if after.time > before.time else 1.0
        return (before.busy + weight * (after.busy - before.busy),
                before.active + weight * (after.active - before.active))

    def _joules_per_cpu_second(self, start: _Point, end: _Point) -> float:
        window_start = end.time - self._rate_window
        if start.time <= window_start:
            busy0, active0 = start.busy, start.active
        else:
            busy0, active0 = self._interpolate(window_start)
        busy = end.busy - busy0
        return (end.active - active0) / busy if busy > 0 else 0.0

    # -- calls --------------------------------------------------------------------------------------

    def begin(self, key: str, cgroup: Path) -> None:
        """Start measuring a call whose processes run in `cgroup` (read before any of them runs)."""
        with self._lock:
            if key in self._calls:
                raise PowerError(f"energy measurement for call {key!r} has already begun")
            cpu = self._cpu_usage.cgroup_cpu_seconds(cgroup)
            self._calls[key] = _Call(cgroup, self._sample_node(), cpu)

    def end(self, key: str) -> EnergyShare:
        """The call's energy; call it before its cgroup is removed. The call is forgotten either way."""
        with self._lock:
            call = self._calls.pop(key, None)
            if call is None:
                raise PowerError(f"no energy measurement was begun for call {key!r}")
            point = self._sample_node()
            cpu_seconds = max(self._cpu_usage.cgroup_cpu_seconds(call.cgroup) - call.cpu_begin, 0.0)
            cpu_joules = cpu_seconds * self._joules_per_cpu_second(call.begin, point)
            estimated = self._cpu_source.kind == "estimated" and cpu_joules > 0
            return EnergyShare(cpu_joules + call.gpu_joules, "estimated" if estimated else "measured",
                               cpu_joules, call.gpu_joules, cpu_seconds)

    # -- sandboxes ------------------------------------------------------------------------------------

    def track_sandbox(self, name: str, cgroup: Path) -> None:
        """Charge `cgroup`'s subtree to sandbox `name` from the next sample() on."""
        with self._lock:
            if name not in self._sandboxes:
                cpu = self._cpu_usage.cgroup_cpu_seconds(cgroup)
                self._sandboxes[name] = _Sandbox(cgroup, cpu, cpu_history=deque([(self._clock(), cpu)]))

    def sandbox_energy(self, name: str) -> tuple[float, EnergySourceKind] | None:
        """A tracked sandbox's joules so far (CPU and GPU) and their label: `estimated` when any CPU part came
        from the model. None when the sandbox is not tracked."""
        with self._lock:
            sandbox = self._sandboxes.get(name)
            if sandbox is None:
                return None
            estimated = self._cpu_source.kind == "estimated" and sandbox.cpu_joules > 0
            return sandbox.cpu_joules + sandbox.gpu_joules, "estimated" if estimated else "measured"

    def forget_sandbox(self, name: str) -> None:
        """Drop a deleted sandbox, so its metric series go away."""
        with self._lock:
            self._sandboxes.pop(name, None)

    # -- read-outs ------------------------------------------------------------------------------------

    @property
    def idle_energy_joules(self) -> float:
        with self._lock:
            return self._cpu_idle_joules + self._gpu_idle_joules

    def snapshot(self) -> PowerSnapshot:
        with self._lock:
            now = self._history[-1]
            earlier = next((p for p in reversed(self._history) if p.time <= now.time - self._rate_window),
                           self._history[0])
            span = now.time - earlier.time
            watts = {zone: (joules - earlier.zones.get(zone, 0.0)) / span if span > 0 else 0.0
                     for zone, joules in now.zones.items()}
            cpu_kind = self._cpu_source.kind
            sandbox_energy: dict[tuple[str, EnergySourceKind], float] = {}
            cores: dict[str, float] = {}
            for name, sandbox in self._sandboxes.items():
                sandbox_energy[(name, cpu_kind)] = sandbox.cpu_joules
                if self._gpu_source is not None:
                    key = (name, "measured")
                    sandbox_energy[key] = sandbox_energy.get(key, 0.0) + sandbox.gpu_joules
                (t0, cpu0), (t1, cpu1) = sandbox.cpu_history[0], sandbox.cpu_history[-1]
                cores[name] = (cpu1 - cpu0) / (t1 - t0) if t1 > t0 else 0.0
            return PowerSnapshot(
                sandbox_energy_joules=sandbox_energy,
                node_energy_joules={(zone, "measured" if zone in self._gpu_zones else cpu_kind): joules
                                    for zone, joules in now.zones.items()},
                idle_energy_joules=self._cpu_idle_joules + self._gpu_idle_joules,
                node_power_watts=watts,
                node_cpu_power_watts=(now.total - earlier.total) / span if span > 0 else 0.0,
                watts_per_busy_core=self._joules_per_cpu_second(earlier, now),
                sandbox_cpu_cores=cores,
            )
