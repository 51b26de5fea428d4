"""RAPL energy through the perf `power` PMU: perf_event_open(2) via ctypes, one fd per package and event.

Used where the powercap tree is absent (e.g. some VMs and cloud hosts expose only the PMU). The kernel
extends the 32-bit RAPL registers to 64-bit perf counts, so there is no wrap to handle here. The event
encoding, scale and unit come from /sys/bus/event_source/devices/power/{type,format,events,cpumask}.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
from dataclasses import dataclass
from pathlib import Path

from hostwarden.power.types import EnergySourceKind, PowerError, SourceProbe, ZoneEnergy

DEFAULT_PMU_ROOT = Path("/sys/bus/event_source/devices/power")

_SYSCALL_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}
_PERF_FLAG_FD_CLOEXEC = 8
# energy-pkg and energy-ram add up to the node total; cores and gpu lie inside the package, psys holds it.
_COUNTED_EVENTS = ("pkg", "ram")


class _PerfEventAttr(ctypes.Structure):
    """struct perf_event_attr up to config2 (PERF_ATTR_SIZE_VER1, 72 bytes); the kernel accepts it."""

    _fields_ = (
        ("type", ctypes.c_uint32),
        ("size", ctypes.c_uint32),
        ("config", ctypes.c_uint64),
        ("sample_period", ctypes.c_uint64),
        ("sample_type", ctypes.c_uint64),
        ("read_format", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("wakeup_events", ctypes.c_uint32),
        ("bp_type", ctypes.c_uint32),
        ("config1", ctypes.c_uint64),
        ("config2", ctypes.c_uint64),
    )


@dataclass(frozen=True)
class PerfPowerEvent:
    name: str       # "energy-pkg"
    config: int     # perf_event_attr.config
    scale: float    # joules per count
    unit: str


def parse_cpumask(text: str) -> list[int]:
    """CPU list syntax ("0", "0,16", "0-1,4") -> CPU numbers."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        first, _, last = part.partition("-")
        try:
            cpus.extend(range(int(first), int(last or first) + 1))
        except ValueError as exc:
            raise PowerError(f"bad cpumask {text.strip()!r}") from exc
    return cpus


def _parse_bit_ranges(spec: str) -> list[tuple[int, int]]:
    """A format file's "config:0-7" (or "config:0-7,32-35") -> [(low, high)] bit ranges of attr.config."""
    field, _, ranges = spec.strip().partition(":")
    if field != "config":
        raise PowerError(f"format {spec!r} uses {field!r}; only 'config' fields are supported")
    bits: list[tuple[int, int]] = []
    for part in ranges.split(","):
        low, _, high = part.partition("-")
        bits.append((int(low), int(high or low)))
    return bits


def encode_event(terms: str, formats: dict[str, str]) -> int:
    """An event file's "event=0x02[,umask=..]" -> attr.config, placing each term per its format file."""
    config = 0
    for term in terms.strip().split(","):
        key, _, value = term.partition("=")
        if key not in formats:
            raise PowerError(f"event term {key!r} has no format file")
        remaining = int(value, 0) if value else 1
        for low, high in _parse_bit_ranges(formats[key]):
            width = high - low + 1
            config |= (remaining & ((1 << width) - 1)) << low
            remaining >>= width
    return config


def parse_events(pmu_root: Path) -> list[PerfPowerEvent]:
    """The energy-* events of the power PMU with their encoding, scale and unit."""
    format_dir = pmu_root / "format"
    formats = {f.name: f.read_text() for f in format_dir.iterdir()} if format_dir.is_dir() else {}
    events: list[PerfPowerEvent] = []
    for path in sorted((pmu_root / "events").glob("energy-*")):
        if "." in path.name:
            continue
        scale_file, unit_file = path.with_name(path.name + ".scale"), path.with_name(path.name + ".unit")
        try:
            scale = float(scale_file.read_text())
            unit = unit_file.read_text().strip()
        except (OSError, ValueError) as exc:
            raise PowerError(f"{path.name}: unreadable or bad .scale/.unit file ({exc})") from exc
        if unit != "Joules":
            raise PowerError(f"{path.name}: unit is {unit!r}, expected 'Joules'")
        events.append(PerfPowerEvent(path.name, encode_event(path.read_text(), formats), scale, unit))
    return events


