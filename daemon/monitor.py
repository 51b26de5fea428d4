"""The monitor: kernel -> bpf -> monitor -> events, ledger, metrics.

Loads the eBPF programs (hostwarden.bpf), watches each sandbox's agent cgroup and each call's cgroup,
and turns the programs' events into what the daemon reports:
- process execs -> the call's `executables` (deduplicated, capped, in first-run order);
- memory spikes, OOM kills and memcg reclaim -> bus events `memory_spike`, `oom`, `reclaim`;
- the call's peak memory where `memory.peak` is unavailable (no memory controller): the programs'
  summed process RSS, labelled `rss_tracking`;
- executed files with their IMA digests -> `on_exec_digest` (the integrity part sets it);
- each program's own cost -> `hostwarden_bpf_program_*` metrics.
A program that cannot load is reported in the capabilities with its reason; the daemon goes on.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from hostwarden.bpf import (
    BpfEvent,
    BpfMonitor,
    BpfMonitorError,
    CgroupRss,
    EventKind,
    ExecDigestEvent,
    ExecutableList,
    OomEvent,
    ProcessEvent,
    ProgramStats,
    ProgramStatus,
    ReclaimEvent,
    SpikeEvent,
)
from hostwarden.bpf.programs import RssSource
from hostwarden.capabilities import Capability
from hostwarden.cgroups.errors import CgroupError
from hostwarden.cgroups.tree import AGENT_LEAF
from hostwarden.service import Observer, RunningCall, Sandbox

if TYPE_CHECKING:
    from hostwarden.app import Daemon

log = logging.getLogger(__name__)

# A call's spike threshold: this fraction of its memory.high, so that the event comes before the kernel
# starts throttling the call (and, where memory.high cannot be enforced, before the call passes it).
SPIKE_FRACTION_OF_MEMORY_HIGH = 0.8
EXECUTABLES_CAP = 64
RSS_PEAK_SOURCE = "rss_tracking"
EXEC_DIGEST_PROGRAM = "exec_digest"
# Either counts a call's RSS (hostwarden.bpf's monitor attaches one way: sampled, or at every change).
RSS_PROGRAMS = frozenset({"rss_sample", "rss_stat"})

# Fork and exit events are not used here: leaving them in the kernel saves two ring-buffer records and
# two decodes per process (see docs/benchmarks.md).
MONITOR_EVENT_KINDS = frozenset(EventKind) - {EventKind.FORK, EventKind.EXIT}
# Exec events once per path and watched cgroup (deduplicated in the kernel): `executables` list each path once
# anyway, and the integrity part's path-only fallback joins a path to its latest IMA entry; a ring-buffer record
# per exec cost more than the rest of the exec program (docs/bpf.md).
MONITOR_DEDUP_EXECS = True

# (sandbox, executed path, IMA digest as hex or None where the kernel gave none)
ExecDigestSink = Callable[[str, str, str | None], None]


class BpfBackend(Protocol):
    """What the monitor needs of hostwarden.bpf.BpfMonitor (unit tests substitute a fake)."""

    def start(self) -> dict[str, ProgramStatus]: ...

    def stop(self) -> None: ...

    def watch(self, cgroup_id: int, *, spike_threshold_bytes: int | None = None,
              processes: Collection[int] = ()) -> None: ...

    def set_threshold(self, cgroup_id: int, spike_threshold_bytes: int | None) -> None: ...

    def track(self, cgroup_id: int, processes: Collection[int]) -> None: ...

    def unwatch(self, cgroup_id: int) -> None: ...

    def flush(self) -> None: ...

    def cgroup_rss(self, cgroup_id: int) -> CgroupRss | None: ...

    def program_stats(self) -> dict[str, ProgramStats]: ...

    def run_time_stats_seconds(self) -> float: ...


BackendFactory = Callable[[Callable[[BpfEvent], None]], BpfBackend]


def default_backend(on_event: Callable[[BpfEvent], None], run_time_stats: str = "sampled",
                    rss: str = RssSource.SAMPLED.value) -> BpfBackend:
    return BpfMonitor(on_event, event_kinds=MONITOR_EVENT_KINDS, dedup_execs=MONITOR_DEDUP_EXECS,
                      run_time_stats=run_time_stats, rss_sampling=rss == RssSource.SAMPLED.value)


def spike_threshold_for(call: RunningCall) -> int | None:
    """The call's spike threshold in bytes: a fraction of its memory.high; None when it has none."""
    high = call.limits.memory_high
    if not high:
        return None
    return max(1, int(high * SPIKE_FRACTION_OF_MEMORY_HIGH))


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


