"""Policy mapping -> egress limit, and the limiter's bookkeeping over a fake shaper."""

from __future__ import annotations

import pytest

from hostwarden.network.binding import BindingKind, NetBinding
from hostwarden.network.limits import (
    DEFAULT_LATENCY_US,
    EgressLimit,
    EgressLimiter,
    EgressLimitError,
    ShapingError,
)

VETH = NetBinding(kind=BindingKind.INTERFACE, ifindex=7, interface="veth-sb1")
OTHER_VETH = NetBinding(kind=BindingKind.INTERFACE, ifindex=9, interface="veth-sb1b")


def test_mapping_to_tc_parameters():
    limit = EgressLimit.from_mapping({"egress_rate": "1mbit", "burst": "32k", "latency": "100ms"})
    assert limit == EgressLimit(rate_bits_per_s=1_000_000, burst_bytes=32768, latency_us=100_000)
    assert limit.rate_bytes_per_s == 125_000


def test_defaults_burst_to_ten_milliseconds_with_a_floor():
    slow = EgressLimit.from_mapping({"egress_rate": "1mbit"})
    assert slow.burst_bytes == 16 * 1024  # 10 ms of 1 mbit is 1250 B: the floor wins
    assert slow.latency_us == DEFAULT_LATENCY_US
    fast = EgressLimit.from_mapping({"egress_rate": "1gbit"})
    assert fast.burst_bytes == 1_250_000


def test_rate_in_bytes_rounds_up_so_a_slow_rate_never_becomes_zero():
    assert EgressLimit(rate_bits_per_s=9, burst_bytes=4096).rate_bytes_per_s == 2


@pytest.mark.parametrize(
    ("mapping", "key"),
    [
        ({}, "egress_rate"),
        ({"burst": "32k"}, "egress_rate"),
        ({"egress_rate": "fast"}, "egress_rate"),
        ({"egress_rate": "40gbit"}, "egress_rate"),
        ({"egress_rate": "1mbit", "burst": "1k"}, "burst"),
        ({"egress_rate": "1mbit", "burst": "lots"}, "burst"),
        ({"egress_rate": "8kbit", "burst": "1m"}, "burst"),
        ({"egress_rate": "1mbit", "latency": "50"}, "latency"),
        ({"egress_rate": "1mbit", "latency": "20s"}, "latency"),
        ({"egress_rate": "1mbit", "ingress_rate": "1mbit"}, "ingress_rate"),
    ],
)
def test_validation_errors_name_the_key(mapping, key):
    with pytest.raises(EgressLimitError) as caught:
        EgressLimit.from_mapping(mapping)
    assert caught.value.key == key
    assert str(caught.value).startswith(f"{key}: ")


class FakeShaper:
    def __init__(self) -> None:
        self.installed: dict[NetBinding, EgressLimit] = {}
        self.calls: list[str] = []
        self.fail_with: str | None = None

    def apply(self, binding, limit):
        self.calls.append("apply")
        if self.fail_with:
            raise ShapingError(self.fail_with)
        self.installed[binding] = limit

    def remove(self, binding):
        self.calls.append("remove")
        self.installed.pop(binding, None)


ONE = EgressLimit(rate_bits_per_s=1_000_000, burst_bytes=16384)
TWO = EgressLimit(rate_bits_per_s=2_000_000, burst_bytes=16384)


def test_apply_change_and_remove():
    shaper = FakeShaper()
    limiter = EgressLimiter(shaper)
    limiter.apply("sb1", VETH, ONE)
    limiter.apply("sb1", VETH, ONE)  # unchanged policy reload: nothing to do
    limiter.apply("sb1", VETH, TWO)
    assert shaper.installed == {VETH: TWO}
    assert shaper.calls == ["apply", "apply"]
    limiter.remove("sb1")
    limiter.remove("sb1")
    assert shaper.installed == {}
    assert limiter.applied("sb1") is None


def test_rebinding_moves_the_limit():
    shaper = FakeShaper()
    limiter = EgressLimiter(shaper)
    limiter.apply("sb1", VETH, ONE)
    limiter.apply("sb1", OTHER_VETH, ONE)
    assert shaper.installed == {OTHER_VETH: ONE}


def test_a_limit_that_cannot_be_applied_is_reported_and_the_old_one_kept():
    shaper = FakeShaper()
    limiter = EgressLimiter(shaper)
    limiter.apply("sb1", VETH, ONE)
    shaper.fail_with = "Operation not permitted (the daemon needs CAP_NET_ADMIN)"
    with pytest.raises(ShapingError, match=r"sandbox 'sb1'.*CAP_NET_ADMIN"):
        limiter.apply("sb1", VETH, TWO)
    applied = limiter.applied("sb1")
    assert applied is not None and applied.limit == ONE
