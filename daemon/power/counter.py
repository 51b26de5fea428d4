"""Hardware energy counters that wrap: turn raw readings into a cumulative count."""

from __future__ import annotations


class WrappingCounter:
    """Cumulative count since the first reading of a counter that wraps to 0 after `range_max`.

    powercap's energy_uj wraps at max_energy_range_uj (about 262 kJ on many Intel parts, less on some AMD
    ones); sampling at least once per wrap period (minutes at server power) keeps every wrap visible.
    """

    def __init__(self, range_max: int) -> None:
        if range_max <= 0:
            raise ValueError(f"counter range must be positive, got {range_max}")
        self._range_max = range_max
        self._last_raw: int | None = None
        self._total = 0

    def update(self, raw: int) -> int:
        if raw < 0 or raw > self._range_max:
            raise ValueError(f"counter reading {raw} is outside its range 0..{self._range_max}")
        if self._last_raw is not None:
            delta = raw - self._last_raw
            if delta < 0:
                delta += self._range_max
            self._total += delta
        self._last_raw = raw
        return self._total
