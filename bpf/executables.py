"""The executables a tool call ran, for its summary: deduplicated, capped, in first-run order."""

from __future__ import annotations


class ExecutableList:
    """Paths in the order they were first executed, at most `cap` of them.

    Paths past the cap are not listed but counted (`omitted`: distinct paths left out), so a
    summary can say "and N more" instead of silently truncating.
    """

    def __init__(self, cap: int = 64) -> None:
        if cap < 1:
            raise ValueError(f"executable list cap must be at least 1, got {cap}")
        self._cap = cap
        self._listed: dict[str, None] = {}  # a dict keeps insertion order and deduplicates
        self._omitted: set[str] = set()

    def add(self, path: str) -> bool:
        """Record an exec of `path`; True if the list changed."""
        if not path or path in self._listed:
            return False
        if len(self._listed) < self._cap:
            self._listed[path] = None
            return True
        self._omitted.add(path)
        return False

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(self._listed)

    @property
    def omitted(self) -> int:
        return len(self._omitted)

    def __len__(self) -> int:
        return len(self._listed)
