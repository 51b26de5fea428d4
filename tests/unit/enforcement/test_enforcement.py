"""The enforcement part inside an in-process daemon on a fake cgroupfs: the ladder's decisions are carried
out on the call cgroups (or only reported in dry-run) and every one lands in the ledger, the event stream
and the metrics. The fake kernel is driven by writing memory.current, memory.events and memory.pressure."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hostwarden.app import Daemon
from hostwarden.enforcement import Enforcer, read_host_memory
from hostwarden.policy.resolve import Intent
from hostwarden.policy.schema import Priority
from hostwarden.service import ADMIN, RunningCall
from tests.unit.cgroups.fakefs import FakeCgroupFs
from tests.unit.daemon.conftest import make_daemon

MiB = 2**20
FAST_LADDER = """
[ladder]
freeze_after = "1s"
thaw_after = "1s"
post_action_delay = "1s"
kill_stall_after = "1s"
kill_frozen_after = "30s"
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def wait_for(condition: Callable[[], object], what: str, timeout: float = 15.0) -> None:
    """Polls until `condition` holds; the generous timeout only matters on a loaded machine or a failure."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def enforcer_of(daemon: Daemon) -> Enforcer:
    return next(part for part in daemon.parts if isinstance(part, Enforcer))


def started(tmp_path: Path, policy: str, clock: Clock) -> Daemon:
    daemon = make_daemon(tmp_path, policy=policy)
    enforcer = enforcer_of(daemon)
    enforcer.clock, enforcer.tick_s = clock, 0.01
    daemon.start()
    return daemon


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fast(tmp_path: Path, clock: Clock) -> Iterator[Daemon]:
    daemon = started(tmp_path, FAST_LADDER, clock)
    yield daemon
    daemon.shutdown()


def begin(daemon: Daemon, sandbox: str, priority: str, pid: int = 0, memory: int = 512 * MiB) -> RunningCall:
    if sandbox not in daemon.warden.sandboxes:
        daemon.warden.create_sandbox(ADMIN, sandbox, {}, priority)
    return daemon.warden.begin_call(ADMIN, sandbox, "pytest", Intent(memory_max=memory,
                                                                      priority=Priority(priority)), "", pid)


def set_file(call: RunningCall, name: str, text: str) -> None:
    (call.path / name).write_text(text)


def pressure(some: float, full: float = 0.0) -> str:
    return (f"some avg10={some:.2f} avg60=0.00 avg300=0.00 total=0\n"
            f"full avg10={full:.2f} avg60=0.00 avg300=0.00 total=0\n")


def actions(daemon: Daemon, call: RunningCall) -> list[tuple[str, str, bool]]:
    return [(a["kind"], a["reason"], a["dry_run"]) for a in daemon.ledger.actions(call.call_id)]


def squeeze_host(daemon: Daemon, budget: int, used: int) -> None:
    """The daemon root gets a memory.max below the machine's memory: that is the host the ladder sees."""
    (daemon.root / "memory.max").write_text(f"{budget}\n")
    (daemon.root / "memory.current").write_text(f"{used}\n")


def fs_writes(daemon: Daemon, file: Path) -> int:
    fs = daemon.tree.fs
    assert isinstance(fs, FakeCgroupFs)
    return sum(1 for path, _ in fs.writes if path == file)


def action_count(daemon: Daemon, action: str, reason: str) -> float:
    value = daemon.metrics.registry.get_sample_value("hostwarden_enforcement_actions_total",
                                                     {"action": action, "reason": reason})
    return value or 0.0


def test_host_short_throttles_the_low_priority_call_and_records_it_everywhere(fast: Daemon) -> None:
    subscription = fast.bus.subscribe(kinds=["action"])
    high, low = begin(fast, "web", "high"), begin(fast, "batch", "low")
    set_file(low, "memory.current", f"{400 * MiB}\n")
    set_file(high, "memory.current", f"{300 * MiB}\n")
    squeeze_host(fast, 1024 * MiB, 1000 * MiB)

    wait_for(lambda: actions(fast, low), "a throttle of the low-priority call")
    assert actions(fast, low) == [("throttle", "host_memory_short", False)]
    assert int((low.path / "memory.high").read_text()) == int(400 * MiB * 0.9)
    assert actions(fast, high) == []  # the highest class present is never throttled
    event = subscription.get(timeout=1)
    assert event is not None and event.call_id == low.call_id
    assert event.attributes["reason"] == "host_memory_short" and event.attributes["dry_run"] == "false"
    assert "fewer workers" in event.attributes["hint"]
    assert action_count(fast, "throttle", "host_memory_short") == 1
    assert fast.metrics.registry.get_sample_value("hostwarden_enforcement_throttled_calls") == 1


