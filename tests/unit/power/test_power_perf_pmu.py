from __future__ import annotations

import pytest

from hostwarden.power.perf_pmu import encode_event, open_perf_power, parse_cpumask, parse_events
from hostwarden.power.types import PowerError


def _pmu(root, unit="Joules"):
    (root / "format").mkdir(parents=True)
    (root / "format" / "event").write_text("config:0-7\n")
    (root / "format" / "umask").write_text("config:8-15\n")
    events = root / "events"
    events.mkdir()
    for name, code in (("energy-pkg", "0x02"), ("energy-ram", "0x03")):
        (events / name).write_text(f"event={code}\n")
        (events / f"{name}.scale").write_text("2.3283064365386962890625e-10\n")
        (events / f"{name}.unit").write_text(f"{unit}\n")
    (root / "type").write_text("4242424\n")
    (root / "cpumask").write_text("0,16\n")
    return root


def test_cpumask_lists_and_ranges():
    assert parse_cpumask("0\n") == [0]
    assert parse_cpumask("0,16") == [0, 16]
    assert parse_cpumask("0-2,8") == [0, 1, 2, 8]
    with pytest.raises(PowerError, match="bad cpumask"):
        parse_cpumask("zero")


def test_terms_are_placed_by_their_format_bits():
    formats = {"event": "config:0-7", "umask": "config:8-15"}
    assert encode_event("event=0x02", formats) == 0x02
    assert encode_event("event=0x2,umask=0x1", formats) == 0x102
    with pytest.raises(PowerError, match="no format file"):
        encode_event("cmask=1", formats)


def test_events_with_scale_and_unit(tmp_path):
    events = parse_events(_pmu(tmp_path))
    assert [(e.name, e.config) for e in events] == [("energy-pkg", 2), ("energy-ram", 3)]
    assert events[0].scale == pytest.approx(2 ** -32)


def test_other_units_are_refused(tmp_path):
    with pytest.raises(PowerError, match="expected 'Joules'"):
        parse_events(_pmu(tmp_path, unit="Watts"))


def test_a_pmu_the_kernel_does_not_know_is_reported_not_raised(tmp_path):
    source, probe = open_perf_power(_pmu(tmp_path))  # type 4242424 makes the real syscall fail
    assert source is None and not probe.available
    assert "perf_event_open" in probe.detail


def test_missing_pmu(tmp_path):
    source, probe = open_perf_power(tmp_path / "power")
    assert source is None and "no perf power PMU" in probe.detail
