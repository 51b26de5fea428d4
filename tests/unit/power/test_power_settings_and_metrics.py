from __future__ import annotations

from pathlib import Path

import pytest

from hostwarden.power.meter import PowerSnapshot
from hostwarden.power.metrics import NODE_ENERGY, NODE_IDLE_ENERGY, NODE_POWER, SANDBOX_ENERGY, snapshot_samples
from hostwarden.power.settings import PowerSettings, open_sources
from tests.unit.power.fakes import FakeCpuUsage


def test_settings_from_mapping():
    settings = PowerSettings.from_mapping({"powercap_root": "/tmp/rapl", "idle_watts": 40, "nvml": False})
    assert settings.powercap_root == Path("/tmp/rapl") and settings.idle_watts == 40.0 and not settings.nvml
    for bad, key in (({"powercap_root": "rel"}, "powercap_root"), ({"nvml": 1}, "nvml"),
                     ({"idle_watts": -3}, "idle_watts"), ({"sample_interval_seconds": 0}, "sample_interval"),
                     ({"colour": "red"}, "colour")):
        with pytest.raises(ValueError, match=rf"\[power\] {key}"):
            PowerSettings.from_mapping(bad)


def test_powercap_is_preferred_and_the_model_is_the_fallback(tmp_path):
    zone = tmp_path / "intel-rapl:0"
    zone.mkdir()
    for name, text in (("name", "package-0"), ("energy_uj", "10"), ("max_energy_range_uj", "100")):
        (zone / name).write_text(text)
    settings = PowerSettings(powercap_root=tmp_path, perf_pmu_root=tmp_path / "none", nvml=False)
    cpu_source, gpu, probes = open_sources(settings, FakeCpuUsage())
    assert cpu_source.name == "powercap" and gpu is None
    assert [(p.name, p.available) for p in probes] == [
        ("powercap", True), ("perf_power", False), ("model", True), ("nvml", False)]
    settings = PowerSettings(powercap_root=tmp_path / "none", perf_pmu_root=tmp_path / "none", nvml=False)
    cpu_source, _, probes = open_sources(settings, FakeCpuUsage())
    assert cpu_source.name == "model" and cpu_source.kind == "estimated"


def test_snapshot_becomes_metric_samples():
    snapshot = PowerSnapshot({("s1", "measured"): 3.0}, {("package-0", "measured"): 9.0}, 4.0,
                             {"package-0": 12.0}, 12.0, 10.0, {"s1": 0.5})
    assert [(s.name, s.labels, s.value) for s in snapshot_samples(snapshot)] == [
        (SANDBOX_ENERGY, {"sandbox": "s1", "source": "measured"}, 3.0),
        (NODE_ENERGY, {"zone": "package-0", "source": "measured"}, 9.0),
        (NODE_IDLE_ENERGY, {}, 4.0),
        (NODE_POWER, {"zone": "package-0"}, 12.0)]
