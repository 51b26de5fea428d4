from __future__ import annotations

import pytest

from hostwarden.bpf.thresholds import spike_threshold


def test_lowest_of_the_given_thresholds():
    assert spike_threshold(absolute_bytes=500, intent_bytes=100, intent_multiple=2.0) == 200
    assert spike_threshold(absolute_bytes=150, baseline_bytes=100, growth_bytes=80) == 150
    assert spike_threshold(baseline_bytes=100, growth_bytes=80) == 180


def test_none_when_nothing_is_asked():
    assert spike_threshold() is None


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"absolute_bytes": -1}, "absolute_bytes must not be negative"),
    ({"intent_bytes": 100}, "give both or neither"),
    ({"growth_bytes": 100}, "give both or neither"),
    ({"intent_bytes": 100, "intent_multiple": 0}, "must be positive"),
    ({"absolute_bytes": 0}, "positive size"),
])
def test_bad_input_is_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        spike_threshold(**kwargs)
