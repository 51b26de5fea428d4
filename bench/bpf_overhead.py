"""eBPF overhead on a fork/exec-heavy load: thousands of /bin/true inside a watched cgroup, with
the probes off and on (alternating rounds), and each program's mean cost per run
(kernel BPF run-time statistics). Last line of stdout: JSON."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time

from _bpf_bench import ScratchCgroup

from hostwarden.bpf import BpfMonitor

LOOP = 'i=0; while [ "$i" -lt {count} ]; do /bin/true; i=$((i+1)); done'


def run_load(cgroup: ScratchCgroup, count: int) -> float:
    started = time.perf_counter()
    subprocess.run(["/bin/sh", "-c", LOOP.format(count=count)], preexec_fn=cgroup.joiner(), check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer processes and rounds")
    args = parser.parse_args()
    count, rounds = (500, 3) if args.quick else (3000, 5)

    cgroup = ScratchCgroup("bpf-overhead")
    try:
        run_load(cgroup, count // 5)  # warm the page cache and the shell
        off: list[float] = []
        on: list[float] = []
        runs: dict[str, list[int]] = {}
        for _ in range(rounds):
            off.append(run_load(cgroup, count))
            monitor = BpfMonitor(lambda _event: None)
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

    off_median, on_median = statistics.median(off), statistics.median(on)
    slowdown = (on_median / off_median - 1) * 100
    print(f"load: {count} x fork+exec /bin/true in a watched cgroup, {rounds} rounds each way")
    print(f"probes off (baseline): median {off_median:.3f} s ({count / off_median:.0f} processes/s)")
    print(f"probes on:             median {on_median:.3f} s ({count / on_median:.0f} processes/s)")
    print(f"slowdown: {slowdown:+.2f} %  (target < 2 %)")
    per_program = {}
    print(f"{'program':<22}{'runs':>10}{'mean ns/run':>14}{'lost':>6}")
    for name, (run_time_ns, run_count, lost) in runs.items():
        mean = run_time_ns / run_count if run_count else None
        per_program[name] = {"runs": run_count, "mean_ns": round(mean, 1) if mean else None, "lost": lost}
        print(f"{name:<22}{run_count:>10}{(f'{mean:.0f}' if mean else '-'):>14}{lost:>6}")
    not_loaded = sorted(name for name, status in statuses.items() if not status.loaded)
    print(f"not loaded here: {', '.join(not_loaded) or 'none'}")
    print(json.dumps({"bench": "bpf_overhead", "processes": count, "rounds": rounds,
                      "off_median_s": round(off_median, 4), "on_median_s": round(on_median, 4),
                      "slowdown_pct": round(slowdown, 2), "programs": per_program, "not_loaded": not_loaded}))


if __name__ == "__main__":
    main()
