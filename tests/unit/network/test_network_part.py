"""The network part in an in-process daemon (fake cgroupfs, fake rtnetlink, fake tc): binding through the
API and its errors, per-call figures in summaries, GetUsage, metrics, policy limits and reloads, discovery,
and the binding kept across a restart."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import grpc
import pytest
from click.testing import CliRunner

from hostwarden import cli
from hostwarden.app import Daemon
from hostwarden.client import Client
from hostwarden.network import part as network_part
from hostwarden.network.limits import EgressLimiter
from hostwarden.network.manager import SandboxNetwork
from hostwarden.network.netlink import LinkStats
from hostwarden.proto import warden_pb2 as pb
from tests.unit.daemon.conftest import make_daemon
from tests.unit.network.test_network_limits import FakeShaper

HOST_SIDE = "veth-a"


class FakeRtnl:
    """Links of the daemon's own namespace, by ifindex; counters are the link's own (host side) view."""

    def __init__(self) -> None:
        self.stats: dict[int, LinkStats] = {}
        self.unreadable: str | None = None

    def add(self, ifindex: int, name: str, rx: int = 0, tx: int = 0) -> None:
        self.stats[ifindex] = LinkStats(ifindex, name, rx, tx, rx // 1000, tx // 1000)

    def grow(self, ifindex: int, rx: int, tx: int) -> None:
        link = self.stats[ifindex]
        self.add(ifindex, link.name, link.rx_bytes + rx, link.tx_bytes + tx)

    def link(self, netns: object, ifindex: int) -> LinkStats:
        if self.unreadable:
            raise OSError(1, self.unreadable)
        try:
            return self.stats[ifindex]
        except KeyError:
            raise LookupError(f"no link with ifindex {ifindex}") from None

    def links(self, netns: object) -> list[LinkStats]:
        return list(self.stats.values())

    def resolve_link(self, netns: object, interface: str | int) -> tuple[int, str]:
        for ifindex, link in self.stats.items():
            if interface in (ifindex, link.name):
                return ifindex, link.name
        raise LookupError(interface)

    def forget(self, netns: object) -> None:
        pass

    def close(self) -> None:
        pass


class Fakes:
    def __init__(self) -> None:
        self.rtnl = FakeRtnl()
        self.rtnl.add(7, HOST_SIDE)
        self.rtnl.add(8, "veth-b")
        self.shaper = FakeShaper()

    def network(self) -> SandboxNetwork:
        network = SandboxNetwork(self.rtnl)  # type: ignore[arg-type]
        network.limiter = EgressLimiter(self.shaper)
        return network

    def limits(self) -> dict[str, int]:
        return {binding.interface or "": limit.rate_bits_per_s for binding, limit in self.shaper.installed.items()}


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Fakes:
    fakes = Fakes()
    monkeypatch.setattr(network_part, "SandboxNetwork", fakes.network)
    return fakes


@pytest.fixture
def start(tmp_path, fakes) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def start_daemon(policy: str | None = None) -> Daemon:
        daemon = make_daemon(tmp_path, policy=policy)
        daemon.start()
        started.append(daemon)
        return daemon

    yield start_daemon
    for daemon in started:
        daemon.shutdown()


def client(daemon: Daemon, token: str | None = None) -> Client:
    return Client(daemon.config.daemon.socket, token)


def code_of(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


def create(admin: Client, name: str, network: str = "", **labels: str) -> pb.CreateSandboxResponse:
    return admin.call("CreateSandbox", pb.CreateSandboxRequest(name=name, network=network, labels=labels))


def run_call(admin: Client, sandbox: str, during: Callable[[], None] = lambda: None) -> pb.ToolCall:
    call = admin.call("BeginToolCall", pb.BeginToolCallRequest(sandbox=sandbox, tool="curl"))
    during()
    return admin.call("EndToolCall", pb.EndToolCallRequest(call_id=call.call_id, exit_code=0))


def scrape(daemon: Daemon) -> str:
    with urllib.request.urlopen(f"http://{daemon.metrics_address}/metrics", timeout=5) as reply:
        return reply.read().decode()


def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_a_bound_call_gets_its_bytes_and_the_sandbox_its_series(start, fakes):
    daemon = start()
    with client(daemon) as admin:
        reply = create(admin, "sb", f"interface:{HOST_SIDE}")
        assert reply.sandbox.network == f"interface:{HOST_SIDE}"
        # The host side receives what the sandbox sends: 3000 in, 500 out at the host side.
        summary = run_call(admin, "sb", lambda: fakes.rtnl.grow(7, rx=3000, tx=500))
        assert (summary.net_tx_bytes, summary.net_rx_bytes) == (3000, 500)
        assert HOST_SIDE in summary.net_source
        usage = admin.call("GetUsage", pb.GetUsageRequest(sandbox="sb"))
        assert (usage.net_tx_bytes, usage.net_rx_bytes) == (3000, 500)
        text = scrape(daemon)
        assert 'hostwarden_sandbox_network_bytes_total{direction="tx",sandbox="sb"} 3000.0' in text
        assert 'hostwarden_sandbox_network_bytes_total{direction="rx",sandbox="sb"} 500.0' in text
        admin.call("DeleteSandbox", pb.DeleteSandboxRequest(name="sb"))
        assert 'sandbox="sb"' not in scrape(daemon)


def test_an_unbound_call_has_no_figures_and_says_why(start):
    daemon = start()
    with client(daemon) as admin:
        create(admin, "sb")
        summary = run_call(admin, "sb")
        assert not summary.HasField("net_rx_bytes") and not summary.HasField("net_tx_bytes")
        assert summary.net_source.startswith("no network binding")
        assert not admin.call("GetUsage", pb.GetUsageRequest(sandbox="sb")).HasField("net_rx_bytes")


@pytest.mark.parametrize(("spec", "code", "words"), [
    ("bogus", grpc.StatusCode.INVALID_ARGUMENT, "netns:<name>"),
    ("interface:has/slash", grpc.StatusCode.INVALID_ARGUMENT, "not an interface name"),
    ("pid:abc", grpc.StatusCode.INVALID_ARGUMENT, "decimal process id"),
    ("interface:veth-none", grpc.StatusCode.NOT_FOUND, "no interface 'veth-none'"),
    ("netns:hostwarden-no-such-ns", grpc.StatusCode.NOT_FOUND, "does not exist"),
    ("pid:999999999", grpc.StatusCode.NOT_FOUND, "pid 999999999 does not exist"),
])
def test_bad_specs_at_create_change_nothing(start, spec, code, words):
    daemon = start()
    with client(daemon) as admin:
        got, message = code_of(lambda: create(admin, "sb", spec))
        assert got == code and words in message, message
        assert not admin.call("ListSandboxes", pb.ListSandboxesRequest()).sandboxes
        assert daemon.ledger.sandboxes() == []


def test_a_binding_that_cannot_be_read_after_creation_leaves_no_sandbox(start, fakes):
    daemon = start()
    fakes.rtnl.unreadable = "Operation not permitted"
    with client(daemon) as admin:
        got, message = code_of(lambda: create(admin, "sb", f"interface:{HOST_SIDE}"))
        assert got == grpc.StatusCode.FAILED_PRECONDITION and "Operation not permitted" in message
        assert not admin.call("ListSandboxes", pb.ListSandboxesRequest()).sandboxes
    assert not (daemon.root / "sb").exists()


def test_bind_network_rebinds_unbinds_and_refuses_bad_requests(start):
    daemon = start()
    with client(daemon) as admin:
        token = create(admin, "sb", f"interface:{HOST_SIDE}").token
        create(admin, "other")
        assert admin.call("BindNetwork", pb.BindNetworkRequest(sandbox="sb", network="interface:8")).network \
            == "interface:veth-b"
        for request, code in ((pb.BindNetworkRequest(sandbox="sb", network="bogus"), grpc.StatusCode.INVALID_ARGUMENT),
                              (pb.BindNetworkRequest(sandbox="nope", network="host"), grpc.StatusCode.NOT_FOUND),
                              (pb.BindNetworkRequest(sandbox="sb", network="interface:x1"), grpc.StatusCode.NOT_FOUND)):
            assert code_of(lambda r=request: admin.call("BindNetwork", r))[0] == code
        with client(daemon, token) as own:  # a sandbox may not move its own accounting or limit
            for network in ("host", "", "bogus"):
                request = pb.BindNetworkRequest(sandbox="sb", network=network)
                assert code_of(lambda r=request: own.call("BindNetwork", r))[0] == grpc.StatusCode.PERMISSION_DENIED
        listed = {s.name: s.network for s in admin.call("ListSandboxes", pb.ListSandboxesRequest()).sandboxes}
        assert listed == {"sb": "interface:veth-b", "other": ""}
        assert admin.call("BindNetwork", pb.BindNetworkRequest(sandbox="sb", network="")).network == ""


POLICY = """
[network]
egress_rate = "10mbit"

