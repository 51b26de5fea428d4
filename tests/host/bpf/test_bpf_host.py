"""Real bcc programs on the running kernel: lifecycle events, filtering, load failures, spikes."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hostwarden.bpf import BpfMonitor, BpfMonitorError, EventKind, ProcessEvent, SpikeEvent
from hostwarden.bpf.programs import COMMON_UNIT, DEFAULT_PROGRAMS, ProgramSpec, Tracepoint, packaged_unit
from tests.host.bpf.bpf_helpers import SHELL, EventLog, join_cgroup


def lifecycle(events: list) -> list[ProcessEvent]:
    return [event for event in events if isinstance(event, ProcessEvent)]


def test_tracepoint_programs_load_here(monitor):
    _, statuses = monitor
    for name in ("process_fork", "process_exec", "process_exit", "rss_sample", "oom_victim", "memcg_reclaim_end"):
        assert statuses[name].loaded, statuses[name]
    # No BPF LSM on this host: reported with the reason, not pretended.
    assert statuses["exec_digest"].loaded is False and statuses["exec_digest"].detail
    # 6.18: mm counters are percpu counters; every online CPU's offset was found, so RSS is sampled.
    online = len(os.sched_getaffinity(0))
    assert statuses["rss_sample"].detail == (
        "attached to raw tracepoints sched_switch, hrtimer_expire_entry (RSS sampled: percpu mm counters summed "
        f"over {online} online CPUs' parts)")
    assert not statuses["rss_stat"].loaded
    assert statuses["rss_stat"].detail.startswith("not attached: not needed, RSS sampled"), statuses["rss_stat"]


def test_process_tree_yields_exact_lifecycle_events(monitor, event_log, cgroups):
    bpf_monitor, _ = monitor
    path, cgroup_id = cgroups.make("tree")
    bpf_monitor.watch(cgroup_id)
    shell = subprocess.Popen([SHELL, "-c", '/bin/true; /bin/sh -c "exit 3"; exit 5'],
                             preexec_fn=join_cgroup(path))
    assert shell.wait(timeout=10) == 5
    parent = shell.pid
    events = lifecycle(event_log.wait_for(lambda seen: any(
        e.kind == "exit" and e.pid == parent for e in lifecycle(seen)), cgroup_id))

    children = [event.pid for event in events if event.kind == "fork"]
    assert len(children) == 2, events
    true_pid, inner_pid = children
    observed = [(event.kind, event.pid, event.ppid, event.filename, event.exit_code, event.signal)
                for event in events]
    assert observed == [
        # The shell joined the cgroup between fork and exec: its parent is unknown to the probes.
        ("exec", parent, 0, SHELL, None, None),
        ("fork", true_pid, parent, None, None, None),
        ("exec", true_pid, parent, "/bin/true", None, None),
        ("exit", true_pid, parent, None, 0, None),
        ("fork", inner_pid, parent, None, None, None),
        ("exec", inner_pid, parent, "/bin/sh", None, None),
        ("exit", inner_pid, parent, None, 3, None),
        ("exit", parent, 0, None, 5, None),
    ]
    assert {event.cgroup_id for event in events} == {cgroup_id}


def test_processes_beyond_the_slot_table_are_tracked_exactly_and_released(event_log, cgroups):
    # Two slots and four overflow entries: most processes of the run go to the overflow hash, and a
    # leaked entry would leave the later ones untracked (exec ppid 0, no exit event).
    small_tables = "#define PROCESS_SLOTS 2\n#define MAX_OVERFLOW_PROCESSES 4\n" + packaged_unit(COMMON_UNIT)
    log = EventLog()
    small = BpfMonitor(log, programs=[p for p in DEFAULT_PROGRAMS if p.unit == "lifecycle"],
                       extra_units={COMMON_UNIT: small_tables})
    try:
        assert all(status.loaded for status in small.start().values())
        path, cgroup_id = cgroups.make("overflow")
        small.watch(cgroup_id)
        runs = 12
        shell = subprocess.Popen([SHELL, "-c", f'for i in $(seq {runs}); do /bin/sh -c "exit 7"; done; exit 5'],
                                 preexec_fn=join_cgroup(path))
        assert shell.wait(timeout=20) == 5
        events = lifecycle(log.wait_for(lambda seen: any(
            e.kind == "exit" and e.pid == shell.pid for e in lifecycle(seen)), cgroup_id))
        children = {event.pid for event in events if event.kind == "fork"} - {shell.pid}
        assert len(children) == runs + 1, events  # seq, then the runs
        for kind in ("exec", "exit"):
            assert {event.pid: event.ppid for event in events if event.kind == kind and event.pid in children} \
                == dict.fromkeys(children, shell.pid), kind
        statuses = [event.exit_code for event in events if event.kind == "exit" and event.pid in children]
        assert statuses.count(7) == runs and statuses.count(0) == 1
        assert [event.exit_code for event in events if event.kind == "exit" and event.pid == shell.pid] == [5]
    finally:
        small.stop()


def test_cgroups_sharing_a_watch_slot_are_watched_through_the_overflow(cgroups):
    # One slot in the programs' first filter: the second cgroup goes to the overflow hash, which the programs
    # look in only while user space counts entries there. Each cgroup's execs are seen exactly while it is watched.
    one_slot = "#define WATCH_SLOTS 1\n" + packaged_unit(COMMON_UNIT)
    log = EventLog()
    small = BpfMonitor(log, programs=[p for p in DEFAULT_PROGRAMS if p.name == "process_exec"],
                       extra_units={COMMON_UNIT: one_slot})

    def seen(path: Path, cgroup_id: int) -> bool:
        """Whether the exec of a shell run in `path` is reported (a watched cgroup's within 10 s; an unwatched
        cgroup's not within 0.3 s, many times what a watched one's takes)."""
        shell = subprocess.Popen([SHELL, "-c", "exit 0"], preexec_fn=join_cgroup(path))
        assert shell.wait(timeout=10) == 0
        if cgroup_id in watching:
            log.wait_for(lambda events: any(e.pid == shell.pid for e in lifecycle(events)), cgroup_id)
        else:
            time.sleep(0.3)
        return any(event.pid == shell.pid for event in lifecycle(log.for_cgroup(cgroup_id)))

    try:
        assert small.start()["process_exec"].loaded
        (first_path, first), (second_path, second) = cgroups.make("slot-a"), cgroups.make("slot-b")
        watching = {first, second}
        small.watch(first)
        small.watch(second)  # the slot is taken: the overflow
        assert seen(first_path, first) and seen(second_path, second)
        small.unwatch(first)
        watching.discard(first)
        assert not seen(first_path, first)
        assert seen(second_path, second)  # still in the overflow, the slot empty
        small.unwatch(second)
        watching.clear()
        assert not seen(second_path, second)
        small.watch(second)  # now into the free slot, the overflow empty
        watching.add(second)
        assert seen(second_path, second)
    finally:
        small.stop()


def test_killed_process_reports_the_signal(monitor, event_log, cgroups):
    bpf_monitor, _ = monitor
    path, cgroup_id = cgroups.make("killed")
    bpf_monitor.watch(cgroup_id)
    sleeper = subprocess.Popen(["/bin/sleep", "30"], preexec_fn=join_cgroup(path))
    event_log.wait_for(lambda seen: any(e.kind == "exec" for e in lifecycle(seen)), cgroup_id)
    sleeper.kill()
    sleeper.wait(timeout=10)
    events = event_log.wait_for(lambda seen: any(e.kind == "exit" for e in lifecycle(seen)), cgroup_id)
    exits = [event for event in lifecycle(events) if event.kind == "exit"]
    assert [(event.pid, event.exit_code, event.signal) for event in exits] == [(sleeper.pid, None, 9)]


def test_process_in_its_cgroup_before_the_watch_reports_its_exit(monitor, event_log, cgroups):
    # Neither its fork nor an exec was seen: no parent known, but the exit and its status still are.
    bpf_monitor, _ = monitor
    path, cgroup_id = cgroups.make("before-watch")
    waiter = subprocess.Popen([SHELL, "-c", "read line; exit 7"], stdin=subprocess.PIPE, preexec_fn=join_cgroup(path))
    while str(waiter.pid) not in (path / "cgroup.procs").read_text().split():
        time.sleep(0.01)
    bpf_monitor.watch(cgroup_id)
    waiter.communicate(b"go\n", timeout=10)
    events = event_log.wait_for(lambda seen: any(e.kind == "exit" for e in lifecycle(seen)), cgroup_id)
    exits = [(e.pid, e.ppid, e.exit_code, e.signal) for e in lifecycle(events) if e.kind == "exit"]
    assert exits == [(waiter.pid, 0, 7, None)]


def test_busy_process_in_an_unwatched_cgroup_yields_nothing(monitor, event_log, cgroups):
    bpf_monitor, _ = monitor
    unwatched_path, unwatched_id = cgroups.make("unwatched")
    watched_path, watched_id = cgroups.make("watched-beside")
    bpf_monitor.watch(watched_id, spike_threshold_bytes=1 << 20)
    runs_before = {name: stats.run_count for name, stats in bpf_monitor.program_stats().items()}
    busy = subprocess.run([sys.executable, "-c", "import subprocess\nfor _ in range(30): "
                           "subprocess.run(['/bin/true'])\nbuf = bytearray(64 << 20)\nbuf[::4096] = b'x' * "
                           "len(buf[::4096])"], preexec_fn=join_cgroup(unwatched_path), check=True)
    assert busy.returncode == 0
    # A marker in a watched cgroup afterwards: its events prove the probes were delivering meanwhile.
    subprocess.run(["/bin/true"], preexec_fn=join_cgroup(watched_path), check=True)
    event_log.wait_for(lambda seen: any(e.kind == "exit" for e in lifecycle(seen)), watched_id)
    stats = bpf_monitor.program_stats()
    assert stats["process_exec"].run_count - runs_before["process_exec"] >= 31  # the probes did run
    assert stats["rss_sample"].run_count > runs_before["rss_sample"]
    assert event_log.for_cgroup(unwatched_id) == []
    assert bpf_monitor.cgroup_rss(unwatched_id) is None


BROKEN_UNITS = {
    # Verifier refusal: the map value is used without the NULL check the verifier demands.
    "unchecked": """
