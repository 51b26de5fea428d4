"""The network part in a real daemon process: a transfer inside a `hostwarden exec` call, run in the
sandbox's namespace, is accounted to that sandbox and call; a 1 Mbit/s egress limit from the policy holds,
follows a reload (SIGHUP) and goes with the sandbox. The namespaces and veth come from
test_network_host's fixtures (addresses only inside them; deleted afterwards)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from pyroute2 import netns

from hostwarden.network.binding import parse_binding
from hostwarden.network.netlink import Rtnl, TcShaper
from tests.host.network.test_network_host import MEBIBYTE, PEER_ADDRESS, VethPair, carried

SENDER = "import socket,sys; s=socket.create_connection((sys.argv[1], int(sys.argv[2]))); " \
         "s.sendall(b'\\xa5' * int(sys.argv[3])); s.shutdown(socket.SHUT_WR); s.recv(1)"


class Receiver:
    """A listener inside `namespace` that counts what one connection sends and its rate past `skip` bytes."""

    def __init__(self, namespace: str, skip: int = 0) -> None:
        self._listener = netns.create_socket(namespace, flags=0)
        self._listener.bind((PEER_ADDRESS, 0))
        self._listener.listen(1)
        self.port = self._listener.getsockname()[1]
        self._skip = skip
        self.received = 0
        self.rate_bits_per_s = 0.0
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self) -> None:
        connection, _ = self._listener.accept()
        start, start_bytes = 0.0, 0
        with connection:
            while chunk := connection.recv(1 << 16):
                self.received += len(chunk)
                if not start and self.received > self._skip:
                    start, start_bytes = time.monotonic(), self.received
            finished = time.monotonic()
        if finished > start:
            self.rate_bits_per_s = (self.received - start_bytes) * 8 / (finished - start)

    def join(self) -> None:
        self._thread.join(timeout=60)
        self._listener.close()


def send_in_call(daemon, tmp_path: Path, sandbox: str, namespace: str, port: int, size: int) -> dict:
    """One tool call in `sandbox` whose process enters `namespace` and sends `size` bytes to the peer."""
    summary = tmp_path / f"{sandbox}-{time.monotonic_ns()}.json"
    daemon.cli("exec", "--sandbox", sandbox, "--tool", "upload", "--summary-json", str(summary), "--",
               "nsenter", f"--net=/run/netns/{namespace}", sys.executable, "-c", SENDER, PEER_ADDRESS, str(port),
               str(size), timeout=120)
    return json.loads(summary.read_text())


def metrics(daemon) -> str:
    address = json.loads(daemon.cli("status", "--json").stdout)["daemon"]["metrics_address"]
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as reply:
        return reply.read().decode()


def counter(text: str, sandbox: str, direction: str) -> float:
    prefix = f'hostwarden_sandbox_network_bytes_total{{direction="{direction}",sandbox="{sandbox}"}} '
    return next(float(line.removeprefix(prefix)) for line in text.splitlines() if line.startswith(prefix))


def test_a_transfer_in_a_call_is_accounted_to_its_sandbox_and_call(daemon_process, jumbo_pair: VethPair, tmp_path):
    pair, daemon, size = jumbo_pair, daemon_process, 20 * MEBIBYTE
    daemon.cli("sandbox", "create", "sb", "--network", f"netns:{pair.sandbox_ns}")
    daemon.cli("sandbox", "create", "peer")
    daemon.cli("sandbox", "bind", "peer", f"netns:{pair.host_ns}")
    receiver = Receiver(pair.host_ns)
    summary = send_in_call(daemon, tmp_path, "sb", pair.sandbox_ns, receiver.port, size)
    receiver.join()
    assert receiver.received == size
    assert carried(summary["net_tx_bytes"], size), summary
    assert summary["net_rx_bytes"] < 0.02 * size  # only ACKs came back
    assert pair.sandbox_ns in summary["net_source"]
    text = metrics(daemon)
    assert carried(counter(text, "sb", "tx"), size)
    assert carried(counter(text, "peer", "rx"), size)  # the peer's download, not its upload
    assert counter(text, "peer", "tx") < 0.02 * size


def test_a_sandbox_is_discovered_from_its_agent_processes(daemon_process, jumbo_pair: VethPair, tmp_path):
    pair, daemon, size = jumbo_pair, daemon_process, 5 * MEBIBYTE
    daemon.cli("sandbox", "create", "found")
    agent = subprocess.Popen(["nsenter", f"--net=/run/netns/{pair.sandbox_ns}", "sleep", "60"])
    try:
        time.sleep(0.2)  # nsenter has entered the namespace and exec'd sleep
        (daemon.cgroup_root / "found" / "agent" / "cgroup.procs").write_text(str(agent.pid))
        receiver = Receiver(pair.host_ns)
        summary = send_in_call(daemon, tmp_path, "found", pair.sandbox_ns, receiver.port, size)
        receiver.join()
    finally:
        agent.kill()
        agent.wait()
    assert carried(summary["net_tx_bytes"], size), summary
    listed = json.loads(daemon.cli("sandbox", "list", "--json").stdout)
    assert {s["name"]: s["network"] for s in listed}["found"] == f"netns:{pair.sandbox_ns}"


POLICY = """
[[network.rule]]
name = "capped"
match = {{ sandbox = "limited" }}
egress_rate = "{rate}"
burst = "16k"
"""
SIZE_AT_1MBIT = 600 * 1024  # ~5 s at 1 Mbit/s
SKIP = 64 * 1024  # past the initial bucket and TCP slow start


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_a_policy_egress_limit_holds_follows_reload_and_goes_with_the_sandbox(daemon_process,
                                                                              ethernet_pair: VethPair, tmp_path):
    pair, daemon = ethernet_pair, daemon_process
    policy = tmp_path / "policy.toml"  # the daemon fixture's policy path
    policy.write_text(POLICY.format(rate="1mbit"))
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "[network.rule]" in daemon.cli("policy", "show").stdout, "policy not reloaded")
    spec = f"interface:{pair.host_if}@{pair.host_ns}"
    daemon.cli("sandbox", "create", "limited", "--network", spec)
    rtnl = Rtnl()
    try:
        binding = parse_binding(spec, rtnl.resolve_link)
        shaper = TcShaper(rtnl)
        assert [rate for _, rate in shaper.installed(binding)] == [125_000]

        receiver = Receiver(pair.host_ns, skip=SKIP)
        send_in_call(daemon, tmp_path, "limited", pair.sandbox_ns, receiver.port, SIZE_AT_1MBIT)
        receiver.join()
        assert receiver.rate_bits_per_s == pytest.approx(1_000_000, rel=0.10), receiver.rate_bits_per_s

        policy.write_text(POLICY.format(rate="2mbit"))
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: [rate for _, rate in shaper.installed(binding)] == [250_000], "limit not changed")
        receiver = Receiver(pair.host_ns, skip=SKIP)
        send_in_call(daemon, tmp_path, "limited", pair.sandbox_ns, receiver.port, 2 * SIZE_AT_1MBIT)
        receiver.join()
        assert receiver.rate_bits_per_s == pytest.approx(2_000_000, rel=0.10), receiver.rate_bits_per_s

        daemon.cli("sandbox", "delete", "limited")
        assert shaper.installed(binding) == []
        with rtnl.session(binding.netns) as ipr:
            assert not ipr.link_lookup(ifname=f"hwifb{binding.ifindex}")
            assert "ingress" not in {q.get_attr("TCA_KIND") for q in ipr.get_qdiscs(binding.ifindex)}
    finally:
        rtnl.close()
