"""A fake powercap tree whose package counter follows this machine's real busy CPU time at a fixed wattage.

Ground truth for attribution: a process's energy is exactly `watts_per_busy_core` times its CPU time.
The counter wraps at `range_uj`, chosen small so that it wraps during a test. Shared by the host tests
and bench/power_attribution.py.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from hostwarden.power.cpu_time import parse_proc_stat_busy

_TICKS = os.sysconf("SC_CLK_TCK")


def node_busy_seconds() -> float:
    return parse_proc_stat_busy(Path("/proc/stat").read_text(), _TICKS)


class FakeRaplTree:
    def __init__(self, root: Path, watts_per_busy_core: float, range_uj: int, period_s: float = 0.002) -> None:
        self.root, self.watts, self.range_uj, self.period_s = root, watts_per_busy_core, range_uj, period_s
        self.zone = root / "intel-rapl:0"
        self.zone.mkdir(parents=True)
        (self.zone / "name").write_text("package-0\n")
        (self.zone / "max_energy_range_uj").write_text(f"{range_uj}\n")
        self.wraps = 0
        self._start_busy = node_busy_seconds()
        self._write(0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-rapl", daemon=True)

    def _write(self, energy_uj: int) -> None:
        staging = self.zone / ".energy_uj"
        staging.write_text(f"{energy_uj % self.range_uj}\n")
        staging.replace(self.zone / "energy_uj")  # readers never see a half-written number
        self.wraps = energy_uj // self.range_uj

    def _run(self) -> None:
        # Real-time priority for this thread alone (Linux schedules threads, not processes): on a loaded
        # machine an ordinary thread falls tens of ms behind, and a counter lagging the busy time it stands
        # for skews every attribution measured against it. Root has the right; without it, ordinary timing.
        with contextlib.suppress(PermissionError):
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
        while not self._stop.wait(self.period_s):
            self._write(int(self.watts * (node_busy_seconds() - self._start_busy) * 1e6))

    def __enter__(self) -> FakeRaplTree:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# Reports its CPU time once started, waits for "go", burns CPU for the given seconds, exits.
_BURNER = """
import sys, time
target = float(sys.argv[1])
print(time.process_time(), flush=True)
sys.stdin.readline()
start = time.process_time()
while time.process_time() - start < target:
    pass
"""


@dataclass
class Burner:
    process: subprocess.Popen[str]
    startup_cpu: float

    @classmethod
    def start(cls, cpu_seconds: float) -> Burner:
        process = subprocess.Popen([sys.executable, "-c", _BURNER, str(cpu_seconds)],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert process.stdout is not None
        return cls(process, float(process.stdout.readline()))

    def go_and_wait(self) -> float:
        """Let it burn; its CPU seconds after start-up (from wait4's rusage, independent of cgroups)."""
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()
        _, status, usage = os.wait4(self.process.pid, 0)
        self.process.returncode = os.waitstatus_to_exitcode(status)
        return usage.ru_utime + usage.ru_stime - self.startup_cpu


def make_cgroup(parent: Path, name: str) -> Path:
    path = parent / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def remove_cgroups(top: Path) -> None:
    for path in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        path.rmdir()
    top.rmdir()