TRACEPOINT_PROBE(sched, sched_process_fork)
{
    u64 cgroup_id = bpf_get_current_cgroup_id();
    struct watch_config *config = find_watch(cgroup_id);
    return config->watch_serial;
}
""",
    "uncompilable": "TRACEPOINT_PROBE(sched, sched_process_free) { return no_such_variable; }\n",
    "missing": "TRACEPOINT_PROBE(hostwarden_missing, nothing) { return 0; }\n",
}


def test_programs_that_cannot_load_are_reported_and_the_rest_run(event_log, cgroups):
    working = [spec for spec in DEFAULT_PROGRAMS if spec.name in ("process_exec", "process_exit")]
    broken = [
        ProgramSpec("verifier_refusal", "unchecked", Tracepoint("sched", "sched_process_fork")),
        ProgramSpec("compile_error", "uncompilable", Tracepoint("sched", "sched_process_free")),
        ProgramSpec("missing_tracepoint", "missing", Tracepoint("hostwarden_missing", "nothing")),
    ]
    log = EventLog()
    bpf_monitor = BpfMonitor(log, programs=[*working, *broken], extra_units=BROKEN_UNITS)
    try:
        statuses = bpf_monitor.start()
        assert statuses["process_exec"].loaded and statuses["process_exit"].loaded
        assert not statuses["verifier_refusal"].loaded
        assert "Failed to load BPF program" in statuses["verifier_refusal"].detail
        assert not statuses["compile_error"].loaded
        assert "compile failed" in statuses["compile_error"].detail
        assert "no_such_variable" in statuses["compile_error"].detail
        assert statuses["missing_tracepoint"].detail.startswith(
            "tracepoint hostwarden_missing:nothing does not exist")
        assert set(bpf_monitor.program_stats()) == {"process_exec", "process_exit"}

        path, cgroup_id = cgroups.make("partial")
        bpf_monitor.watch(cgroup_id)
        subprocess.run(["/bin/true"], preexec_fn=join_cgroup(path), check=True)
        events = log.wait_for(lambda seen: any(e.kind == "exit" for e in lifecycle(seen)), cgroup_id)
        assert [event.kind for event in lifecycle(events)] == ["exec", "exit"]
    finally:
        bpf_monitor.stop()


ALLOCATE = """
import mmap, sys
size = int(sys.argv[1])
region = mmap.mmap(-1, size)
for offset in range(0, size, 4096):
    region[offset] = 1
