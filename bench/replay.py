"""Multi-tenant isolation replaying real agent traces (SPEC section 5), in the vm tier (real cgroup v2).

One high-priority and two low-priority sandboxes each replay one agent run from the traces file: every tool
call becomes a real process whose memory follows the run's samples inside that call (memory above what the
run held when the call began), allocated and freed in 1 MiB steps, each step timed (allocate + touch).
A sandbox runs its calls one after another, as an agent does.

The schedule, chosen so that the sandboxes really contend for memory: the high-priority run is the one whose
busiest window peaks highest (a spiky agent), the low-priority runs the two others that hold the most memory
over their busiest windows (heavy background agents); a run's busiest window is the --quick 150 s (else
600 s) whose tool calls hold the most byte-seconds, and the three windows start together. Time is compressed
(--speed) and each run's memory scaled so that its largest replayed call takes 75% of the "host": a parent
cgroup whose memory.max (the budget) is below the three runs' summed peaks (2.25x the budget). Calls with no
sample inside them (shorter than the sampling) hold no known memory and are not replayed. Calls still
running when a run reaches its time limit are killed and count as not finished, in every run alike.

Three runs on the same schedule:
  baseline_no_isolation   calls in their own cgroups, no limits: the budget's OOM killer picks victims
  baseline_static_limits  each sandbox held to an equal third of the budget (memory.max per sandbox)
  hostwarden              the real daemon with enforcement (ladder, memory.low, OOM preference by priority),
                          calls begun and ended through its API; its durations compressed as time is

Per run: high_survival (fraction of high-priority calls that finished), high_p95_alloc_ms (p95 of the
high-priority calls' 1 MiB allocation times, over the calls that finished), low_work_completed (fraction
of low-priority calls that finished). Last line of --json: the three results.

    tests/vm/run --timeout 900 -- .venv/bin/python bench/replay.py --quick --json
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from hostwarden.capabilities import find_cgroup2_mount
from hostwarden.cgroups.limits import Limits
from hostwarden.cgroups.tree import CgroupTree
from hostwarden.client import Client
from hostwarden.policy.schema import Ladder
from hostwarden.proto import warden_pb2 as pb

MiB = 2**20
REPO = Path(__file__).resolve().parents[1]
DEFAULT_TRACES = REPO.parent / "shared" / "traces" / "agent-tasks.jsonl.gz"
PEAK_SHARE = 0.75  # the largest replayed call of each run takes this share of the budget
SANDBOXES = (("high", "high"), ("low-a", "low"), ("low-b", "low"))

# The replayed tool call: waits for "go" on stdin (it is placed in its cgroup first), then follows
# argv[1] = [[seconds, bytes], ...]; prints its allocation times (ms per 1 MiB) when it reaches the end.
WORKER = r"""
import json, sys, time
points = json.loads(sys.argv[1])
sys.stdin.readline()
held, latencies, start = [], [], time.monotonic()
for at, target in points:
    delay = start + at - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    while len(held) > target >> 20:
        held.pop()
    while len(held) < target >> 20:
        began = time.perf_counter()
        chunk = bytearray(1 << 20)
        chunk[::4096] = b"x" * 256
        held.append(chunk)
        latencies.append((time.perf_counter() - began) * 1000)
print(json.dumps(latencies))
"""

# The daemon's policy for the replay: calls may use the whole budget (as without isolation) and the ladder
# arbitrates; its thresholds are the defaults, its durations the defaults divided by the time compression.
POLICY = """
[defaults]
memory_max = {budget}
memory_high = 1.0
[limits]
memory_max = {budget}
[priorities.high]
memory_low = 1.0
[ladder]
{durations}
"""
COMPRESSED_DURATIONS = ("freeze_after", "thaw_after", "kill_frozen_after", "kill_stall_after", "post_action_delay")


def replay_policy(budget: int, speed: float) -> str:
    defaults = Ladder()
    return POLICY.format(budget=budget, durations="\n".join(
        f"{key} = {getattr(defaults, key) / speed:g}" for key in COMPRESSED_DURATIONS))


@dataclass(frozen=True)
class CallProfile:
    start: float  # seconds after the run's start, compressed
    points: list[tuple[float, int]]  # (seconds after the call's start, bytes), compressed and scaled


@dataclass
class Outcome:
    call: str  # sandbox#number
    priority: str
    finished: bool
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    cut_off: bool = False  # still running, or not started, at the run's time limit


def call_profiles(run: dict) -> list[tuple[float, list[tuple[float, int]]]]:
    """Each tool call with samples inside it: (start, [(offset, bytes above what the run held at its start)])."""
    samples = run["samples"]
    profiles = []
    for call in sorted((c for c in run["tool_calls"] if c["start"] is not None and c["end"] is not None),
                       key=lambda c: c["start"]):
        before = [m for t, m, _cpu in samples if t <= call["start"]]
        baseline = before[-1] if before else samples[0][1]
        inside = [(t - call["start"], max(0, m - baseline)) for t, m, _cpu in samples
                  if call["start"] <= t <= call["end"]]
        if inside:
            profiles.append((call["start"], inside))
    return profiles


def memory_time(points: list[tuple[float, int]]) -> float:
    """Byte-seconds a call holds: each sample's memory until the next one (the last one for a second)."""
    ends = [t for t, _m in points[1:]] + [points[-1][0] + 1.0]
    return sum(m * (end - t) for (t, m), end in zip(points, ends, strict=True))


