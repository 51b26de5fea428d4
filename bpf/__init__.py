"""eBPF programs (bcc) and their loader: the only code that touches bcc.

Importing this package does not import bcc (that takes seconds); BpfMonitor.start() does.
"""

from hostwarden.bpf.events import (
    BpfEvent,
    EventKind,
    ExecDigestEvent,
    OomEvent,
    ProcessEvent,
    ReclaimEvent,
    SpikeEvent,
)
from hostwarden.bpf.executables import ExecutableList
from hostwarden.bpf.monitor import (
    BpfMonitor,
    BpfMonitorError,
    CgroupRss,
    ProgramStats,
    ProgramStatus,
    ReclaimTotals,
)
from hostwarden.bpf.thresholds import spike_threshold

__all__ = [
    "BpfEvent",
    "BpfMonitor",
    "BpfMonitorError",
    "CgroupRss",
    "EventKind",
    "ExecDigestEvent",
    "ExecutableList",
    "OomEvent",
    "ProcessEvent",
    "ProgramStats",
    "ProgramStatus",
    "ReclaimEvent",
    "ReclaimTotals",
    "SpikeEvent",
    "spike_threshold",
]
