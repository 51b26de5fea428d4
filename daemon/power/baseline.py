"""The node's idle power, learned from its own readings where no one configured it.

Power is close to linear in CPU utilisation (P = idle + k * busy fraction), so a least-squares line
through recent (busy fraction, watts) intervals has the idle power as its intercept. The fit needs the
utilisation to have varied; until it has, the lowest power seen in a mostly idle interval stands in,
and with neither, the idle power is taken as 0 (all energy counts as active, nothing is hidden).
"""

from __future__ import annotations

from collections import deque

_MIN_POINTS = 10
_MIN_VARIANCE = 0.002      # of the busy fraction: about a 5-point spread in utilisation
_MOSTLY_IDLE = 0.05


class IdleBaseline:
    def __init__(self, configured_watts: float | None = None, window: int = 600) -> None:
        self._configured = configured_watts
        self._points: deque[tuple[float, float]] = deque(maxlen=window)
        self._fitted = 0.0

    def observe(self, busy_fraction: float, watts: float) -> None:
        self._points.append((busy_fraction, watts))
        self._fitted = self._fit()

    def idle_watts(self) -> float:
        return self._configured if self._configured is not None else self._fitted

    def _fit(self) -> float:
        lowest = min(w for _, w in self._points)
        n = len(self._points)
        mean_x = sum(x for x, _ in self._points) / n
        mean_y = sum(w for _, w in self._points) / n
        var_x = sum((x - mean_x) ** 2 for x, _ in self._points) / n
        if n >= _MIN_POINTS and var_x >= _MIN_VARIANCE:
            slope = sum((x - mean_x) * (w - mean_y) for x, w in self._points) / n / var_x
            return min(max(mean_y - slope * mean_x, 0.0), lowest)
        idle_readings = [w for x, w in self._points if x <= _MOSTLY_IDLE]
        return min(idle_readings) if idle_readings else 0.0