"""


def test_spike_above_threshold_yields_one_event_naming_the_process(monitor, event_log, cgroups):
    bpf_monitor, _ = monitor
    path, cgroup_id = cgroups.make("spike")
    # The allocator is forked from this test process: until it execs, its copy of our resident memory
    # (bcc and LLVM make it tens of MiB) counts in the cgroup, so the threshold is set above it.
    threshold = (64 << 20) + resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    size = threshold + (64 << 20)
    bpf_monitor.watch(cgroup_id, spike_threshold_bytes=threshold)
    allocator = subprocess.Popen([sys.executable, "-c", ALLOCATE, str(size)], preexec_fn=join_cgroup(path))
    assert allocator.wait(timeout=30) == 0
    event_log.wait_for(lambda seen: any(e.kind == "exit" for e in lifecycle(seen)), cgroup_id)
    time.sleep(0.2)
    spikes = [event for event in event_log.for_cgroup(cgroup_id) if isinstance(event, SpikeEvent)]
    assert len(spikes) == 1, spikes
    spike = spikes[0]
    assert (spike.pid, spike.threshold, spike.source) == (allocator.pid, threshold, "process_rss")
    assert spike.comm == Path(sys.executable).name[:15]  # the kernel names a task after the path it exec'd
    assert spike.bytes >= threshold
    rss = bpf_monitor.cgroup_rss(cgroup_id)
    assert rss is not None and rss.peak_bytes >= size
    assert rss.rss_bytes < 1 << 20  # the process is gone: its memory is no longer counted


HOLD = "import sys; b = bytearray(int(sys.argv[1])); b[::4096] = b'x' * len(b[::4096]); sys.stdin.read()"


def waiting_for_input(pid: int) -> bool:
    """Whether a HOLD process has allocated and sleeps in its read of stdin."""
    return Path(f"/proc/{pid}/wchan").read_text() in ("pipe_read", "anon_pipe_read")  # 6.18 calls it the latter


def await_input(holders: list[subprocess.Popen]) -> None:
    """Until every HOLD process has allocated and sleeps in its read of stdin, for at most 20 s."""
    deadline = time.monotonic() + 20
    while not all(waiting_for_input(holder.pid) for holder in holders) and time.monotonic() < deadline:
        time.sleep(0.05)


def hold_until_counted(bpf_monitor: BpfMonitor, path: Path, cgroup_id: int, size: int) -> subprocess.Popen:
    """A HOLD process of `size` bytes in the watched cgroup `path`, once the cgroup's RSS counts them (asserted,
    within 20 s)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(size)], stdin=subprocess.PIPE,
                              preexec_fn=join_cgroup(path))
    deadline = time.monotonic() + 20
    while bpf_monitor.cgroup_rss(cgroup_id).rss_bytes < size and time.monotonic() < deadline:
        time.sleep(0.05)
    assert bpf_monitor.cgroup_rss(cgroup_id).rss_bytes >= size
    return holder


