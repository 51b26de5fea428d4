"""Spike thresholds: the daemon's ways of saying "too much" reduced to the one absolute byte
count the kernel programs compare against."""

from __future__ import annotations


def spike_threshold(
    *,
    absolute_bytes: int | None = None,
    intent_bytes: int | None = None,
    intent_multiple: float | None = None,
    baseline_bytes: int | None = None,
    growth_bytes: int | None = None,
) -> int | None:
    """The lowest of the thresholds given, in bytes; None when none is given.

    - absolute_bytes: a fixed size.
    - intent_bytes x intent_multiple: e.g. 2x the peak the agent declared.
    - baseline_bytes + growth_bytes: growth over the memory the call had when the threshold was set.
    """
    for name, value in (("absolute_bytes", absolute_bytes), ("intent_bytes", intent_bytes),
                        ("baseline_bytes", baseline_bytes), ("growth_bytes", growth_bytes)):
        if value is not None and value < 0:
            raise ValueError(f"{name} must not be negative, got {value}")
    if (intent_bytes is None) != (intent_multiple is None):
        raise ValueError("intent_bytes and intent_multiple go together: give both or neither")
    if (baseline_bytes is None) != (growth_bytes is None):
        raise ValueError("baseline_bytes and growth_bytes go together: give both or neither")
    if intent_multiple is not None and intent_multiple <= 0:
        raise ValueError(f"intent_multiple must be positive, got {intent_multiple}")
    candidates: list[int] = []
    if absolute_bytes is not None:
        candidates.append(absolute_bytes)
    if intent_bytes is not None and intent_multiple is not None:
        candidates.append(int(intent_bytes * intent_multiple))
    if baseline_bytes is not None and growth_bytes is not None:
        candidates.append(baseline_bytes + growth_bytes)
    threshold = min(candidates, default=None)
    if threshold == 0:
        raise ValueError("a spike threshold of 0 bytes would fire on any memory: give a positive size")
    return threshold
