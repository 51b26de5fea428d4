"""The monitor in a real daemon process on this host: real bcc programs, real calls, events over gRPC."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import grpc

from hostwarden.client import Client
from hostwarden.proto import warden_pb2 as pb
from tests.host.bpf.bpf_helpers import require_bcc_host
from tests.host.daemon.conftest import DaemonProcess

MIB = 1 << 20
# Grows its resident memory by 96 MiB, page by page, then holds it a moment.
ALLOCATE_96M = ("import mmap, time; m = mmap.mmap(-1, 96 << 20); "
                "[m.__setitem__(i, 1) for i in range(0, 96 << 20, 4096)]; time.sleep(0.2)")


class EventCollector:
    """Reads a WatchEvents stream on a thread until cancelled."""

    def __init__(self, socket: str, kinds: list[str]) -> None:
        self._client = Client(socket)
        self._stream = self._client.watch(pb.WatchEventsRequest(kinds=kinds))
        self.events: list[pb.Event] = []
        self._arrived = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for event in self._stream:
                with self._arrived:
                    self.events.append(event)
                    self._arrived.notify_all()
        except grpc.RpcError as ended:
            assert ended.code() == grpc.StatusCode.CANCELLED, ended

    def wait(self, count: int, timeout: float = 10) -> list[pb.Event]:
        with self._arrived:
            self._arrived.wait_for(lambda: len(self.events) >= count, timeout)
            return list(self.events)

    def close(self) -> None:
        self._stream.cancel()
        self._thread.join(timeout=5)
        self._client.close()


def exec_summary(d: DaemonProcess, tmp_path: Path, *args: str) -> dict:
    summary_file = tmp_path / "summary.json"
    d.cli("exec", "--sandbox", "sb", "--summary-json", str(summary_file), *args)
    return json.loads(summary_file.read_text())


def test_programs_are_reported_in_status(daemon_process: DaemonProcess) -> None:
    require_bcc_host()
    capabilities = json.loads(daemon_process.cli("status", "--json").stdout)["capabilities"]
    assert capabilities["bcc"]["in_use"]
    for program in ("process_exec", "process_fork", "process_exit", "rss_sample"):
        assert capabilities[f"bpf_{program}"]["in_use"], capabilities[f"bpf_{program}"]
    # RSS is sampled here: the program that counts it at every change could run, and is not needed.
    every_change = capabilities["bpf_rss_stat"]
    assert every_change["available"] and not every_change["in_use"], every_change
    assert every_change["detail"].startswith("not attached: not needed, RSS sampled"), every_change
    # This host has no BPF LSM: the digest program is reported with its reason, and the daemon runs on.
    digest = capabilities["bpf_exec_digest"]
    assert not digest["in_use"] and digest["detail"]


def test_exec_lists_the_executables_the_call_ran(daemon_process: DaemonProcess, tmp_path: Path) -> None:
    require_bcc_host()
    daemon_process.cli("sandbox", "create", "sb")
    summary = exec_summary(daemon_process, tmp_path, "--", "sh", "-c", "/bin/true; /bin/echo x")
    executables = summary["executables"]
    assert executables[0].endswith("/sh"), executables
    assert executables[1:] == ["/bin/true", "/bin/echo"]


def test_spike_in_a_call_is_a_memory_spike_event(daemon_process: DaemonProcess, tmp_path: Path) -> None:
    require_bcc_host()
    daemon_process.cli("sandbox", "create", "sb")
    collector = EventCollector(daemon_process.socket, ["memory_spike"])
    try:
        # memory.high 50 MiB -> spike threshold 40 MiB (not enforced here: no memory controller).
        summary = exec_summary(daemon_process, tmp_path, "--tool", "alloc", "--memory-high", "50M", "--",
                               sys.executable, "-c", ALLOCATE_96M)
        events = collector.wait(1)
    finally:
        collector.close()
    assert len(events) == 1, events
    spike = events[0]
    assert (spike.sandbox, spike.call_id) == ("sb", summary["call_id"])
    assert spike.attributes["comm"].startswith("python") and int(spike.attributes["pid"]) > 0
    assert int(spike.attributes["threshold_bytes"]) == 40 * MIB
    assert int(spike.attributes["bytes"]) >= 40 * MIB and spike.kernel_time_ns > 0
    # No memory.peak on this host: the peak comes from rss tracking, and says so.
    assert summary["peak_memory_source"] == "rss_tracking"
    assert summary["peak_memory_bytes"] >= 96 * MIB