def _zone_label(event: PerfPowerEvent, package: int) -> str:
    suffix = event.name.removeprefix("energy-")
    return f"package-{package}" if suffix == "pkg" else f"package-{package}/{suffix}"


class _Syscall:
    """perf_event_open(2) through libc's syscall(); there is no libc wrapper."""

    def __init__(self) -> None:
        number = _SYSCALL_PERF_EVENT_OPEN.get(platform.machine())
        if number is None:
            raise PowerError(f"perf_event_open syscall number unknown for {platform.machine()}")
        self._number = number
        self._libc = ctypes.CDLL(None, use_errno=True)

    def open(self, pmu_type: int, config: int, cpu: int) -> int:
        attr = _PerfEventAttr(type=pmu_type, size=ctypes.sizeof(_PerfEventAttr), config=config)
        fd = self._libc.syscall(self._number, ctypes.byref(attr), -1, cpu, -1, _PERF_FLAG_FD_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            hint = " (needs root or CAP_PERFMON, or kernel.perf_event_paranoid <= 0)" \
                if err in (errno.EACCES, errno.EPERM) else ""
            raise PowerError(f"perf_event_open(power, config={config:#x}, cpu={cpu}): "
                             f"{os.strerror(err)}{hint}")
        return fd


class PerfPowerSource:
    """Cumulative joules per package and energy event, counted by perf since the source opened."""

    name = "perf_power"
    kind: EnergySourceKind = "measured"
    idle_watts: float | None = None

    def __init__(self, pmu_type: int, events: list[PerfPowerEvent], cpus: list[int]) -> None:
        syscall = _Syscall()
        # (label, fd, scale, counted); the package index follows cpumask order (one CPU per package).
        self._counters: list[tuple[str, int, float, bool]] = []
        try:
            for package, cpu in enumerate(cpus):
                for event in events:
                    fd = syscall.open(pmu_type, event.config, cpu)
                    counted = event.name.removeprefix("energy-") in _COUNTED_EVENTS
                    self._counters.append((_zone_label(event, package), fd, event.scale, counted))
        except PowerError:
            self.close()
            raise
        self._start = {label: self._raw(fd) for label, fd, _, _ in self._counters}

    @staticmethod
    def _raw(fd: int) -> int:
        return struct.unpack("=Q", os.pread(fd, 8, 0))[0]

    def read(self) -> list[ZoneEnergy]:
        return [ZoneEnergy(label, (self._raw(fd) - self._start[label]) * scale, counted)
                for label, fd, scale, counted in self._counters]

    def close(self) -> None:
        for _, fd, _, _ in self._counters:
            os.close(fd)
        self._counters = []


def open_perf_power(pmu_root: Path = DEFAULT_PMU_ROOT) -> tuple[PerfPowerSource | None, SourceProbe]:
    if not pmu_root.is_dir():
        return None, SourceProbe("perf_power", False, f"no perf power PMU at {pmu_root}")
    try:
        pmu_type = int((pmu_root / "type").read_text())
        cpus = parse_cpumask((pmu_root / "cpumask").read_text())
        events = parse_events(pmu_root)
        if not events:
            return None, SourceProbe("perf_power", False, f"{pmu_root}/events has no energy-* event")
        source = PerfPowerSource(pmu_type, events, cpus)
    except (OSError, ValueError, PowerError) as exc:
        return None, SourceProbe("perf_power", False, f"perf power PMU at {pmu_root} unusable: {exc}")
    names = ", ".join(e.name for e in events)
    return source, SourceProbe("perf_power", True, f"PMU events {names} on CPUs {cpus} (one per package)")
