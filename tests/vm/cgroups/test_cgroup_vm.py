"""cgroup v2 enforcement for real: every controller, in the QEMU guest booted by tests/vm/run."""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from hostwarden.capabilities import find_cgroup2_mount
from hostwarden.cgroups.limits import Limits
from hostwarden.cgroups.notify import CgroupWatcher
from hostwarden.cgroups.root import discover_root
from hostwarden.cgroups.tree import CgroupTree
from hostwarden.cgroups.usage import read_usage
from tests.host.cgroups.cgroup_helpers import emptied_latencies_ms, start_in
from tests.support import require

MIB = 1 << 20
MOUNT = find_cgroup2_mount(Path("/proc/self/mountinfo").read_text())
# A toucher with a small footprint of its own: no site imports, one allocation written through.
TOUCH = "import sys, time; b = b'x' * (int(sys.argv[1]) << 20); time.sleep(float(sys.argv[2]))"


@pytest.fixture
def tree():
    require(MOUNT is not None, "a cgroup2 mount")
    offered = set((MOUNT / "cgroup.controllers").read_text().split())
    require({"memory", "cpu", "pids"} <= offered, f"memory, cpu and pids controllers (offered: {offered})")
    root = discover_root(str(MOUNT / f"hostwarden-vmtest-{os.getpid()}"), under_systemd=False)
    tree = CgroupTree(root)
    tree.create_sandbox("s")
    yield tree
    for sandbox in tree.scan():
        tree.delete_sandbox(sandbox.name, force=True)
    tree.fs.rmdir(root)


class MemoryEvents:
    """on_memory_event deliveries, waitable."""

    def __init__(self) -> None:
        self.totals: dict[str, int] = {}
        self.changed = threading.Condition()

    def __call__(self, _path: Path, increases: dict[str, int]) -> None:
        with self.changed:
            for key, value in increases.items():
                self.totals[key] = self.totals.get(key, 0) + value
            self.changed.notify_all()

    def wait_for(self, key: str, timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: self.totals.get(key, 0) > 0, timeout)


def _watching(events: MemoryEvents) -> CgroupWatcher:
    watcher = CgroupWatcher(lambda _path: None, events)
    watcher.start()
    return watcher


def test_every_limit_is_enforced(tree):
    limits = Limits(memory_high=48 * MIB, memory_max=64 * MIB, memory_low=MIB, memory_swap_max=0,
                    memory_oom_group=True, cpu_weight=50, cpu_max_quota_us=50_000, pids_max=32)
    call, outcomes = tree.create_call("s", "all", limits)
    assert [o.file for o in outcomes if not o.enforced] == []
    assert (call / "memory.max").read_text().strip() == str(64 * MIB)
    assert (call / "cpu.max").read_text().strip() == "50000 100000"


def test_oom_kills_the_call_and_the_agent_lives(tree):
    agent = start_in(tree, tree.root / "s" / "agent", "sleep", "120")
    call, _ = tree.create_call("s", "oom", Limits(memory_max=64 * MIB, memory_swap_max=0,
                                                  memory_oom_group=True))
    events = MemoryEvents()
    watcher = _watching(events)
    try:
        watcher.watch(call)
        hog = start_in(tree, call, "python3", "-S", "-c", TOUCH, "200", "0")
        assert hog.wait(timeout=120) == -signal.SIGKILL
        assert events.wait_for("oom_kill", 10), f"no oom_kill in memory.events: {events.totals}"
    finally:
        watcher.stop()
    assert read_usage(call).memory_events["oom_kill"] >= 1
    assert agent.poll() is None, "the agent's process died with the call"
    tree.remove(call)
    agent.kill()
    agent.wait()


def test_memory_high_throttling_shows_in_memory_events(tree):
    call, _ = tree.create_call("s", "high", Limits(memory_high=32 * MIB, memory_swap_max=0))
    events = MemoryEvents()
    watcher = _watching(events)
    try:
        watcher.watch(call)
        hog = start_in(tree, call, "python3", "-S", "-c", TOUCH, "64", "60")
        assert events.wait_for("high", 120), f"memory.high never reported: {events.totals}"
    finally:
        watcher.stop()
        tree.kill(call)
    hog.wait(timeout=30)
    assert read_usage(call).memory_events["high"] >= 1
    tree.remove(call)


def test_frozen_call_makes_no_progress_then_resumes(tree):
    call, _ = tree.create_call("s", "ticker", Limits())
    child = start_in(tree, call, "sh", "-c", "while :; do echo tick; sleep 0.05; done")
    out = child.stdout.fileno()
    try:
        assert select.select([out], [], [], 30)[0]
        tree.freeze(call, timeout=10)
        while select.select([out], [], [], 0.2)[0]:
            os.read(out, 65536)
        assert select.select([out], [], [], 1.0)[0] == [], "a frozen call made progress"
        tree.thaw(call, timeout=10)
        assert select.select([out], [], [], 30)[0], "no progress after thaw"
    finally:
        tree.kill(call)
        child.wait(timeout=30)
    tree.remove(call)


FORK_BOMB = """
import os, time
while True:
    try:
        os.fork()
    except OSError:
        time.sleep(0.01)
"""


def test_cgroup_kill_ends_a_fork_bomb_held_by_pids_max(tree):
    call, _ = tree.create_call("s", "bomb", Limits(pids_max=24))
    # Every process forks for ever and keeps trying when the limit refuses it (a shell bomb gives up and
    # collapses on "Cannot fork"), so the cgroup stays held at pids.max until it is killed.
    bomb = start_in(tree, call, sys.executable, "-c", FORK_BOMB)
    deadline = time.monotonic() + 60
    while read_usage(call).pids_current < 24 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert read_usage(call).pids_current == 24
    assert tree.fs.read_keyed(call / "pids.events")["max"] > 0  # forks were refused at the limit
    tree.kill(call)
    bomb.wait(timeout=30)
    assert tree.fs.wait_event(call, "populated", 0, timeout=10), "cgroup.kill left processes behind"
    # populated drops at each task's cgroup_exit(); pids.current only when the task is released (reaped), a
    # moment later: seen once at 1 right after populated 0.
    deadline = time.monotonic() + 10
    while read_usage(call).pids_current and time.monotonic() < deadline:
        time.sleep(0.01)
    assert read_usage(call).pids_current == 0
    tree.remove(call, timeout=10)
    assert not call.exists()


def test_memory_peak_of_a_100_mib_toucher(tree):
    call, _ = tree.create_call("s", "peak", Limits())
    # dd's buffer is the 100 MiB: reading /dev/zero into it writes every page; dd itself is ~1 MiB.
    toucher = start_in(tree, call, "dd", "if=/dev/zero", "of=/dev/null", "bs=100M", "count=1", "status=none")
    assert toucher.wait(timeout=120) == 0
    peak = read_usage(call).memory_peak
    print(f"memory.peak of a 100 MiB toucher: {peak / MIB:.1f} MiB")
    assert abs(peak - 100 * MIB) <= 10 * MIB
    tree.remove(call)


def test_emptied_notification_latency(tree):
    assert len(emptied_latencies_ms(tree, "s", 10)) == 10

