"""The monitor part in a whole in-process daemon (fake cgroupfs), with a fake BpfMonitor feeding events."""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from hostwarden import app
from hostwarden.bpf import (
    BpfEvent,
    CgroupRss,
    ExecDigestEvent,
    OomEvent,
    ProcessEvent,
    ProgramStats,
    ProgramStatus,
    ReclaimEvent,
    SpikeEvent,
)
from hostwarden.bpf.programs import DEFAULT_PROGRAMS, RssSource
from hostwarden.cgroups.errors import CgroupNotFound
from hostwarden.config import BpfConfig
from hostwarden.events import Event, Subscription
from hostwarden.monitor import EXECUTABLES_CAP, SPIKE_FRACTION_OF_MEMORY_HIGH, Monitor, build_monitor
from hostwarden.policy.resolve import Intent
from hostwarden.service import ADMIN, RunningCall
from tests.unit.daemon.conftest import make_daemon

MIB = 1 << 20
LSM_REASON = "BPF LSM not active (active LSMs: lockdown,capability; boot with lsm=...,bpf)"
NOT_NEEDED = "not attached: not needed, RSS sampled from atomic mm counters (rss_sample)"


class FakeBpf:
    """Stands in for hostwarden.bpf.BpfMonitor: records the maps the monitor writes, and delivers
    events either at once (`emit`, like the reader thread) or at the next flush (`queue`)."""

    def __init__(self, on_event: Callable[[BpfEvent], None], failing: dict[str, str]) -> None:
        self.on_event = on_event
        self.failing = failing
        self.thresholds: dict[int, int | None] = {}
        self.processes: dict[int, list[int]] = {}
        self.rss: dict[int, CgroupRss] = {}
        self.pending: list[BpfEvent] = []
        self.stopped = False

    def start(self) -> dict[str, ProgramStatus]:
        """Every program loads unless `failing` names it; RSS is sampled, so rss_stat is not needed."""
        return {spec.name: ProgramStatus(spec.name, False, NOT_NEEDED, not_needed=True)
                if spec.rss_source is RssSource.EVERY_CHANGE else
                ProgramStatus(spec.name, spec.name not in self.failing,
                              self.failing.get(spec.name, f"attached to {spec.attach}"))
                for spec in DEFAULT_PROGRAMS}

    def stop(self) -> None:
        self.stopped = True

    def watch(self, cgroup_id: int, *, spike_threshold_bytes: int | None = None,
              processes: Collection[int] = ()) -> None:
        self.thresholds[cgroup_id] = spike_threshold_bytes
        self.processes[cgroup_id] = list(processes)

    def track(self, cgroup_id: int, processes: Collection[int]) -> None:
        assert cgroup_id in self.thresholds
        self.processes[cgroup_id] += processes

    def set_threshold(self, cgroup_id: int, spike_threshold_bytes: int | None) -> None:
        assert cgroup_id in self.thresholds
        self.thresholds[cgroup_id] = spike_threshold_bytes

    def unwatch(self, cgroup_id: int) -> None:
        self.thresholds.pop(cgroup_id, None)
        self.rss.pop(cgroup_id, None)  # the kernel-side totals go with the watch

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        for event in pending:
            self.on_event(event)

    def cgroup_rss(self, cgroup_id: int) -> CgroupRss | None:
        return self.rss.get(cgroup_id)

    def program_stats(self) -> dict[str, ProgramStats]:
        return {"process_exec": ProgramStats(run_time_ns=2_500_000_000, run_count=7, events_lost=3)}

    def run_time_stats_seconds(self) -> float:
        return 12.5

    def emit(self, event: BpfEvent) -> None:
        self.on_event(event)

    def queue(self, event: BpfEvent) -> None:
        self.pending.append(event)


class Harness:
    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: dict[str, str]) -> None:
        self.fakes: list[FakeBpf] = []

        def build(daemon: app.Daemon) -> Monitor:
            def backend(on_event: Callable[[BpfEvent], None]) -> FakeBpf:
                fake = FakeBpf(on_event, failing)
                self.fakes.append(fake)
                return fake
            return Monitor(daemon, backend)

        monkeypatch.setattr(app, "PART_BUILDERS", tuple(build if b is build_monitor else b for b in app.PART_BUILDERS))
        self.daemon = make_daemon(tmp_path)
        self.daemon.start()
        self.monitor = next(p for p in self.daemon.parts if isinstance(p, Monitor))
        self.bpf = self.fakes[0]
        self.warden = self.daemon.warden
        self.warden.create_sandbox(ADMIN, "sb", {}, "normal")

    def begin(self, memory_high: int | None = 100 * MIB) -> RunningCall:
        return self.warden.begin_call(ADMIN, "sb", "pytest", Intent(memory_high=memory_high), "pytest -q")

    def end(self, call: RunningCall) -> dict:
        return self.warden.end_call(ADMIN, call.call_id, 0)

    def subscribe(self, *kinds: str) -> Subscription:
        return self.daemon.bus.subscribe(kinds=kinds)


