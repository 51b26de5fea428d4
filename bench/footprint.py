"""The daemon's own cost: CPU and RSS idle and under load, beside a bare process that only loads the same
bcc programs (the floor any bcc-based daemon pays).

1. floor: a process that imports bcc and starts hostwarden.bpf.BpfMonitor (the daemon's programs), idle.
2. hostwarden idle: the real daemon (bpf on), no calls, after start-up settles.
3. hostwarden loaded: N sandboxes, tool calls of /bin/true at a fixed total rate from separate client
   processes (their own CPU is not counted; the daemon's is).
CPU is utime+stime from /proc/<pid>/stat over the window; RSS is VmRSS at the window's end.
Targets (SPEC section 5): idle < 1% of a core, RSS at most 60 MB above the floor; 50 sandboxes x 200
calls/s < 50% of a core. Last line of stdout: JSON.
"""

from __future__ import annotations

import argparse
import json
import os

# This process forks tool-call children while holding a gRPC channel; the children only exec. gRPC's fork
# support would stop and restart its threads around every fork (about 1.4 ms each here), a cost
# `hostwarden exec` never pays since it forks before any channel exists. Set before grpc is imported.
os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "0"
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lifecycle import start_daemon

from hostwarden.capabilities import find_cgroup2_mount
from hostwarden.cgroups.tree import CgroupTree
from hostwarden.client import Client
from hostwarden.proto import warden_pb2 as pb

TICKS = os.sysconf("SC_CLK_TCK")

FLOOR = """
import sys, time
from hostwarden.bpf import BpfMonitor
monitor = BpfMonitor(lambda event: None)
status = monitor.start()
print(sum(s.loaded for s in status.values()), flush=True)
time.sleep(3600)
"""

# One load client: forks /bin/true per call (held on a pipe until attached, as `hostwarden exec` does),
# paced to its share of the total rate, round-robin over the sandboxes; Begin and End on the tool-call
# socket, as `hostwarden exec` sends them.
CLIENT = """
import os, sys, time
sys.path.insert(0, sys.argv[1])
from cgroup_ops import spawn_held, wait_ok
from hostwarden.client import Client
from hostwarden.proto import warden_pb2 as pb
socket, rate, seconds = sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
first, count = int(sys.argv[5]), int(sys.argv[6])
client = Client(socket)
done, start = 0, time.monotonic()
while time.monotonic() - start < seconds:
    sandbox = f"s{first + done % count}"
    replies = []
    wait_ok(spawn_held(None, attach=lambda pid: replies.append(client.begin_call(
        pb.BeginToolCallRequest(sandbox=sandbox, tool="true", pid=pid)))))
    client.end_call(pb.EndToolCallRequest(call_id=replies[0].call_id, exit_code=0))
    done += 1
    delay = start + done / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)
print(done / (time.monotonic() - start), flush=True)
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def window(pid: int, seconds: float) -> dict[str, float]:
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    cpu = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
    return {"cpu_percent_of_a_core": round(cpu * 100, 2), "rss_mb": round(rss_mb(pid), 1)}


def measure_floor(seconds: float) -> dict[str, float]:
    proc = subprocess.Popen([sys.executable, "-c", FLOOR], stdout=subprocess.PIPE, text=True)
    try:
        loaded = int(proc.stdout.readline())  # type: ignore[union-attr]
        time.sleep(2)
        row = window(proc.pid, seconds)
        row["programs_loaded"] = loaded
        return row
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short windows and a lighter load")
    parser.add_argument("--sandboxes", type=int, default=50)
    parser.add_argument("--rate", type=float, default=200.0, help="total tool calls per second")
    parser.add_argument("--clients", type=int, default=2)
    args = parser.parse_args()
    idle_s, load_s = (5.0, 10.0) if args.quick else (20.0, 30.0)
    mount = find_cgroup2_mount(Path("/proc/self/mountinfo").read_text())
    if mount is None:
        raise SystemExit("no cgroup2 mount in /proc/self/mountinfo")

    floor = measure_floor(idle_s)
    print(f"floor (bcc + the same programs, idle): {floor}")
    if not floor["programs_loaded"]:
        raise SystemExit("the floor process loaded no bpf program: no comparison possible (see its stderr)")
    workdir = Path(tempfile.mkdtemp(prefix="hostwarden-footprint-"))
    cgroup_root = mount / f"hostwarden-footprint-{os.getpid()}"
    daemon, socket = start_daemon(workdir, cgroup_root, bpf=True)
    try:
        time.sleep(3)  # start-up (program loading) settles
        with Client(socket) as client:
            caps = client.call("GetCapabilities", pb.GetCapabilitiesRequest()).capabilities
        daemon_programs = sum(c.available for c in caps if c.name.startswith("bpf_") and c.name != "bpf_lsm")
        if daemon_programs != floor["programs_loaded"]:
            raise SystemExit(f"the daemon loaded {daemon_programs} bpf programs, the floor "
                             f"{floor['programs_loaded']}: not the same programs, no comparison")
        idle = window(daemon.pid, idle_s)
        print(f"hostwarden idle: {idle}")
        with Client(socket) as client:
            for i in range(args.sandboxes):
                client.call("CreateSandbox", pb.CreateSandboxRequest(name=f"s{i}"))
        share = args.sandboxes // args.clients
        clients = [subprocess.Popen([sys.executable, "-c", CLIENT, str(Path(__file__).resolve().parent), socket,
                                     str(args.rate / args.clients), str(load_s + 2), str(i * share), str(share)],
                                    stdout=subprocess.PIPE, text=True) for i in range(args.clients)]
        time.sleep(1)
        loaded = window(daemon.pid, load_s)
        achieved = sum(float(c.communicate(timeout=120)[0]) for c in clients)
        loaded["calls_per_s_achieved"] = round(achieved, 1)
        loaded["cpu_ms_per_call"] = round(loaded["cpu_percent_of_a_core"] * 10 / achieved, 3)
        print(f"hostwarden with {args.sandboxes} sandboxes at {args.rate:g} calls/s asked: {loaded}")
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        tree = CgroupTree(cgroup_root)
        for sandbox in tree.scan():
            tree.delete_sandbox(sandbox.name, force=True)
        cgroup_root.rmdir()
    verdict = {
        "idle_under_1pct": idle["cpu_percent_of_a_core"] < 1.0,
        "rss_within_60mb_of_floor": idle["rss_mb"] - floor["rss_mb"] <= 60,
        # Only a verdict where the clients reached (nearly) the asked rate: no extrapolation.
        "loaded_under_50pct": loaded["cpu_percent_of_a_core"] < 50.0 and achieved >= 0.95 * args.rate,
    }
    if achieved < 0.95 * args.rate:
        print(f"the clients reached only {achieved:.1f} of {args.rate:g} calls/s on this machine: no verdict on "
              "the loaded target from this run")
    print(f"RSS above the floor: {idle['rss_mb'] - floor['rss_mb']:.1f} MB; targets: {verdict}")
    print(json.dumps({"bench": "footprint", "floor_bcc_programs": floor, "hostwarden_idle": idle,
                      "hostwarden_loaded": loaded, "sandboxes": args.sandboxes, "rate_asked": args.rate,
                      "targets_met": verdict}))


if __name__ == "__main__":
    main()