def test_dry_run_records_the_decision_and_leaves_the_cgroup_alone(tmp_path: Path, clock: Clock) -> None:
    daemon = started(tmp_path, "dry_run = true\n" + FAST_LADDER, clock)
    try:
        begin(daemon, "web", "high")
        low = begin(daemon, "batch", "low")
        granted_high = (low.path / "memory.high").read_text()
        set_file(low, "memory.current", f"{400 * MiB}\n")
        squeeze_host(daemon, 1024 * MiB, 1000 * MiB)
        wait_for(lambda: actions(daemon, low), "a dry-run throttle")
        assert actions(daemon, low) == [("throttle", "host_memory_short", True)]
        assert (low.path / "memory.high").read_text() == granted_high
        assert fs_writes(daemon, low.path / "memory.high") == 1  # the grant at BeginToolCall, nothing since
    finally:
        daemon.shutdown()


def test_pressure_on_a_high_call_freezes_the_low_one_and_thaws_it_once_calm(fast: Daemon, clock: Clock) -> None:
    high, low = begin(fast, "web", "high"), begin(fast, "batch", "low")
    set_file(high, "memory.pressure", pressure(30))
    wait_for(lambda: fast.ledger.counts()["actions"] == 0 and enforcer_of(fast).state.pressure_since,
             "the pressure timer to start")
    clock.now += 1.5
    wait_for(lambda: actions(fast, low), "a freeze")
    assert actions(fast, low) == [("freeze", "higher_priority_pressure", False)]
    assert fast.tree.fs.read_keyed(low.path / "cgroup.events")["frozen"] == 1

    set_file(high, "memory.pressure", pressure(0))
    wait_for(lambda: enforcer_of(fast).state.calm_since, "the calm timer to start")
    clock.now += 1.5
    wait_for(lambda: len(actions(fast, low)) == 2, "a thaw")
    assert actions(fast, low)[1] == ("thaw", "pressure_subsided", False)
    assert fast.tree.fs.read_keyed(low.path / "cgroup.events")["frozen"] == 0


def test_a_call_stalled_at_its_memory_max_is_killed_once(fast: Daemon, clock: Clock) -> None:
    call = begin(fast, "ci", "normal")
    set_file(call, "memory.pressure", pressure(90, full=80))
    set_file(call, "memory.events", "low 0\nhigh 5\nmax 3\noom 0\noom_kill 0\n")
    wait_for(lambda: enforcer_of(fast).state.stall_since, "the stall timer to start")
    set_file(call, "memory.events", "low 0\nhigh 9\nmax 7\noom 0\noom_kill 0\n")
    clock.now += 1.5
    wait_for(lambda: ("kill", "stalled_at_memory_max", False) in actions(fast, call), "a kill")
    clock.now += 5
    time.sleep(0.1)
    assert fs_writes(fast, call.path / "cgroup.kill") == 1
    assert [a[0] for a in actions(fast, call)].count("kill") == 1
    assert [a[1] for a in actions(fast, call)].count("kernel_throttled") == 1


def test_high_priority_protection_is_set_on_the_sandbox_and_its_calls_dir(fast: Daemon) -> None:
    first = begin(fast, "web", "high", memory=400 * MiB)
    second = begin(fast, "web", "high", memory=200 * MiB)
    low = begin(fast, "batch", "low")
    sandbox = fast.warden.sandboxes["web"].path
    assert first.limits.memory_low and second.limits.memory_low and not low.limits.memory_low
    protection = first.limits.memory_low + second.limits.memory_low

    def low_of(path: Path) -> int:
        text = (path / "memory.low").read_text()  # the fake writes non-atomically: "" means mid-write
        return int(text) if text.strip() else -1

    wait_for(lambda: low_of(sandbox) == protection and low_of(sandbox / "calls") == protection, "protection")
    assert low_of(fast.warden.sandboxes["batch"].path) == 0
    fast.warden.end_call(ADMIN, first.call_id, 0)
    wait_for(lambda: low_of(sandbox) == second.limits.memory_low and low_of(sandbox / "calls")
             == second.limits.memory_low, "protection of the remaining call only")