@dataclass
class _Watched:
    """A watched cgroup: a sandbox's agent leaf (call is None) or a call."""

    sandbox: str
    call: RunningCall | None = None
    executables: ExecutableList = field(default_factory=lambda: ExecutableList(EXECUTABLES_CAP))
    oom_killed: bool = False


class BpfCostCollector(Collector):
    """Each loaded program's own cost, read from the kernel at scrape time.

    The kernel counts run time and runs only while its statistics are on (`[bpf] run_time_stats`: by default
    a window of every period); hostwarden_bpf_run_time_stats_seconds_total says for how long, so that a
    rate of run seconds over it is a program's share of a CPU and run seconds over runs its mean cost.
    """

    def __init__(self, read_stats: Callable[[], Mapping[str, ProgramStats]],
                 read_stats_seconds: Callable[[], float]) -> None:
        self._read_stats = read_stats
        self._read_stats_seconds = read_stats_seconds

    def collect(self) -> Iterable[Metric]:
        run_seconds = CounterMetricFamily("hostwarden_bpf_program_run_seconds",
                                          "Time the kernel spent running each eBPF program, counted while run-time "
                                          "statistics were on", labels=["program"])
        runs = CounterMetricFamily("hostwarden_bpf_program_runs",
                                   "Runs of each eBPF program, counted while run-time statistics were on",
                                   labels=["program"])
        lost = CounterMetricFamily("hostwarden_bpf_events_lost",
                                   "Events an eBPF program could not deliver (ring buffer full)", labels=["program"])
        for program, stats in sorted(self._read_stats().items()):
            run_seconds.add_metric([program], stats.run_time_ns / 1e9)
            runs.add_metric([program], stats.run_count)
            lost.add_metric([program], stats.events_lost)
        yield run_seconds
        yield runs
        yield lost
        yield CounterMetricFamily("hostwarden_bpf_run_time_stats_seconds",
                                  "Seconds during which the kernel counted eBPF programs' run time and runs "
                                  "([bpf] run_time_stats)", value=self._read_stats_seconds())


