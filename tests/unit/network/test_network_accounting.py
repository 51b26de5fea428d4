"""Accounting arithmetic over fake link counters: baselines, deltas, resets, direction swap, calls."""

from __future__ import annotations

import pytest

from hostwarden.network.accounting import (
    NetAccountingError,
    NetCounters,
    NetDelta,
    NetUnavailable,
    NetworkAccountant,
    advance,
)
from hostwarden.network.binding import BindingKind, NetBinding, NetnsRef
from hostwarden.network.netlink import LinkStats

NS = NetnsRef(path="/run/netns/sb", device=4, inode=4026532000, label="netns 'sb'")
NAMESPACE = NetBinding(kind=BindingKind.NAMESPACE, netns=NS)
HOST_SIDE = NetBinding(kind=BindingKind.INTERFACE, ifindex=12, interface="veth-sb")


class FakeLinks:
    """Link counters per (namespace, ifindex), changed by the test between readings."""

    def __init__(self) -> None:
        self.links: dict[tuple[NetnsRef | None, int], LinkStats] = {}

    def set(self, netns, ifindex, rx, tx, name="eth0", loopback=False):
        self.links[(netns, ifindex)] = LinkStats(ifindex, name, rx, tx, rx // 1000, tx // 1000, loopback)

    def drop(self, netns, ifindex):
        del self.links[(netns, ifindex)]

    def read_link(self, netns, ifindex):
        try:
            return self.links[(netns, ifindex)]
        except KeyError:
            raise LookupError(f"no link with ifindex {ifindex}") from None

    def read_links(self, netns):
        return [link for (ns, _), link in self.links.items() if ns == netns]


@pytest.fixture
def links():
    return FakeLinks()


@pytest.fixture
def accountant(links):
    return NetworkAccountant(read_link=links.read_link, read_links=links.read_links)


def test_advance_counts_growth_and_restarts_from_zero_after_a_reset():
    assert advance(NetCounters(100, 200, 1, 2), NetCounters(150, 260, 3, 2)) == NetCounters(50, 60, 2, 0)
    assert advance(NetCounters(5000, 5000, 9, 9), NetCounters(40, 5100, 1, 10)) == NetCounters(40, 100, 1, 1)


def test_namespace_counts_from_the_binding_on_and_ignores_loopback(accountant, links):
    links.set(NS, 1, rx=10**9, tx=10**9, name="lo", loopback=True)
    links.set(NS, 2, rx=5000, tx=7000)
    accountant.bind("sb", NAMESPACE)
    links.set(NS, 1, rx=2 * 10**9, tx=2 * 10**9, name="lo", loopback=True)
    links.set(NS, 2, rx=8000, tx=7500)
    assert accountant.sample("sb") == NetCounters(rx_bytes=3000, tx_bytes=500, rx_packets=3, tx_packets=0)


def test_host_side_of_a_veth_is_swapped_to_the_sandbox_view(accountant, links):
    links.set(None, 12, rx=0, tx=0, name="veth-sb")
    accountant.bind("sb", HOST_SIDE)
    # The host side received 4000 bytes: the sandbox sent them; it transmitted 900: the sandbox got them.
    links.set(None, 12, rx=4000, tx=900, name="veth-sb")
    counters = accountant.sample("sb")
    assert (counters.rx_bytes, counters.tx_bytes) == (900, 4000)
    assert (counters.rx_packets, counters.tx_packets) == (0, 4)


def test_call_delta_is_the_traffic_between_begin_and_end(accountant, links):
    links.set(NS, 2, rx=1000, tx=1000)
    accountant.bind("sb", NAMESPACE)
    links.set(NS, 2, rx=3000, tx=1500)
    accountant.begin("call-1", "sb")
    links.set(NS, 2, rx=23000, tx=2500)
    assert accountant.end("call-1") == NetDelta(NetCounters(20000, 1000, 20, 1))


def test_reset_during_a_call_is_not_a_negative_or_huge_delta(accountant, links):
    links.set(NS, 2, rx=50_000, tx=50_000)
    accountant.bind("sb", NAMESPACE)
    accountant.begin("c", "sb")
    links.set(NS, 2, rx=60_000, tx=55_000)
    accountant.sample("sb")  # the periodic metrics read sees the growth before the reset
    links.set(NS, 2, rx=4_000, tx=1_000)  # counters reset (device re-created under the same index)
    delta = accountant.end("c")
    assert isinstance(delta, NetDelta)
    assert (delta.rx_bytes, delta.tx_bytes) == (14_000, 6_000)


def test_links_that_come_and_go_keep_the_cumulative_count_monotonic(accountant, links):
    links.set(NS, 2, rx=100, tx=100)
    accountant.bind("sb", NAMESPACE)
    links.set(NS, 2, rx=600, tx=100)
    before = accountant.sample("sb")
    links.drop(NS, 2)
    links.set(NS, 3, rx=250, tx=50, name="eth1")  # appeared after the binding: counted in full
    after = accountant.sample("sb")
    assert before == NetCounters(500, 0, 0, 0)
    assert after.rx_bytes == 750 and after.tx_bytes == 50


def test_overlapping_calls_are_flagged(accountant, links):
    links.set(NS, 2, rx=0, tx=0)
    accountant.bind("sb", NAMESPACE)
    accountant.begin("a", "sb")
    accountant.begin("b", "sb")
    links.set(NS, 2, rx=100, tx=0)
    first, second = accountant.end("a"), accountant.end("b")
    assert isinstance(first, NetDelta) and first.concurrent_calls
    assert isinstance(second, NetDelta) and second.concurrent_calls
    accountant.begin("c", "sb")
    alone = accountant.end("c")
    assert isinstance(alone, NetDelta) and not alone.concurrent_calls


def test_calls_of_other_sandboxes_are_not_overlaps(accountant, links):
    other_ns = NetnsRef(path="/run/netns/o", device=4, inode=4026532999, label="netns 'o'")
    links.set(NS, 2, rx=0, tx=0)
    links.set(other_ns, 2, rx=0, tx=0)
    accountant.bind("sb", NAMESPACE)
    accountant.bind("other", NetBinding(kind=BindingKind.NAMESPACE, netns=other_ns))
    accountant.begin("a", "sb")
    accountant.begin("b", "other")
    links.set(other_ns, 2, rx=777, tx=0)
    first, second = accountant.end("a"), accountant.end("b")
    assert first == NetDelta(NetCounters())
    assert second == NetDelta(NetCounters(777, 0, 0, 0))


def test_unbound_and_host_network_sandboxes_get_a_reason_not_a_number(accountant):
    accountant.bind("shared", NetBinding(kind=BindingKind.HOST_NETWORK))
    accountant.begin("c1", "shared")
    accountant.begin("c2", "nowhere")
    shared, nowhere = accountant.end("c1"), accountant.end("c2")
    assert isinstance(shared, NetUnavailable) and shared.code == "host_network"
    assert "shares the host network" in shared.reason
    assert isinstance(nowhere, NetUnavailable) and nowhere.code == "unbound"
    with pytest.raises(NetAccountingError, match="shares the host network"):
        accountant.sample("shared")
    assert accountant.totals() == {}


def test_interface_gone_at_end_is_reported(accountant, links):
    links.set(None, 12, rx=0, tx=0, name="veth-sb")
    accountant.bind("sb", HOST_SIDE)
    accountant.begin("c", "sb")
    links.drop(None, 12)
    result = accountant.end("c")
    assert isinstance(result, NetUnavailable) and result.code == "unreadable"
    assert "veth-sb" in result.reason and "gone" in result.reason
    assert "sb" in accountant.errors()


def test_rebinding_during_a_call_gives_no_figure_and_keeps_totals_monotonic(accountant, links):
    links.set(NS, 2, rx=0, tx=0)
    links.set(None, 12, rx=0, tx=0, name="veth-sb")
    accountant.bind("sb", NAMESPACE)
    accountant.begin("c", "sb")
    links.set(NS, 2, rx=100, tx=0)
    accountant.sample("sb")
    accountant.bind("sb", HOST_SIDE)
    result = accountant.end("c")
    assert isinstance(result, NetUnavailable) and result.code == "rebound"
    assert accountant.totals()["sb"].rx_bytes == 100


def test_failed_bind_changes_nothing(accountant, links):
    links.set(NS, 2, rx=0, tx=0)
    accountant.bind("sb", NAMESPACE)
    with pytest.raises(NetAccountingError, match="gone"):
        accountant.bind("sb", HOST_SIDE)  # ifindex 12 does not exist
    assert accountant.binding("sb") == NAMESPACE


def test_totals_keep_the_last_value_while_unreadable(accountant, links):
    links.set(None, 12, rx=0, tx=0, name="veth-sb")
    accountant.bind("sb", HOST_SIDE)
    links.set(None, 12, rx=10, tx=30, name="veth-sb")
    assert accountant.totals() == {"sb": NetCounters(30, 10, 0, 0)}
    links.drop(None, 12)
    assert accountant.totals() == {"sb": NetCounters(30, 10, 0, 0)}
    accountant.unbind("sb")
    assert accountant.totals() == {}


def test_a_call_key_cannot_begin_twice(accountant, links):
    links.set(NS, 2, rx=0, tx=0)
    accountant.bind("sb", NAMESPACE)
    accountant.begin("c", "sb")
    with pytest.raises(ValueError, match="already begun"):
        accountant.begin("c", "sb")
    assert accountant.end("never") == NetUnavailable("unknown_call", "call 'never' was never begun")