@pytest.fixture
def harness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    made = Harness(tmp_path, monkeypatch, failing={"exec_digest": LSM_REASON})
    yield made
    made.daemon.shutdown()


def exec_event(cgroup_id: int, path: str, pid: int = 100) -> ProcessEvent:
    return ProcessEvent(kind="exec", pid=pid, ppid=1, tgid=pid, cgroup_id=cgroup_id, comm=Path(path).name,
                        filename=path, exit_code=None, signal=None, ktime_ns=1)


def next_event(subscription: Subscription) -> Event:
    event = subscription.get(timeout=1)
    assert event is not None
    return event


def test_program_statuses_become_capabilities(harness: Harness) -> None:
    capabilities = harness.daemon.capabilities
    assert capabilities["bpf_process_exec"].available and capabilities["bpf_process_exec"].in_use
    digest = capabilities["bpf_exec_digest"]
    assert (digest.available, digest.in_use, digest.detail) == (False, False, LSM_REASON)
    assert capabilities["bcc"].in_use
    assert not capabilities["bpf_lsm"].in_use
    every_change = capabilities["bpf_rss_stat"]  # could run: available, but another program does its job
    assert (every_change.available, every_change.in_use, every_change.detail) == (True, False, NOT_NEEDED)
    names = {message.name for message in harness.daemon.capability_messages()}
    assert {f"bpf_{spec.name}" for spec in DEFAULT_PROGRAMS} <= names


