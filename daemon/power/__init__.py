"""Power and energy: RAPL, perf power PMU, NVML and a model; attribution to cgroups; power budgets."""
