"""Reading a cgroup's resource use: memory, CPU, pids and pressure stall information (PSI)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hostwarden.cgroups.cgroupfs import CgroupFs, parse_keyed
from hostwarden.cgroups.errors import CgroupIOError

PSI_RESOURCES = ("cpu", "memory", "io")


@dataclass(frozen=True)
class PressureLine:
    """One `some`/`full` line of a *.pressure file: shares of time stalled (%) and total stall (us)."""

    avg10: float
    avg60: float
    avg300: float
    total_us: int


@dataclass(frozen=True)
class Pressure:
    some: PressureLine
    full: PressureLine | None


@dataclass(frozen=True)
class Usage:
    """A snapshot of one cgroup. A None field was unavailable; `unavailable` says why, keyed by field."""

    memory_current: int | None
    memory_peak: int | None
    memory_events: dict[str, int]
    memory_stat: dict[str, int]
    cpu_usage_usec: int | None
    cpu_user_usec: int | None
    cpu_system_usec: int | None
    pids_current: int | None
    psi: dict[str, Pressure | None]
    unavailable: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ProcessRss:
    """Summed resident memory of a cgroup's processes, for hosts without the memory controller."""

    bytes: int
    processes: int
    source: str


def parse_pressure(text: str) -> Pressure:
    lines: dict[str, PressureLine] = {}
    for line in text.splitlines():
        kind, *pairs = line.split()
        values = dict(pair.split("=", 1) for pair in pairs)
        lines[kind] = PressureLine(float(values["avg10"]), float(values["avg60"]), float(values["avg300"]),
                                   int(values["total"]))
    return Pressure(lines["some"], lines.get("full"))


def read_usage(path: Path, fs: CgroupFs | None = None, *, totals_only: bool = False) -> Usage:
    """Every usage figure of the cgroup at `path` that the kernel exposes there. `totals_only` reads just
    what a finished call's summary needs (memory.peak, memory.events, cpu.stat): the rest stays None."""
    fs = fs or CgroupFs()
    unavailable: dict[str, str] = {}

    def text(file: str, *fields: str) -> str | None:
        try:
            return fs.read(path / file)
        except CgroupIOError as error:
            why = f"{file} unreadable: {error.errno_name}" + (
                " (memory controller not enabled here)" if file.startswith("memory.") else "")
            for name in fields:
                unavailable[name] = why
            return None

    def number(file: str, name: str) -> int | None:
        raw = text(file, name)
        return int(raw) if raw is not None and raw.strip().isdigit() else None

    memory_events = text("memory.events", "memory_events")
    cpu = text("cpu.stat", "cpu_usage_usec", "cpu_user_usec", "cpu_system_usec")
    cpu_values = parse_keyed(cpu) if cpu is not None else {}
    memory_peak = number("memory.peak", "memory_peak")
    if totals_only:
        return Usage(memory_current=None, memory_peak=memory_peak,
                     memory_events=parse_keyed(memory_events) if memory_events else {}, memory_stat={},
                     cpu_usage_usec=cpu_values.get("usage_usec"), cpu_user_usec=cpu_values.get("user_usec"),
                     cpu_system_usec=cpu_values.get("system_usec"), pids_current=None, psi={},
                     unavailable=unavailable)
    memory_stat = text("memory.stat", "memory_stat")
    psi: dict[str, Pressure | None] = {}
    for resource in PSI_RESOURCES:
        raw = text(f"{resource}.pressure", f"psi.{resource}")
        psi[resource] = parse_pressure(raw) if raw else None
    return Usage(
        memory_current=number("memory.current", "memory_current"),
        memory_peak=memory_peak,
        memory_events=parse_keyed(memory_events) if memory_events else {},
        memory_stat=parse_keyed(memory_stat) if memory_stat else {},
        cpu_usage_usec=cpu_values.get("usage_usec"),
        cpu_user_usec=cpu_values.get("user_usec"),
        cpu_system_usec=cpu_values.get("system_usec"),
        pids_current=number("pids.current", "pids_current"),
        psi=psi,
        unavailable=unavailable,
    )


def process_rss(path: Path, fs: CgroupFs | None = None, proc: Path = Path("/proc")) -> ProcessRss:
    """VmRSS summed over the processes in `path` (this cgroup only, not its children).

    A stand-in for memory.current where the memory controller is missing: it misses page cache and
    kernel memory, and counts shared pages once per process.
    """
    fs = fs or CgroupFs()
    total = 0
    counted = 0
    for pid in fs.read_pids(path):
        try:
            status = (proc / str(pid) / "status").read_text()
        except OSError:
            continue  # exited since cgroup.procs was read
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
                counted += 1
                break
    return ProcessRss(total, counted, f"summed VmRSS of {counted} process(es) (no memory controller)")
