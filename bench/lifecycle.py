"""A full tool call through the daemon (Begin with the child's pid + run /bin/true + End) beside the raw
cgroup baseline of bench/cgroup_ops.py (mkdir, attach, run, rmdir with no daemon), interleaved call by call.
The daemon's row is the path `hostwarden exec` takes (Begin and End on the tool-call socket); the same
calls over the gRPC RPCs are printed beside it for comparison, not judged.

Starts a real daemon process on this host's cgroup v2 (its own socket, state dir and cgroup root) and
talks to it over its unix socket from this process, one client, back to back. Last line of stdout: JSON.
Targets (SPEC section 5): p50 within 1.5x of the baseline (< 1 ms added), p99 < 10 ms, >= 300 calls/s.
"""

from __future__ import annotations

import argparse
import json
import os

# This process forks tool-call children while holding a gRPC channel; the children only exec. gRPC's fork
# support would stop and restart its threads around every fork (about 1.4 ms each here), a cost
# `hostwarden exec` never pays since it forks before any channel exists. Set before grpc is imported.
os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "0"
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cgroup_ops import measure, raw_call, spawn_held, wait_ok

from hostwarden.capabilities import find_cgroup2_mount
from hostwarden.cgroups.tree import CgroupTree
from hostwarden.client import Client
from hostwarden.proto import warden_pb2 as pb


def start_daemon(workdir: Path, cgroup_root: Path, *, bpf: bool = False) -> tuple[subprocess.Popen[bytes], str]:
    """A daemon process of its own (socket, state, cgroup root); bpf off unless asked, as in the baseline."""
    socket = str(workdir / "hw.sock")
    config = workdir / "hostwarden.toml"
    config.write_text(f'[daemon]\nsocket = "{socket}"\nstate_dir = "{workdir / "state"}"\n'
                      f'cgroup_root = "{cgroup_root}"\npolicy = "{workdir / "policy.toml"}"\n'
                      f'[metrics]\naddress = ""\n[bpf]\nenabled = {str(bpf).lower()}\n')
    log = (workdir / "daemon.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "hostwarden", "daemon", "--config", str(config)],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while "serving on" not in (workdir / "daemon.log").read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"daemon did not start:\n{(workdir / 'daemon.log').read_text()[-2000:]}")
        time.sleep(0.05)
    return proc, socket


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 calls instead of 2000")
    parser.add_argument("--calls", type=int)
    parser.add_argument("--bpf", action="store_true", help="the daemon with its bpf programs loaded (its default); "
                                                          "off by default, as the baseline has none")
    args = parser.parse_args()
    calls = args.calls or (200 if args.quick else 2000)
    mount = find_cgroup2_mount(Path("/proc/self/mountinfo").read_text())
    if mount is None:
        raise SystemExit("no cgroup2 mount in /proc/self/mountinfo")
    workdir = Path(tempfile.mkdtemp(prefix="hostwarden-lifecycle-"))
    cgroup_root = mount / f"hostwarden-lifecycle-{os.getpid()}"
    raw_dir = mount / f"hostwarden-lifecycle-raw-{os.getpid()}"
    os.makedirs(raw_dir / "calls")
    daemon, socket = start_daemon(workdir, cgroup_root, bpf=args.bpf)
    client = Client(socket)
    try:
        client.call("CreateSandbox", pb.CreateSandboxRequest(name="bench"))
        print(f"lifecycle: {calls} calls of /bin/true, daemon pid {daemon.pid} (bpf {'on' if args.bpf else 'off'}), "
              f"kernel {platform.release()}, {os.cpu_count()} CPUs (the daemon shares them)")

        def daemon_call(begin: Callable[[pb.BeginToolCallRequest], pb.BeginToolCallResponse],
                        end: Callable[[pb.EndToolCallRequest], pb.ToolCall]) -> Callable[[int], None]:
            def one(_index: int) -> None:
                replies: list[pb.BeginToolCallResponse] = []
                wait_ok(spawn_held(None, attach=lambda pid: replies.append(
                    begin(pb.BeginToolCallRequest(sandbox="bench", tool="true", pid=pid)))))
                end(pb.EndToolCallRequest(call_id=replies[0].call_id, exit_code=0))
            return one

        figures = measure({
            "baseline: call cgroup, raw syscalls, no daemon": lambda i: raw_call(raw_dir / "calls", i),
            # What `hostwarden exec` and Client.begin_call / end_call use.
            "hostwarden: Begin(pid)+run+End, call socket": daemon_call(client.begin_call, client.end_call),
            "the same over gRPC (the Warden RPCs)": daemon_call(
                lambda request: client.call("BeginToolCall", request),
                lambda request: client.call("EndToolCall", request)),
        }, calls)
        base, full, grpc_path = figures.values()
        ratio = full["p50_ms"] / base["p50_ms"]
        added = full["p50_ms"] - base["p50_ms"]
        verdict = {
            "p50_within_1_5x": ratio <= 1.5, "p50_added_under_1ms": added < 1.0,
            "p99_under_10ms": full["p99_ms"] < 10.0, "at_least_300_calls_per_s": full["calls_per_s"] >= 300,
        }
        print(f"p50 ratio {ratio:.2f}x (+{added:.3f} ms); targets: {verdict}")
    finally:
        client.close()
        daemon.terminate()
        daemon.wait(timeout=30)
        tree = CgroupTree(cgroup_root)  # the daemon leaves sandboxes running by design: remove them
        for sandbox in tree.scan():
            tree.delete_sandbox(sandbox.name, force=True)
        for path in (cgroup_root, raw_dir / "calls", raw_dir):
            if path.exists():
                os.rmdir(path)
    print(json.dumps({"bench": "lifecycle", "calls": calls, "bpf": args.bpf, "kernel": platform.release(),
                      "cpus": os.cpu_count(),
                      "baseline_raw_cgroup_call": base, "hostwarden_call": full, "hostwarden_call_grpc": grpc_path,
                      "p50_ratio": round(ratio, 3),
                      "p50_added_ms": round(added, 3), "targets_met": verdict}))


if __name__ == "__main__":
    main()
