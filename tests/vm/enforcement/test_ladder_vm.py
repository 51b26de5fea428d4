"""vm tier: every rung of the ladder observed for real, through a real daemon on a real cgroup v2 with PSI.

One daemon (bpf and attestation off: not what is tested, and slow to start under emulation) whose cgroup root sits in
a "host" cgroup; giving that cgroup a memory.max makes the ladder see a host short of memory. Tool calls
are python processes that touch memory and then hold it, attached before they run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from hostwarden.capabilities import find_cgroup2_mount
from hostwarden.client import Client
from hostwarden.proto import warden_pb2 as pb
from tests.host.daemon.conftest import DaemonProcess, remove_tree
from tests.support import require

MiB = 2**20
# Touches argv[1] MiB in 4 MiB steps (each page written, argv[2] seconds apart), then holds it until killed.
TOUCH = ("import sys, time\nheld = []\nfor _ in range(int(sys.argv[1]) // 4):\n"
         "    chunk = bytearray(4 << 20)\n    chunk[::4096] = b'x' * (len(chunk) // 4096)\n    held.append(chunk)\n"
         "    time.sleep(float(sys.argv[2]))\nprint('held', flush=True)\ntime.sleep(600)\n")
POLICY = """
[defaults]
memory_max = "512M"
memory_high = 1.0
[ladder]
host_short = 0.15
freeze_psi = 5
freeze_after = "1s"
thaw_psi = 2
thaw_after = "1s"
kill_frozen_after = "4s"
post_action_delay = "500ms"
"""
PRIORITY = {"low": pb.PRIORITY_LOW, "high": pb.PRIORITY_HIGH}
STARTUP_TIMEOUT_S = 180


def wait_for(condition: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


class Calls:
    """Tool calls of real processes through the daemon's API."""

    def __init__(self, daemon: DaemonProcess) -> None:
        self.daemon = daemon
        self.client = Client(daemon.socket)
        self.processes: list[subprocess.Popen[bytes]] = []

    def sandbox(self, name: str, priority: str) -> Path:
        reply = self.client.call("CreateSandbox", pb.CreateSandboxRequest(name=name, priority=PRIORITY[priority]))
        return Path(reply.sandbox.cgroup_path)

    def start(self, sandbox: str, priority: str, mib: int, *, step_s: float = 0.0, memory_high: int | None = None,
              memory_max: int | None = None) -> tuple[str, Path, subprocess.Popen[bytes]]:
        child = subprocess.Popen(["sh", "-c", 'read _; exec "$@"', "sh", sys.executable, "-S", "-c", TOUCH, str(mib),
                                  str(step_s)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.processes.append(child)
        intent = pb.Intent(priority=PRIORITY[priority], memory_high_bytes=memory_high, memory_max_bytes=memory_max)
        reply = self.client.call("BeginToolCall", pb.BeginToolCallRequest(sandbox=sandbox, tool="toucher",
                                                                           intent=intent, pid=child.pid))
        assert child.stdin is not None
        child.stdin.write(b"go\n")
        child.stdin.close()
        return reply.call_id, self.daemon.cgroup_root / sandbox / "calls" / reply.call_id, child

    def actions(self, call_id: str) -> list[tuple[str, str]]:
        try:
            call = self.client.call("GetToolCall", pb.GetToolCallRequest(call_id=call_id))
        except grpc.RpcError as exc:
            # While a call is being finished the daemon answers UNKNOWN for a moment (it has left the running
            # calls before its summary reaches the ledger): ask again.
            if exc.code() != grpc.StatusCode.UNKNOWN:
                raise
            return []
        return [(a.kind, a.reason) for a in call.actions]

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait()
        self.client.close()


def events(cgroup: Path) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in (cgroup / "memory.events").read_text().splitlines())}


@pytest.fixture
def host(tmp_path: Path) -> Iterator[tuple[DaemonProcess, Path]]:
    """A daemon whose root lies in a `host` cgroup of its own (memory.max there = the host's memory)."""
    mount = find_cgroup2_mount(Path("/proc/self/mountinfo").read_text())
    require(mount is not None and "memory" in (mount / "cgroup.subtree_control").read_text().split()
            and Path("/proc/pressure/memory").exists(), "cgroup v2 with the memory controller and PSI")
    assert mount is not None
    host_cgroup = mount / f"hostwarden-enforcement-{os.getpid()}"
    (tmp_path / "policy.toml").write_text(POLICY)
    config = tmp_path / "hostwarden.toml"
    config.write_text(f'[daemon]\nsocket = "{tmp_path / "hw.sock"}"\nstate_dir = "{tmp_path / "state"}"\n'
                      f'cgroup_root = "{host_cgroup / "root"}"\npolicy = "{tmp_path / "policy.toml"}"\n'
                      '[metrics]\naddress = ""\n[bpf]\nenabled = false\n[attest]\nenabled = false\n')
    daemon = DaemonProcess(config, str(tmp_path / "hw.sock"), tmp_path / "state", host_cgroup / "root",
                           tmp_path / "daemon.log", start_timeout=STARTUP_TIMEOUT_S)
    daemon.start()
    try:
        yield daemon, host_cgroup
    finally:
        daemon.stop()
        remove_tree(host_cgroup)


