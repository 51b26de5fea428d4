"""Per-call energy attribution error against the ground truth of a fake RAPL tree driven by real CPU work.

The fake powercap counter advances at a fixed wattage per busy CPU-second of the whole machine (from
/proc/stat) and wraps during the run, so a call's true energy is that wattage times its CPU time (taken
from wait4's rusage, independently of cgroups). Each call is a real process in its own cgroup v2.
Beside hostwarden's meter runs the same meter with the rate taken over the call's own window only
(`exact window`), the naive form of the formula, to show what the trailing rate window buys.

Usage (root): .venv/bin/python bench/power_attribution.py [--quick]
Last line of stdout: JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.host.power.fake_rapl

from hostwarden.capabilities import find_cgroup2_mount
from hostwarden.power.cpu_time import ProcCpuUsage
from hostwarden.power.meter import EnergyMeter
from hostwarden.power.powercap import open_powercap
from tests.host.power.fake_rapl import Burner, FakeRaplTree, make_cgroup, remove_cgroups

TARGET_ERROR_PCT = 5.0


def _meter(tree: FakeRaplTree, cpu_usage: ProcCpuUsage, window: float) -> EnergyMeter:
    source, probe = open_powercap(tree.root)
    if source is None:
        raise SystemExit(probe.detail)
    return EnergyMeter(source, cpu_usage, idle_watts=0.0, rate_window_seconds=window,
                       history_seconds=max(30.0, 2 * window))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="calls of 50-500 ms, 3 of each")
    parser.add_argument("--watts-per-core", type=float, default=10.0)
    args = parser.parse_args()
    plan = [(0.05, 3), (0.1, 3), (0.5, 3)] if args.quick else [(0.05, 8), (0.1, 6), (0.5, 4), (1.0, 3), (5.0, 2)]

    mount = find_cgroup2_mount(Path("/proc/self/mountinfo").read_text())
    if mount is None or os.geteuid() != 0:
        raise SystemExit("needs root and a cgroup2 mount")
    top = mount / f"hostwarden-bench-power-{os.getpid()}"
    top.mkdir()
    cpu_usage = ProcCpuUsage(mount)
    results = []
    with tempfile.TemporaryDirectory() as tmp, \
            FakeRaplTree(Path(tmp), args.watts_per_core, range_uj=int(args.watts_per_core * 2e6)) as tree:
        meters = {"hostwarden": _meter(tree, cpu_usage, 1.0), "exact window": _meter(tree, cpu_usage, 1e-3)}
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.1):
                for meter in meters.values():
                    meter.sample()

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        stop.wait(1.0)
        try:
            for seconds, repeats in plan:
                errors: dict[str, list[float]] = {name: [] for name in meters}
                truths = []
                for i in range(repeats):
                    cgroup = make_cgroup(top, f"call-{seconds}-{i}")
                    burner = Burner.start(seconds)
                    (cgroup / "cgroup.procs").write_text(str(burner.process.pid))
                    for meter in meters.values():
                        meter.begin(str(cgroup), cgroup)
                    truth = args.watts_per_core * burner.go_and_wait()
                    for name, meter in meters.items():
                        share = meter.end(str(cgroup))
                        errors[name].append(100.0 * abs(share.joules - truth) / truth)
                    truths.append(truth)
                    cgroup.rmdir()
                row = {"call_seconds": seconds, "calls": repeats, "truth_joules_mean": statistics.mean(truths)}
                for name, errs in errors.items():
                    key = name.replace(" ", "_")
                    row[f"{key}_error_pct_mean"] = statistics.mean(errs)
                    row[f"{key}_error_pct_max"] = max(errs)
                results.append(row)
                print(f"{seconds * 1000:6.0f} ms x{repeats}: truth {row['truth_joules_mean']:8.3f} J | "
                      f"hostwarden error mean {row['hostwarden_error_pct_mean']:5.2f}% "
                      f"max {row['hostwarden_error_pct_max']:5.2f}% | exact window error mean "
                      f"{row['exact_window_error_pct_mean']:6.2f}% max {row['exact_window_error_pct_max']:6.2f}%")
        finally:
            stop.set()
            sampler.join()
            remove_cgroups(top)
    worst = max(r["hostwarden_error_pct_max"] for r in results)
    print(f"counter wrapped {tree.wraps} times; worst error {worst:.2f}% (target < {TARGET_ERROR_PCT}%)")
    print(json.dumps({"bench": "power_attribution", "watts_per_busy_core": args.watts_per_core,
                      "wraps": tree.wraps, "target_error_pct": TARGET_ERROR_PCT, "worst_error_pct": worst,
                      "pass": worst < TARGET_ERROR_PCT, "results": results}))


if __name__ == "__main__":
    main()
