"""eBPF overhead on a fork/exec-heavy load: short rounds of /bin/true processes inside a watched cgroup,
in pairs of one round with the probes off and one with them on (order alternating from pair to pair,
the programs loaded afresh for each on round), and each program's mean cost per run (kernel BPF
run-time statistics).

The slowdown is the median over pairs of the on/off ratio of the load's wall time and of its CPU time
(user + system of the shell and its children: the probes run in the context of the process they
observe), with a distribution-free 95 % confidence interval of that median; CPU time is far less
disturbed by other work on a shared machine. The kernel's run-time statistics are on during the
on rounds as `--run-time-stats` says (default: sampled, as in the daemon: they cost about 60 ns
per program run here). Each program's mean cost per run comes from cost rounds with the statistics
on, longer than a slowdown round and spread over the run (the host's state drifts from minute to
minute): over all their runs, and the median and range of the rounds' means. Beside the slowdown,
what the programs' own run time accounts for: their run time in those rounds per load process, over
the load's CPU time per process with the probes off (programs run for every process on the host, so
this is an upper bound for the load). The event reader's CPU (a thread of this process: its CPU
time with the probes on minus off) is reported apart. Last line of stdout: JSON."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import resource
import statistics
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from _bpf_bench import ScratchCgroup

from hostwarden.bpf import BpfMonitor, EventKind
from hostwarden.bpf.monitor import RUN_TIME_STATS_MODES
from hostwarden.bpf.programs import DEFAULT_PROGRAMS, ProgramSpec, RawTracepoint, Tracepoint
from hostwarden.monitor import MONITOR_DEDUP_EXECS, MONITOR_EVENT_KINDS

LOOP = 'i=0; while [ "$i" -lt {count} ]; do /bin/true; i=$((i+1)); done'
CONFIDENCE = 0.95
# Before each measured round, an unmeasured one this much shorter: loading the programs (a clang run) leaves
# the CPU caches cold, and the rounds with the probes off must start from the same state.
WARM_UP_FRACTION = 10
# The per-program costs: rounds this many times a slowdown round's length, with run-time statistics on, spread
# over the run (after every few pairs): one round alone measures one second of a host whose state drifts.
COST_ROUND_FACTOR = 5


@dataclass(frozen=True)
class LoadRun:
    wall_s: float
    cpu_s: float  # user + system time of the load's processes
    own_cpu_s: float  # this process's own CPU meanwhile (with the probes on, its event reader thread's too)


@dataclass(frozen=True)
class Slowdown:
    """Median over pairs of on/off - 1, in %, with its confidence interval."""

    median_pct: float
    low_pct: float
    high_pct: float

    def __str__(self) -> str:
        return f"{self.median_pct:+.2f} % (95 % CI {self.low_pct:+.2f} .. {self.high_pct:+.2f} %)"

    def as_json(self) -> dict[str, float]:
        return {"median_pct": round(self.median_pct, 2), "ci_low_pct": round(self.low_pct, 2),
                "ci_high_pct": round(self.high_pct, 2)}


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def run_load(cgroup: ScratchCgroup, count: int) -> LoadRun:
    children, own = _cpu(resource.RUSAGE_CHILDREN), _cpu(resource.RUSAGE_SELF)
    started = time.perf_counter()
    # The shell joins the cgroup itself: a preexec_fn would make Python fork this process (large, with bcc and
    # clang loaded while the probes are on) instead of vfork, and the child's teardown of that copy would count
    # as load CPU.
    script = f"echo $$ > {cgroup.path / 'cgroup.procs'} && {LOOP.format(count=count)}"
    subprocess.run(["/bin/sh", "-c", script], check=True)
    wall = time.perf_counter() - started
    return LoadRun(wall, _cpu(resource.RUSAGE_CHILDREN) - children, _cpu(resource.RUSAGE_SELF) - own)


def median_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(median, low, high): the interval between order statistics that holds the median with at least
    `confidence` whatever the distribution (binomial with p = 1/2); (min, max) when too few values."""
    ordered = sorted(values)
    n = len(ordered)
    below, rank = 0.0, 0  # P(Binomial(n, 1/2) <= rank - 1)
    while rank < n // 2 and below + math.comb(n, rank) / 2 ** n <= (1 - confidence) / 2:
        below += math.comb(n, rank) / 2 ** n
        rank += 1
    low, high = (ordered[rank - 1], ordered[n - rank]) if rank else (ordered[0], ordered[-1])
    return statistics.median(ordered), low, high


