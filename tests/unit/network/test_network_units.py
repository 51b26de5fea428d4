"""tc-style rates, sizes and durations from policy text."""

from __future__ import annotations

import pytest

from hostwarden.network.units import parse_duration_us, parse_rate_bits, parse_size_bytes


@pytest.mark.parametrize(
    ("text", "bits"),
    [
        ("1mbit", 1_000_000),
        ("1MBIT", 1_000_000),
        ("1.5mbit", 1_500_000),
        ("800kbit", 800_000),
        ("2gbit", 2_000_000_000),
        ("1mibit", 1_048_576),
        ("125kbps", 1_000_000),  # tc: bps is bytes per second
        ("100bps", 800),
        ("64000", 64_000),
        ("64000bit", 64_000),
        (" 10 mbit ", 10_000_000),
        (2_000_000, 2_000_000),
    ],
)
def test_rates_follow_tc(text, bits):
    assert parse_rate_bits(text) == bits


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("32k", 32768),
        ("32kb", 32768),
        ("1m", 1_048_576),
        ("1mib", 1_048_576),
        ("1500", 1500),
        ("1500b", 1500),
        (4096, 4096),
    ],
)
def test_sizes_are_powers_of_1024(text, size):
    assert parse_size_bytes(text) == size


@pytest.mark.parametrize(("text", "micros"), [("50ms", 50_000), ("1s", 1_000_000), ("250us", 250), ("2.5ms", 2500)])
def test_durations_in_microseconds(text, micros):
    assert parse_duration_us(text) == micros


@pytest.mark.parametrize("bad", ["", "fast", "1 megabit", "-1mbit", "0mbit", "1e6", "mbit", True, 0, -5, 1.5, None])
def test_bad_rates_are_refused_with_the_expected_form(bad):
    with pytest.raises(ValueError, match="rate"):
        parse_rate_bits(bad)


@pytest.mark.parametrize("bad", ["32 kilobytes", "0k", "k", False, -1])
def test_bad_sizes_are_refused(bad):
    with pytest.raises(ValueError, match="size"):
        parse_size_bytes(bad)


@pytest.mark.parametrize("bad", ["50", "50 minutes", 50, "0ms"])
def test_durations_need_a_unit(bad):
    with pytest.raises(ValueError, match="duration"):
        parse_duration_us(bad)
