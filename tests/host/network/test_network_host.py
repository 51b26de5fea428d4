"""Real accounting and egress limits on a veth pair between two network namespaces made by the test.

Addresses (198.18.203.0/30, the RFC 2544 benchmarking range) exist only inside the two namespaces, which
have no other interfaces or routes; everything is deleted afterwards, also when a test fails.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from pyroute2 import IPRoute, netns

from hostwarden.network.accounting import NetDelta
from hostwarden.network.binding import discover_binding
from hostwarden.network.limits import EgressLimit, ShapingError
from hostwarden.network.manager import SandboxNetwork
from hostwarden.network.netlink import Rtnl, TcShaper
from tests.support import require

SANDBOX_ADDRESS = "198.18.203.1"
PEER_ADDRESS = "198.18.203.2"
MEBIBYTE = 1024 * 1024


@dataclass(frozen=True)
class VethPair:
    sandbox_ns: str  # the sandbox's namespace; its end of the veth is SANDBOX_IF
    host_ns: str  # stands in for the host: the veth's other end, HOST_IF, lives here
    sandbox_if: str = "hwt-sb"
    host_if: str = "hwt-host"


def _make_pair(pair: VethPair, mtu: int) -> None:
    for name in (pair.sandbox_ns, pair.host_ns):
        netns.create(name)
    with IPRoute(netns=pair.sandbox_ns, flags=0) as ipr:
        ipr.link("add", ifname=pair.sandbox_if, kind="veth", peer={"ifname": pair.host_if, "net_ns_fd": pair.host_ns})
        (index,) = ipr.link_lookup(ifname=pair.sandbox_if)
        ipr.addr("add", index=index, address=SANDBOX_ADDRESS, prefixlen=30)
        ipr.link("set", index=index, mtu=mtu, state="up")
    with IPRoute(netns=pair.host_ns, flags=0) as ipr:
        (index,) = ipr.link_lookup(ifname=pair.host_if)
        ipr.addr("add", index=index, address=PEER_ADDRESS, prefixlen=30)
        ipr.link("set", index=index, mtu=mtu, state="up")


def _veth_pair(mtu: int) -> Iterator[VethPair]:
    require(os.geteuid() == 0, "root (to create network namespaces)")
    tag = f"hwt{os.getpid()}"
    pair = VethPair(sandbox_ns=f"{tag}-sb", host_ns=f"{tag}-host")
    try:
        _make_pair(pair, mtu)
        yield pair
    finally:
        for name in (pair.sandbox_ns, pair.host_ns):
            if name in netns.listnetns():
                netns.remove(name)  # takes the veth, the IFB and every qdisc on them along
    assert not {pair.sandbox_ns, pair.host_ns} & set(netns.listnetns())


@pytest.fixture
def jumbo_pair() -> Iterator[VethPair]:
    # Link counters include headers; GSO already makes them ~0.1%, a large MTU keeps them small without it.
    yield from _veth_pair(mtu=65000)


@pytest.fixture
def ethernet_pair() -> Iterator[VethPair]:
    yield from _veth_pair(mtu=1500)


@pytest.fixture
def network() -> Iterator[SandboxNetwork]:
    service = SandboxNetwork(Rtnl())
    yield service
    service.close()


@dataclass
class Transfer:
    received: int
    rate_bits_per_s: float  # payload rate after the first `skip` bytes (the token bucket's initial burst)


def transfer(sender_ns: str, receiver_ns: str, receiver_address: str, size: int, skip: int = 0) -> Transfer:
    """Send `size` bytes over TCP from one namespace to the other; sockets made inside each via setns."""
    listener = netns.create_socket(receiver_ns, flags=0)
    sender = netns.create_socket(sender_ns, flags=0)
    with listener, sender:
        listener.bind((receiver_address, 0))
        listener.listen(1)
        sender.connect(listener.getsockname())
        connection, _ = listener.accept()
        payload = b"\xa5" * size

        def send() -> None:
            sender.sendall(payload)
            sender.shutdown(socket.SHUT_WR)

        sending = threading.Thread(target=send)
        sending.start()
        received, start, start_bytes = 0, 0.0, 0
        with connection:
            while chunk := connection.recv(1 << 16):
                received += len(chunk)
                if not start and received > skip:
                    start, start_bytes = time.monotonic(), received
        finished = time.monotonic()
        sending.join()
    rate = (received - start_bytes) * 8 / (finished - start) if finished > start else 0.0
    return Transfer(received, rate)


def carried(counted: float, payload: int) -> bool:
    """Interface counters see the wire: every payload byte plus headers, and TCP's retransmissions (veth drops
    a packet when the receiving side's backlog is full, which a loaded machine does now and then: one run
    counted +6 %). So at least the payload, and not more than 10 % over it."""
    return payload <= counted <= 1.10 * payload


def test_transfer_is_accounted_to_the_right_sandbox_and_call(jumbo_pair, network):
    pair = jumbo_pair
    # The same sandbox seen from inside (its namespace) and from outside (the host side of its veth).
    network.bind("inside", network.parse(f"netns:{pair.sandbox_ns}"))
    network.bind("outside", network.parse(f"interface:{pair.host_if}@{pair.host_ns}"))
    # The peer namespace as a sandbox of its own: the upload is its download.
    network.bind("peer", network.parse(f"netns:{pair.host_ns}"))
    accountant = network.accountant

    upload, download = 20 * MEBIBYTE, 5 * MEBIBYTE
    for sandbox in ("inside", "outside", "peer"):
        accountant.begin(f"{sandbox}/upload", sandbox)
    assert transfer(pair.sandbox_ns, pair.host_ns, PEER_ADDRESS, upload).received == upload
    uploads = {sandbox: accountant.end(f"{sandbox}/upload") for sandbox in ("inside", "outside", "peer")}

    for sandbox in ("inside", "outside"):
        accountant.begin(f"{sandbox}/download", sandbox)
    assert transfer(pair.host_ns, pair.sandbox_ns, SANDBOX_ADDRESS, download).received == download
    downloads = {sandbox: accountant.end(f"{sandbox}/download") for sandbox in ("inside", "outside")}

    for sandbox in ("inside", "outside"):
        up, down = uploads[sandbox], downloads[sandbox]
        assert isinstance(up, NetDelta) and isinstance(down, NetDelta), (up, down)
        assert carried(up.tx_bytes, upload), sandbox
        assert up.rx_bytes < 0.02 * upload, sandbox  # only ACKs came back
        assert carried(down.rx_bytes, download), sandbox
        assert down.tx_bytes < 0.02 * download, sandbox
        assert not up.concurrent_calls
    peer = uploads["peer"]
    assert isinstance(peer, NetDelta) and carried(peer.rx_bytes, upload)

    totals = accountant.totals()
    for sandbox in ("inside", "outside"):
        assert carried(totals[sandbox].tx_bytes, upload)
        assert carried(totals[sandbox].rx_bytes, download)


def test_discovered_host_network_is_labelled_and_not_counted(network):
    require(os.geteuid() == 0, "root (to read pid 1's namespace)")
    binding = discover_binding([os.getpid()])  # the test runs in the host's namespace
    network.bind("shared", binding)
    network.accountant.begin("c", "shared")
    result = network.accountant.end("c")
    assert getattr(result, "code", None) == "host_network"


def _assert_rate(measured: float, limit_bits: int) -> None:
    # Payload rate: the limit also carries TCP/IP/Ethernet headers, so the payload runs a little below it
    # (seen here: 1-2%); 10% either way still fails for a missing or wrong limit.
    assert measured == pytest.approx(limit_bits, rel=0.10), f"{measured / 1e6:.3f} Mbit/s"


SIZE_AT_1MBIT = 600 * 1024  # ~5 s at 1 Mbit/s
SKIP = 64 * 1024  # past the 16 KiB initial bucket and TCP slow start


def test_egress_limit_on_the_host_side_holds_and_is_removed(ethernet_pair, network):
    pair = ethernet_pair
    limit = EgressLimit.from_mapping({"egress_rate": "1mbit", "burst": "16k"})
    binding = network.parse(f"interface:{pair.host_if}@{pair.host_ns}")
    network.bind("sb", binding, limit)
    shaper = TcShaper(network.rtnl)
    assert shaper.installed(binding) == [(f"hwifb{binding.ifindex}", 125_000)]

    measured = transfer(pair.sandbox_ns, pair.host_ns, PEER_ADDRESS, SIZE_AT_1MBIT, skip=SKIP)
    _assert_rate(measured.rate_bits_per_s, 1_000_000)

    network.unbind("sb")
    rtnl = Rtnl()
    try:
        with rtnl.session(binding.netns) as ipr:
            assert not ipr.link_lookup(ifname=f"hwifb{binding.ifindex}")
            kinds = {qdisc.get_attr("TCA_KIND") for qdisc in ipr.get_qdiscs(binding.ifindex)}
            assert "ingress" not in kinds
    finally:
        rtnl.close()
    unlimited = transfer(pair.sandbox_ns, pair.host_ns, PEER_ADDRESS, SIZE_AT_1MBIT, skip=SKIP)
    assert unlimited.rate_bits_per_s > 20_000_000


def test_egress_limit_in_the_namespace_changes_on_reload(ethernet_pair, network):
    pair = ethernet_pair
    binding = network.parse(f"netns:{pair.sandbox_ns}")
    network.bind("sb", binding, EgressLimit.from_mapping({"egress_rate": "1mbit", "burst": "16k"}))
    first = transfer(pair.sandbox_ns, pair.host_ns, PEER_ADDRESS, SIZE_AT_1MBIT, skip=SKIP)
    _assert_rate(first.rate_bits_per_s, 1_000_000)

    network.set_limit("sb", EgressLimit.from_mapping({"egress_rate": "2mbit", "burst": "16k"}))
    second = transfer(pair.sandbox_ns, pair.host_ns, PEER_ADDRESS, SIZE_AT_1MBIT, skip=SKIP)
    _assert_rate(second.rate_bits_per_s, 2_000_000)

    network.set_limit("sb", None)
    assert TcShaper(network.rtnl).installed(binding) == []


def test_a_limit_that_cannot_be_applied_is_reported(ethernet_pair, network):
    pair = ethernet_pair
    binding = network.parse(f"interface:{pair.host_if}@{pair.host_ns}")
    network.bind("sb", binding)
    with network.rtnl.session(binding.netns) as ipr:
        ipr.link("del", index=binding.ifindex)  # the sandbox's veth disappears under us
    with pytest.raises(ShapingError, match=r"sandbox 'sb'.*is gone"):
        network.set_limit("sb", EgressLimit.from_mapping({"egress_rate": "1mbit"}))
    assert network.limiter.applied("sb") is None
