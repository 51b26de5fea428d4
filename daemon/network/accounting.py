"""Per-sandbox and per-call network byte and packet counts, from link counters.

Counters are always kept from the sandbox's point of view: rx is what reached the sandbox, tx what it
sent. A NAMESPACE binding sums the non-loopback links inside the sandbox's namespace as they are. An
INTERFACE binding reads the host side of the sandbox's link, whose directions are the other way round
(what the host side transmits, the sandbox receives), so they are swapped.

Per sandbox the accountant keeps a monotonic cumulative count since the binding was made: a link whose
counter went backwards (reset, re-created) contributes from zero again, a link that disappears keeps what
it contributed, a link that appears later counts in full. A call's figures are the difference of that
cumulative count between its begin and end, so resets during a call do not corrupt it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from hostwarden.network.binding import BindingKind, NetBinding, NetBindingError, NetnsRef
from hostwarden.network.netlink import LinkStats


class NetAccountingError(RuntimeError):
    """The sandbox's traffic cannot be counted now; `code` says why in one word (see NetUnavailable)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class NetCounters:
    rx_bytes: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    tx_packets: int = 0

    def __add__(self, other: NetCounters) -> NetCounters:
        return NetCounters(
            self.rx_bytes + other.rx_bytes,
            self.tx_bytes + other.tx_bytes,
            self.rx_packets + other.rx_packets,
            self.tx_packets + other.tx_packets,
        )

    def __sub__(self, other: NetCounters) -> NetCounters:
        return NetCounters(
            self.rx_bytes - other.rx_bytes,
            self.tx_bytes - other.tx_bytes,
            self.rx_packets - other.rx_packets,
            self.tx_packets - other.tx_packets,
        )


@dataclass(frozen=True)
class NetDelta:
    """A call's traffic. `concurrent_calls`: another call of the same sandbox was open at some point,
    and since counting is per sandbox, these figures include that call's traffic too."""

    counters: NetCounters
    concurrent_calls: bool = False

    @property
    def rx_bytes(self) -> int:
        return self.counters.rx_bytes

    @property
    def tx_bytes(self) -> int:
        return self.counters.tx_bytes


@dataclass(frozen=True)
class NetUnavailable:
    """Why a call has no network figures. code: unbound, host_network, unreadable, rebound, unknown_call."""

    code: str
    reason: str


# (netns or None, ifindex) -> that link's counters; (netns) -> all links of the namespace.
LinkReader = Callable[[NetnsRef | None, int], LinkStats]
LinksReader = Callable[[NetnsRef | None], list[LinkStats]]


def _sandbox_view(link: LinkStats, swapped: bool) -> NetCounters:
    if swapped:
        return NetCounters(link.tx_bytes, link.rx_bytes, link.tx_packets, link.rx_packets)
    return NetCounters(link.rx_bytes, link.tx_bytes, link.rx_packets, link.tx_packets)


def _grown(now: int, before: int) -> int:
    """How much a counter grew; after a reset (it went down) it counted up from zero."""
    return now - before if now >= before else now


def advance(previous: NetCounters, now: NetCounters) -> NetCounters:
    """The traffic between two readings of one link's counters, treating each decrease as a reset."""
    return NetCounters(
        _grown(now.rx_bytes, previous.rx_bytes),
        _grown(now.tx_bytes, previous.tx_bytes),
        _grown(now.rx_packets, previous.rx_packets),
        _grown(now.tx_packets, previous.tx_packets),
    )


@dataclass
class _SandboxState:
    binding: NetBinding
    generation: int
    cumulative: NetCounters = NetCounters()
    # ifindex -> that link's last reading (sandbox's view); None until the first reading (the baseline).
    last: dict[int, NetCounters] | None = None
    error: str | None = None


@dataclass
class _OpenCall:
    sandbox: str
    generation: int
    start: NetCounters | None
    unavailable: NetUnavailable | None
    concurrent: bool = False


