"""Shared by the bpf benchmarks: a scratch cgroup on the host's cgroup2 mount, and percentiles."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
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


class DaemonUnderTest:
    """A real `hostwarden daemon` process with its own socket, state and cgroup root below CGROUP2_ROOT."""

    def __init__(self, name: str) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix=f"hostwarden-bench-{name}-"))
        self.socket = str(self.workdir / "hw.sock")
        self.cgroup_root = CGROUP2_ROOT / f"hostwarden-bench-{name}-{os.getpid()}"
        self.log = self.workdir / "daemon.log"
        config = self.workdir / "hostwarden.toml"
        config.write_text(f'[daemon]\nsocket = "{self.socket}"\nstate_dir = "{self.workdir / "state"}"\n'
                          f'cgroup_root = "{self.cgroup_root}"\npolicy = "{self.workdir / "policy.toml"}"\n'
                          '[metrics]\naddress = ""\n')
        self.process = subprocess.Popen([sys.executable, "-m", "hostwarden", "daemon", "--config", str(config)],
                                        stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not os.path.exists(self.socket) or "serving on" not in self.log.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"daemon did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        for directory in sorted((p for p in [self.cgroup_root, *self.cgroup_root.rglob("*")] if p.is_dir()),
                                key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                directory.rmdir()
        shutil.rmtree(self.workdir, ignore_errors=True)