[[network.rule]]
name = "untrusted"
match = { labels = { trust = "low" } }
egress_rate = "1mbit"
"""


def test_policy_limits_are_applied_changed_on_reload_and_removed(start, fakes):
    daemon = start(POLICY)
    with client(daemon) as admin:
        create(admin, "a", f"interface:{HOST_SIDE}", trust="low")
        create(admin, "b", "interface:veth-b")
        assert fakes.limits() == {HOST_SIDE: 1_000_000, "veth-b": 10_000_000}
        admin.call("SetPolicy", pb.SetPolicyRequest(toml=POLICY.replace('"1mbit"', '"2mbit"')))
        eventually(lambda: fakes.limits() == {HOST_SIDE: 2_000_000, "veth-b": 10_000_000})
        admin.call("SetPolicy", pb.SetPolicyRequest(toml=""))
        eventually(lambda: fakes.limits() == {})
        admin.call("SetPolicy", pb.SetPolicyRequest(toml=POLICY))
        eventually(lambda: len(fakes.limits()) == 2)
        admin.call("DeleteSandbox", pb.DeleteSandboxRequest(name="a"))
        assert fakes.limits() == {"veth-b": 10_000_000}


def test_a_limit_that_cannot_be_applied_is_reported(start, fakes):
    daemon = start(POLICY)
    fakes.shaper.fail_with = "Operation not supported"
    events = daemon.bus.subscribe(kinds=("action",))
    with client(daemon) as admin:
        create(admin, "sb", f"interface:{HOST_SIDE}")  # bound and counted, though not limited
        assert fakes.limits() == {}
    event = events.get(timeout=2)
    assert event is not None and event.sandbox == "sb"
    assert event.attributes["reason"] == "egress_limit_failed" and "Operation not supported" in event.message


def test_discovery_labels_a_sandbox_on_the_host_network(start):
    daemon = start()
    agent = subprocess.Popen(["sleep", "60"])  # in the test's own (the host's) namespace
    with client(daemon) as admin:
        create(admin, "sb")
        daemon.tree.attach(daemon.warden.sandboxes["sb"].path / "agent", agent.pid)
        summary = run_call(admin, "sb")
        assert not summary.HasField("net_rx_bytes")
        assert "shares the host network" in summary.net_source
        sandbox = admin.call("ListSandboxes", pb.ListSandboxesRequest()).sandboxes[0]
        assert sandbox.network == "host"
    agent.kill()
    agent.wait()


def test_an_explicit_binding_and_its_limit_survive_a_restart(tmp_path, start, fakes):
    first = make_daemon(tmp_path, policy=POLICY)
    first.start()
    try:
        with client(first) as admin:
            create(admin, "sb", f"interface:{HOST_SIDE}")
    finally:
        first.shutdown()
    fakes.shaper.installed.clear()  # what a new daemon finds must come from its own restore
    second = start(POLICY)
    with client(second) as admin:
        assert admin.call("ListSandboxes", pb.ListSandboxesRequest()).sandboxes[0].network == f"interface:{HOST_SIDE}"
        assert fakes.limits() == {HOST_SIDE: 10_000_000}
        summary = run_call(admin, "sb", lambda: fakes.rtnl.grow(7, rx=100, tx=0))
        assert summary.net_tx_bytes == 100



def test_top_shows_network_rates_from_successive_readings(start, fakes, monkeypatch):
    daemon = start()
    with client(daemon) as admin:
        create(admin, "sb", f"interface:{HOST_SIDE}")
        create(admin, "plain")
    clock = iter([100.0, 101.0])

    def sleep(seconds: float) -> None:  # instead of sleeping: 1 s of traffic, then stop after 2 tables
        if fakes.rtnl.stats[7].rx_bytes:
            raise KeyboardInterrupt
        fakes.rtnl.grow(7, rx=125_000, tx=0)

    monkeypatch.setattr(cli, "time", SimpleNamespace(sleep=sleep, monotonic=clock.__next__, strftime=time.strftime))
    result = CliRunner().invoke(cli.main, ["top", "--socket", daemon.config.daemon.socket])
    assert "Aborted!" in result.output, result.output  # the KeyboardInterrupt after the second table
    header, *rows = result.output.split("hostwarden top")[2].splitlines()[1:]
    assert "RX_KBIT/S" in header and "TX_KBIT/S" in header
    columns = {row.split()[0]: row.split()[4:6] for row in rows if row.startswith(("plain", "sb"))}  # CALL is empty
    # 125 000 bytes the host side received in 1 s = 1000 kbit/s the sandbox sent
    assert columns == {"plain": ["-", "-"], "sb": ["0.0", "1000.0"]}