MEMORY_PROGRAMS = [spec for spec in DEFAULT_PROGRAMS if spec.unit in ("memory", "lifecycle")]


SMALL_TABLES = {
    # Sampled: counted per process, in the process table: two slots, the rest in its overflow hash.
    True: (COMMON_UNIT, "#define PROCESS_SLOTS 2\n#define MAX_OVERFLOW_PROCESSES 16\n"),
    # Every change: counted per mm: two slots, the rest in the mm overflow LRU.
    False: ("memory", "#define MM_SLOTS 2\n"),
}


@pytest.mark.parametrize("sampled", [True, False], ids=["sampled", "every-change"])
def test_rss_beyond_the_slot_tables_is_summed_exactly_and_released(cgroups, sampled: bool):
    # Most holders' RSS is counted in an overflow table, and the sum must still add up and fall back to about
    # zero when they exit (a lost entry would leave its bytes counted).
    unit, defines = SMALL_TABLES[sampled]
    small = BpfMonitor(EventLog(), programs=MEMORY_PROGRAMS, extra_units={unit: defines + packaged_unit(unit)},
                       rss_sampling=sampled)
    try:
        statuses = small.start()
        used = ("rss_sample",) if sampled else ("rss_stat",)
        assert all(statuses[name].loaded for name in used), statuses
        path, cgroup_id = cgroups.make("mm-overflow")
        small.watch(cgroup_id)
        size, count = 32 << 20, 4
        for _ in range(2):  # the second round needs the slots and entries the first one released
            holders = [subprocess.Popen([sys.executable, "-c", HOLD, str(size)], stdin=subprocess.PIPE,
                                        preexec_fn=join_cgroup(path)) for _ in range(count)]
            deadline = time.monotonic() + 20
            while (rss := small.cgroup_rss(cgroup_id)).rss_bytes < count * size and time.monotonic() < deadline:
                time.sleep(0.05)
            assert count * size <= rss.rss_bytes <= count * (size + (24 << 20)), rss  # plus each interpreter
            for holder in holders:
                holder.communicate(b"")
            assert small.cgroup_rss(cgroup_id).rss_bytes < 1 << 20
    finally:
        small.stop()


