"""Raw cost of a tool call in its own cgroup, without any daemon: the baseline of the lifecycle benchmark.

Each call: mkdir a call cgroup at the daemon's depth (`<root>/<sandbox>/calls/<call>`), fork a child that
waits on a pipe, write its pid to cgroup.procs, let it exec /bin/true, wait for it, rmdir the cgroup.
Printed beside it: the same /bin/true with no cgroup at all (plain fork + exec + wait), and the same
lifecycle through hostwarden.cgroups.CgroupTree (the library the daemon uses). Last, the emptied-call
notification latency of CgroupWatcher (SIGKILL -> callback). Last line of stdout: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from hostwarden.capabilities import find_cgroup2_mount
from hostwarden.cgroups.limits import Limits
from hostwarden.cgroups.notify import CgroupWatcher
from hostwarden.cgroups.tree import CgroupTree

TRUE = "/bin/true"
NOTIFY_GOAL_MS = 50.0


def spawn_held(cgroup_procs: Path | None, attach: Callable[[int], None] | None = None) -> int:
    """Fork a child that execs /bin/true only after its pid is in the cgroup; returns its pid."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(write_end)
            os.read(read_end, 1)
            os.execv(TRUE, [TRUE])
        finally:
            os._exit(127)
    os.close(read_end)
    if attach is not None:
        attach(pid)
    elif cgroup_procs is not None:
        fd = os.open(cgroup_procs, os.O_WRONLY)
        try:
            os.write(fd, str(pid).encode())
        finally:
            os.close(fd)
    os.write(write_end, b"x")
    os.close(write_end)
    return pid


def wait_ok(pid: int) -> None:
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{TRUE} exited with status {status}")


def raw_call(calls_dir: Path, index: int) -> None:
    call = calls_dir / f"raw-{index}"
    os.mkdir(call)
    wait_ok(spawn_held(call / "cgroup.procs"))
    os.rmdir(call)


def plain_call(_index: int) -> None:
    wait_ok(spawn_held(None))


def summarise(durations: list[float]) -> dict[str, float]:
    ordered = sorted(durations)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 3),
        # Back-to-back rate from one caller: calls divided by the time spent in them.
        "calls_per_s": round(len(ordered) / sum(ordered), 1),
    }


def measure(variants: dict[str, Callable[[int], None]], count: int) -> dict[str, dict[str, float]]:
    """Run the variants round-robin, so machine noise (other tenants) hits each alike."""
    durations: dict[str, list[float]] = {label: [] for label in variants}
    for index in range(-min(20, count), count):  # negative indexes: warm-up, not recorded
        for label, run in variants.items():
            before = time.perf_counter()
            run(index)
            if index >= 0:
                durations[label].append(time.perf_counter() - before)
    figures = {label: summarise(values) for label, values in durations.items()}
    for label, row in figures.items():
        print(f"{label:<44} p50 {row['p50_ms']:7.3f} ms   p99 {row['p99_ms']:7.3f} ms   "
              f"{row['calls_per_s']:7.1f} calls/s")
    return figures


def notify_latency(tree: CgroupTree, count: int) -> dict[str, float]:
    """SIGKILL of a call's only process -> on_emptied callback, over `count` calls."""
    reported: dict[Path, float] = {}
    arrived = threading.Condition()

    def on_emptied(path: Path) -> None:
        with arrived:
            reported[path] = time.perf_counter()
            arrived.notify_all()

    watcher = CgroupWatcher(on_emptied)
    watcher.start()
    latencies: list[float] = []
    try:
        for index in range(count):
            call, _ = tree.create_call("bench", f"notify-{index}", Limits())
            pid = os.fork()
            if pid == 0:
                try:
                    os.execv("/bin/sleep", ["sleep", "30"])
                finally:
                    os._exit(127)
            tree.attach(call, pid)
            watcher.watch(call)
            # The kernel rate-limits cgroup.events notifications to one per 10 ms per file
            # (CGROUP_FILE_NOTIFY_MIN_INTV): a call this short would measure that, not us.
            time.sleep(0.02)
            killed = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            with arrived:
                if not arrived.wait_for(lambda call=call: call in reported, 5):
                    raise RuntimeError(f"{call} emptied but was never reported")
            latencies.append(reported[call] - killed)
            os.waitpid(pid, 0)
            tree.remove(call)
    finally:
        watcher.stop()
    latencies.sort()
    figures = {
        "p50_ms": round(statistics.median(latencies) * 1000, 3),
        "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000, 3),
        "max_ms": round(latencies[-1] * 1000, 3),
        "goal_ms": NOTIFY_GOAL_MS,
    }
    print(f"{'emptied-call notification (kill -> callback)':<42} p50 {figures['p50_ms']:7.3f} ms   "
          f"p99 {figures['p99_ms']:7.3f} ms   max {figures['max_ms']:.3f} ms   (goal < {NOTIFY_GOAL_MS:.0f} ms)")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 calls instead of 2000, 20 notifications")
    parser.add_argument("--calls", type=int, help="calls per measurement")
    parser.add_argument("--root", type=Path, help="where to make cgroups (default: a temporary directory "
                                                  "below the cgroup2 mount)")
    args = parser.parse_args()
    calls = args.calls or (200 if args.quick else 2000)
    notifications = 20 if args.quick else 200

    if args.root is None:
        mount = find_cgroup2_mount(Path("/proc/self/mountinfo").read_text())
        if mount is None:
            parser.error("no cgroup2 mount found in /proc/self/mountinfo: give --root")
        parent = Path(tempfile.mkdtemp(prefix="hostwarden-bench-", dir=mount))
    else:
        parent = args.root / f"hostwarden-bench-{os.getpid()}"
        os.mkdir(parent)
    tree = CgroupTree(parent)
    try:
        print(f"cgroup_ops: {calls} calls of {TRUE}, cgroups under {parent}, kernel {platform.release()}, "
              f"{os.cpu_count()} CPUs")
        calls_dir = tree.create_sandbox("bench") / "calls"

        def library_call(index: int) -> None:
            call, _ = tree.create_call("bench", f"lib-{index}", Limits())
            wait_ok(spawn_held(None, attach=lambda pid: tree.attach(call, pid)))
            tree.remove(call)

        figures = measure({
            "baseline: fork + exec + wait, no cgroup": plain_call,
            "call cgroup: mkdir, attach, run, rmdir": lambda index: raw_call(calls_dir, index),
            "same through hostwarden.cgroups.CgroupTree": library_call,
        }, calls)
        plain, raw, library = figures.values()
        notify = notify_latency(tree, notifications)
        print(f"cgroup cost over plain spawn: p50 +{raw['p50_ms'] - plain['p50_ms']:.3f} ms; library over raw: "
              f"p50 +{library['p50_ms'] - raw['p50_ms']:.3f} ms")
    finally:
        for sandbox in tree.scan():
            tree.delete_sandbox(sandbox.name, force=True)
        os.rmdir(parent)
    print(json.dumps({"bench": "cgroup_ops", "calls": calls, "kernel": platform.release(),
                      "cpus": os.cpu_count(), "baseline_plain_spawn": plain, "cgroup_call_raw": raw,
                      "cgroup_call_library": library, "emptied_notification": notify}))


if __name__ == "__main__":
    main()
