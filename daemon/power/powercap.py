"""RAPL energy through the powercap sysfs tree (/sys/class/powercap/intel-rapl:*).

Zones are intel-rapl:<package> with subzones intel-rapl:<package>:<n> (core, uncore, dram). AMD parts
use the same names. The package zones and the dram subzones add up to the node's CPU-side energy: core
and uncore lie inside their package, and psys (platform) contains the packages, so those are reported
but not counted. intel-rapl-mmio zones repeat the MSR package zones and are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hostwarden.power.counter import WrappingCounter
from hostwarden.power.types import EnergySourceKind, PowerError, SourceProbe, ZoneEnergy

DEFAULT_POWERCAP_ROOT = Path("/sys/class/powercap")


@dataclass(frozen=True)
class PowercapZone:
    label: str           # "package-0", "package-0/dram"
    path: Path
    max_energy_range_uj: int
    in_node_total: bool


def _read_text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except PermissionError as exc:
        raise PowerError(f"{path} is not readable: energy_uj is root-only since Linux 5.10 (PLATYPUS "
                         "mitigation); run the daemon as root") from exc
    except OSError as exc:
        raise PowerError(f"cannot read {path}: {exc.strerror}") from exc


def _read_int(path: Path) -> int:
    text = _read_text(path)
    try:
        return int(text)
    except ValueError as exc:
        raise PowerError(f"{path} holds {text!r}, not an integer") from exc


def discover_zones(root: Path) -> tuple[list[PowercapZone], list[str]]:
    """The readable RAPL zones under `root`, and a reason for each zone that was skipped."""
    zones: list[PowercapZone] = []
    skipped: list[str] = []
    if not root.is_dir():
        return zones, [f"no powercap tree at {root}"]
    # Package zones sort before their subzones, so each subzone finds its package's label.
    candidates = sorted((p for p in root.iterdir() if ":" in p.name and (p / "energy_uj").exists()),
                        key=lambda p: [int(n) if n.isdigit() else n for n in p.name.split(":")])
    labels: dict[str, str] = {}
    for path in candidates:
        control_type, *indices = path.name.split(":")
        if control_type.endswith("-mmio"):
            skipped.append(f"{path.name}: MMIO duplicate of an MSR package zone")
            continue
        try:
            name = _read_text(path / "name")
            _read_int(path / "energy_uj")
            range_uj = _read_int(path / "max_energy_range_uj")
        except PowerError as exc:
            skipped.append(f"{path.name}: {exc}")
            continue
        if len(indices) == 1:
            label, counted = name, name != "psys"
        else:
            parent = labels.get(f"{control_type}:{indices[0]}", f"{control_type}:{indices[0]}")
            label, counted = f"{parent}/{name}", name == "dram"
        if label in labels.values():
            label = f"{label}@{path.name}"
        labels[path.name] = label
        zones.append(PowercapZone(label, path, range_uj, counted))
    return zones, skipped


class PowercapSource:
    """Cumulative, wrap-corrected joules per powercap zone."""

    name = "powercap"
    kind: EnergySourceKind = "measured"
    idle_watts: float | None = None

    def __init__(self, zones: list[PowercapZone]) -> None:
        if not zones:
            raise PowerError("no powercap zones to read")
        self._zones = zones
        self._counters = {z.label: WrappingCounter(z.max_energy_range_uj) for z in zones}
        self.read()  # the first reading is each counter's zero

    def read(self) -> list[ZoneEnergy]:
        return [ZoneEnergy(z.label, self._counters[z.label].update(_read_int(z.path / "energy_uj")) / 1e6,
                           z.in_node_total)
                for z in self._zones]

    def close(self) -> None:
        """Nothing is held open: each reading opens energy_uj afresh."""


def open_powercap(root: Path = DEFAULT_POWERCAP_ROOT) -> tuple[PowercapSource | None, SourceProbe]:
    if not root.is_dir():
        return None, SourceProbe("powercap", False, f"no powercap tree at {root}")
    zones, skipped = discover_zones(root)
    note = f" (skipped: {'; '.join(skipped)})" if skipped else ""
    if not zones:
        return None, SourceProbe("powercap", False, f"no readable RAPL zone under {root}{note}")
    if not any(z.in_node_total for z in zones):
        return None, SourceProbe("powercap", False, f"no package or dram zone under {root}{note}")
    source = PowercapSource(zones)
    return source, SourceProbe("powercap", True, f"zones {', '.join(z.label for z in zones)} at {root}{note}")