@dataclass
class NetworkAccountant:
    """Counts each bound sandbox's traffic. Thread-safe: one lock; netlink reads happen under it.

    `read_link` / `read_links` are the kernel edge (`Rtnl.link` / `Rtnl.links`); tests pass fakes.
    """

    read_link: LinkReader
    read_links: LinksReader
    _sandboxes: dict[str, _SandboxState] = field(default_factory=dict)
    _calls: dict[str, _OpenCall] = field(default_factory=dict)
    _generation: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def bind(self, sandbox: str, binding: NetBinding) -> None:
        """(Re)bind a sandbox; counting starts now (traffic before the binding is not the sandbox's).

        Raises NetAccountingError, and keeps any previous binding, when the new one cannot be read.
        """
        with self._lock:
            self._generation += 1
            previous = self._sandboxes.get(sandbox)
            # A rebind keeps the cumulative count so the exported counter never goes down.
            state = _SandboxState(
                binding, self._generation, previous.cumulative if previous is not None else NetCounters()
            )
            if binding.kind is not BindingKind.HOST_NETWORK:
                self._refresh(sandbox, state)  # the baseline; on error nothing has changed
            self._sandboxes[sandbox] = state

    def unbind(self, sandbox: str) -> None:
        """Forget the sandbox (at deletion); its metric series should go with it."""
        with self._lock:
            self._sandboxes.pop(sandbox, None)

    def binding(self, sandbox: str) -> NetBinding | None:
        with self._lock:
            state = self._sandboxes.get(sandbox)
            return state.binding if state is not None else None

    def bindings(self) -> dict[str, NetBinding]:
        with self._lock:
            return {name: state.binding for name, state in self._sandboxes.items()}

    def sample(self, sandbox: str) -> NetCounters:
        """The sandbox's cumulative counters since it was bound; NetAccountingError when unavailable."""
        with self._lock:
            return self._sample_locked(sandbox)

    def begin(self, call_key: str, sandbox: str) -> None:
        """Snapshot at call start. Never raises for the sandbox's state: `end` reports it instead."""
        with self._lock:
            if call_key in self._calls:
                raise ValueError(f"call {call_key!r} has already begun")
            generation = self._sandboxes[sandbox].generation if sandbox in self._sandboxes else 0
            try:
                call = _OpenCall(sandbox, generation, self._sample_locked(sandbox), None)
            except NetAccountingError as error:
                call = _OpenCall(sandbox, generation, None, NetUnavailable(error.code, error.reason))
            for other in self._calls.values():
                if other.sandbox == sandbox:
                    other.concurrent = call.concurrent = True
            self._calls[call_key] = call

    def end(self, call_key: str) -> NetDelta | NetUnavailable:
        """The call's traffic between `begin` and now, or why there is none."""
        with self._lock:
            call = self._calls.pop(call_key, None)
            if call is None:
                return NetUnavailable("unknown_call", f"call {call_key!r} was never begun")
            if call.unavailable is not None:
                return call.unavailable
            assert call.start is not None
            try:
                now = self._sample_locked(call.sandbox)
            except NetAccountingError as error:
                return NetUnavailable(error.code, error.reason)
            if self._sandboxes[call.sandbox].generation != call.generation:
                return NetUnavailable("rebound", "the sandbox's network binding changed during the call")
            return NetDelta(now - call.start, concurrent_calls=call.concurrent)

    def totals(self) -> dict[str, NetCounters]:
        """Every attributable sandbox's cumulative counters, freshly read, for the metrics collector
        (hostwarden_sandbox_network_bytes_total{sandbox,direction}). A sandbox whose links cannot be read
        right now keeps its last figure (see `errors`); sandboxes sharing the host network are left out."""
        with self._lock:
            result: dict[str, NetCounters] = {}
            for sandbox, state in self._sandboxes.items():
                if state.binding.kind is BindingKind.HOST_NETWORK:
                    continue
                # A failure is recorded in state.error; the counter keeps its last value.
                with contextlib.suppress(NetAccountingError):
                    self._refresh(sandbox, state)
                result[sandbox] = state.cumulative
            return result

    def errors(self) -> dict[str, str]:
        """Sandboxes whose last reading failed, with the reason."""
        with self._lock:
            return {name: state.error for name, state in self._sandboxes.items() if state.error is not None}

    # -- internals (lock held) ---------------------------------------------------------------------

    def _sample_locked(self, sandbox: str) -> NetCounters:
        state = self._sandboxes.get(sandbox)
        if state is None:
            raise NetAccountingError("unbound", f"sandbox {sandbox!r} has no network binding")
        if state.binding.kind is BindingKind.HOST_NETWORK:
            raise NetAccountingError(
                "host_network", f"sandbox {sandbox!r} shares the host network; its traffic is not attributed"
            )
        self._refresh(sandbox, state)
        return state.cumulative

    def _read(self, binding: NetBinding) -> dict[int, NetCounters]:
        try:
            if binding.kind is BindingKind.INTERFACE:
                assert binding.ifindex is not None
                link = self.read_link(binding.netns, binding.ifindex)
                return {link.ifindex: _sandbox_view(link, swapped=True)}
            links = self.read_links(binding.netns)
        except LookupError as error:
            raise NetAccountingError("unreadable", f"{binding.describe()} is gone ({error})") from error
        except (NetBindingError, OSError) as error:
            raise NetAccountingError("unreadable", f"{binding.describe()}: {error}") from error
        return {link.ifindex: _sandbox_view(link, swapped=False) for link in links if not link.loopback}

    def _refresh(self, sandbox: str, state: _SandboxState) -> None:
        try:
            readings = self._read(state.binding)
        except NetAccountingError as error:
            state.error = error.reason
            raise NetAccountingError(error.code, f"sandbox {sandbox!r}: {error.reason}") from error
        state.error = None
        if state.last is None:  # first reading after binding: the baseline
            state.last = readings
            return
        zero = NetCounters()
        for ifindex, now in readings.items():
            state.cumulative += advance(state.last.get(ifindex, zero), now)
        state.last = readings