def test_no_program_loaded_keeps_the_daemon_going(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made = Harness(tmp_path, monkeypatch, failing={spec.name: "compile failed: x" for spec in DEFAULT_PROGRAMS})
    try:
        call = made.begin()
        assert made.bpf.thresholds == {}  # nothing to watch with
        summary = made.end(call)
        assert summary["executables"] == [] and summary["peak_memory_source"] == "memory.peak"
        assert not made.daemon.capabilities["bcc"].in_use
        assert "no bpf program loaded" in made.daemon.capabilities["bcc"].detail
    finally:
        made.daemon.shutdown()


def test_sandbox_agent_and_call_cgroups_are_watched_with_a_threshold_from_memory_high(harness: Harness) -> None:
    agent_id = harness.warden.tree.cgroup_id(harness.warden.sandboxes["sb"].path / "agent")
    call = harness.begin(memory_high=100 * MIB)
    assert harness.bpf.thresholds == {agent_id: None, call.cgroup_id: int(100 * MIB * SPIKE_FRACTION_OF_MEMORY_HIGH)}
    harness.end(call)
    assert call.cgroup_id not in harness.bpf.thresholds
    harness.warden.delete_sandbox(ADMIN, "sb", force=True)
    assert harness.bpf.thresholds == {}


def test_processes_already_in_a_watched_cgroup_are_named_to_the_programs(harness: Harness,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # A call's process is moved in before the call starts: the programs did not see it fork or exec there.
    monkeypatch.setattr(harness.warden.tree, "pids", lambda path: [4242, 4243])
    call = harness.begin()
    assert harness.bpf.processes[call.cgroup_id] == [4242, 4243]

    def gone(path: Path) -> list[int]:
        raise CgroupNotFound(f"no cgroup at {path}")

    monkeypatch.setattr(harness.warden.tree, "pids", gone)
    second = harness.begin()  # watched all the same; its processes are tracked from their next fork or exec
    assert harness.bpf.processes[second.cgroup_id] == []
    assert second.cgroup_id in harness.bpf.thresholds


def test_a_process_attached_to_a_call_is_named_to_the_programs(harness: Harness) -> None:
    # Moved in after the call began (BeginToolCall's pid): without an exec there the programs would not count it.
    call = harness.warden.begin_call(ADMIN, "sb", "pytest", Intent(), "pytest -q", pid=os.getpid())
    assert harness.bpf.processes[call.cgroup_id] == [os.getpid()]


def test_a_sandbox_without_an_agent_cgroup_is_logged_and_not_watched(harness: Harness,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    def missing(path: Path) -> int:
        raise CgroupNotFound(f"no cgroup at {path}: it was removed or never created")

    watched_before = dict(harness.bpf.thresholds)
    monkeypatch.setattr(harness.warden.tree, "cgroup_id", missing)
    harness.monitor.sandbox_added(harness.warden.sandboxes["sb"])
    assert harness.bpf.thresholds == watched_before
    assert "sandbox sb: no agent cgroup to watch (no cgroup at" in caplog.text


def test_set_call_threshold_rearms_the_calls_cgroup(harness: Harness) -> None:
    call = harness.begin()
    harness.monitor.set_call_threshold(call.call_id, 300 * MIB)
    assert harness.bpf.thresholds[call.cgroup_id] == 300 * MIB
    harness.end(call)
    with pytest.raises(KeyError, match="not watched"):
        harness.monitor.set_call_threshold(call.call_id, 1)


def test_executables_are_listed_in_order_deduplicated_including_those_still_in_the_ring(harness: Harness) -> None:
    call = harness.begin()
    other = harness.begin()
    harness.bpf.emit(exec_event(call.cgroup_id, "/bin/sh"))
    harness.bpf.emit(exec_event(other.cgroup_id, "/usr/bin/make"))
    harness.bpf.emit(exec_event(call.cgroup_id, "/bin/true"))
    harness.bpf.emit(exec_event(call.cgroup_id, "/bin/sh"))
    harness.bpf.queue(exec_event(call.cgroup_id, "/bin/echo"))  # not yet drained when the call ends
    summary = harness.end(call)
    assert summary["executables"] == ["/bin/sh", "/bin/true", "/bin/echo"]
    assert "executables_omitted" not in summary
    assert harness.daemon.ledger.get_call(call.call_id).summary["executables"] == summary["executables"]
    assert harness.end(other)["executables"] == ["/usr/bin/make"]


def test_executables_past_the_cap_are_counted(harness: Harness) -> None:
    call = harness.begin()
    for index in range(EXECUTABLES_CAP + 5):
        harness.bpf.emit(exec_event(call.cgroup_id, f"/opt/tool{index}"))
    summary = harness.end(call)
    assert len(summary["executables"]) == EXECUTABLES_CAP
    assert summary["executables_omitted"] == 5


def test_spike_becomes_a_memory_spike_event_of_the_call(harness: Harness) -> None:
    spikes = harness.subscribe("memory_spike")
    call = harness.begin()
    harness.bpf.emit(SpikeEvent(cgroup_id=call.cgroup_id, pid=4242, comm="python3", bytes=90 * MIB,
                                threshold=80 * MIB, ktime_ns=123456789))
    event = next_event(spikes)
    assert (event.sandbox, event.call_id, event.kernel_time_ns) == ("sb", call.call_id, 123456789)
    assert event.attributes == {"pid": "4242", "comm": "python3", "tool": "pytest", "bytes": str(90 * MIB),
                                "threshold_bytes": str(80 * MIB), "source": "process_rss"}
    assert "python3 (pid 4242)" in event.message and "90.0 MiB" in event.message


def test_events_of_unwatched_cgroups_are_ignored(harness: Harness) -> None:
    spikes = harness.subscribe("memory_spike")
    call = harness.begin()
    harness.end(call)
    harness.bpf.emit(SpikeEvent(cgroup_id=call.cgroup_id, pid=1, comm="late", bytes=2, threshold=1, ktime_ns=1))
    assert spikes.get(timeout=0.05) is None


def test_peak_memory_falls_back_to_rss_tracking_only_without_memory_peak(harness: Harness) -> None:
    with_peak = harness.begin()
    harness.bpf.rss[with_peak.cgroup_id] = CgroupRss(rss_bytes=0, peak_bytes=7 * MIB)
    summary = harness.end(with_peak)
    assert summary["peak_memory_source"] == "memory.peak"  # the fake cgroupfs has one: it is never replaced

    without = harness.begin()
    (without.path / "memory.peak").unlink()  # as on a host with no memory controller
    harness.bpf.rss[without.cgroup_id] = CgroupRss(rss_bytes=0, peak_bytes=7 * MIB)
    summary = harness.end(without)
    assert (summary["peak_memory_bytes"], summary["peak_memory_source"]) == (7 * MIB, "rss_tracking")

    nothing_seen = harness.begin()
    (nothing_seen.path / "memory.peak").unlink()
    summary = harness.end(nothing_seen)
    assert (summary["peak_memory_bytes"], summary["peak_memory_source"]) == (None, "unavailable")


def test_oom_marks_the_call_and_records_an_action_where_memory_events_cannot(harness: Harness) -> None:
    ooms = harness.subscribe("oom")
    actions = harness.subscribe("action")
    call = harness.begin()
    (call.path / "memory.events").unlink()  # no memory controller: nothing else will record the kill
    harness.bpf.queue(OomEvent(cgroup_id=call.cgroup_id, pid=77, comm="hog", rss_bytes=200 * MIB, ktime_ns=5))
    summary = harness.end(call)
    assert summary["oom_killed"] is True
    event = next_event(ooms)
    assert (event.call_id, event.attributes["pid"], event.attributes["comm"]) == (call.call_id, "77", "hog")
    assert [a["kind"] for a in summary["actions"]] == ["kernel_oom_kill"]
    assert next_event(actions).attributes["action"] == "kernel_oom_kill"


def test_oom_where_memory_events_exist_is_left_to_the_policy_ladder(harness: Harness) -> None:
    call = harness.begin()
    harness.bpf.emit(OomEvent(cgroup_id=call.cgroup_id, pid=77, comm="hog", rss_bytes=1, ktime_ns=5))
    summary = harness.end(call)
    assert summary["oom_killed"] is True
    assert not [a for a in summary["actions"] if a["kind"] == "kernel_oom_kill"]


def test_reclaim_becomes_an_event(harness: Harness) -> None:
    reclaims = harness.subscribe("reclaim")
    call = harness.begin()
    harness.bpf.emit(ReclaimEvent(cgroup_id=call.cgroup_id, pid=9, comm="cc1", reclaimed_pages=32,
                                  duration_ns=1_500_000, total_count=4, total_duration_ns=3_000_000, ktime_ns=8))
    event = next_event(reclaims)
    assert (event.call_id, event.kernel_time_ns) == (call.call_id, 8)
    assert event.attributes["reclaimed_pages"] == "32" and event.attributes["total_count"] == "4"


def test_exec_paths_reach_the_integrity_sink_without_lsm(harness: Harness) -> None:
    seen: list[tuple[str, str, str | None]] = []
    harness.monitor.on_exec_digest = lambda *args: seen.append(args)
    agent_id = harness.warden.tree.cgroup_id(harness.warden.sandboxes["sb"].path / "agent")
    call = harness.begin()
    harness.bpf.emit(exec_event(agent_id, "/usr/bin/agent"))
    harness.bpf.emit(exec_event(call.cgroup_id, "/bin/true"))
    assert seen == [("sb", "/usr/bin/agent", None), ("sb", "/bin/true", None)]


def test_exec_digests_reach_the_integrity_sink_with_lsm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made = Harness(tmp_path, monkeypatch, failing={})
    try:
        assert made.daemon.capabilities["bpf_lsm"].in_use
        seen: list[tuple[str, str, str | None]] = []

        def broken_then_recording(*args: str | None) -> None:
            seen.append(args)  # type: ignore[arg-type]
            if len(seen) == 1:
                raise RuntimeError("the integrity part's bug")

        made.monitor.on_exec_digest = broken_then_recording
        call = made.begin()
        for digest in ("ab" * 32, None):
            made.bpf.emit(ExecDigestEvent(cgroup_id=call.cgroup_id, pid=3, comm="true", path="/bin/true",
                                          digest_hex=digest, algo="sha256" if digest else None,
                                          error=None if digest else "bpf_ima_file_hash failed: errno 95",
                                          ktime_ns=1))
        made.bpf.emit(exec_event(call.cgroup_id, "/bin/true"))  # the LSM event already told: no duplicate
        assert seen == [("sb", "/bin/true", "ab" * 32), ("sb", "/bin/true", None)]
        assert made.end(call)["executables"] == ["/bin/true"]
    finally:
        made.daemon.shutdown()


def test_program_costs_are_metrics(harness: Harness) -> None:
    text = generate_latest(harness.daemon.metrics.registry).decode()
    assert 'hostwarden_bpf_program_run_seconds_total{program="process_exec"} 2.5' in text
    assert 'hostwarden_bpf_program_runs_total{program="process_exec"} 7.0' in text
    assert "hostwarden_bpf_run_time_stats_seconds_total 12.5" in text
    assert 'hostwarden_bpf_events_lost_total{program="process_exec"} 3.0' in text


def test_shutdown_stops_the_programs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made = Harness(tmp_path, monkeypatch, failing={})
    made.daemon.shutdown()
    assert made.bpf.stopped


def test_bpf_disabled_builds_no_monitor(tmp_path: Path) -> None:
    daemon = make_daemon(tmp_path)
    daemon.config = type(daemon.config)(daemon=daemon.config.daemon, bpf=BpfConfig(enabled=False))
    assert build_monitor(daemon) is None