def busiest_window(profiles: list[tuple[float, list]], window_s: float) -> list[tuple[float, list]]:
    """The calls starting within the window_s of the run that hold the most byte-seconds, the window's
    start moved to 0 (windows start at a call's start)."""
    best: tuple[float, float] = (-1.0, 0.0)
    for opening, _points in profiles:
        held = sum(memory_time(points) for start, points in profiles if opening <= start <= opening + window_s)
        best = max(best, (held, -opening))
    opening = -best[1]
    return [(start - opening, points) for start, points in profiles if opening <= start <= opening + window_s]


def pick_runs(path: Path, window_s: float) -> list[tuple[str, list[tuple[float, list[tuple[float, int]]]]]]:
    """High priority: the run whose busiest window peaks highest (a spiky agent). Low priority: the two other
    runs holding the most byte-seconds in their busiest windows (memory-heavy background agents)."""
    with gzip.open(path, "rt") as handle:
        runs = [json.loads(line) for line in handle]
    windows = []
    for run in runs:
        profiles = busiest_window(call_profiles(run), window_s)
        if profiles:
            windows.append((run["id"], profiles))
    high = max(windows, key=lambda w: (max(m for _s, points in w[1] for _t, m in points), w[0]))
    heavy = sorted((w for w in windows if w is not high),
                   key=lambda w: (-sum(memory_time(points) for _s, points in w[1]), w[0]))
    return [high, *heavy[:2]]


def schedule(picked: list[tuple[str, list]], speed: float, budget: int) -> list[list[CallProfile]]:
    """Each run scaled on its own, so that its largest call takes PEAK_SHARE of the budget."""
    plan = []
    for _id, profiles in picked:
        scale = PEAK_SHARE * budget / max(m for _s, points in profiles for _t, m in points)
        plan.append([CallProfile(start / speed, [(t / speed, int(m * scale)) for t, m in points])
                     for start, points in profiles])
    return plan


