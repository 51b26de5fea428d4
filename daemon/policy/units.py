"""Sizes and durations as written in policy files, and back into words for reasons and hints."""

from __future__ import annotations

import math
import re

# K/M/G/T and their -i/-iB spellings are binary, as in cgroupfs and systemd; KB/MB/GB/TB are decimal.
_SIZE_FACTORS: dict[str, int] = {"": 1, "b": 1}
for _power, _letter in enumerate("kmgt", start=1):
    for _suffix in (_letter, f"{_letter}i", f"{_letter}ib"):
        _SIZE_FACTORS[_suffix] = 1024**_power
    _SIZE_FACTORS[f"{_letter}b"] = 1000**_power

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_size(value: object) -> int:
    """Bytes from an int or a string such as "512M", "2G", "2GiB", "1.5G", "300MB"; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 512M or 2GiB, got a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative (got {value})")
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a size such as 512M or 2GiB (or bytes as an integer), got {value!r}")
    match = _SIZE_RE.match(value)
    if match is None or match.group(2).lower() not in _SIZE_FACTORS:
        raise ValueError(f"cannot read {value!r} as a size; write e.g. 512M, 2G, 2GiB or a number of bytes")
    return int(float(match.group(1)) * _SIZE_FACTORS[match.group(2).lower()])


def parse_duration(value: object) -> float:
    """Seconds from a number or a string such as "30s", "5m", "1h30m", "250ms"; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s or 5m, got a boolean")
    if isinstance(value, int | float):
        if value < 0 or not math.isfinite(value):
            raise ValueError(f"a duration must be a finite number of seconds >= 0 (got {value})")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration such as 30s or 5m (or seconds as a number), got {value!r}")
    text = value.strip().lower()
    parts = _DURATION_PART_RE.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f"cannot read {value!r} as a duration; write e.g. 500ms, 30s, 5m, 1h30m or seconds")
    return sum(float(number) * _DURATION_SECONDS[unit] for number, unit in parts)


def format_size(size: int) -> str:
    """A size in words for people: 2147483648 -> "2 GiB", 314572800 -> "300 MiB"."""
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(size) >= factor:
            return f"{size / factor:.3g} {unit}"
    return f"{size} B"


def format_duration(seconds: float) -> str:
    """A duration in words for people: 90 -> "1m30s", 0.25 -> "250ms"."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    text = f"{hours}h" if hours else ""
    text += f"{minutes}m" if minutes else ""
    if secs or not text:
        text += f"{secs:g}s"
    return text
