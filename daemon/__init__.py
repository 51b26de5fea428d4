"""hostwarden: per-tool-call cgroups, eBPF observation, policy, energy and attestation for agent hosts."""

__version__ = "0.1.0"
