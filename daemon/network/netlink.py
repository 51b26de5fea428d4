"""The kernel side of network accounting and limits: rtnetlink through pyroute2, plain types out.

Everything that touches netlink lives here; the accountant and the limiter above see `LinkStats` and
`ShapingError` only, so they are unit-tested with fakes.

Egress shaping (why these devices, see docs/network.md):
- INTERFACE binding: the host side's *ingress* is the sandbox's egress, and ingress cannot queue, so it is
  redirected (u32 match-all + mirred) to an IFB device `hwifb<ifindex>` whose egress carries a TBF. All
  of it lives outside the sandbox, so a sandbox with CAP_NET_ADMIN in its own namespace cannot lift it.
- NAMESPACE binding: a TBF as the root qdisc of each non-loopback link inside the sandbox's namespace.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from hostwarden.network.binding import BindingKind, NetBinding, NetBindingError, NetnsRef
from hostwarden.network.limits import EgressLimit, ShapingError

# Our qdiscs carry this handle ("4857:", 'HW') so removal never deletes an operator's qdisc.
SHAPER_HANDLE = 0x4857_0000
_INGRESS_HANDLE = 0xFFFF_0000
_ROOT_PARENT = 0xFFFF_FFFF
_ETH_P_ALL = 0x0003
_IFF_LOOPBACK = 0x8
_IFB_PREFIX = "hwifb"


@dataclass(frozen=True)
class LinkStats:
    """A link's 64-bit counters as the kernel reports them (from the link's own point of view)."""

    ifindex: int
    name: str
    rx_bytes: int
    tx_bytes: int
    rx_packets: int
    tx_packets: int
    loopback: bool = False


def _link_stats(message: ifinfmsg) -> LinkStats:
    stats = message.get_attr("IFLA_STATS64") or message.get_attr("IFLA_STATS") or {}
    return LinkStats(
        ifindex=message["index"],
        name=message.get_attr("IFLA_IFNAME"),
        rx_bytes=stats.get("rx_bytes", 0),
        tx_bytes=stats.get("tx_bytes", 0),
        rx_packets=stats.get("rx_packets", 0),
        tx_packets=stats.get("tx_packets", 0),
        loopback=bool(message["flags"] & _IFF_LOOPBACK),
    )


def _explain(error: NetlinkError | OSError) -> str:
    code = getattr(error, "code", None) or getattr(error, "errno", None) or 0
    text = os.strerror(code) if code else str(error)
    if code == errno.EPERM:
        return f"{text} (the daemon needs CAP_NET_ADMIN)"
    if code in (errno.ENOENT, errno.EOPNOTSUPP, errno.EINVAL):
        return f"{text} (does the kernel have sch_tbf, sch_ingress, cls_u32, act_mirred and ifb?)"
    return text


class Rtnl:
    """One rtnetlink socket per namespace, opened on first use and kept until `forget`.

    Opening a socket inside another namespace forks a pyroute2 helper (milliseconds), too slow to repeat
    at every tool call; a kept socket also stays in its namespace whatever happens to the path. One lock
    serialises all use: pyroute2's IPRoute objects are not safe for concurrent calls.
    """

    def __init__(self) -> None:
        self._sockets: dict[tuple[int, int] | None, IPRoute] = {}
        self._lock = threading.RLock()  # re-entrant: a caller may read links inside its own session

    @contextmanager
    def session(self, netns: NetnsRef | None) -> Iterator[IPRoute]:
        key = None if netns is None else (netns.device, netns.inode)
        with self._lock:
            ipr = self._sockets.get(key)
            if ipr is None:
                ipr = self._open(netns)
                self._sockets[key] = ipr
            yield ipr

    @staticmethod
    def _open(netns: NetnsRef | None) -> IPRoute:
        if netns is None:
            return IPRoute()
        netns.check()
        try:
            # flags=0: never create the namespace (pyroute2's default would).
            return IPRoute(netns=netns.path, flags=0)
        except (NetlinkError, OSError) as error:
            raise NetBindingError(f"cannot open {netns.label}: {_explain(error)}") from error

    def forget(self, netns: NetnsRef | None) -> None:
        key = None if netns is None else (netns.device, netns.inode)
        with self._lock:
            ipr = self._sockets.pop(key, None)
        if ipr is not None:
            ipr.close()

    def close(self) -> None:
        with self._lock:
            sockets, self._sockets = list(self._sockets.values()), {}
        for ipr in sockets:
            ipr.close()

    # -- links -------------------------------------------------------------------------------------

    def links(self, netns: NetnsRef | None) -> list[LinkStats]:
        """Every link's counters; OSError (or NetBindingError) when the namespace cannot be read."""
        with self.session(netns) as ipr:
            try:
                return [_link_stats(message) for message in ipr.get_links()]
            except NetlinkError as error:
                raise OSError(error.code, _explain(error)) from error

    def link(self, netns: NetnsRef | None, ifindex: int) -> LinkStats:
        """One link's counters; LookupError when the link is gone, OSError when it cannot be read."""
        with self.session(netns) as ipr:
            try:
                (message,) = ipr.get_links(ifindex)
            except NetlinkError as error:
                if error.code == errno.ENODEV:
                    raise LookupError(f"no link with ifindex {ifindex}") from error
                raise OSError(error.code, _explain(error)) from error
        return _link_stats(message)

    def resolve_link(self, netns: NetnsRef | None, interface: str | int) -> tuple[int, str]:
        """(ifindex, name) of a link given by either; LookupError when there is none. A `LinkResolver`."""
        if isinstance(interface, int):
            found = self.link(netns, interface)
            return found.ifindex, found.name
        with self.session(netns) as ipr:
            indexes = ipr.link_lookup(ifname=interface)
        if not indexes:
            raise LookupError(f"no link named {interface!r}")
        return indexes[0], interface


