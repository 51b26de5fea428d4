"""Which eBPF programs hostwarden runs, where each attaches, and the C sources they come from."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from hostwarden.bpf.events import EventKind

COMMON_UNIT = "common"


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
    """A raw tracepoint: the program gets the kernel's arguments, and no trace record is filled for it.

    Its program reads kernel structs at offsets from the running kernel's BTF (btf.py); where BTF lacks
    them the unit is compiled for, and attached to, the regular `tracepoint` instead.
    """

    tracepoint: Tracepoint

    @property
    def function(self) -> str:
        """The name bcc's RAW_TRACEPOINT_PROBE(event) gives the function."""
        return f"raw_tracepoint__{self.tracepoint.event}"

    def __str__(self) -> str:
        return f"raw tracepoint {self.tracepoint.event}"


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
    what its events lack where the kernel's struct layout is unknown (no BTF).
    """

    name: str
    unit: str
    attach: Tracepoint | RawTracepoint | SleepableLsm
    event_kinds: tuple[EventKind, ...] = ()
    without_layout: str = ""


DEFAULT_PROGRAMS: tuple[ProgramSpec, ...] = (
    ProgramSpec("process_fork", "lifecycle", Tracepoint("task", "task_newtask"), (EventKind.FORK,)),
    ProgramSpec("process_exec", "lifecycle", Tracepoint("sched", "sched_process_exec"), (EventKind.EXEC,)),
    ProgramSpec("process_exit", "lifecycle", Tracepoint("sched", "sched_process_exit"), (EventKind.EXIT,),
                without_layout="exit status"),
    ProgramSpec("rss_stat", "memory", RawTracepoint(Tracepoint("kmem", "rss_stat")), (EventKind.SPIKE,)),
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
    """The common definitions followed by the named units: the text one bcc module compiles."""
    parts = [f"/* unit: {COMMON_UNIT} */\n{units[COMMON_UNIT]}"]
    parts += [f"/* unit: {name} */\n{units[name]}" for name in names]
    return "\n".join(parts)