class Monitor(Observer):
    """The daemon part that attributes eBPF events to sandboxes and calls.

    Threading: events arrive on the bpf reader thread, or on the thread ending a call (it flushes the
    ring buffer first so the call's last execs are counted); a lock guards the watched-cgroup table.
    `on_exec_digest` is called on those threads too and must be quick.
    """

    def __init__(self, daemon: Daemon, backend_factory: BackendFactory = default_backend) -> None:
        self._warden = daemon.warden
        self._bus = daemon.bus
        self._metrics = daemon.metrics
        self._capabilities = daemon.capabilities
        self._backend = backend_factory(self._on_event)
        self._lock = threading.Lock()
        self._watched: dict[int, _Watched] = {}
        self._agent_cgroups: dict[str, int] = {}
        self._loaded: frozenset[str] = frozenset()
        self.statuses: dict[str, ProgramStatus] = {}
        self.on_exec_digest: ExecDigestSink | None = None

    # ---- part --------------------------------------------------------------------------------

    def start(self) -> None:
        self.statuses = self._backend.start()
        self._loaded = frozenset(name for name, status in self.statuses.items() if status.loaded)
        self._record_capabilities()
        if self._loaded:
            self._metrics.register(BpfCostCollector(self._backend.program_stats, self._backend.run_time_stats_seconds))
        for name, status in self.statuses.items():
            if status.not_needed:
                log.info("bpf program %s not needed: %s", name, status.detail)
            elif not status.loaded:
                log.warning("bpf program %s not loaded: %s", name, status.detail)
        log.info("bpf programs loaded: %s", ", ".join(sorted(self._loaded)) or "none")

    def stop(self) -> None:
        self._backend.stop()
        self._loaded = frozenset()

    def _record_capabilities(self) -> None:
        for name, status in self.statuses.items():
            key = f"bpf_{name}"
            self._capabilities[key] = Capability(key, status.loaded or status.not_needed, status.detail,
                                                 in_use=status.loaded)
        bcc = self._capabilities.get("bcc")
        if bcc is not None:
            bcc.in_use = bool(self._loaded)
            if not self._loaded:
                bcc.detail += "; no bpf program loaded (see the bpf_* capabilities)"
        for dependent in ("bpf_lsm", "btf"):
            capability = self._capabilities.get(dependent)
            if capability is not None and EXEC_DIGEST_PROGRAM in self._loaded:
                capability.in_use = True

    @property
    def active(self) -> bool:
        return bool(self._loaded)

    # ---- observer hooks ----------------------------------------------------------------------

    def _watch(self, cgroup_id: int, path: Path, watched: _Watched, threshold: int | None) -> None:
        if not self._loaded or cgroup_id <= 0:
            return
        with self._lock:
            self._watched[cgroup_id] = watched
        try:
            processes = self._warden.tree.pids(path)  # there already (a recovered call's, a sandbox's agent)
        except (CgroupError, OSError) as unreadable:
            log.warning("cgroup %s: processes unknown (%s): they are tracked from their next fork or exec", path,
                        unreadable)
            processes = []
        try:
            self._backend.watch(cgroup_id, spike_threshold_bytes=threshold, processes=processes)
        except (BpfMonitorError, ValueError) as refused:
            log.warning("cannot watch cgroup %d of sandbox %s: %s", cgroup_id, watched.sandbox, refused)

    def _unwatch(self, cgroup_id: int) -> _Watched | None:
        with self._lock:
            watched = self._watched.pop(cgroup_id, None)
        if watched is not None:
            self._backend.unwatch(cgroup_id)
        return watched

    def sandbox_added(self, sandbox: Sandbox) -> None:
        if not self._loaded:
            return
        try:
            agent_id = self._warden.tree.cgroup_id(sandbox.path / AGENT_LEAF)
        except (CgroupError, OSError) as missing:  # CgroupNotFound is a LookupError
            log.warning("sandbox %s: no agent cgroup to watch (%s)", sandbox.name, missing)
            return
        self._agent_cgroups[sandbox.name] = agent_id
        self._watch(agent_id, sandbox.path / AGENT_LEAF, _Watched(sandbox.name), None)

    def sandbox_removed(self, sandbox: Sandbox) -> None:
        agent_id = self._agent_cgroups.pop(sandbox.name, None)
        if agent_id is not None:
            self._unwatch(agent_id)

    def call_started(self, call: RunningCall) -> None:
        self._watch(call.cgroup_id, call.path, _Watched(call.sandbox, call), spike_threshold_for(call))

    def call_recovered(self, call: RunningCall) -> None:
        self.call_started(call)  # from now on: its execs and spikes before the restart are not known

    def process_attached(self, call: RunningCall, pid: int) -> None:
        """A process moved into a watched call: the programs saw neither its fork nor an exec there, so they
        sample its memory only once named (an attached process that runs on without exec'ing, e.g. an agent's
        own worker, would otherwise go uncounted)."""
        with self._lock:
            if call.cgroup_id not in self._watched:
                return
        try:
            self._backend.track(call.cgroup_id, [pid])
        except (BpfMonitorError, ValueError) as refused:
            log.warning("process %d of call %s not tracked: %s", pid, call.call_id, refused)

    def set_call_threshold(self, call_id: str, threshold_bytes: int | None) -> None:
        """Replace a running call's spike threshold (None: no spike events) and re-arm it; the policy
        may raise it after a spike to hear of the next one. KeyError for a call that is not watched."""
        with self._lock:
            cgroup_id = next((cid for cid, w in self._watched.items() if w.call and w.call.call_id == call_id), None)
        if cgroup_id is None:
            raise KeyError(f"call {call_id} is not watched by the bpf monitor (ended, or no program loaded)")
        self._backend.set_threshold(cgroup_id, threshold_bytes)

    def call_ending(self, call: RunningCall, summary: dict[str, Any]) -> None:
        if not self._loaded:
            return
        self._backend.flush()  # lifecycle records wait up to 50 ms in the ring: count the call's last execs
        rss = self._peak_rss(call.cgroup_id)
        watched = self._unwatch(call.cgroup_id)
        if watched is None:
            return
        summary["executables"] = list(watched.executables.paths)
        if watched.executables.omitted:
            summary["executables_omitted"] = watched.executables.omitted
        if watched.oom_killed:
            summary["oom_killed"] = True
        summary["actions"] = list(call.actions)  # the flush may have recorded an OOM action
        if summary.get("peak_memory_bytes") is None and rss is not None and rss.peak_bytes > 0:
            # Not memory.peak: resident pages of the call's processes (no page cache or kernel memory).
            summary["peak_memory_bytes"] = rss.peak_bytes
            summary["peak_memory_source"] = RSS_PEAK_SOURCE

    def _peak_rss(self, cgroup_id: int) -> CgroupRss | None:
        if not RSS_PROGRAMS & self._loaded:
            return None
        try:
            return self._backend.cgroup_rss(cgroup_id)
        except BpfMonitorError:
            return None

    # ---- events (bpf reader thread, or a flushing thread) ------------------------------------

    def _on_event(self, event: BpfEvent) -> None:
        with self._lock:
            watched = self._watched.get(event.cgroup_id)
        if watched is None:
            return  # a cgroup unwatched since the event was sent
        if isinstance(event, ProcessEvent):
            if event.kind == "exec" and event.filename:
                self._on_exec(watched, event)
        elif isinstance(event, SpikeEvent):
            self._on_spike(watched, event)
        elif isinstance(event, OomEvent):
            self._on_oom(watched, event)
        elif isinstance(event, ReclaimEvent):
            self._on_reclaim(watched, event)
        elif isinstance(event, ExecDigestEvent):
            self._deliver_exec(watched.sandbox, event.path, event.digest_hex)

    def _on_exec(self, watched: _Watched, event: ProcessEvent) -> None:
        assert event.filename is not None
        if watched.call is not None:
            watched.executables.add(event.filename)
        if EXEC_DIGEST_PROGRAM not in self._loaded:
            self._deliver_exec(watched.sandbox, event.filename, None)  # no LSM here: the path is all there is

    def _deliver_exec(self, sandbox: str, path: str, digest: str | None) -> None:
        sink = self.on_exec_digest
        if sink is None:
            return
        try:
            sink(sandbox, path, digest)
        except Exception:  # the integrity part's bug must not stop event delivery
            log.exception("on_exec_digest failed for %s in sandbox %s", path, sandbox)

    @staticmethod
    def _common_attributes(watched: _Watched, pid: int, comm: str) -> dict[str, str]:
        attributes = {"pid": str(pid), "comm": comm}
        if watched.call is not None:
            attributes["tool"] = watched.call.tool
        return attributes

    @staticmethod
    def _subject(watched: _Watched) -> str:
        call = watched.call
        return f"call {call.call_id} ({call.tool})" if call else f"sandbox {watched.sandbox}'s agent"

    def _on_spike(self, watched: _Watched, event: SpikeEvent) -> None:
        attributes = self._common_attributes(watched, event.pid, event.comm)
        attributes.update(bytes=str(event.bytes), threshold_bytes=str(event.threshold), source=event.source)
        self._bus.publish(
            "memory_spike",
            f"{self._subject(watched)}: {event.comm} (pid {event.pid}) took its processes' resident memory to "
            f"{_mib(event.bytes)}, past the spike threshold {_mib(event.threshold)} ({event.source})",
            sandbox=watched.sandbox, call_id=watched.call.call_id if watched.call else "",
            attributes=attributes, kernel_time_ns=event.ktime_ns)

    def _on_oom(self, watched: _Watched, event: OomEvent) -> None:
        watched.oom_killed = True
        attributes = self._common_attributes(watched, event.pid, event.comm)
        attributes["bytes"] = str(event.rss_bytes)
        detail = (f"the kernel's OOM killer killed {event.comm} (pid {event.pid}) of {self._subject(watched)} "
                  f"holding {_mib(event.rss_bytes)}")
        call = watched.call
        self._bus.publish("oom", detail, sandbox=watched.sandbox, call_id=call.call_id if call else "",
                          attributes=attributes, kernel_time_ns=event.ktime_ns)
        # Where the call has memory.events, the policy ladder records the kill from its oom_kill count;
        # elsewhere (no memory controller: a host-wide OOM) this event is the only record of it.
        if call is not None and not (call.path / "memory.events").exists():
            self._warden.record_action(call, "kernel_oom_kill", "oom", detail,
                                       "ask for more memory in the intent, or make the tool use less",
                                       dry_run=False)

    def _on_reclaim(self, watched: _Watched, event: ReclaimEvent) -> None:
        attributes = self._common_attributes(watched, event.pid, event.comm)
        attributes.update(reclaimed_pages=str(event.reclaimed_pages), duration_ns=str(event.duration_ns),
                          total_count=str(event.total_count), total_duration_ns=str(event.total_duration_ns))
        self._bus.publish(
            "reclaim",
            f"{self._subject(watched)}: memory-cgroup reclaim in {event.comm} (pid {event.pid}) took "
            f"{event.duration_ns / 1e6:.3f} ms for {event.reclaimed_pages} pages ({event.total_count} reclaims "
            f"so far)",
            sandbox=watched.sandbox, call_id=watched.call.call_id if watched.call else "",
            attributes=attributes, kernel_time_ns=event.ktime_ns)


def build_monitor(daemon: Daemon) -> Monitor | None:
    """The monitor part, unless `[bpf] enabled = false`."""
    if not daemon.config.bpf.enabled:
        return None
    return Monitor(daemon, functools.partial(default_backend, run_time_stats=daemon.config.bpf.run_time_stats,
                                             rss=daemon.config.bpf.rss))