class TcShaper:
    """Installs, changes and removes a sandbox's egress TBF (see the module docstring for where)."""

    def __init__(self, rtnl: Rtnl) -> None:
        self._rtnl = rtnl

    def apply(self, binding: NetBinding, limit: EgressLimit) -> None:
        """Install or replace the limit; ShapingError (with what was undone) when it cannot be done."""
        try:
            if binding.kind is BindingKind.INTERFACE:
                self._apply_on_host_side(binding, limit)
            elif binding.kind is BindingKind.NAMESPACE:
                self._apply_in_namespace(binding, limit)
            else:
                raise ShapingError(
                    "the sandbox shares the host network: a limit there would throttle the whole host; "
                    "bind its veth or namespace"
                )
        except (NetlinkError, OSError) as error:
            raise ShapingError(f"tc on {binding.describe()} failed: {_explain(error)}") from error

    def remove(self, binding: NetBinding) -> None:
        """Remove whatever this shaper installed for the binding; pieces already gone are fine."""
        try:
            if binding.kind is BindingKind.INTERFACE:
                self._remove_from_host_side(binding)
            elif binding.kind is BindingKind.NAMESPACE:
                with self._rtnl.session(binding.netns) as ipr:
                    for link in self._shapeable_links(ipr):
                        self._delete_ours(ipr, link.ifindex)
        except NetBindingError:
            return  # the namespace is gone, and its qdiscs with it
        except (NetlinkError, OSError) as error:
            raise ShapingError(f"removing tc from {binding.describe()} failed: {_explain(error)}") from error

    def installed(self, binding: NetBinding) -> list[tuple[str, int]]:
        """(device name, TBF rate in bytes/s) of each TBF this shaper has in place for the binding."""
        found: list[tuple[str, int]] = []
        with self._rtnl.session(binding.netns) as ipr:
            if binding.kind is BindingKind.INTERFACE:
                ifb_name = self._ifb_name(binding)
                targets = {index: ifb_name for index in ipr.link_lookup(ifname=ifb_name)}
            else:
                targets = {link.ifindex: link.name for link in self._shapeable_links(ipr)}
            for qdisc in ipr.get_qdiscs():
                ours = qdisc["handle"] == SHAPER_HANDLE and qdisc.get_attr("TCA_KIND") == "tbf"
                if ours and qdisc["index"] in targets:
                    parms = qdisc.get_attr("TCA_OPTIONS").get_attr("TCA_TBF_PARMS")
                    found.append((targets[qdisc["index"]], parms["rate"]))
        return found

    # -- mechanics ---------------------------------------------------------------------------------

    @staticmethod
    def _ifb_name(binding: NetBinding) -> str:
        return f"{_IFB_PREFIX}{binding.ifindex}"

    @staticmethod
    def _tbf(ipr: IPRoute, ifindex: int, limit: EgressLimit) -> None:
        # pyroute2 takes int rate in bytes/s, burst in bytes and latency in microseconds.
        ipr.tc(
            "replace",
            "tbf",
            ifindex,
            handle=SHAPER_HANDLE,
            rate=limit.rate_bytes_per_s,
            burst=limit.burst_bytes,
            latency=limit.latency_us,
        )

    @staticmethod
    def _delete_ours(ipr: IPRoute, ifindex: int) -> None:
        for qdisc in ipr.get_qdiscs(ifindex):
            if qdisc["handle"] == SHAPER_HANDLE and qdisc["parent"] == _ROOT_PARENT:
                ipr.tc("del", index=ifindex, handle=SHAPER_HANDLE, parent=_ROOT_PARENT)

    @staticmethod
    def _shapeable_links(ipr: IPRoute) -> list[LinkStats]:
        links = [_link_stats(message) for message in ipr.get_links()]
        return [link for link in links if not link.loopback]

    def _apply_in_namespace(self, binding: NetBinding, limit: EgressLimit) -> None:
        with self._rtnl.session(binding.netns) as ipr:
            links = self._shapeable_links(ipr)
            if not links:
                raise ShapingError(f"{binding.describe()} has no interface but loopback to limit")
            for link in links:
                self._tbf(ipr, link.ifindex, limit)

    def _apply_on_host_side(self, binding: NetBinding, limit: EgressLimit) -> None:
        assert binding.ifindex is not None
        with self._rtnl.session(binding.netns) as ipr:
            if not self._is_bound_link(ipr, binding):
                raise ShapingError(f"{binding.describe()} is gone")
            ifb, created = self._ensure_ifb(ipr, binding)
            try:
                self._tbf(ipr, ifb, limit)
                if not ipr.get_filters(binding.ifindex, parent=_INGRESS_HANDLE):
                    self._redirect_ingress(ipr, binding.ifindex, ifb)
            except (NetlinkError, OSError):
                if created:  # leave nothing half-made behind
                    ipr.link("del", index=ifb)
                raise

    def _ensure_ifb(self, ipr: IPRoute, binding: NetBinding) -> tuple[int, bool]:
        name = self._ifb_name(binding)
        existing = ipr.link_lookup(ifname=name)
        if existing:
            return existing[0], False
        ipr.link("add", ifname=name, kind="ifb")
        (ifb,) = ipr.link_lookup(ifname=name)
        ipr.link("set", index=ifb, state="up")
        return ifb, True

    @staticmethod
    def _redirect_ingress(ipr: IPRoute, ifindex: int, ifb: int) -> None:
        try:
            ipr.tc("add", "ingress", ifindex, _INGRESS_HANDLE)
        except NetlinkError as error:
            if error.code != errno.EEXIST:
                raise
        ipr.tc(
            "add-filter",
            "u32",
            ifindex,
            parent=_INGRESS_HANDLE,
            protocol=_ETH_P_ALL,
            prio=1,
            target=0x10000,
            keys=["0x0/0x0+0"],  # match every packet
            action={"kind": "mirred", "direction": "egress", "action": "redirect", "ifindex": ifb},
        )

    def _remove_from_host_side(self, binding: NetBinding) -> None:
        assert binding.ifindex is not None
        with self._rtnl.session(binding.netns) as ipr:
            # The veth may already be gone with its sandbox; its ingress qdisc went with it.
            if self._is_bound_link(ipr, binding):
                for qdisc in ipr.get_qdiscs(binding.ifindex):
                    if qdisc.get_attr("TCA_KIND") == "ingress":
                        ipr.tc("del", "ingress", binding.ifindex, _INGRESS_HANDLE)
            for ifb in ipr.link_lookup(ifname=self._ifb_name(binding)):
                ipr.link("del", index=ifb)

    @staticmethod
    def _is_bound_link(ipr: IPRoute, binding: NetBinding) -> bool:
        """Whether the bound host-side link is still there (same index and name: indexes get reused)."""
        try:
            (message,) = ipr.get_links(binding.ifindex)
        except NetlinkError as error:
            if error.code == errno.ENODEV:
                return False
            raise
        return message.get_attr("IFLA_IFNAME") == binding.interface