def test_each_rung_for_real(host: tuple[DaemonProcess, Path]) -> None:
    daemon, host_cgroup = host
    calls = Calls(daemon)
    try:
        calls.sandbox("web", "high")
        calls.sandbox("batch", "low")
        agent = subprocess.Popen(["sleep", "600"])
        calls.processes.append(agent)
        (daemon.cgroup_root / "batch" / "agent" / "cgroup.procs").write_text(str(agent.pid))

        # Rung 1, throttle: a 320 MiB host holding 64 MiB of high-priority work and a low-priority call
        # growing slowly to 280 MiB is short of memory; the low call's memory.high comes down and the
        # kernel throttles it there (memory.events high rises), so it never reaches 280 MiB.
        (host_cgroup / "memory.max").write_text(str(320 * MiB))
        high_id, _, high = calls.start("web", "high", 64)
        assert high.stdout is not None and high.stdout.readline() == b"held\n"
        low_id, low_path, _low = calls.start("batch", "low", 280, step_s=0.1)
        wait_for(lambda: ("throttle", "host_memory_short") in calls.actions(low_id), "a throttle")
        throttled_to = int((low_path / "memory.high").read_text())
        assert throttled_to < 512 * MiB
        wait_for(lambda: events(low_path)["high"] > 0, "memory.events high to rise under the lowered memory.high")
        wait_for(lambda: ("report", "kernel_throttled") in calls.actions(low_id), "the kernel's throttling reported")
        assert int((low_path / "memory.current").read_text()) < 280 * MiB
        calls.client.call("EndToolCall", pb.EndToolCallRequest(call_id=high_id))
        calls.client.call("EndToolCall", pb.EndToolCallRequest(call_id=low_id))
        (host_cgroup / "memory.max").write_text("max")

        # Rung 2, freeze + thaw: a high-priority call held at its own memory.high stalls (PSI); the running
        # low-priority call is frozen, and thawed once the high call is gone.
        low_id, low_path, low = calls.start("batch", "low", 16)
        assert low.stdout is not None and low.stdout.readline() == b"held\n"
        high_id, _, _high = calls.start("web", "high", 160, memory_high=32 * MiB, memory_max=256 * MiB)
        wait_for(lambda: ("freeze", "higher_priority_pressure") in calls.actions(low_id), "a freeze")
        assert "frozen 1" in (low_path / "cgroup.events").read_text()
        calls.client.call("EndToolCall", pb.EndToolCallRequest(call_id=high_id))
        wait_for(lambda: ("thaw", "pressure_subsided") in calls.actions(low_id), "a thaw")
        assert "frozen 0" in (low_path / "cgroup.events").read_text()

        # Rung 3, kill: the pressure does not subside while the low call is frozen; after kill_frozen_after
        # the daemon kills that call (cgroup.kill) and the sandbox's agent lives on.
        high_id, _, high = calls.start("web", "high", 160, memory_high=32 * MiB, memory_max=256 * MiB)
        wait_for(lambda: [a for a in calls.actions(low_id) if a[0] == "freeze"][1:], "a second freeze")
        assert low.wait(timeout=60) == -signal.SIGKILL
        wait_for(lambda: ("kill", "frozen_too_long") in calls.actions(low_id), "the kill in the call's record")
        assert agent.poll() is None
        assert high.poll() is None  # the higher-priority call was never the one killed
        assert str(agent.pid) in (daemon.cgroup_root / "batch" / "agent" / "cgroup.procs").read_text()
        calls.client.call("EndToolCall", pb.EndToolCallRequest(call_id=high_id))
    finally:
        calls.close()


def test_an_invalid_policy_on_sighup_leaves_the_running_one(host: tuple[DaemonProcess, Path]) -> None:
    daemon, _ = host
    policy_file = daemon.config.parent / "policy.toml"
    with Client(daemon.socket) as client:
        before = client.call("GetPolicy", pb.GetPolicyRequest())
        stream = client.watch(pb.WatchEventsRequest())
        policy_file.write_text(POLICY.replace('freeze_after = "1s"', 'freeze_after = "soon"'))
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGHUP)
        rejected = next(event for event in stream if event.kind == "policy_rejected")
        stream.cancel()
        assert "ladder.freeze_after" in rejected.attributes["errors"]
        after = client.call("GetPolicy", pb.GetPolicyRequest())
    assert after.effective_json == before.effective_json and after.toml == before.toml
    assert "rejected" in daemon.log.read_text()
    shown = daemon.cli("policy", "show", "--json").stdout
    assert '"freeze_after": 1.0' in shown
