from __future__ import annotations

import pytest

from hostwarden.policy.units import format_duration, format_size, parse_duration, parse_size


@pytest.mark.parametrize(("text", "expected"), [
    (0, 0), (4096, 4096), ("512M", 512 * 1024**2), ("2G", 2 * 1024**3), ("2GiB", 2 * 1024**3),
    ("2gi", 2 * 1024**3), ("1.5G", int(1.5 * 1024**3)), ("300MB", 300_000_000), ("64k", 65536), ("10B", 10),
    (" 1T ", 1024**4),
])
def test_sizes(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "2X", "G", "-1G", -5, True, 1.5, "1.2.3G", None])
def test_bad_sizes_say_how_to_write_one(bad):
    with pytest.raises(ValueError, match=r"size|negative"):
        parse_size(bad)


@pytest.mark.parametrize(("text", "expected"), [
    (0, 0.0), (30, 30.0), (2.5, 2.5), ("30s", 30.0), ("5m", 300.0), ("1h30m", 5400.0), ("250ms", 0.25),
    ("1d", 86400.0), ("1.5s", 1.5),
])
def test_durations(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("bad", ["", "5", "5 minutes", "m5", "-3s", -1, float("inf"), False, "1h 30m"])
def test_bad_durations(bad):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def test_formatting_for_people():
    assert format_size(2 * 1024**3) == "2 GiB"
    assert format_size(300 * 1024**2) == "300 MiB"
    assert format_size(int(2.1 * 1024**3)) == "2.1 GiB"
    assert format_size(12) == "12 B"
    assert format_duration(90) == "1m30s"
    assert format_duration(0.25) == "250ms"
    assert format_duration(3600) == "1h"
    assert format_duration(0) == "0ms"
