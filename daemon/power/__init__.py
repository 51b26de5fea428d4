"""Power and energy: RAPL (powercap or the perf power PMU), NVML and a model; attribution to cgroups by
CPU time and GPU use; power budgets that throttle lower-priority sandboxes through cpu.max.

The daemon opens sources with `settings.open_sources`, feeds them to `meter.EnergyMeter`, calls
`sample()` on a timer and `begin()`/`end()` around each tool call, and runs `budget.decide` on the
meter's `snapshot()`. See docs/power.md.
"""