def slowdown(off: Sequence[float], on: Sequence[float]) -> Slowdown:
    median, low, high = median_interval([b / a for a, b in zip(off, on, strict=True)])
    return Slowdown((median - 1) * 100, (low - 1) * 100, (high - 1) * 100)


def empty_programs() -> tuple[list[ProgramSpec], dict[str, str]]:
    """The tracepoint programs with empty bodies: what the kernel's tracepoint path costs before any program code."""
    specs = [spec for spec in DEFAULT_PROGRAMS if isinstance(spec.attach, Tracepoint | RawTracepoint)]
    units: dict[str, str] = {}
    for spec in specs:
        if isinstance(spec.attach, RawTracepoint):
            body = f"int {spec.attach.function}(struct bpf_raw_tracepoint_args *ctx) {{ return 0; }}\n"
        else:
            body = f"TRACEPOINT_PROBE({spec.attach.category}, {spec.attach.event}) {{ return 0; }}\n"
        units[spec.unit] = units.get(spec.unit, "") + body
    return specs, units


def measure_off(cgroup: ScratchCgroup, count: int, monitor: BpfMonitor) -> LoadRun:
    """A round without the programs, after the same procedure as an on round's (a clang run, loading and
    attaching: they disturb the round after them, by about +0.4 % when only the on rounds had them), with
    the programs unloaded again before it starts. `--control` uses it for both rounds of a pair (A/A)."""
    monitor.start()
    monitor.stop()
    run_load(cgroup, count // WARM_UP_FRACTION)
    return run_load(cgroup, count)


@contextlib.contextmanager
def programs_loaded(cgroup: ScratchCgroup, count: int, monitor: BpfMonitor) -> Iterator[list[str]]:
    """`monitor`'s programs loaded afresh and watching the cgroup, after the warm-up round of a `count` round;
    yields the programs that did not load."""
    statuses = monitor.start()
    try:
        monitor.watch(cgroup.id, spike_threshold_bytes=1 << 40)
        run_load(cgroup, count // WARM_UP_FRACTION)
        yield sorted(name for name, status in statuses.items() if not status.loaded)
    finally:
        monitor.stop()


def measure_on(cgroup: ScratchCgroup, count: int, monitor: BpfMonitor) -> tuple[LoadRun, list[str]]:
    """One round with `monitor`'s programs loaded afresh; also the programs that did not load."""
    with programs_loaded(cgroup, count, monitor) as not_loaded:
        return run_load(cgroup, count), not_loaded


@dataclass(frozen=True)
class RoundCost:
    """One program's run time, runs and lost events over one cost round."""

    run_time_ns: int
    runs: int
    lost: int

    @classmethod
    def total(cls, costs: Sequence[RoundCost]) -> RoundCost:
        return cls(sum(cost.run_time_ns for cost in costs), sum(cost.runs for cost in costs),
                   sum(cost.lost for cost in costs))


def measure_costs(cgroup: ScratchCgroup, count: int, monitor: BpfMonitor) -> dict[str, RoundCost]:
    """Each program's run time, runs and lost events over `count` load processes, run-time statistics on."""
    with programs_loaded(cgroup, count, monitor):
        before = monitor.program_stats()
        run_load(cgroup, count)
        after = monitor.program_stats()
    return {name: RoundCost(stats.run_time_ns - before[name].run_time_ns, stats.run_count - before[name].run_count,
                            stats.events_lost) for name, stats in after.items()}


@dataclass(frozen=True)
class ProgramCost:
    """One program over all cost rounds: its total, and the spread of the rounds' means."""

    total: RoundCost
    round_means_ns: list[float]

    @classmethod
    def of(cls, rounds: Sequence[RoundCost]) -> ProgramCost:
        return cls(RoundCost.total(rounds), [cost.run_time_ns / cost.runs for cost in rounds if cost.runs])

    @property
    def mean_ns(self) -> float | None:
        """Mean ns per run over all runs."""
        return self.total.run_time_ns / self.total.runs if self.total.runs else None

    def as_json(self) -> dict[str, object]:
        means = self.round_means_ns
        return {"runs": self.total.runs, "mean_ns": round(self.mean_ns, 1) if self.mean_ns else None,
                "round_median_ns": round(statistics.median(means), 1) if means else None,
                "round_min_ns": round(min(means), 1) if means else None,
                "round_max_ns": round(max(means), 1) if means else None,
                "round_means_ns": [round(mean, 1) for mean in means], "lost": self.total.lost}


def _ns(value: object) -> str:
    return "-" if value is None else f"{value:.0f}"


def cost_round_after(pair: int, pairs: int, cost_rounds: int) -> bool:
    """Whether a cost round follows pair `pair`: `cost_rounds` of them spread evenly over `pairs`, the last one
    after the last pair."""
    return (pair + 1) * cost_rounds // pairs > pair * cost_rounds // pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer pairs of rounds")
    parser.add_argument("--pairs", type=int, help="pairs of rounds (default 40, --quick 10)")
    parser.add_argument("--cost-rounds", type=int, help="rounds measuring each program's cost, spread over the "
                        "pairs (default 10, --quick 3, or --pairs if fewer; at most --pairs)")
    parser.add_argument("--processes", type=int, default=300, help="processes per round (default 300)")
    parser.add_argument("--all-events", action="store_true",
                        help="send fork and exit events to user space too (the daemon does not ask for them)")
    parser.add_argument("--every-exec", action="store_true",
                        help="an exec event for every exec (the daemon deduplicates them in the kernel)")
    parser.add_argument("--empty-programs", action="store_true",
                        help="attach empty programs to the same tracepoints: the cost of the tracepoints themselves")
    parser.add_argument("--every-change-rss", action="store_true",
                        help="count RSS at every change on kmem:rss_stat instead of sampling it (as before "
                        "2026-11-28 10:00 UTC)")
    parser.add_argument("--programs", help="comma-separated program names to load (default: all): which program "
                        "the slowdown is in")
    parser.add_argument("--run-time-stats", choices=RUN_TIME_STATS_MODES, default="sampled",
                        help="when the kernel counts the programs' run time during the slowdown rounds (default: "
                        "sampled, the daemon's default); the per-program costs come from rounds of their own with "
                        "them on")
    parser.add_argument("--control", action="store_true",
                        help="A/A control: the 'on' rounds run like the 'off' ones")
    args = parser.parse_args()
    event_kinds = frozenset(EventKind) if args.all_events else MONITOR_EVENT_KINDS
    dedup_execs = MONITOR_DEDUP_EXECS and not args.every_exec
    count = args.processes
    pairs = args.pairs or (10 if args.quick else 40)
    cost_rounds = args.cost_rounds or min(3 if args.quick else 10, pairs)
    if pairs < 2 or count < 1:
        parser.error("--pairs must be at least 2 and --processes at least 1")
    if not 1 <= cost_rounds <= pairs:
        parser.error(f"--cost-rounds must be 1 to --pairs ({pairs}), got {cost_rounds}")

    specs, units = empty_programs() if args.empty_programs else (list(DEFAULT_PROGRAMS), {})
    if args.programs:
        chosen = set(args.programs.split(","))
        if unknown := chosen - {spec.name for spec in specs}:
            parser.error(f"unknown program(s) {', '.join(sorted(unknown))}: "
                         f"choose from {', '.join(spec.name for spec in specs)}")
        specs = [spec for spec in specs if spec.name in chosen]

    def monitor(run_time_stats: str = args.run_time_stats) -> BpfMonitor:
        return BpfMonitor(lambda _event: None, programs=specs, extra_units=units, event_kinds=event_kinds,
                          dedup_execs=dedup_execs, rss_sampling=not args.every_change_rss,
                          run_time_stats=run_time_stats)

    cgroup = ScratchCgroup("bpf-overhead")
    off: list[LoadRun] = []
    not_loaded: list[str] = []
    on: list[LoadRun] = []
    rounds: list[dict[str, RoundCost]] = []
    try:
        run_load(cgroup, count)  # warm the page cache and the shell
        for pair in range(pairs):
            if pair % 2:  # alternate the order, so that a drift of the machine falls on both sides
                off.append(measure_off(cgroup, count, monitor()))
            if args.control:
                on.append(measure_off(cgroup, count, monitor()))
            else:
                on_run, not_loaded = measure_on(cgroup, count, monitor())
                on.append(on_run)
            if not pair % 2:
                off.append(measure_off(cgroup, count, monitor()))
            if not args.control and cost_round_after(pair, pairs, cost_rounds):
                rounds.append(measure_costs(cgroup, count * COST_ROUND_FACTOR, monitor("always")))
    finally:
        cgroup.remove()

    wall = slowdown([r.wall_s for r in off], [r.wall_s for r in on])
    cpu = slowdown([r.cpu_s for r in off], [r.cpu_s for r in on])
    processes = count * pairs
    cost_processes = count * COST_ROUND_FACTOR * len(rounds)
    costs = {name: ProgramCost.of([cost[name] for cost in rounds if name in cost]) for name in rounds[0]} \
        if rounds else {}
    off_cpu_us = sum(r.cpu_s for r in off) / processes * 1e6
    on_cpu_us = sum(r.cpu_s for r in on) / processes * 1e6
    # All programs together: one reading of "mean per program run" (each program's is the stricter one).
    all_programs = ProgramCost.of([RoundCost.total(list(round_costs.values())) for round_costs in rounds])
    program_us = all_programs.total.run_time_ns / cost_processes / 1e3 if rounds else 0.0
    attributable_pct = program_us / off_cpu_us * 100
    reader_us = (sum(r.own_cpu_s for r in on) - sum(r.own_cpu_s for r in off)) / processes * 1e6
    off_wall, on_wall = statistics.median(r.wall_s for r in off), statistics.median(r.wall_s for r in on)

    print(f"load: {pairs} pairs of rounds (probes off, probes on), {count} x fork+exec /bin/true per round in a "
          f"watched cgroup; events sent: {', '.join(sorted(kind.name.lower() for kind in event_kinds))}; "
          f"exec events {'deduplicated' if dedup_execs else 'for every exec'}"
          f"{'; EMPTY programs (tracepoint cost only)' if args.empty_programs else ''}"
          f"{'; RSS counted at every change (kmem:rss_stat)' if args.every_change_rss else ''}"
          f"{'; programs: ' + ', '.join(spec.name for spec in specs) if args.programs else ''}"
          f"; run-time statistics {args.run_time_stats}"
          f"{'; CONTROL: the on rounds run without the programs, like the off rounds' if args.control else ''}")
    print(f"{'':<24}{'probes off (baseline)':>24}{'probes on':>16}")
    print(f"{'median wall per round':<24}{off_wall:>22.3f} s{on_wall:>14.3f} s")
    print(f"{'load CPU per process':<24}{off_cpu_us:>21.1f} us{on_cpu_us:>13.1f} us")
    print(f"slowdown, wall time:      {wall}")
    print(f"slowdown, load CPU time:  {cpu}  (target < 2 %)")
    print(f"programs' own run time:   {program_us:.2f} us per load process = {attributable_pct:.2f} % of the "
          "load's CPU time with the probes off (upper bound: runs of other processes included; from "
          f"{len(rounds)} rounds of {count * COST_ROUND_FACTOR} processes spread over the run, run-time statistics "
          "on, which cost about 60 ns per program run more)")
    print(f"event reader (a thread of this process): {reader_us:.1f} us CPU per load process (this process's "
          "CPU with the probes on minus off)")
    print(f"{'program':<22}{'runs':>10}{'runs/process':>14}{'mean ns/run':>14}{'rounds: median':>16}"
          f"{'min..max':>14}{'lost':>6}")
    for name, cost in [*costs.items(), ("all programs", all_programs)] if rounds else []:
        figures = cost.as_json()
        spread = "-" if figures["round_min_ns"] is None else \
            f"{_ns(figures['round_min_ns'])}..{_ns(figures['round_max_ns'])}"
        print(f"{name:<22}{cost.total.runs:>10}{cost.total.runs / cost_processes:>14.1f}"
              f"{_ns(figures['mean_ns']):>14}{_ns(figures['round_median_ns']):>16}{spread:>14}{cost.total.lost:>6}")
    print(f"not loaded here: {', '.join(not_loaded) or 'none'}")
    print(json.dumps({"bench": "bpf_overhead", "processes_per_round": count, "pairs": pairs,
                      "cost_rounds": len(rounds), "processes_per_cost_round": count * COST_ROUND_FACTOR,
                      "all_events": args.all_events, "dedup_execs": dedup_execs,
                      "empty_programs": args.empty_programs, "control": args.control,
                      "every_change_rss": args.every_change_rss,
                      "programs_loaded": [spec.name for spec in specs], "run_time_stats": args.run_time_stats,
                      "off_median_wall_s": round(off_wall, 4), "on_median_wall_s": round(on_wall, 4),
                      "off_cpu_us_per_process": round(off_cpu_us, 1), "on_cpu_us_per_process": round(on_cpu_us, 1),
                      "wall_slowdown": wall.as_json(), "cpu_slowdown": cpu.as_json(),
                      "program_us_per_process": round(program_us, 2), "attributable_pct": round(attributable_pct, 2),
                      "reader_cpu_us_per_process": round(reader_us, 2),
                      "programs": {name: cost.as_json() for name, cost in costs.items()},
                      "all_programs": all_programs.as_json(),
                      "not_loaded": not_loaded}))


if __name__ == "__main__":
    main()