def test_a_sampler_the_kernel_refuses_leaves_rss_to_every_change(cgroups):
    # As on a kernel without bpf_get_current_task_btf (before 5.11): the verifier refuses the sampler, so RSS is
    # counted on kmem:rss_stat, and the status says why.
    memory = packaged_unit("memory")
    # A helper number no kernel has, as bpf_get_current_task_btf's is unknown to one before 5.11.
    refused = memory.replace("    sample_current_task();\n", "    return ((u64 (*)(void))100000)();\n")
    assert refused != memory
    monitor = BpfMonitor(EventLog(), programs=MEMORY_PROGRAMS, extra_units={"memory": refused})
    try:
        statuses = monitor.start()
        assert not statuses["rss_sample"].loaded
        assert statuses["rss_sample"].detail.startswith(
            "not attached: RSS counted at every change on kmem:rss_stat instead (the sampler does not load on this "
            "kernel (rss_sample: "), statuses["rss_sample"].detail
        assert statuses["rss_stat"].loaded, statuses["rss_stat"]
        path, cgroup_id = cgroups.make("refused-sampler")
        monitor.watch(cgroup_id)
        hold_until_counted(monitor, path, cgroup_id, 32 << 20).communicate(b"")
    finally:
        monitor.stop()


def test_sampled_rss_is_the_exact_sum_the_kernel_traces(cgroups):
    # Two monitors on one cgroup: one samples the mm counters (its global part plus each CPU's, with the
    # offsets it calibrated), the other keeps kmem:rss_stat's records, whose sizes the kernel sums exactly.
    # Once the holders wait, nothing changes their counters: a per-CPU part left out would show.
    sampled, traced = (BpfMonitor(EventLog(), programs=MEMORY_PROGRAMS, rss_sampling=mode) for mode in (True, False))
    try:
        assert sampled.start()["rss_sample"].loaded and traced.start()["rss_stat"].loaded
        path, cgroup_id = cgroups.make("exact")
        sampled.watch(cgroup_id)
        traced.watch(cgroup_id)
        holders = [subprocess.Popen([sys.executable, "-c", HOLD, str(size)], stdin=subprocess.PIPE,
                                    preexec_fn=join_cgroup(path)) for size in (24 << 20, (40 << 20) + 12288)]
        await_input(holders)
        time.sleep(0.2)  # each was sampled as it went to sleep; kmem:rss_stat saw its last change before
        assert sampled.cgroup_rss(cgroup_id).rss_bytes == traced.cgroup_rss(cgroup_id).rss_bytes >= 64 << 20
        for holder in holders:
            holder.communicate(b"")
    finally:
        sampled.stop()
        traced.stop()


