from __future__ import annotations

from pathlib import Path

import pytest

from hostwarden.power.counter import WrappingCounter
from hostwarden.power.powercap import PowercapSource, discover_zones, open_powercap
from hostwarden.power.types import PowerError


def test_counter_counts_across_wraps():
    counter = WrappingCounter(1000)
    assert counter.update(900) == 0
    assert counter.update(950) == 50
    assert counter.update(20) == 50 + 70          # wrapped once
    assert counter.update(10) == 50 + 70 + 990    # a nearly full period later
    with pytest.raises(ValueError, match="outside its range"):
        counter.update(1001)


def _zone(root: Path, directory: str, name: str, energy: int | str | None = 5, range_uj: int | None = 1000):
    path = root / directory
    path.mkdir(parents=True)
    (path / "name").write_text(name + "\n")
    if energy is not None:
        (path / "energy_uj").write_text(f"{energy}\n")
    if range_uj is not None:
        (path / "max_energy_range_uj").write_text(f"{range_uj}\n")
    return path


def _tree(root: Path) -> None:
    (root / "intel-rapl").mkdir(parents=True)  # the control type itself: no energy_uj, not a zone
    _zone(root, "intel-rapl:0", "package-0")
    _zone(root, "intel-rapl:0:0", "core")
    _zone(root, "intel-rapl:0:1", "dram")
    _zone(root, "intel-rapl:1", "package-1")
    _zone(root, "intel-rapl:10", "psys")
    _zone(root, "intel-rapl-mmio:0", "package-0")


def test_zone_discovery_labels_and_node_total(tmp_path):
    _tree(tmp_path)
    zones, skipped = discover_zones(tmp_path)
    assert [(z.label, z.in_node_total) for z in zones] == [
        ("package-0", True), ("package-0/core", False), ("package-0/dram", True),
        ("package-1", True), ("psys", False)]
    assert skipped == ["intel-rapl-mmio:0: MMIO duplicate of an MSR package zone"]


def test_bad_zones_are_skipped_with_the_reason(tmp_path):
    _zone(tmp_path, "intel-rapl:0", "package-0", energy="garbage")
    _zone(tmp_path, "intel-rapl:1", "package-1", range_uj=None)
    _zone(tmp_path, "intel-rapl:2", "package-2")
    zones, skipped = discover_zones(tmp_path)
    assert [z.label for z in zones] == ["package-2"]
    assert "not an integer" in skipped[0] and "intel-rapl:0" in skipped[0]
    assert "max_energy_range_uj" in skipped[1]


def test_unreadable_energy_file_says_root_is_needed(tmp_path, monkeypatch):
    zone = _zone(tmp_path, "intel-rapl:0", "package-0")
    real_read = Path.read_text

    def read_text(self, *args, **kwargs):
        if self == zone / "energy_uj":
            raise PermissionError(13, "Permission denied")
        return real_read(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    source, probe = open_powercap(tmp_path)
    assert source is None and not probe.available
    assert "root-only" in probe.detail


def test_missing_tree_is_reported(tmp_path):
    source, probe = open_powercap(tmp_path / "absent")
    assert source is None and probe.detail == f"no powercap tree at {tmp_path / 'absent'}"


def test_source_reads_joules_across_a_wrap(tmp_path):
    package = _zone(tmp_path, "intel-rapl:0", "package-0", energy=900_000, range_uj=1_000_000)
    source, probe = open_powercap(tmp_path)
    assert probe.available and isinstance(source, PowercapSource)
    (package / "energy_uj").write_text("100000\n")
    [reading] = source.read()
    assert reading.zone == "package-0" and reading.joules == pytest.approx(0.2)


def test_source_needs_a_zone():
    with pytest.raises(PowerError):
        PowercapSource([])
