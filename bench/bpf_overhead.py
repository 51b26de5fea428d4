"""eBPF overhead on a fork/exec-heavy load: thousands of /bin/true inside a watched cgroup, with
the probes off and on (alternating rounds), and each program's mean cost per run
(kernel BPF run-time statistics). Both the load's wall time and its CPU time (user + system of
the shell and its children: the probes run in the context of the process they observe) are
compared; CPU time is far less disturbed by other work on a shared machine. The event reader's
own CPU (a thread of this process, not of the load) is reported apart. Last line of stdout: JSON."""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import time
from dataclasses import dataclass

from _bpf_bench import ScratchCgroup

from hostwarden.bpf import BpfMonitor, EventKind
from hostwarden.monitor import MONITOR_DEDUP_EXECS, MONITOR_EVENT_KINDS

LOOP = 'i=0; while [ "$i" -lt {count} ]; do /bin/true; i=$((i+1)); done'


@dataclass(frozen=True)
class LoadRun:
    wall_s: float
    cpu_s: float  # user + system time of the load's processes
    reader_cpu_s: float  # this process's own CPU meanwhile: the event reader thread


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def run_load(cgroup: ScratchCgroup, count: int) -> LoadRun:
    children, own = _cpu(resource.RUSAGE_CHILDREN), _cpu(resource.RUSAGE_SELF)
    started = time.perf_counter()
    subprocess.run(["/bin/sh", "-c", LOOP.format(count=count)], preexec_fn=cgroup.joiner(), check=True)
    wall = time.perf_counter() - started
    return LoadRun(wall, _cpu(resource.RUSAGE_CHILDREN) - children, _cpu(resource.RUSAGE_SELF) - own)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer processes and rounds")
    parser.add_argument("--all-events", action="store_true",
                        help="send fork and exit events to user space too (the daemon does not ask for them)")
    args = parser.parse_args()
    event_kinds = frozenset(EventKind) if args.all_events else MONITOR_EVENT_KINDS
    count, rounds = (500, 3) if args.quick else (3000, 5)

    cgroup = ScratchCgroup("bpf-overhead")
    try:
        run_load(cgroup, count // 5)  # warm the page cache and the shell
        off: list[LoadRun] = []
        on: list[LoadRun] = []
        runs: dict[str, list[int]] = {}
        for _ in range(rounds):
            off.append(run_load(cgroup, count))
            monitor = BpfMonitor(lambda _event: None, event_kinds=event_kinds, dedup_execs=MONITOR_DEDUP_EXECS)
            statuses = monitor.start()
            monitor.watch(cgroup.id, spike_threshold_bytes=1 << 40)
            before = monitor.program_stats()
            on.append(run_load(cgroup, count))
            after = monitor.program_stats()
            monitor.stop()
            for name, stats in after.items():
                delta = runs.setdefault(name, [0, 0, 0])
                delta[0] += stats.run_time_ns - before[name].run_time_ns
                delta[1] += stats.run_count - before[name].run_count
                delta[2] += stats.events_lost
    finally:
        cgroup.remove()

    off_median, on_median = statistics.median(r.wall_s for r in off), statistics.median(r.wall_s for r in on)
    off_cpu, on_cpu = statistics.median(r.cpu_s for r in off), statistics.median(r.cpu_s for r in on)
    slowdown = (on_median / off_median - 1) * 100
    cpu_slowdown = (on_cpu / off_cpu - 1) * 100
    reader_us = statistics.median(r.reader_cpu_s for r in on) / count * 1e6
    print(f"load: {count} x fork+exec /bin/true in a watched cgroup, {rounds} rounds each way; events sent: "
          f"{', '.join(sorted(kind.name.lower() for kind in event_kinds))}")
    print(f"probes off (baseline): median wall {off_median:.3f} s ({count / off_median:.0f} processes/s), "
          f"load CPU {off_cpu:.3f} s")
    print(f"probes on:             median wall {on_median:.3f} s ({count / on_median:.0f} processes/s), "
          f"load CPU {on_cpu:.3f} s")
    print(f"slowdown: wall {slowdown:+.2f} %, load CPU time {cpu_slowdown:+.2f} %  (target < 2 %)")
    print(f"event reader (a thread of this process): {reader_us:.1f} us CPU per load process")
    per_program = {}
    print(f"{'program':<22}{'runs':>10}{'mean ns/run':>14}{'lost':>6}")
    for name, (run_time_ns, run_count, lost) in runs.items():
        mean = run_time_ns / run_count if run_count else None
        per_program[name] = {"runs": run_count, "mean_ns": round(mean, 1) if mean else None, "lost": lost}
        print(f"{name:<22}{run_count:>10}{(f'{mean:.0f}' if mean else '-'):>14}{lost:>6}")
    not_loaded = sorted(name for name, status in statuses.items() if not status.loaded)
    print(f"not loaded here: {', '.join(not_loaded) or 'none'}")
    print(json.dumps({"bench": "bpf_overhead", "processes": count, "rounds": rounds, "all_events": args.all_events,
                      "off_median_s": round(off_median, 4), "on_median_s": round(on_median, 4),
                      "slowdown_pct": round(slowdown, 2), "off_cpu_s": round(off_cpu, 4),
                      "on_cpu_s": round(on_cpu, 4), "cpu_slowdown_pct": round(cpu_slowdown, 2),
                      "reader_cpu_us_per_process": round(reader_us, 2), "programs": per_program,
                      "not_loaded": not_loaded}))


if __name__ == "__main__":
    main()