def test_a_cgroup_watched_in_a_freed_place_starts_from_zero(cgroups):
    # Two places for watched cgroups' totals: a third watch is refused until one is unwatched, and the cgroup
    # that then gets the freed place does not inherit its predecessor's processes' memory.
    two_places = "#define MAX_WATCHED_CGROUPS 2\n" + packaged_unit(COMMON_UNIT)
    small = BpfMonitor(EventLog(), programs=MEMORY_PROGRAMS, extra_units={COMMON_UNIT: two_places})
    holder = None
    try:
        assert small.start()["rss_sample"].loaded
        (first_path, first), (_, second), (third_path, third) = (cgroups.make(f"place-{n}") for n in range(3))
        small.watch(first)
        small.watch(second)
        with pytest.raises(BpfMonitorError, match=f"cannot watch cgroup {third}: 2 cgroups are watched already"):
            small.watch(third)
        holder = hold_until_counted(small, first_path, first, 32 << 20)
        small.unwatch(first)
        assert small.cgroup_rss(first) is None
        small.watch(third)
        subprocess.run(["/bin/true"], preexec_fn=join_cgroup(third_path), check=True)
        holder.stdin.write(b"x")  # the holder runs (and is sampled) again, in a cgroup no longer watched
        holder.stdin.flush()
        time.sleep(0.2)
        assert small.cgroup_rss(third).rss_bytes < 8 << 20
    finally:
        if holder is not None:
            holder.communicate(b"")
        small.stop()


def test_processes_named_at_watch_are_sampled_and_others_from_their_fork_or_exec(monitor, cgroups):
    # The samplers count tracked processes only (the process table is their filter): one already in its cgroup
    # is tracked when watch() names it, else from its next fork or exec there.
    bpf_monitor, _ = monitor
    holders, ids = [], []
    try:
        for named in (True, False):
            path, cgroup_id = cgroups.make(f"named-{named}")
            holder = subprocess.Popen([sys.executable, "-c", HOLD, str(32 << 20)], stdin=subprocess.PIPE,
                                      preexec_fn=join_cgroup(path))
            holders.append(holder)
            await_input([holder])
            bpf_monitor.watch(cgroup_id, processes=[holder.pid] if named else [])
            ids.append(cgroup_id)
            holder.stdin.write(b"x")  # it wakes, reads, and sleeps again: a context switch
            holder.stdin.flush()
        time.sleep(0.2)
        assert bpf_monitor.cgroup_rss(ids[0]).rss_bytes >= 32 << 20
        assert bpf_monitor.cgroup_rss(ids[1]).rss_bytes == 0
    finally:
        for holder in holders:
            holder.communicate(b"")
    assert bpf_monitor.cgroup_rss(ids[0]).rss_bytes < 1 << 20  # released at its exit
    with pytest.raises(ValueError, match="processes must be positive pids, got 0"):
        bpf_monitor.watch(ids[0], processes=[0])


