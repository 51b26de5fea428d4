"""Memory spike detection latency: from the allocation crossing the threshold (stamped by the
allocating process with CLOCK_MONOTONIC) to the SpikeEvent reaching the on_event callback, beside
1 s and 100 ms polling of the same cgroup's memory (its processes' summed RSS here: the host has no
memory controller; memory.current where there is one). Last line of stdout: JSON."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from _bpf_bench import CGROUP2_ROOT, ScratchCgroup, percentile

from hostwarden.bpf import BpfMonitor, SpikeEvent

THRESHOLD = 64 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")
HOLD_S = 1.3  # long enough for a 1 s poller to see the crossing

# Touches pages until its own RSS reaches the threshold, stamps CLOCK_MONOTONIC, holds the memory.
ALLOCATOR = f"""
import mmap, os, sys, time
threshold, page = int(sys.argv[1]), {PAGE}
sys.stdin.read(1)
statm = open("/proc/self/statm")
def rss():
    statm.seek(0)
    return int(statm.read().split()[1]) * page
region = mmap.mmap(-1, threshold)
offset = 0
# Touch the pages the threshold needs without looking, then re-read RSS after every page.
for offset in range(0, threshold - rss() - 64 * page, page):
    region[offset] = 1
while rss() < threshold:
    offset += page
    region[offset] = 1
stamp = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
print(stamp, flush=True)
time.sleep({HOLD_S})
"""


def memory_reader(cgroup: ScratchCgroup):
    current = cgroup.path / "memory.current"
    if current.exists():
        return lambda: int(current.read_text())

    def summed_rss() -> int:
        total = 0
        for pid in cgroup.pids():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
        return total

    return summed_rss


class Poller(threading.Thread):
    """Samples the cgroup's memory every `interval`; notes when it first sees the threshold."""

    def __init__(self, read, interval: float) -> None:
        super().__init__(daemon=True)
        self.read, self.interval = read, interval
        self.seen_ns: int | None = None
        self.done = threading.Event()

    def run(self) -> None:
        next_tick = time.monotonic()
        while not self.done.is_set() and self.seen_ns is None:
            if self.read() >= THRESHOLD:
                self.seen_ns = time.monotonic_ns()
            next_tick += self.interval
            self.done.wait(max(0.0, next_tick - time.monotonic()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer trials")
    args = parser.parse_args()
    trials = 5 if args.quick else 20

    delivered: dict[int, int] = {}
    arrived = threading.Event()

    def on_event(event) -> None:
        if isinstance(event, SpikeEvent) and event.cgroup_id == cgroup.id:
            delivered["callback_ns"] = time.monotonic_ns()
            delivered["kernel_ns"] = event.ktime_ns
            arrived.set()

    cgroup = ScratchCgroup("spike-latency")
    monitor = BpfMonitor(on_event)
    statuses = monitor.start()
    if not statuses["rss_stat"].loaded:
        sys.exit(f"rss_stat program not loaded: {statuses['rss_stat'].detail}")
    monitor.watch(cgroup.id, spike_threshold_bytes=THRESHOLD)
    read = memory_reader(cgroup)
    event_ms, kernel_ms, poll_1s_ms, poll_100ms_ms = [], [], [], []
    try:
        for _ in range(trials):
            monitor.set_threshold(cgroup.id, THRESHOLD)  # re-arm: one event per setting
            arrived.clear()
            pollers = [Poller(read, 1.0), Poller(read, 0.1)]
            for poller in pollers:
                poller.start()
            child = subprocess.Popen([sys.executable, "-c", ALLOCATOR, str(THRESHOLD)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, preexec_fn=cgroup.joiner())
            child.stdin.write("go")
            child.stdin.close()
            stamp = int(child.stdout.readline())
            if not arrived.wait(5):
                sys.exit("no spike event within 5 s")
            child.wait()
            for poller in pollers:
                poller.done.set()
                poller.join()
            event_ms.append((delivered["callback_ns"] - stamp) / 1e6)
            kernel_ms.append((delivered["kernel_ns"] - stamp) / 1e6)
            for poller, sink in zip(pollers, (poll_1s_ms, poll_100ms_ms), strict=True):
                if poller.seen_ns is not None:
                    sink.append((poller.seen_ns - stamp) / 1e6)
    finally:
        monitor.stop()
        cgroup.remove()

    def summary(values: list[float]) -> dict:
        return {"p50_ms": round(percentile(values, 0.5), 3), "p99_ms": round(percentile(values, 0.99), 3),
                "n": len(values)}

    results = {"ebpf_event": summary(event_ms), "poll_1s": summary(poll_1s_ms),
               "poll_100ms": summary(poll_100ms_ms)}
    # Conservative: the baseline's median against the eBPF path's worst case (floored at 1 us).
    ratio = results["poll_1s"]["p50_ms"] / max(results["ebpf_event"]["p99_ms"], 1e-3)
    print(f"threshold {THRESHOLD >> 20} MiB, {trials} trials; memory source for pollers: "
          f"{'memory.current' if (cgroup.path / 'memory.current').exists() else 'summed process RSS'} "
          f"(cgroup2 at {CGROUP2_ROOT})")
    print("stamp = allocating process's CLOCK_MONOTONIC when its RSS reached the threshold")
    for name, label in (("ebpf_event", "eBPF spike event -> on_event"), ("poll_100ms", "100 ms polling"),
                        ("poll_1s", "1 s polling (baseline)")):
        entry = results[name]
        print(f"{label:<32} p50 {entry['p50_ms']:9.3f} ms   p99 {entry['p99_ms']:9.3f} ms   n={entry['n']}")
    print(f"kernel detection (event ktime - stamp) p50 {percentile(kernel_ms, 0.5):.3f} ms "
          "(negative: the kernel counted the crossing before the process's own /proc read did)")
    print(f"1 s polling p50 / eBPF p99 = {ratio:.0f}x  (targets: eBPF p99 < 10 ms, >= 100x)")
    print(json.dumps({"bench": "spike_latency", "threshold_bytes": THRESHOLD, "trials": trials, **results,
                      "ratio_poll_1s_p50_over_ebpf_p99": round(ratio, 1)}))


if __name__ == "__main__":
    main()
