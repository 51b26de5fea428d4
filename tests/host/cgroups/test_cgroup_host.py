"""cgroupfs for real on this host's cgroup2 hierarchy (root required; controllers may be absent)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from hostwarden.capabilities import find_cgroup2_mount
from hostwarden.cgroups.errors import CgroupBusy, CgroupRootError
from hostwarden.cgroups.limits import Limits
from hostwarden.cgroups.notify import (
    UNPRIVILEGED_WINDOW_STEP_US,
    CgroupWatcher,
    PsiTrigger,
    has_cap_sys_resource,
)
from hostwarden.cgroups.root import discover_root
from hostwarden.cgroups.tree import CgroupTree
from hostwarden.cgroups.usage import process_rss, read_usage
from tests.host.cgroups.cgroup_helpers import emptied_latencies_ms, start_in
from tests.support import require

MOUNT = find_cgroup2_mount(Path("/proc/self/mountinfo").read_text())


@pytest.fixture
def tree():
    require(MOUNT is not None, "a cgroup2 mount")
    require(os.geteuid() == 0, "root (to create cgroups)")
    require((MOUNT / "cgroup.procs").exists(), f"cgroupfs at {MOUNT}")
    root = discover_root(str(MOUNT / f"hostwarden-test-{os.getpid()}"), under_systemd=False)
    tree = CgroupTree(root)
    yield tree
    for sandbox in tree.scan():
        tree.delete_sandbox(sandbox.name, force=True)
    tree.fs.rmdir(root)


def _cgroup_of(pid: int) -> str:
    return next(line[3:] for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines() if line.startswith("0::"))


def test_root_discovery_refuses_cgroup_v1_without_writing():
    v1 = Path("/sys/fs/cgroup/memory")
    require(v1.is_dir(), "a cgroup v1 memory hierarchy (hybrid host) to refuse")
    with pytest.raises(CgroupRootError, match="not cgroup2"):
        discover_root(str(v1 / "hostwarden-must-not-exist"), under_systemd=False)
    assert not (v1 / "hostwarden-must-not-exist").exists()


def test_call_lifecycle_with_a_real_process(tree):
    sandbox = tree.create_sandbox("s1")
    limits = Limits(memory_max=64 << 20, memory_high=48 << 20, memory_oom_group=True, cpu_weight=50,
                    cpu_max_quota_us=50_000, pids_max=32)
    call, outcomes = tree.create_call("s1", "c1", limits)
    offered = set((call / "cgroup.controllers").read_text().split())
    assert len(outcomes) == len(limits.files())
    for outcome in outcomes:
        controller = outcome.file.split(".")[0]
        assert outcome.enforced == (controller in offered), outcome
        if not outcome.enforced:
            print(f"unenforced here: {outcome.file}={outcome.value}: {outcome.reason}")
            assert controller in outcome.reason
    child = start_in(tree, call, "sleep", "30")
    try:
        assert _cgroup_of(child.pid) == "/" + str(call.relative_to(MOUNT))
        assert tree.pids(call) == [child.pid] and tree.populated(sandbox)
        assert tree.cgroup_id(call) == os.stat(call).st_ino
        usage = read_usage(call)
        assert usage.cpu_usage_usec is not None and usage.psi["cpu"] is not None
        if "memory" not in offered:
            assert usage.memory_current is None and "memory.current" in usage.unavailable["memory_current"]
            rss = process_rss(call)
            assert rss.processes == 1 and rss.bytes > 0
        states = CgroupTree(tree.root).scan()
        assert [(s.name, [(c.call_id, c.populated) for c in s.calls]) for s in states] == [("s1", [("c1", True)])]
        with pytest.raises(CgroupBusy, match=str(child.pid)):
            tree.remove(call, timeout=0.05)
    finally:
        tree.kill(call)
    assert child.wait(timeout=5) == -signal.SIGKILL
    tree.remove(call)
    assert not call.exists()


def test_freeze_stops_progress_and_thaw_resumes(tree):
    tree.create_sandbox("s1")
    call, _ = tree.create_call("s1", "ticker", Limits())
    child = start_in(tree, call, "sh", "-c", "while :; do echo tick; sleep 0.01; done")
    try:
        out = child.stdout.fileno()
        assert select.select([out], [], [], 5)[0]
        tree.freeze(call)
        assert tree.fs.read_keyed(call / "cgroup.events")["frozen"] == 1
        while select.select([out], [], [], 0.05)[0]:  # drain what was written before the freeze
            os.read(out, 65536)
        assert select.select([out], [], [], 0.3)[0] == [], "a frozen call made progress"
        tree.thaw(call)
        assert select.select([out], [], [], 5)[0], "no progress after thaw"
    finally:
        tree.kill(call)
        child.wait(timeout=5)
    tree.remove(call)


def test_kill_ends_every_process_of_a_forking_call(tree):
    tree.create_sandbox("s1")
    call, _ = tree.create_call("s1", "forks", Limits())
    child = start_in(tree, call, "sh", "-c", "for i in 1 2 3 4 5; do sleep 30 & done; wait")
    deadline = time.monotonic() + 5
    while len(tree.pids(call)) < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(tree.pids(call)) == 6
    tree.kill(call)
    assert child.wait(timeout=5) == -signal.SIGKILL
    tree.remove(call, timeout=2.0)
    assert not call.exists()


def test_delete_sandbox_refuses_then_forces(tree):
    sandbox = tree.create_sandbox("s1")
    agent = start_in(tree, sandbox / "agent", "sleep", "30")
    tree.create_call("s1", "idle", Limits())
    with pytest.raises(CgroupBusy, match="still runs 1 process"):
        tree.delete_sandbox("s1", force=False)
    tree.delete_sandbox("s1", force=True)
    assert agent.wait(timeout=5) == -signal.SIGKILL
    assert not sandbox.exists()


def test_adopt_moves_running_processes_into_agent(tree):
    existing = tree.root / "legacy"
    tree.fs.mkdir(existing)
    child = subprocess.Popen(["sleep", "30"])
    try:
        tree.attach(existing, child.pid)
        tree.adopt_sandbox("legacy", existing)
        assert tree.pids(existing / "agent") == [child.pid]
        assert tree.scan()[0].agent_path == existing / "agent"
    finally:
        child.kill()
        child.wait()


def test_reaper_removes_only_empty_calls(tree):
    tree.create_sandbox("s1")
    done, _ = tree.create_call("s1", "done", Limits())
    running, _ = tree.create_call("s1", "running", Limits())
    child = start_in(tree, running, "sleep", "30")
    try:
        assert tree.reap_empty_calls() == [done]
        assert running.exists()
    finally:
        tree.kill(running)
        child.wait()


def test_emptied_notification_latency(tree):
    tree.create_sandbox("s1")
    assert len(emptied_latencies_ms(tree, "s1", 20)) == 20


def test_psi_trigger_fires_under_cpu_contention(tree):
    tree.create_sandbox("s1")
    call, _ = tree.create_call("s1", "hogs", Limits())
    fired = threading.Event()
    watcher = CgroupWatcher(lambda path: None)
    watcher.start()
    # Without CAP_SYS_RESOURCE (as in this host's sandbox) the kernel takes only 2 s multiples.
    window_us = 500_000 if has_cap_sys_resource() else UNPRIVILEGED_WINDOW_STEP_US
    trigger = PsiTrigger(call / "cpu.pressure", "some", 50_000, window_us)
    watcher.add_trigger(trigger, lambda _trigger: fired.set())
    hogs = [start_in(tree, call, "sh", "-c", "while :; do :; done") for _ in range(os.cpu_count() + 2)]
    try:
        assert fired.wait(3 * window_us / 1e6), "no PSI event with more busy processes than CPUs"
    finally:
        tree.kill(call)
        for hog in hogs:
            hog.wait()
        watcher.remove_trigger(trigger)
        trigger.close()
        watcher.stop()
    tree.remove(call)
