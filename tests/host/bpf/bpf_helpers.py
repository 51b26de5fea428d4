"""Helpers for the bpf host tier: an event log to wait on, and cgroups made under our own directory
of the host's cgroup2 mount (never a v1 hierarchy)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from hostwarden.bpf import BpfEvent
from tests.support import require

CGROUP2_ROOT = Path(os.environ.get("HOSTWARDEN_TEST_CGROUP2", "/sys/fs/cgroup/unified"))


class EventLog:
    """Events delivered by a monitor, with waiting for the ones a test expects."""

    def __init__(self) -> None:
        self._events: list[BpfEvent] = []
        self._changed = threading.Condition()

    def __call__(self, event: BpfEvent) -> None:
        with self._changed:
            self._events.append(event)
            self._changed.notify_all()

    def for_cgroup(self, cgroup_id: int) -> list[BpfEvent]:
        with self._changed:
            return [event for event in self._events if event.cgroup_id == cgroup_id]

    def wait_for(self, predicate: Callable[[list[BpfEvent]], bool], cgroup_id: int,
                 timeout: float = 5.0) -> list[BpfEvent]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                matching = [event for event in self._events if event.cgroup_id == cgroup_id]
                if predicate(matching):
                    return matching
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return matching
                self._changed.wait(remaining)


def require_bcc_host() -> None:
    require(os.geteuid() == 0, "root (loading BPF programs)")
    require(importlib.util.find_spec("bcc") is not None, "python3-bpfcc (bcc) importable")
    require((CGROUP2_ROOT / "cgroup.procs").exists(), f"a cgroup2 mount at {CGROUP2_ROOT}")


class BpfTestCgroups:
    """Creates cgroups below one directory of this test session; kills and removes them at the end."""

    def __init__(self) -> None:
        self.root = CGROUP2_ROOT / f"hostwarden-test-bpf-{os.getpid()}"
        self.root.mkdir(exist_ok=True)
        self.made: list[Path] = []

    def make(self, name: str) -> tuple[Path, int]:
        path = self.root / name
        path.mkdir()
        self.made.append(path)
        return path, path.stat().st_ino

    def remove_all(self) -> None:
        for path in self.made:
            for pid in (path / "cgroup.procs").read_text().split():
                os.kill(int(pid), signal.SIGKILL)
            deadline = time.monotonic() + 5
            while (path / "cgroup.procs").read_text().strip() and time.monotonic() < deadline:
                time.sleep(0.01)
            path.rmdir()
        self.root.rmdir()


def join_cgroup(path: Path) -> Callable[[], None]:
    """A preexec_fn that moves the child into `path` before it execs anything."""
    procs = str(path / "cgroup.procs")

    def join() -> None:
        with open(procs, "w") as handle:
            handle.write(str(os.getpid()))

    return join


SHELL = shutil.which("sh") or "/bin/sh"
