"""CPU time of the node (/proc/stat) and of cgroups (cpu.stat usage_usec), and which cgroup a pid is in."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from hostwarden.cgroups.cgroupfs import read_small_file
from hostwarden.power.types import PowerError

# /proc/stat "cpu" columns that are work done on this node's CPUs: user nice system irq softirq.
# idle and iowait are not work; steal is time another guest ran; guest time is already inside user.
_BUSY_COLUMNS = (0, 1, 2, 5, 6)


class CpuUsageReader(Protocol):
    """What the meter needs to know about CPU time; tests supply fakes."""

    def cpu_count(self) -> int: ...

    def node_busy_seconds(self) -> float: ...

    def cgroup_cpu_seconds(self, cgroup: Path) -> float: ...

    def cgroup_of_pid(self, pid: int) -> Path | None: ...


def parse_proc_stat_busy(text: str, ticks_per_second: int) -> float:
    """Busy CPU seconds of all CPUs together from /proc/stat text."""
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            values = [int(v) for v in fields[1:]]
            if len(values) < 7:
                raise PowerError(f"/proc/stat cpu line has {len(values)} columns, expected >= 7: {line!r}")
            return sum(values[i] for i in _BUSY_COLUMNS) / ticks_per_second
    raise PowerError("/proc/stat has no aggregate 'cpu' line")


def parse_cpu_stat_usage(text: str) -> float:
    """usage_usec of a cgroup v2 cpu.stat, in seconds (present even without the cpu controller)."""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            return int(value) / 1e6
    raise PowerError("cpu.stat has no usage_usec line (not a cgroup v2 cpu.stat)")


def parse_pid_cgroup(text: str) -> str | None:
    """The cgroup v2 path ("0::/a/b") from /proc/<pid>/cgroup text, relative to the cgroup2 mount."""
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:].strip()
    return None


BUSY_READING_REUSE_S = 0.001


class ProcCpuUsage:
    """CpuUsageReader over the real /proc and cgroup2 mount."""

    def __init__(self, cgroup_mount: Path, proc: Path = Path("/proc"),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._cgroup_mount = cgroup_mount
        self._clock = clock
        self._proc = proc
        self._ticks = os.sysconf("SC_CLK_TCK")
        self._cpus = os.cpu_count() or 1
        self._last_busy: tuple[float, float] = (-1.0, 0.0)  # (monotonic time read, busy seconds)

    def cpu_count(self) -> int:
        return self._cpus

    def node_busy_seconds(self) -> float:
        # /proc/stat advances in clock ticks (10 ms here): a reading less than a millisecond old is the same
        # figure, so the meter and the model source reading it for one sample share one read.
        now = self._clock()
        read_at, busy = self._last_busy
        if now - read_at < BUSY_READING_REUSE_S:
            return busy
        busy = parse_proc_stat_busy(read_small_file(self._proc / "stat"), self._ticks)
        self._last_busy = (now, busy)
        return busy

    def cgroup_cpu_seconds(self, cgroup: Path) -> float:
        try:
            return parse_cpu_stat_usage(read_small_file(cgroup / "cpu.stat"))
        except OSError as exc:
            raise PowerError(f"cannot read CPU time of cgroup {cgroup}: {exc.strerror}; it must be a cgroup "
                             "v2 directory that still exists (end a call's energy before removing its cgroup)"
                             ) from exc

    def cgroup_of_pid(self, pid: int) -> Path | None:
        try:
            relative = parse_pid_cgroup((self._proc / str(pid) / "cgroup").read_text())
        except OSError:
            return None  # the process exited; its GPU use stays unattributed
        if relative is None:
            return None
        return self._cgroup_mount / relative.lstrip("/")