def test_a_process_moved_into_a_watched_cgroup_is_sampled_once_tracked(monitor, cgroups):
    # Neither its fork nor an exec happened in the cgroup: track() names it (the daemon does at each attach).
    bpf_monitor, _ = monitor
    path, cgroup_id = cgroups.make("moved-in")
    bpf_monitor.watch(cgroup_id)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(32 << 20)], stdin=subprocess.PIPE)
    try:
        await_input([holder])
        (path / "cgroup.procs").write_text(str(holder.pid))
        holder.stdin.write(b"x")  # a context switch in the cgroup: not counted, not tracked yet
        holder.stdin.flush()
        time.sleep(0.2)
        assert bpf_monitor.cgroup_rss(cgroup_id).rss_bytes == 0
        bpf_monitor.track(cgroup_id, [holder.pid])
        holder.stdin.write(b"x")
        holder.stdin.flush()
        time.sleep(0.2)
        assert bpf_monitor.cgroup_rss(cgroup_id).rss_bytes >= 32 << 20
        with pytest.raises(BpfMonitorError, match="is not watched"):
            bpf_monitor.track(cgroup_id + 1_000_000, [holder.pid])
    finally:
        holder.communicate(b"")


def test_program_stats_count_runs_and_time(monitor):
    bpf_monitor, _ = monitor
    stats = bpf_monitor.program_stats()
    assert stats["rss_sample"].run_count > 0 and stats["rss_sample"].run_time_ns > 0
    assert all(entry.events_lost == 0 for entry in stats.values())


def test_bad_watch_input_is_refused(monitor):
    bpf_monitor, _ = monitor
    with pytest.raises(ValueError, match="cgroup id must be a positive integer"):
        bpf_monitor.watch(0)
    with pytest.raises(ValueError, match="spike threshold must be a positive number"):
        bpf_monitor.watch(12345, spike_threshold_bytes=-5)
    with pytest.raises(BpfMonitorError, match="not watched"):
        bpf_monitor.set_threshold(987654321, 1 << 20)


def test_only_the_event_kinds_asked_for_are_sent(cgroups):
    received = EventLog()
    exec_only = BpfMonitor(received, programs=[p for p in DEFAULT_PROGRAMS if p.unit == "lifecycle"],
                           event_kinds={EventKind.EXEC})
    try:
        assert exec_only.start()["process_fork"].loaded
        path, cgroup_id = cgroups.make("exec-only")
        exec_only.watch(cgroup_id)
        shell = subprocess.Popen([SHELL, "-c", "/bin/true; exit 0"], preexec_fn=join_cgroup(path))
        assert shell.wait(timeout=10) == 0
        exec_only.flush()
        events = received.for_cgroup(cgroup_id)
        assert [(e.kind, e.filename) for e in lifecycle(events)] == [("exec", SHELL), ("exec", "/bin/true")]
        assert exec_only.program_stats()["process_fork"].run_count > 0  # it ran, and sent nothing
    finally:
        exec_only.stop()


