"""Real-hardware power checks for a GPU machine: the perf `power` PMU (RAPL through perf_event_open) and
NVML (GPU energy counter, a GPU-busy child process attributed to its cgroup).

Not part of the host tier: the development hosts and CI have neither the PMU nor a GPU, and a test that
`require`s them would fail in CI while proving nothing there. This script is run by hand on a GPU machine
(see ../shared/GPU-MACHINE.md and docs/power.md) and exits non-zero when a check fails, so a missing or
broken feature never passes silently. It only reads: no GPU power limit, clock or mode is changed.

Usage (root, on the GPU machine): python3 bench/power_gpu_machine.py [--quick]
Those machines have no package registry, so hostwarden need not be installed: the package is loaded
from this checkout. Last line of stdout: JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("hostwarden") is None:  # not installed: map the package onto daemon/ as setup does
    _spec = importlib.util.spec_from_file_location("hostwarden", REPO / "daemon" / "__init__.py",
                                                   submodule_search_locations=[str(REPO / "daemon")])
    assert _spec is not None and _spec.loader is not None
    sys.modules["hostwarden"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["hostwarden"])

from hostwarden.capabilities import find_cgroup2_mount  # noqa: E402
from hostwarden.power.cpu_time import ProcCpuUsage, parse_pid_cgroup  # noqa: E402
from hostwarden.power.meter import EnergyMeter  # noqa: E402
from hostwarden.power.model import ModelSource  # noqa: E402
from hostwarden.power.nvml import open_nvml  # noqa: E402
from hostwarden.power.perf_pmu import open_perf_power  # noqa: E402

# A bf16 matrix-multiply loop: keeps one GPU at high SM use for the given seconds.
_GPU_LOAD = """
import sys, time, torch
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    a @ a
    torch.cuda.synchronize()
"""


def check_perf_pmu(burn_seconds: float) -> dict[str, Any]:
    source, probe = open_perf_power()
    if source is None:
        return {"ok": False, "detail": probe.detail}
    try:
        start = time.monotonic()
        while time.monotonic() - start < burn_seconds:
            pass
        elapsed = time.monotonic() - start
        zones = {z.zone: z.joules for z in source.read()}
    finally:
        source.close()
    package = zones.get("package-0", 0.0)
    return {"ok": package > 0, "detail": probe.detail, "seconds": elapsed, "joules": zones,
            "package0_watts": package / elapsed}


def _leaf_cgroups(mount: Path, name: str) -> tuple[Path, Path, Path]:
    """<own cgroup>/<name>/{self,load}: this process moves into `self` (no internal processes), the GPU
    load runs in `load`. The machine's supervisor owns the cgroup we start in: stay below it."""
    own = mount / (parse_pid_cgroup(Path("/proc/self/cgroup").read_text()) or "/").lstrip("/")
    top = own / name
    top.mkdir()
    for leaf in ("self", "load"):
        (top / leaf).mkdir()
    (top / "self" / "cgroup.procs").write_text(str(os.getpid()))
    return own, top, top / "load"


def check_nvml(load_seconds: float) -> dict[str, Any]:
    gpu, probe = open_nvml()
    if gpu is None:
        return {"ok": False, "detail": probe.detail}
    mount = find_cgroup2_mount(Path("/proc/self/mountinfo").read_text())
    if mount is None:
        gpu.close()
        return {"ok": False, "detail": "no cgroup2 mount"}
    cpu_usage = ProcCpuUsage(mount)
    own, top, load_cgroup = _leaf_cgroups(mount, f"hostwarden-gpu-check-{os.getpid()}")
    result: dict[str, Any] = {"detail": probe.detail}
    try:
        # The CPU side is not under test here: the model keeps the meter self-contained.
        meter = EnergyMeter(ModelSource(cpu_usage, 0.0, 0.0), cpu_usage, gpu_source=gpu)
        meter.track_sandbox("load", load_cgroup)
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.25):
                meter.sample()

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        stop.wait(2.0)
        idle = meter.snapshot()
        child = subprocess.Popen([sys.executable, "-c", f"import os; os.write(1, b'x'); os.read(0, 1)\n{_GPU_LOAD}",
                                  str(load_seconds)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert child.stdin is not None and child.stdout is not None
        child.stdout.read(1)
        (load_cgroup / "cgroup.procs").write_text(str(child.pid))
        child.stdin.write(b"g")
        child.stdin.close()
        rc = child.wait(timeout=load_seconds + 120)
        stop.wait(2.0)
        stop.set()
        sampler.join()
        meter.sample()
        end = meter.snapshot()
        node = {zone: joules - idle.node_energy_joules.get((zone, source), 0.0)
                for (zone, source), joules in end.node_energy_joules.items() if zone.startswith("gpu")}
        attributed = end.sandbox_energy_joules.get(("load", "measured"), 0.0) \
            - idle.sandbox_energy_joules.get(("load", "measured"), 0.0)
        node_total = sum(node.values())
        result.update({
            "ok": rc == 0 and attributed > 0 and attributed <= node_total * 1.001,
            "load_exit_code": rc, "node_gpu_joules_during_load": node, "attributed_to_load_cgroup_joules": attributed,
            "attributed_fraction": attributed / node_total if node_total else None,
            "idle_watts_before_load": {z: w for z, w in idle.node_power_watts.items() if z.startswith("gpu")},
        })
    finally:
        gpu.close()
        result["left_behind"] = _remove_leaf_cgroups(own, top)
    return result


def _remove_leaf_cgroups(own: Path, top: Path) -> list[str]:
    """Move this process back to where it started and remove what _leaf_cgroups made; what stays is named."""
    try:
        (own / "cgroup.procs").write_text(str(os.getpid()))
    except OSError as exc:
        return [f"{top} (cannot move back into {own}: {exc.strerror})"]
    left = []
    for path in (top / "load", top / "self", top):
        try:
            path.rmdir()
        except OSError as exc:
            left.append(f"{path} ({exc.strerror})")
    return left


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter loads")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (perf power PMU, cgroup writes)")
    checks = {"perf_pmu": check_perf_pmu(0.5 if args.quick else 2.0),
              "nvml": check_nvml(5.0 if args.quick else 15.0)}
    for name, check in checks.items():
        print(f"{name}: {'OK' if check['ok'] else 'FAILED'}: {json.dumps(check)}")
    print(json.dumps({"bench": "power_gpu_machine", "pass": all(c["ok"] for c in checks.values()), **checks}))
    sys.exit(0 if all(c["ok"] for c in checks.values()) else 1)


if __name__ == "__main__":
    main()
