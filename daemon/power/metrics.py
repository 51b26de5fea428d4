"""Power metrics as plain data, for the daemon's Prometheus collectors."""

from __future__ import annotations

from dataclasses import dataclass

from hostwarden.power.meter import PowerSnapshot

SANDBOX_ENERGY = "hostwarden_sandbox_energy_joules_total"      # counter {sandbox, source}
NODE_ENERGY = "hostwarden_node_energy_joules_total"            # counter {zone, source}
NODE_IDLE_ENERGY = "hostwarden_node_idle_energy_joules_total"  # counter
TOOL_CALL_ENERGY = "hostwarden_tool_call_energy_joules"        # histogram {tool}: observe EnergyShare.joules
NODE_POWER = "hostwarden_node_power_watts"                     # gauge {zone}

# From a 50 ms grep (about 0.1 J) to a minutes-long build on a busy socket (kJ).
TOOL_CALL_ENERGY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)


@dataclass(frozen=True)
class MetricSample:
    name: str
    labels: dict[str, str]
    value: float


def snapshot_samples(snapshot: PowerSnapshot) -> list[MetricSample]:
    """Counter and gauge samples for one scrape (the histogram is fed per call by the daemon)."""
    samples = [MetricSample(SANDBOX_ENERGY, {"sandbox": sandbox, "source": source}, joules)
               for (sandbox, source), joules in sorted(snapshot.sandbox_energy_joules.items())]
    samples += [MetricSample(NODE_ENERGY, {"zone": zone, "source": source}, joules)
                for (zone, source), joules in sorted(snapshot.node_energy_joules.items())]
    samples.append(MetricSample(NODE_IDLE_ENERGY, {}, snapshot.idle_energy_joules))
    samples += [MetricSample(NODE_POWER, {"zone": zone}, watts)
                for zone, watts in sorted(snapshot.node_power_watts.items())]
    return samples
