"""Multi-tenant isolation replaying real agent traces (SPEC section 5), in the vm tier (real cgroup v2).

One high-priority and two low-priority sandboxes each replay one agent run from the traces file: every tool
call becomes a real process whose memory follows the run's 1 Hz samples inside that call (memory above what
the run held when the call began), allocated and freed in 1 MiB steps, each step timed (allocate + touch).
A sandbox runs its calls one after another, as an agent does. Time is compressed (--speed) and each run's memory
scaled so that its largest replayed call takes 60% of the "host": a parent cgroup whose memory.max (the
budget) is below the three runs' summed peaks (1.8x the budget). Calls with no sample inside them (shorter than the 1 s
sampling) hold no known memory and are not replayed.

Three runs on the same schedule:
  baseline_no_isolation   calls in their own cgroups, no limits: the budget's OOM killer picks victims
  baseline_static_limits  each sandbox held to an equal third of the budget (memory.max per sandbox)
  hostwarden              the real daemon with enforcement (ladder, memory.low, OOM preference by priority)

Per run: high_survival (fraction of high-priority calls that finished), high_p95_alloc_ms (p95 of the
high-priority calls' 1 MiB allocation times, over the calls that finished), low_work_completed (fraction
of low-priority calls that finished). Last line of --json: the three results.

    tests/vm/run -- .venv/bin/python bench/replay.py --quick --json
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
from hostwarden.proto import warden_pb2 as pb

MiB = 2**20
REPO = Path(__file__).resolve().parents[1]
DEFAULT_TRACES = REPO.parent / "shared" / "traces" / "agent-tasks.jsonl.gz"
PEAK_SHARE = 0.6  # the largest replayed call takes this share of the budget
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

POLICY = """
[defaults]
memory_max = {budget}      # a call may use the whole host, as without isolation: the ladder arbitrates
memory_high = 1.0
[limits]
memory_max = {budget}
[priorities.high]
memory_low = 1.0
[ladder]
host_short = 0.25
throttle_step = 0.05
throttle_floor = "16M"
freeze_psi = 5
freeze_after = "500ms"
thaw_psi = 2
thaw_after = "1s"
kill_frozen_after = "3s"
kill_stall_after = "2s"
post_action_delay = "250ms"
"""


@dataclass(frozen=True)
class CallProfile:
    start: float  # seconds after the run's start, compressed
    points: list[tuple[float, int]]  # (seconds after the call's start, bytes), compressed and scaled


@dataclass
class Outcome:
    priority: str
    finished: bool
    latencies_ms: list[float] = field(default_factory=list)


def call_profiles(run: dict, window_s: float) -> list[tuple[float, list[tuple[float, int]]]]:
    """Each tool call starting within window_s of the run: (start, [(offset, bytes above the call's start)])."""
    samples = run["samples"]
    profiles = []
    for call in sorted(run["tool_calls"], key=lambda c: c["start"]):
        if call["start"] is None or call["end"] is None or call["start"] > window_s:
            continue
        before = [m for t, m, _cpu in samples if t <= call["start"]]
        baseline = before[-1] if before else samples[0][1]
        inside = [(t - call["start"], max(0, m - baseline)) for t, m, _cpu in samples
                  if call["start"] <= t <= call["end"]]
        if inside:
            profiles.append((call["start"], inside))
    return profiles


def pick_runs(path: Path, window_s: float) -> list[tuple[str, list[tuple[float, list[tuple[float, int]]]]]]:
    """The three runs whose replayed calls peak highest (the spikiest: where isolation matters)."""
    with gzip.open(path, "rt") as handle:
        runs = [json.loads(line) for line in handle]
    ranked = []
    for run in runs:
        profiles = call_profiles(run, window_s)
        peak = max((m for _s, points in profiles for _t, m in points), default=0)
        ranked.append((peak, run["id"], profiles))
    ranked.sort(key=lambda item: (-item[0], item[1]))
    return [(run_id, profiles) for _peak, run_id, profiles in ranked[:3]]


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
            "high_calls": len(high), "low_calls": len(low)}


# Places a waiting worker (its pid) for one call of a sandbox; returns a cleanup to run once it exited.
Placer = Callable[[str, int, int], Callable[[], None]]


def replay(plan: list[list[CallProfile]], place: Placer) -> list[Outcome]:
    """Every sandbox's calls one after another from the same start; each worker placed before it runs."""
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    began = time.monotonic()

    def sandbox(index: int) -> None:
        name, priority = SANDBOXES[index]
        for number, call in enumerate(plan[index]):
            delay = began + call.start - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            worker = subprocess.Popen([sys.executable, "-S", "-c", WORKER, json.dumps(call.points)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            cleanup = place(name, number, worker.pid)
            output, _ = worker.communicate(b"go\n")
            cleanup()
            finished = worker.returncode == 0
            with lock:
                outcomes.append(Outcome(priority, finished, json.loads(output) if finished else []))

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


def run_baseline(mount: Path, budget: int, plan: list[list[CallProfile]], *, static: bool) -> list[Outcome]:
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

        return replay(plan, place)


def run_hostwarden(mount: Path, budget: int, plan: list[list[CallProfile]]) -> tuple[list[Outcome], dict[str, int]]:
    with host_cgroup(mount, budget) as host, tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        socket = workdir / "hw.sock"
        (workdir / "policy.toml").write_text(POLICY.format(budget=budget))
        (workdir / "hostwarden.toml").write_text(
            f'[daemon]\nsocket = "{socket}"\nstate_dir = "{workdir / "state"}"\ncgroup_root = "{host / "root"}"\n'
            f'policy = "{workdir / "policy.toml"}"\n[metrics]\naddress = ""\n[bpf]\nenabled = false\n')
        log = workdir / "daemon.log"
        daemon = subprocess.Popen([sys.executable, "-m", "hostwarden", "daemon", "--config",
                                   str(workdir / "hostwarden.toml")], stdout=log.open("wb"), stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while "serving on" not in log.read_text():
                if daemon.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"daemon did not start:\n{log.read_text()[-2000:]}")
                time.sleep(0.1)
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

                outcomes = replay(plan, place)
                actions: dict[str, int] = {}
                for call in client.call("ListToolCalls", pb.ListToolCallsRequest(limit=10000)).calls:
                    for action in call.actions:
                        key = f"{action.kind}:{action.reason}"
                        actions[key] = actions.get(key, 0) + 1
        finally:
            daemon.terminate()
            daemon.wait(timeout=30)
        return outcomes, actions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traces", type=Path, default=DEFAULT_TRACES, help=f"default {DEFAULT_TRACES}")
    parser.add_argument("--quick", action="store_true", help="replay the first 300 s of each run (else 900 s)")
    parser.add_argument("--json", action="store_true", help="end with the results as one JSON line")
    parser.add_argument("--budget-mib", type=int, default=640, help="the host's memory (default 640 MiB)")
    parser.add_argument("--speed", type=float, default=15.0, help="time compression (default 15x)")
    args = parser.parse_args()
    mount = find_cgroup2_mount(Path("/proc/self/mountinfo").read_text())
    if os.geteuid() != 0 or mount is None or "memory" not in (mount / "cgroup.subtree_control").read_text().split():
        raise SystemExit("bench/replay.py needs root and cgroup v2 with the memory controller enabled at the root: "
                         "run it in the vm tier (tests/vm/run -- .venv/bin/python bench/replay.py ...)")
    if not args.traces.is_file():
        raise SystemExit(f"no traces at {args.traces}: pass --traces FILE (agent-tasks.jsonl.gz)")
    budget = args.budget_mib * MiB
    window = 300.0 if args.quick else 900.0
    picked = pick_runs(args.traces, window)
    plan = schedule(picked, args.speed, budget)
    summed_peaks = sum(max((m for c in calls for _t, m in c.points), default=0) for calls in plan)
    print(f"traces: {', '.join(run_id for run_id, _ in picked)} (high, low-a, low-b), first {window:.0f} s of each")
    print(f"replay: {args.speed:g}x faster than recorded; each run's memory scaled so its largest call is "
          f"{PEAK_SHARE:.0%} of the {args.budget_mib} MiB budget; summed peaks {summed_peaks / MiB:.0f} MiB; "
          f"calls: {', '.join(str(len(c)) for c in plan)}")
    results: dict[str, dict[str, float | int | None]] = {}
    results["baseline_no_isolation"] = result(run_baseline(mount, budget, plan, static=False))
    print(f"baseline_no_isolation   {results['baseline_no_isolation']}", flush=True)
    results["baseline_static_limits"] = result(run_baseline(mount, budget, plan, static=True))
    print(f"baseline_static_limits  {results['baseline_static_limits']}", flush=True)
    outcomes, actions = run_hostwarden(mount, budget, plan)
    results["hostwarden"] = result(outcomes)
    print(f"hostwarden              {results['hostwarden']}")
    print(f"hostwarden actions: {json.dumps(actions, sort_keys=True)}")
    if args.json:
        print(json.dumps({key: results[key] for key in ("hostwarden", "baseline_no_isolation",
                                                        "baseline_static_limits")}))


if __name__ == "__main__":
    main()
