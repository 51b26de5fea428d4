"""Prometheus metrics, prefix hostwarden_. Bounded labels only: never a call id; tool names normalised and
capped; per-sandbox series are read from live state at scrape time, so a deleted sandbox's series vanish.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hostwarden import __version__

MAX_TOOL_LABELS = 64
_TOOL_CHARS = re.compile(r"[^a-z0-9_]+")

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
MEMORY_BUCKETS = tuple(float(2**p) for p in range(20, 37, 2))  # 1 MiB .. 64 GiB
CPU_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300, 1800)


class ToolNames:
    """Maps free-text tool names to at most MAX_TOOL_LABELS label values; later newcomers become `other`."""

    def __init__(self, cap: int = MAX_TOOL_LABELS) -> None:
        self._cap = cap
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def label(self, tool: str) -> str:
        name = _TOOL_CHARS.sub("_", tool.lower()).strip("_")[:32] or "unknown"
        with self._lock:
            if name in self._seen:
                return name
            if len(self._seen) < self._cap:
                self._seen.add(name)
                return name
        return "other"


def call_outcome(summary: dict[str, Any]) -> str:
    if summary.get("oom_killed"):
        return "oom_killed"
    if summary.get("end_reason") in ("timeout", "killed", "recovered"):
        return str(summary["end_reason"])
    code = summary.get("exit_code")
    if code is None:
        return "unknown"
    return "success" if code == 0 else "failure"


class StateCollector(Collector):
    """Gauges read from the daemon's live state at scrape time."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        state = self._snapshot()
        info = GaugeMetricFamily("hostwarden_build_info", "hostwarden build", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        yield GaugeMetricFamily("hostwarden_sandboxes", "Sandboxes the daemon manages", value=state["sandboxes"])
        yield GaugeMetricFamily("hostwarden_running_tool_calls", "Tool calls running now",
                                value=state["running_calls"])
        memory = GaugeMetricFamily("hostwarden_sandbox_memory_bytes",
                                   "Memory in use by the sandbox's cgroup (memory.current)", labels=["sandbox"])
        cpu = CounterMetricFamily("hostwarden_sandbox_cpu_seconds", "CPU time of the sandbox's cgroup (cpu.stat)",
                                  labels=["sandbox"])
        for name, usage in state["sandbox_usage"].items():
            if usage.get("memory_bytes") is not None:
                memory.add_metric([name], usage["memory_bytes"])
            if usage.get("cpu_seconds") is not None:
                cpu.add_metric([name], usage["cpu_seconds"])
        yield memory
        yield cpu
        yield CounterMetricFamily("hostwarden_events_dropped", "Events dropped because a subscriber read too slowly",
                                  value=state["events_dropped"])


class Metrics:
    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry()
        self.tools = ToolNames()
        self.calls_total = Counter("hostwarden_tool_calls", "Tool calls finished", ["tool", "outcome"],
                                   registry=self.registry)
        self.duration = Histogram("hostwarden_tool_call_duration_seconds", "Tool call duration", ["tool"],
                                  buckets=DURATION_BUCKETS, registry=self.registry)
        self.peak_memory = Histogram("hostwarden_tool_call_peak_memory_bytes",
                                     "Tool call peak memory (memory.peak; summed process RSS where the host has no "
                                     "memory controller)", ["tool"], buckets=MEMORY_BUCKETS, registry=self.registry)
        self.cpu = Histogram("hostwarden_tool_call_cpu_seconds", "Tool call CPU time", ["tool"],
                             buckets=CPU_BUCKETS, registry=self.registry)
        self.actions = Counter("hostwarden_enforcement_actions", "Enforcement actions taken (or dry-run)",
                               ["action", "reason"], registry=self.registry)
        self.registry.register(StateCollector(snapshot))

    def register(self, collector: Collector) -> None:
        self.registry.register(collector)

    def call_finished(self, summary: dict[str, Any]) -> None:
        tool = self.tools.label(str(summary.get("tool", "")))
        self.calls_total.labels(tool, call_outcome(summary)).inc()
        if summary.get("duration_seconds") is not None:
            self.duration.labels(tool).observe(summary["duration_seconds"])
        if summary.get("peak_memory_bytes") is not None:
            self.peak_memory.labels(tool).observe(summary["peak_memory_bytes"])
        if summary.get("cpu_seconds") is not None:
            self.cpu.labels(tool).observe(summary["cpu_seconds"])

    def action(self, kind: str, reason: str) -> None:
        self.actions.labels(kind, reason).inc()
