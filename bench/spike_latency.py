"""Memory spike detection latency: from the allocation crossing the threshold (stamped by the
allocating process with CLOCK_MONOTONIC) to the spike event reaching a gRPC WatchEvents client of a
real daemon (`hostwarden daemon`, its own eBPF programs), beside the same event at an in-process
BpfMonitor callback (no daemon, no gRPC) and 1 s and 100 ms polling of the same call cgroup's
memory (its processes' summed RSS here: the host has no memory controller; memory.current where
there is one). Each trial is one tool call of the daemon. After the crossing the allocator either sleeps (the
kernel samples its RSS as it leaves the CPU) or keeps running without a system call (sampled at the next timer
interrupt): trials alternate between the two. Last line of stdout: JSON."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from _bpf_bench import CGROUP2_ROOT, DaemonUnderTest, percentile

from hostwarden.bpf import BpfEvent, BpfMonitor, SpikeEvent
from hostwarden.client import Client
from hostwarden.monitor import SPIKE_FRACTION_OF_MEMORY_HIGH
from hostwarden.proto import warden_pb2 as pb

THRESHOLD = 64 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")
HOLD_S = 1.3  # long enough for a 1 s poller to see the crossing

# Touches pages until its own RSS reaches the threshold, stamps CLOCK_MONOTONIC, holds the memory (asleep,
# or spinning on the vDSO clock: no system call, so it never leaves its CPU of its own accord).
# It is exec'd inside its call (as `hostwarden exec` does), so the probes count its memory from zero.
AFTER_CROSSING = ("sleep", "spin")
ALLOCATOR = f"""
import mmap, os, sys, time
threshold, page, after = int(sys.argv[1]), {PAGE}, sys.argv[2]
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
if after == "sleep":
    time.sleep({HOLD_S})
else:
    end = time.monotonic() + {HOLD_S}
    while time.monotonic() < end:
        pass
"""


def poller_source(cgroup: Path) -> str:
    return "memory.current" if (cgroup / "memory.current").exists() else "summed process RSS"


def memory_reader(cgroup: Path) -> Callable[[], int]:
    current = cgroup / "memory.current"
    if current.exists():
        return lambda: int(current.read_text())

    def summed_rss() -> int:
        total = 0
        with contextlib.suppress(FileNotFoundError):  # the call cgroup goes once the call ends
            pids = (cgroup / "cgroup.procs").read_text().split()
        for pid in pids:
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
        return total

    return summed_rss


class Poller(threading.Thread):
    """Samples the cgroup's memory every `interval`; notes when it first sees the threshold."""

    def __init__(self, read: Callable[[], int], interval: float) -> None:
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


class SpikeStream(threading.Thread):
    """A WatchEvents client of the daemon: notes when each call's memory_spike event arrives.

    `subscribed` is set once the stream carried the sandbox_created event: from then on no event is missed."""

    def __init__(self, socket: str) -> None:
        super().__init__(daemon=True)
        self._client = Client(socket)
        self._stream = self._client.watch(pb.WatchEventsRequest(kinds=["memory_spike", "sandbox_created"]))
        self.received_ns: dict[str, int] = {}
        self.arrived = threading.Condition()
        self.subscribed = threading.Event()

    def run(self) -> None:
        with contextlib.suppress(grpc.RpcError):  # cancelled at the end
            for event in self._stream:
                now = time.monotonic_ns()
                if event.kind == "sandbox_created":
                    self.subscribed.set()
                    continue
                with self.arrived:
                    self.received_ns.setdefault(event.call_id, now)
                    self.arrived.notify_all()

    def wait_for(self, call_id: str, timeout: float) -> int | None:
        with self.arrived:
            self.arrived.wait_for(lambda: call_id in self.received_ns, timeout)
            return self.received_ns.get(call_id)

    def close(self) -> None:
        self._stream.cancel()
        self.join(timeout=5)
        self._client.close()


class Callbacks:
    """The in-process BpfMonitor's spike callbacks, by cgroup id."""

    def __init__(self) -> None:
        self.received: dict[int, tuple[int, int]] = {}  # cgroup id -> (callback ns, kernel ns)
        self.arrived = threading.Condition()

    def __call__(self, event: BpfEvent) -> None:
        if isinstance(event, SpikeEvent):
            with self.arrived:
                self.received.setdefault(event.cgroup_id, (time.monotonic_ns(), event.ktime_ns))
                self.arrived.notify_all()

    def wait_for(self, cgroup_id: int, timeout: float) -> tuple[int, int] | None:
        with self.arrived:
            self.arrived.wait_for(lambda: cgroup_id in self.received, timeout)
            return self.received.get(cgroup_id)


