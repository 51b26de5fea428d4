"""tc-style quantities from policy text: rates ("1mbit"), sizes ("32k") and durations ("50ms").

The spellings follow tc(8) so an operator can copy values from existing tc setups: a bare rate is bits per
second, "bps" means BYTES per second, and size suffixes are powers of 1024. Each parser returns a plain
int and raises ValueError with a message that says what was expected.
"""

from __future__ import annotations

import re

# Rate suffix -> bits per second per unit (tc(8) "RATES").
_RATE_UNITS: dict[str, int] = {
    "": 1,
    "bit": 1,
    "kbit": 10**3,
    "mbit": 10**6,
    "gbit": 10**9,
    "tbit": 10**12,
    "kibit": 2**10,
    "mibit": 2**20,
    "gibit": 2**30,
    "tibit": 2**40,
    "bps": 8,
    "kbps": 8 * 10**3,
    "mbps": 8 * 10**6,
    "gbps": 8 * 10**9,
    "tbps": 8 * 10**12,
    "kibps": 8 * 2**10,
    "mibps": 8 * 2**20,
    "gibps": 8 * 2**30,
    "tibps": 8 * 2**40,
}

# Size suffix -> bytes per unit (tc(8) "SIZES": k/kb are KiB).
_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": 2**10,
    "kb": 2**10,
    "kib": 2**10,
    "m": 2**20,
    "mb": 2**20,
    "mib": 2**20,
    "g": 2**30,
    "gb": 2**30,
    "gib": 2**30,
}

# Duration suffix -> microseconds per unit (tc(8) "TIMES").
_TIME_UNITS: dict[str, int] = {
    "s": 10**6,
    "sec": 10**6,
    "secs": 10**6,
    "ms": 10**3,
    "msec": 10**3,
    "msecs": 10**3,
    "us": 1,
    "usec": 1,
    "usecs": 1,
}

_QUANTITY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$")


def _split(text: str, units: dict[str, int], kind: str, example: str) -> tuple[float, int]:
    match = _QUANTITY.match(text.lower())
    if match is None or match.group(2) not in units:
        known = ", ".join(sorted(unit for unit in units if unit))
        raise ValueError(f"{text!r} is not a {kind}: write a number with one of {known} (e.g. {example!r})")
    return float(match.group(1)), units[match.group(2)]


def _whole_positive(value: float, text: str, kind: str) -> int:
    whole = round(value)
    if whole <= 0:
        raise ValueError(f"{text!r} is not a positive {kind}")
    return whole


def parse_rate_bits(value: str | int) -> int:
    """A rate in bits per second: an int is bits/s; text takes tc's rate suffixes ("1mbit", "125kbps")."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{value!r} is not a rate: give bits/s as an int or text such as '1mbit'")
    if isinstance(value, int):
        return _whole_positive(value, str(value), "rate")
    number, unit = _split(value, _RATE_UNITS, "rate", "1mbit")
    return _whole_positive(number * unit, value, "rate")


def parse_size_bytes(value: str | int) -> int:
    """A size in bytes: an int is bytes; text takes tc's size suffixes ("32k" = 32768 bytes)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{value!r} is not a size: give bytes as an int or text such as '32k'")
    if isinstance(value, int):
        return _whole_positive(value, str(value), "size")
    number, unit = _split(value, _SIZE_UNITS, "size", "32k")
    return _whole_positive(number * unit, value, "size")


def parse_duration_us(value: str) -> int:
    """A duration in microseconds from text with a unit ("50ms"); a bare number is ambiguous and refused."""
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a duration: give text with a unit such as '50ms'")
    number, unit = _split(value, _TIME_UNITS, "duration", "50ms")
    return _whole_positive(number * unit, value, "duration")
