"""Real processes in real cgroups, shared by the host and vm tiers of the cgroups tests."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import threading
import time
from pathlib import Path

from hostwarden.cgroups.limits import Limits
from hostwarden.cgroups.notify import CgroupWatcher
from hostwarden.cgroups.tree import CgroupTree


def start_in(tree: CgroupTree, cgroup: Path, *argv: str) -> subprocess.Popen:
    """Start argv with its pid in `cgroup` before it execs: the child waits on its stdin until attached."""
    child = subprocess.Popen(["sh", "-c", 'read _; exec "$@" </dev/null', "sh", *argv],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    tree.attach(cgroup, child.pid)
    child.stdin.write(b"go\n")
    child.stdin.close()
    return child


def emptied_latencies_ms(tree: CgroupTree, sandbox: str, count: int) -> list[float]:
    """SIGKILL of a call's only process -> CgroupWatcher.on_emptied, for `count` calls; prints a summary."""
    reported: dict[Path, float] = {}
    arrived = threading.Condition()

    def on_emptied(path: Path) -> None:
        with arrived:
            reported[path] = time.monotonic()
            arrived.notify_all()

    watcher = CgroupWatcher(on_emptied)
    watcher.start()
    latencies: list[float] = []
    try:
        for index in range(count):
            call, _ = tree.create_call(sandbox, f"latency-{index}", Limits())
            child = start_in(tree, call, "sleep", "30")
            watcher.watch(call)
            # The kernel sends at most one cgroup.events notification per 10 ms per file; a real call
            # lives longer than that, so let the attach's notification pass first.
            time.sleep(0.02)
            killed_at = time.monotonic()
            os.kill(child.pid, signal.SIGKILL)
            with arrived:
                assert arrived.wait_for(lambda call=call: call in reported, 5), f"{call} never reported"
            latencies.append((reported[call] - killed_at) * 1000)
            child.wait()
            tree.remove(call)
    finally:
        watcher.stop()
    resolution_ms = time.get_clock_info("monotonic").resolution * 1000
    print(f"emptied-notification latency over {count} calls (SIGKILL -> callback): "
          f"p50 {statistics.median(latencies):.3f} ms, max {max(latencies):.3f} ms "
          f"(clock resolution {resolution_ms:.3f} ms)")
    return latencies