def test_deduplicated_execs_report_each_path_once_per_watch_and_keep_fork_and_exit_exact(cgroups, tmp_path):
    received = EventLog()
    dedup = BpfMonitor(received, programs=[p for p in DEFAULT_PROGRAMS if p.unit == "lifecycle"],
                       dedup_execs=True)
    script = "/bin/true; /bin/true; /bin/echo >/dev/null; /bin/true; exit 5"

    def run(path: Path, cgroup_id: int) -> tuple[int, list[ProcessEvent]]:
        shell = subprocess.Popen([SHELL, "-c", script], preexec_fn=join_cgroup(path))
        assert shell.wait(timeout=10) == 5
        return shell.pid, lifecycle(received.wait_for(lambda seen: any(
            e.kind == "exit" and e.pid == shell.pid for e in lifecycle(seen)), cgroup_id))

    try:
        assert all(status.loaded for status in dedup.start().values())
        first_path, first_id = cgroups.make("dedup-first")
        second_path, second_id = cgroups.make("dedup-second")
        dedup.watch(first_id)
        dedup.watch(second_id)
        for path, cgroup_id in ((first_path, first_id), (second_path, second_id)):
            shell, events = run(path, cgroup_id)
            true1, true2, echo, true3 = [e.pid for e in events if e.kind == "fork"]
            assert [(e.kind, e.pid, e.ppid, e.filename, e.exit_code) for e in events] == [
                ("exec", shell, 0, SHELL, None),
                ("fork", true1, shell, None, None),
                ("exec", true1, shell, "/bin/true", None),
                ("exit", true1, shell, None, 0),
                ("fork", true2, shell, None, None),  # its exec of /bin/true is not reported again
                ("exit", true2, shell, None, 0),
                ("fork", echo, shell, None, None),
                ("exec", echo, shell, "/bin/echo", None),
                ("exit", echo, shell, None, 0),
                ("fork", true3, shell, None, None),
                ("exit", true3, shell, None, 0),
                ("exit", shell, 0, None, 5),
            ]

        # Paths that differ in a character or two, run in turns: each is reported once (they must not push
        # each other out of the kernel's table).
        tools = [tmp_path / f"t{index}" for index in range(1, 21)]
        for tool in tools:
            tool.symlink_to("/bin/true")
        loop = "; ".join(str(tool) for tool in tools)
        subprocess.run([SHELL, "-c", f"for round in 1 2; do {loop}; done"], preexec_fn=join_cgroup(second_path),
                       check=True)
        dedup.flush()
        assert [e.filename for e in lifecycle(received.for_cgroup(second_id)) if e.kind == "exec"][3:] == [
            str(tool) for tool in tools]  # not the shell: its path was reported already

        # A new watch of a cgroup reports its paths again.
        dedup.unwatch(first_id)
        dedup.watch(first_id)
        subprocess.run(["/bin/true"], preexec_fn=join_cgroup(first_path), check=True)
        dedup.flush()
        assert [e.filename for e in lifecycle(received.for_cgroup(first_id)) if e.kind == "exec"][-2:] == [
            "/bin/echo", "/bin/true"]
    finally:
        dedup.stop()


def test_a_histogram_an_extra_unit_defines_is_read_back(cgroups):
    # What bench/bpf_run_times.py relies on: a unit given in extra_units defines a BPF_HISTOGRAM, and
    # histogram() returns its non-zero buckets (here, one count per exec in the watched cgroup).
    probe = "TRACEPOINT_PROBE(sched, sched_process_exec)\n{"
    counting = packaged_unit("lifecycle").replace(
        probe, f"BPF_HISTOGRAM(execs_seen, int, 4);\n{probe}\n    execs_seen.increment(2);")
    monitor = BpfMonitor(EventLog(), programs=[p for p in DEFAULT_PROGRAMS if p.unit == "lifecycle"],
                         extra_units={"lifecycle": counting})
    try:
        assert monitor.start()["process_exec"].loaded
        path, cgroup_id = cgroups.make("histogram")
        monitor.watch(cgroup_id)
        # Every exec on the host counts (the increment is before the program's filter): these three at least.
        before = monitor.histogram("execs_seen").get(2, 0)
        subprocess.run([SHELL, "-c", "/bin/true; /bin/true"], preexec_fn=join_cgroup(path), check=True)
        after = monitor.histogram("execs_seen")
        assert set(after) == {2} and after[2] >= before + 3
        with pytest.raises(BpfMonitorError, match="map no_such_histogram does not exist"):
            monitor.histogram("no_such_histogram")
    finally:
        monitor.stop()
