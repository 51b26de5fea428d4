"""Which eBPF programs hostwarden runs, where each attaches, and the C sources they come from."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from importlib import resources

from hostwarden.bpf.events import EventKind

# Compiled ahead of the program units, in this order: shared maps and helpers, then RSS accounting (which
# the lifecycle unit's exit program uses too).
COMMON_UNIT = "common"
RSS_UNIT = "rss"
LIBRARY_UNITS = (COMMON_UNIT, RSS_UNIT)


class RssSource(Enum):
    """How the kernel programs learn an mm's RSS: only one memory program set is attached (rss.bpf.c)."""

    SAMPLED = "sampled"  # read the counters at context switches and timer interrupts (needs BTF)
    EVERY_CHANGE = "every_change"  # kmem:rss_stat, once per counter change


@dataclass(frozen=True)
class Tracepoint:
    category: str
    event: str

    @property
    def function(self) -> str:
        """The name bcc's TRACEPOINT_PROBE(category, event) gives the function."""
        return f"tracepoint__{self.category}__{self.event}"

    def __str__(self) -> str:
        return f"tracepoint {self.category}:{self.event}"


@dataclass(frozen=True)
class RawTracepoint:
    """Raw tracepoints, all running the one program `function` (a plain C function of that name taking
    `struct bpf_raw_tracepoint_args *`): the program gets the kernel's arguments, and no trace record is filled.

    `tracepoints` are the regular tracepoints of the same events (their existence is checked in tracefs).
    """

    function: str
    tracepoints: tuple[Tracepoint, ...]

    def __str__(self) -> str:
        return f"raw tracepoint{'s' if len(self.tracepoints) > 1 else ''} " + ", ".join(
            tracepoint.event for tracepoint in self.tracepoints)


@dataclass(frozen=True)
class SleepableLsm:
    hook: str

    @property
    def function(self) -> str:
        """The name bcc's LSM_PROBE(hook, ...) gives the function."""
        return f"lsm__{self.hook}"

    def __str__(self) -> str:
        return f"sleepable BPF LSM hook {self.hook}"


@dataclass(frozen=True)
class ProgramSpec:
    """One BPF program: its report name, the source unit defining it, and where it attaches.

    `event_kinds` are the events it sends (their ring-buffer losses are charged to it). `without_layout`:
    what its events lack where the kernel's struct layout is unknown (no BTF). `rss_source`: a memory program,
    attached only where RSS is learnt that way.
    """

    name: str
    unit: str
    attach: Tracepoint | RawTracepoint | SleepableLsm
    event_kinds: tuple[EventKind, ...] = ()
    without_layout: str = ""
    rss_source: RssSource | None = None


DEFAULT_PROGRAMS: tuple[ProgramSpec, ...] = (
    ProgramSpec("process_fork", "lifecycle", Tracepoint("task", "task_newtask"), (EventKind.FORK,)),
    ProgramSpec("process_exec", "lifecycle", Tracepoint("sched", "sched_process_exec"), (EventKind.EXEC,)),
    ProgramSpec("process_exit", "lifecycle", Tracepoint("sched", "sched_process_exit"), (EventKind.EXIT,),
                without_layout="exit status"),
    # Spikes found at exits are sent through the same ring buffer: their losses count here.
    ProgramSpec("rss_sample", "memory", RawTracepoint("rss_sample", (
        Tracepoint("sched", "sched_switch"), Tracepoint("timer", "hrtimer_expire_entry"))), (EventKind.SPIKE,),
                rss_source=RssSource.SAMPLED),
    ProgramSpec("rss_stat", "memory", Tracepoint("kmem", "rss_stat"), (EventKind.SPIKE,),
                rss_source=RssSource.EVERY_CHANGE),
    ProgramSpec("oom_victim", "oom", Tracepoint("oom", "mark_victim"), (EventKind.OOM,)),
    ProgramSpec("memcg_reclaim_begin", "reclaim", Tracepoint("vmscan", "mm_vmscan_memcg_reclaim_begin")),
    ProgramSpec("memcg_reclaim_end", "reclaim", Tracepoint("vmscan", "mm_vmscan_memcg_reclaim_end"),
                (EventKind.RECLAIM,)),
    ProgramSpec("exec_digest", "exec_digest", SleepableLsm("bprm_check_security"), (EventKind.EXEC_DIGEST,)),
)


def packaged_unit(unit: str) -> str:
    """The C source of a unit shipped in this package (bpf/<unit>.bpf.c)."""
    return resources.files("hostwarden.bpf").joinpath(f"{unit}.bpf.c").read_text(encoding="utf-8")


def compose_source(units: dict[str, str], names: list[str]) -> str:
    """The library units followed by the named units: the text one bcc module compiles."""
    return "\n".join(f"/* unit: {name} */\n{units[name]}" for name in [*LIBRARY_UNITS, *names])