def p95(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def result(outcomes: list[Outcome]) -> dict[str, float | int | None]:
    high = [o for o in outcomes if o.priority == "high"]
    low = [o for o in outcomes if o.priority == "low"]
    latency = p95([ms for o in high if o.finished for ms in o.latencies_ms])
    return {"high_survival": sum(o.finished for o in high) / len(high),
            "high_p95_alloc_ms": round(latency, 3) if latency is not None else None,
            "low_work_completed": sum(o.finished for o in low) / len(low),
            "high_calls": len(high), "low_calls": len(low), "cut_off": sum(o.cut_off for o in outcomes)}


# Places a waiting worker (its pid) for one call of a sandbox; returns a cleanup to run once it exited.
Placer = Callable[[str, int, int], Callable[[], None]]


def replay(plan: list[list[CallProfile]], place: Placer, limit_s: float) -> list[Outcome]:
    """Every sandbox's calls one after another from the same start; each worker placed before it runs.
    A call still running limit_s after the start is killed and a call not started by then is not run: both
    count as not finished (the same cut-off for every run, so that a stuck call cannot stall the benchmark)."""
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    began = time.monotonic()

    def sandbox(index: int) -> None:
        name, priority = SANDBOXES[index]
        for number, call in enumerate(plan[index]):
            delay = began + call.start - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            finished, latencies, cut_off, started = False, [], True, time.monotonic()
            if started < began + limit_s:
                worker = subprocess.Popen([sys.executable, "-S", "-c", WORKER, json.dumps(call.points)],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.DEVNULL)
                cleanup = place(name, number, worker.pid)
                try:
                    output, _ = worker.communicate(b"go\n", timeout=max(0.0, began + limit_s - time.monotonic()))
                    cut_off = False
                except subprocess.TimeoutExpired:
                    worker.kill()  # SIGKILL reaches a frozen cgroup v2 task too
                    output, _ = worker.communicate()
                cleanup()
                finished = worker.returncode == 0
                latencies = json.loads(output) if finished else []
            with lock:
                outcomes.append(Outcome(f"{name}#{number}", priority, finished, time.monotonic() - started,
                                        latencies, cut_off))

    threads = [threading.Thread(target=sandbox, args=(i,)) for i in range(len(SANDBOXES))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


@contextmanager
def host_cgroup(mount: Path, budget: int) -> Iterator[Path]:
    """The "host": a cgroup with memory.max = budget, controllers on for what goes below it."""
    host = mount / f"hostwarden-replay-{os.getpid()}"
    host.mkdir()
    try:
        (host / "memory.max").write_text(str(budget))
        (host / "memory.swap.max").write_text("0")
        (host / "cgroup.subtree_control").write_text("+memory")
        yield host
    finally:
        for directory in sorted((p for p in [host, *host.rglob("*")] if p.is_dir()), key=lambda p: -len(p.parts)):
            if (directory / "cgroup.kill").exists():
                (directory / "cgroup.kill").write_text("1")
            for _ in range(100):
                try:
                    directory.rmdir()
                    break
                except OSError:
                    time.sleep(0.02)


def run_baseline(mount: Path, budget: int, plan: list[list[CallProfile]], limit_s: float, *,
                 static: bool) -> list[Outcome]:
    with host_cgroup(mount, budget) as host:
        tree = CgroupTree(host)
        for name, _priority in SANDBOXES:
            path = tree.create_sandbox(name)
            if static:
                tree.set_limits(path, Limits(memory_max=budget // len(SANDBOXES)))

        def place(name: str, number: int, pid: int) -> Callable[[], None]:
            path, _ = tree.create_call(name, f"c{number}", Limits())
            tree.attach(path, pid)
            return lambda: tree.remove(path, timeout=5)

        return replay(plan, place, limit_s)


def run_hostwarden(mount: Path, budget: int, plan: list[list[CallProfile]], limit_s: float,
                   speed: float) -> tuple[list[Outcome], list[str]]:
    """The daemon without its bpf monitor and attestation (slow to start under emulation, and not what this
    measures): the ladder, memory.low and OOM preference are all in force."""
    with host_cgroup(mount, budget) as host, tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        socket = workdir / "hw.sock"
        (workdir / "policy.toml").write_text(replay_policy(budget, speed))
        (workdir / "hostwarden.toml").write_text(
            f'[daemon]\nsocket = "{socket}"\nstate_dir = "{workdir / "state"}"\ncgroup_root = "{host / "root"}"\n'
            f'policy = "{workdir / "policy.toml"}"\n[metrics]\naddress = ""\n[bpf]\nenabled = false\n'
            '[attest]\nenabled = false\n')
        log = workdir / "daemon.log"
        daemon = subprocess.Popen([sys.executable, "-m", "hostwarden", "daemon", "--config",
                                   str(workdir / "hostwarden.toml")], stdout=log.open("wb"), stderr=subprocess.STDOUT)
        try:
            started = time.monotonic()
            while "serving on" not in log.read_text():
                if daemon.poll() is not None or time.monotonic() > started + 120:
                    raise SystemExit(f"daemon did not start:\n{log.read_text()[-2000:]}")
                time.sleep(0.1)
            print(f"hostwarden daemon serving after {time.monotonic() - started:.1f} s", flush=True)
            # The daemon leaves its root's protection to the root's owner (here, this benchmark).
            (host / "root" / "memory.low").write_text("max")
            with Client(str(socket)) as client:
                for name, priority in SANDBOXES:
                    client.call("CreateSandbox", pb.CreateSandboxRequest(
                        name=name, priority=pb.PRIORITY_HIGH if priority == "high" else pb.PRIORITY_LOW))
                priorities = dict(SANDBOXES)

                def place(name: str, _number: int, pid: int) -> Callable[[], None]:
                    level = pb.PRIORITY_HIGH if priorities[name] == "high" else pb.PRIORITY_LOW
                    reply = client.call("BeginToolCall", pb.BeginToolCallRequest(
                        sandbox=name, tool="replay", pid=pid, intent=pb.Intent(priority=level)))
                    return lambda: client.call("EndToolCall", pb.EndToolCallRequest(call_id=reply.call_id))

                outcomes = replay(plan, place, limit_s)
                actions = [f"{call.sandbox} {action.kind} {action.reason}: {action.detail}"
                           for call in client.call("ListToolCalls", pb.ListToolCallsRequest(limit=10000)).calls
                           for action in call.actions]
        finally:
            daemon.terminate()
            daemon.wait(timeout=30)
        return outcomes, actions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traces", type=Path, default=DEFAULT_TRACES, help=f"default {DEFAULT_TRACES}")
    parser.add_argument("--quick", action="store_true",
                        help="replay each run's busiest 150 s, at most 80 s a run (else 600 s, at most 300 s)")
    parser.add_argument("--json", action="store_true", help="end with the results as one JSON line")
    parser.add_argument("--budget-mib", type=int, default=640, help="the host's memory (default 640 MiB)")
    parser.add_argument("--speed", type=float, default=10.0, help="time compression (default 10x)")
    args = parser.parse_args()
    mount = find_cgroup2_mount(Path("/proc/self/mountinfo").read_text())
    if os.geteuid() != 0 or mount is None or "memory" not in (mount / "cgroup.subtree_control").read_text().split():
        raise SystemExit("bench/replay.py needs root and cgroup v2 with the memory controller enabled at the root: "
                         "run it in the vm tier (tests/vm/run -- .venv/bin/python bench/replay.py ...)")
    if not args.traces.is_file():
        raise SystemExit(f"no traces at {args.traces}: pass --traces FILE (agent-tasks.jsonl.gz)")
    if args.speed <= 0 or args.budget_mib <= 0:
        raise SystemExit("--speed and --budget-mib must be positive")
    budget = args.budget_mib * MiB
    window, limit_s = (150.0, 80.0) if args.quick else (600.0, 300.0)
    picked = pick_runs(args.traces, window)
    plan = schedule(picked, args.speed, budget)
    summed_peaks = sum(max((m for c in calls for _t, m in c.points), default=0) for calls in plan)
    print(f"traces: {', '.join(run_id for run_id, _ in picked)} (high, low-a, low-b), each run's busiest "
          f"{window:.0f} s (most memory held in tool calls), the three windows started together")
    print(f"replay: {args.speed:g}x faster than recorded; each run's memory scaled so its largest call is "
          f"{PEAK_SHARE:.0%} of the {args.budget_mib} MiB budget; summed peaks {summed_peaks / MiB:.0f} MiB; "
          f"calls: {', '.join(str(len(c)) for c in plan)}; calls still running {limit_s:.0f} s after a run's "
          "start are cut off (not finished)")
    print(f"hostwarden policy (durations = defaults / {args.speed:g}):{replay_policy(budget, args.speed)}")
    runs: dict[str, Callable[[], list[Outcome]]] = {
        "baseline_no_isolation": lambda: run_baseline(mount, budget, plan, limit_s, static=False),
        "baseline_static_limits": lambda: run_baseline(mount, budget, plan, limit_s, static=True),
    }
    actions: list[str] = []

    def with_daemon() -> list[Outcome]:
        outcomes, taken = run_hostwarden(mount, budget, plan, limit_s, args.speed)
        actions.extend(taken)
        return outcomes

    runs["hostwarden"] = with_daemon
    results: dict[str, dict[str, float | int | None]] = {}
    for name, run in runs.items():
        began = time.monotonic()
        outcomes = run()
        results[name] = result(outcomes)
        print(f"{name:<23} {results[name]} ({time.monotonic() - began:.0f} s)", flush=True)
        lost = [f"{o.call} ({'cut off' if o.cut_off else 'killed'} after {o.seconds:.1f} s)"
                for o in outcomes if not o.finished]
        print(f"  not finished: {', '.join(lost) or 'none'}")
    print(f"hostwarden actions ({len(actions)}):", *(f"  {action}" for action in actions), sep="\n")
    if args.json:
        print(json.dumps({key: results[key] for key in ("hostwarden", "baseline_no_isolation",
                                                        "baseline_static_limits")}))

if __name__ == "__main__":
    main()
