"""Where a lifecycle program's mean cost per run comes from: its runs' times as a log2 histogram.

The kernel's run-time statistics give a program's total run time and runs only, and time each run from its start
to its end: an interrupt inside a run, and a vCPU its host deschedules, count as run time. Here a copy of the
program (`--program`, one of the tracepoint programs of bpf/lifecycle.bpf.c) times its own body with
bpf_ktime_get_ns into a histogram, on the load of bench/bpf_overhead.py (rounds of fork+exec /bin/true in a
watched cgroup, the daemon's programs and event kinds), beside the statistics' mean for the same runs: the
timing and the histogram add to the statistics' figure. Last line of stdout: JSON."""

from __future__ import annotations

import argparse
import json

from _bpf_bench import ScratchCgroup
from bpf_overhead import run_load

from hostwarden.bpf import BpfMonitor
from hostwarden.bpf.programs import DEFAULT_PROGRAMS, Tracepoint, packaged_unit
from hostwarden.monitor import MONITOR_DEDUP_EXECS, MONITOR_EVENT_KINDS

TIMED = {spec.name: spec.attach for spec in DEFAULT_PROGRAMS
         if spec.unit == "lifecycle" and isinstance(spec.attach, Tracepoint)}
LONG_RUN_NS = 4096  # runs this long or longer: far beyond the program's work, an interrupt or the host inside them


def timed_unit(tracepoint: Tracepoint) -> str:
    """bpf/lifecycle.bpf.c with `tracepoint`'s program renamed to a function that a new program of the same
    tracepoint calls between two clock reads. The new program comes first: bcc defines a tracepoint's argument
    struct where its TRACEPOINT_PROBE is."""
    source = packaged_unit("lifecycle")
    probe = f"TRACEPOINT_PROBE({tracepoint.category}, {tracepoint.event})\n{{"
    if source.count(probe) != 1:
        raise SystemExit(f"bpf/lifecycle.bpf.c does not define {tracepoint} as `{probe}` once")
    body = f"static __always_inline int timed_body(struct {tracepoint.function} *args)"
    timed = f"""struct {tracepoint.function};
{body};
BPF_HISTOGRAM(run_time_log2, int, 64);
{probe}
    u64 start = bpf_ktime_get_ns();
    timed_body(args);
    run_time_log2.increment((int)bpf_log2l(bpf_ktime_get_ns() - start));
    return 0;
}}

{body}
{{"""
    return source.replace(probe, timed)


def bucket_floor(bucket: int) -> int:
    """The least run time, in ns, of histogram bucket `bucket` (bpf_log2l: [2^(bucket-1), 2^bucket))."""
    return 1 << (bucket - 1) if bucket else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--program", choices=sorted(TIMED), default="process_exit", help="default process_exit")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the load (default 5)")
    parser.add_argument("--processes", type=int, default=1500, help="processes per round (default 1500)")
    args = parser.parse_args()
    if args.rounds < 1 or args.processes < 1:
        parser.error("--rounds and --processes must be at least 1")
    tracepoint = TIMED[args.program]
    monitor = BpfMonitor(lambda _event: None, extra_units={"lifecycle": timed_unit(tracepoint)},
                         event_kinds=MONITOR_EVENT_KINDS, dedup_execs=MONITOR_DEDUP_EXECS, run_time_stats="always")
    cgroup = ScratchCgroup("bpf-run-times")
    rounds = []
    try:
        statuses = monitor.start()
        if not statuses[args.program].loaded:
            raise SystemExit(f"{args.program} did not load: {statuses[args.program].detail}")
        monitor.watch(cgroup.id, spike_threshold_bytes=1 << 40)
        run_load(cgroup, max(1, args.processes // 10))  # warm-up
        for _ in range(args.rounds):
            before, counted = monitor.program_stats()[args.program], monitor.histogram("run_time_log2")
            run_load(cgroup, args.processes)
            after = monitor.program_stats()[args.program]
            runs = after.run_count - before.run_count
            buckets = {bucket: count - counted.get(bucket, 0) for bucket, count in monitor.histogram(
                "run_time_log2").items() if count > counted.get(bucket, 0)}
            mean = round((after.run_time_ns - before.run_time_ns) / runs, 1) if runs else None
            rounds.append({"runs": runs, "stats_mean_ns": mean,
                           "runs_by_floor_ns": {bucket_floor(b): c for b, c in sorted(buckets.items())},
                           "long_runs": sum(c for b, c in buckets.items() if bucket_floor(b) >= LONG_RUN_NS)})
    finally:
        monitor.stop()
        cgroup.remove()

    print(f"{args.program} with its body timed, {args.rounds} rounds of {args.processes} x fork+exec /bin/true in a "
          "watched cgroup (the daemon's programs and event kinds); runs per body time (ns, from the bucket's floor "
          "to twice it)")
    for number, result in enumerate(rounds):
        counts = ", ".join(f"{floor}+: {count}" for floor, count in result["runs_by_floor_ns"].items())
        print(f"round {number}: statistics' mean {result['stats_mean_ns']} ns over {result['runs']} runs; {counts}; "
              f"runs of {LONG_RUN_NS} ns or more: {result['long_runs']}")
    print(json.dumps({"bench": "bpf_run_times", "program": args.program, "processes_per_round": args.processes,
                      "rounds": rounds}))


if __name__ == "__main__":
    main()