def test_after_a_restart_the_ladder_thaws_the_call_it_had_frozen(tmp_path: Path, clock: Clock) -> None:
    sleepers = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    try:
        daemon = started(tmp_path, FAST_LADDER, clock)
        high = begin(daemon, "web", "high", pid=sleepers[0].pid)
        low = begin(daemon, "batch", "low", pid=sleepers[1].pid)
        set_file(high, "memory.pressure", pressure(30))
        wait_for(lambda: enforcer_of(daemon).state.pressure_since, "the pressure timer to start")
        clock.now += 1.5
        wait_for(lambda: actions(daemon, low), "a freeze")
        daemon.shutdown()

        fs = daemon.tree.fs
        assert isinstance(fs, FakeCgroupFs) and fs.read_keyed(low.path / "cgroup.events")["frozen"] == 1
        set_file(high, "memory.pressure", pressure(0))
        restarted = started(tmp_path, FAST_LADDER, clock)
        try:
            wait_for(lambda: low.call_id in enforcer_of(restarted).state.frozen_at, "the freeze to be adopted")
            wait_for(lambda: enforcer_of(restarted).state.calm_since, "the calm timer to start")
            clock.now += 1.5
            wait_for(lambda: len(actions(restarted, low)) == 2, "a thaw after the restart")
            assert actions(restarted, low)[1][:2] == ("thaw", "pressure_subsided")
        finally:
            restarted.shutdown()
    finally:
        for sleeper in sleepers:
            sleeper.kill()
            sleeper.wait()


def test_a_call_frozen_by_someone_else_is_not_adopted_after_restart(tmp_path: Path, clock: Clock) -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        daemon = started(tmp_path, FAST_LADDER, clock)
        call = begin(daemon, "batch", "low", pid=sleeper.pid)
        daemon.shutdown()
        daemon.tree.freeze(call.path)  # e.g. an integrity verdict: not the ladder's to thaw
        restarted = started(tmp_path, FAST_LADDER, clock)
        try:
            wait_for(lambda: enforcer_of(restarted).rounds >= 3, "a few rounds")
            assert call.call_id not in enforcer_of(restarted).state.frozen_at
        finally:
            restarted.shutdown()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_host_memory_is_the_tightest_memory_max_above_the_root(tmp_path: Path) -> None:
    fs = FakeCgroupFs(tmp_path / "cgroup" / "slice" / "hostwarden")
    proc = tmp_path / "proc"
    (proc / "pressure").mkdir(parents=True)
    (proc / "meminfo").write_text("MemTotal:       16000000 kB\nMemFree:  1000 kB\nMemAvailable:   8000000 kB\n")
    (proc / "pressure" / "memory").write_text(pressure(4, 1))
    mount = tmp_path / "cgroup"
    whole = read_host_memory(fs, fs.root, mount, proc)
    assert (whole.total, whole.available, whole.psi_some_avg10, whole.source) == (
        16000000 * 1024, 8000000 * 1024, 4.0, "/proc/meminfo")

    slice_ = fs.root.parent
    for name, text in (("memory.max", f"{2**30}\n"), ("memory.current", f"{900 * MiB}\n"),
                       ("memory.pressure", pressure(12, 3))):
        (slice_ / name).write_text(text)
    (fs.root / "memory.max").write_text(f"{4 * 2**30}\n")
    budget = read_host_memory(fs, fs.root, mount, proc)
    assert (budget.total, budget.available, budget.psi_some_avg10, budget.psi_full_avg10) == (
        2**30, 124 * MiB, 12.0, 3.0)
    assert budget.source == f"memory.max of {slice_}"


def test_processes_of_low_and_high_calls_get_oom_score_adjustments(tmp_path: Path, clock: Clock) -> None:
    proc = tmp_path / "proc"
    daemon = make_daemon(tmp_path, policy=FAST_LADDER)
    enforcer = enforcer_of(daemon)
    enforcer.clock, enforcer.tick_s, enforcer.proc = clock, 0.01, proc
    daemon.start()
    sleepers = [subprocess.Popen(["sleep", "60"]) for _ in range(3)]
    try:
        for sleeper in sleepers:
            (proc / str(sleeper.pid)).mkdir(parents=True)
        begin(daemon, "web", "high", pid=sleepers[0].pid)
        begin(daemon, "batch", "low", pid=sleepers[1].pid)
        begin(daemon, "ci", "normal", pid=sleepers[2].pid)
        adj = [proc / str(sleeper.pid) / "oom_score_adj" for sleeper in sleepers]
        wait_for(lambda: adj[0].exists() and adj[1].exists(), "oom_score_adj of the high and low calls")
        assert (adj[0].read_text(), adj[1].read_text()) == ("-500", "500")
        assert not adj[2].exists()  # normal priority keeps the kernel's default
    finally:
        daemon.shutdown()
        for sleeper in sleepers:
            sleeper.kill()
            sleeper.wait()
