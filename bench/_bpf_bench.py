"""Shared by the bpf benchmarks: a scratch cgroup on the host's cgroup2 mount, and percentiles."""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

CGROUP2_ROOT = Path(os.environ.get("HOSTWARDEN_BENCH_CGROUP2", "/sys/fs/cgroup/unified"))


class ScratchCgroup:
    def __init__(self, name: str) -> None:
        self.path = CGROUP2_ROOT / f"hostwarden-bench-{name}-{os.getpid()}"
        self.path.mkdir()
        self.id = self.path.stat().st_ino

    def joiner(self) -> Callable[[], None]:
        procs = str(self.path / "cgroup.procs")

        def join() -> None:
            with open(procs, "w") as handle:
                handle.write(str(os.getpid()))

        return join

    def pids(self) -> list[int]:
        return [int(pid) for pid in (self.path / "cgroup.procs").read_text().split()]

    def remove(self) -> None:
        for pid in self.pids():
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.01)
        self.path.rmdir()


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]
