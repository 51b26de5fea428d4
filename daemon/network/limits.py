"""Egress rate limits: the policy mapping -> tc parameters, and per-sandbox bookkeeping of what is in place.

`EgressLimit.from_mapping` is pure (the policy engine validates with it); `EgressLimiter` remembers which
limit each sandbox has and drives a `Shaper` (the real one is `hostwarden.network.netlink.TcShaper`).
A limit that cannot be applied raises `ShapingError` naming the sandbox and the reason; nothing is
silently dropped.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from hostwarden.network.binding import NetBinding
from hostwarden.network.units import parse_duration_us, parse_rate_bits, parse_size_bytes

# A full 1500-byte-MTU Ethernet frame must fit in the bucket or TBF drops every such frame.
MIN_BURST_BYTES = 2048
DEFAULT_MIN_BURST_BYTES = 16 * 1024
DEFAULT_BURST_SECONDS = 0.01  # default bucket: 10 ms worth of the rate, at least DEFAULT_MIN_BURST_BYTES
DEFAULT_LATENCY_US = 50_000
MAX_LATENCY_US = 10_000_000
# The TBF rate field is 32-bit bytes/s (pyroute2 does not send TCA_TBF_RATE64).
MAX_RATE_BYTES_PER_S = 2**32 - 1
# TBF keeps the bucket as transmit time in 32-bit scheduler ticks; stay well below that.
MAX_BURST_SECONDS = 60

MAPPING_KEYS = ("egress_rate", "burst", "latency")


class EgressLimitError(ValueError):
    """A policy mapping that does not describe a valid limit; `key` is the offending key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


class ShapingError(RuntimeError):
    """A limit that could not be applied or removed; the message says why and what to check."""


@dataclass(frozen=True)
class EgressLimit:
    """Token bucket for a sandbox's egress: `rate_bits_per_s` sustained, `burst_bytes` at once, and a
    queue of `latency_us` at that rate before packets are dropped."""

    rate_bits_per_s: int
    burst_bytes: int
    latency_us: int = DEFAULT_LATENCY_US

    @property
    def rate_bytes_per_s(self) -> int:
        return -(-self.rate_bits_per_s // 8)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, object]) -> EgressLimit:
        """From a policy mapping such as {"egress_rate": "1mbit", "burst": "32k", "latency": "50ms"}."""
        unknown = sorted(set(mapping) - set(MAPPING_KEYS))
        if unknown:
            expected = ", ".join(MAPPING_KEYS)
            raise EgressLimitError(unknown[0], f"unknown key; an egress limit takes {expected}")
        if "egress_rate" not in mapping:
            raise EgressLimitError("egress_rate", 'required (e.g. egress_rate = "10mbit")')
        rate_bits = _parsed("egress_rate", mapping["egress_rate"], parse_rate_bits)
        if -(-rate_bits // 8) > MAX_RATE_BYTES_PER_S:
            raise EgressLimitError("egress_rate", f"{rate_bits} bit/s is above tc tbf's 34.3 Gbit/s")
        if "burst" in mapping:
            burst = _parsed("burst", mapping["burst"], parse_size_bytes)
        else:
            burst = max(int(rate_bits / 8 * DEFAULT_BURST_SECONDS), DEFAULT_MIN_BURST_BYTES)
        if burst < MIN_BURST_BYTES:
            raise EgressLimitError("burst", f"{burst} bytes is under {MIN_BURST_BYTES}: a frame must fit")
        if burst * 8 > rate_bits * MAX_BURST_SECONDS:
            raise EgressLimitError(
                "burst", f"{burst} bytes takes over {MAX_BURST_SECONDS} s at the egress_rate; lower it"
            )
        latency = DEFAULT_LATENCY_US
        if "latency" in mapping:
            latency = _parsed("latency", mapping["latency"], parse_duration_us)
            if latency > MAX_LATENCY_US:
                raise EgressLimitError("latency", f"{mapping['latency']!r} is over 10 s of queue")
        return cls(rate_bits_per_s=rate_bits, burst_bytes=burst, latency_us=latency)

    def describe(self) -> str:
        return f"{self.rate_bits_per_s} bit/s, burst {self.burst_bytes} B, latency {self.latency_us} us"


def _parsed(key: str, value: object, parse: Callable[..., int]) -> int:
    try:
        return parse(value)
    except ValueError as error:
        raise EgressLimitError(key, str(error)) from error


class Shaper(Protocol):
    def apply(self, binding: NetBinding, limit: EgressLimit) -> None: ...

    def remove(self, binding: NetBinding) -> None: ...


@dataclass(frozen=True)
class AppliedLimit:
    binding: NetBinding
    limit: EgressLimit


class EgressLimiter:
    """Which limit each sandbox has; thread-safe. Apply again with a new limit on policy reload."""

    def __init__(self, shaper: Shaper) -> None:
        self._shaper = shaper
        self._applied: dict[str, AppliedLimit] = {}
        self._lock = threading.Lock()

    def apply(self, sandbox: str, binding: NetBinding, limit: EgressLimit) -> None:
        """Install the limit, or change it in place (tc replace: no unlimited gap). Unchanged: no-op.

        On ShapingError the previous limit, if any, is still what the kernel has and what `applied` says.
        """
        with self._lock:
            previous = self._applied.get(sandbox)
            if previous == AppliedLimit(binding, limit):
                return
            if previous is not None and previous.binding != binding:
                self._remove_locked(sandbox, previous)
            try:
                self._shaper.apply(binding, limit)
            except ShapingError as error:
                raise ShapingError(
                    f"egress limit ({limit.describe()}) for sandbox {sandbox!r} on {binding.describe()} "
                    f"could not be applied: {error}"
                ) from error
            self._applied[sandbox] = AppliedLimit(binding, limit)

    def remove(self, sandbox: str) -> None:
        """Lift the sandbox's limit (no limit: no-op); at sandbox deletion or when policy drops it."""
        with self._lock:
            applied = self._applied.get(sandbox)
            if applied is not None:
                self._remove_locked(sandbox, applied)

    def _remove_locked(self, sandbox: str, applied: AppliedLimit) -> None:
        try:
            self._shaper.remove(applied.binding)
        except ShapingError as error:
            raise ShapingError(f"egress limit of sandbox {sandbox!r} was not removed: {error}") from error
        del self._applied[sandbox]

    def applied(self, sandbox: str) -> AppliedLimit | None:
        with self._lock:
            return self._applied.get(sandbox)