def run_trial(client: Client, stream: SpikeStream, monitor: BpfMonitor, callbacks: Callbacks,
              samples: dict[str, list[float]], sources: set[str], after: str) -> None:
    # A shell that waits until it is inside the call, then execs the allocator.
    child = subprocess.Popen(["/bin/sh", "-c", 'read go; exec "$0" "$@"', sys.executable, "-c", ALLOCATOR,
                              str(THRESHOLD), after], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        # The daemon's spike threshold is a fraction of the call's memory.high: ask for the high that gives ours.
        high = int(THRESHOLD / SPIKE_FRACTION_OF_MEMORY_HIGH)
        reply = client.call("BeginToolCall", pb.BeginToolCallRequest(
            sandbox="bench", tool="alloc", command="alloc", pid=child.pid,
            intent=pb.Intent(memory_high_bytes=high, memory_max_bytes=4 * high)))
        granted = next(int(limit.value) for limit in reply.limits if limit.name == "memory.high")
        if int(granted * SPIKE_FRACTION_OF_MEMORY_HIGH) != THRESHOLD:
            sys.exit(f"the policy granted memory.high {granted}, not {high}: the daemon's threshold is not ours")
        cgroup = Path(reply.cgroup_path)
        cgroup_id = cgroup.stat().st_ino
        monitor.watch(cgroup_id, spike_threshold_bytes=THRESHOLD)
        sources.add(poller_source(cgroup))
        pollers = [Poller(memory_reader(cgroup), 1.0), Poller(memory_reader(cgroup), 0.1)]
        for poller in pollers:
            poller.start()
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write("go\n")
        child.stdin.close()
        stamp = int(child.stdout.readline())
        client_ns = stream.wait_for(reply.call_id, 5)
        callback = callbacks.wait_for(cgroup_id, 5)
        if client_ns is None or callback is None:
            sys.exit(f"no spike event within 5 s (daemon client: {client_ns}, in-process callback: {callback})")
        child.wait()
        for poller in pollers:
            poller.done.set()
            poller.join()
        monitor.unwatch(cgroup_id)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    samples["daemon_client"].append((client_ns - stamp) / 1e6)
    samples[f"daemon_client_{after}"].append((client_ns - stamp) / 1e6)
    samples["callback"].append((callback[0] - stamp) / 1e6)
    samples["kernel"].append((callback[1] - stamp) / 1e6)
    for poller, name in zip(pollers, ("poll_1s", "poll_100ms"), strict=True):
        if poller.seen_ns is not None:
            samples[name].append((poller.seen_ns - stamp) / 1e6)


def summary(values: list[float]) -> dict[str, float | int]:
    return {"p50_ms": round(percentile(values, 0.5), 3), "p99_ms": round(percentile(values, 0.99), 3),
            "n": len(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer trials (6)")
    parser.add_argument("--trials", type=int, default=20,
                        help="trials, an even number: half of each allocator behaviour (default 20: p99 is then "
                             "the slowest trial; 100 or more for a p99 that is not)")
    args = parser.parse_args()
    trials = 6 if args.quick else args.trials
    if trials < 2 or trials % len(AFTER_CROSSING):
        parser.error(f"--trials must be a positive multiple of {len(AFTER_CROSSING)}, got {trials}")

    samples: dict[str, list[float]] = {name: [] for name in (
        "daemon_client", "callback", "kernel", "poll_1s", "poll_100ms",
        *(f"daemon_client_{after}" for after in AFTER_CROSSING))}
    sources: set[str] = set()
    daemon = DaemonUnderTest("spike-latency")
    callbacks = Callbacks()
    monitor = BpfMonitor(callbacks)
    try:
        statuses = monitor.start()
        counting = [status for status in statuses.values() if status.loaded and status.name.startswith("rss_")]
        if not counting:
            sys.exit(f"no RSS program loaded: {statuses['rss_sample'].detail}; {statuses['rss_stat'].detail}")
        print(f"RSS counted by {', '.join(status.name for status in counting)}: {counting[0].detail}")
        with Client(daemon.socket) as client:
            stream = SpikeStream(daemon.socket)
            stream.start()
            try:
                # Until the stream is subscribed, events pass it by: create the sandbox until it sees one.
                while not stream.subscribed.is_set():
                    client.call("CreateSandbox", pb.CreateSandboxRequest(name="bench"))
                    if not stream.subscribed.wait(1):
                        client.call("DeleteSandbox", pb.DeleteSandboxRequest(name="bench", force=True))
                for trial in range(trials):
                    run_trial(client, stream, monitor, callbacks, samples, sources,
                              AFTER_CROSSING[trial % len(AFTER_CROSSING)])
            finally:
                stream.close()
                client.call("DeleteSandbox", pb.DeleteSandboxRequest(name="bench", force=True))
    finally:
        monitor.stop()
        daemon.stop()

    results = {name: summary(samples[name]) for name in ("daemon_client", "callback", "poll_100ms", "poll_1s",
                                                          *(f"daemon_client_{a}" for a in AFTER_CROSSING))}
    # Conservative: the baseline's median against the daemon path's worst case (floored at 1 us).
    ratio = results["poll_1s"]["p50_ms"] / max(results["daemon_client"]["p99_ms"], 1e-3)
    print(f"threshold {THRESHOLD >> 20} MiB, {trials} trials, one tool call each; memory source for pollers: "
          f"{', '.join(sorted(sources))} "
          f"(cgroup2 at {CGROUP2_ROOT})")
    print("stamp = allocating process's CLOCK_MONOTONIC when its RSS reached the threshold")
    for name, label in (("daemon_client", "daemon -> gRPC WatchEvents client"),
                        ("daemon_client_sleep", "  of which: allocator then sleeps"),
                        ("daemon_client_spin", "  of which: allocator keeps running"),
                        ("callback", "in-process BpfMonitor callback"), ("poll_100ms", "100 ms polling"),
                        ("poll_1s", "1 s polling (baseline)")):
        entry = results[name]
        print(f"{label:<36} p50 {entry['p50_ms']:9.3f} ms   p99 {entry['p99_ms']:9.3f} ms   n={entry['n']}")
    print(f"kernel detection (event ktime - stamp) p50 {percentile(samples['kernel'], 0.5):.3f} ms "
          "(negative: the kernel counted the crossing before the process's own /proc read did)")
    print(f"1 s polling p50 / daemon client p99 = {ratio:.0f}x  (targets: p99 < 10 ms, >= 100x)")
    print(json.dumps({"bench": "spike_latency", "threshold_bytes": THRESHOLD, "trials": trials, **results,
                      "ratio_poll_1s_p50_over_daemon_client_p99": round(ratio, 1)}))


if __name__ == "__main__":
    main()
