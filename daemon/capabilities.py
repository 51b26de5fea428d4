"""What this host can do: each capability probed from /proc and /sys, with the reason when it is missing.

Probes only read files (and look bcc/NVML up without side effects), so `hostwarden status` works without
a daemon and unit tests point `HostPaths` at fake trees.
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Names every report carries, in display order.
CAPABILITY_NAMES = (
    "cgroup_v2",
    "memory_controller",
    "cpu_controller",
    "pids_controller",
    "psi",
    "bcc",
    "btf",
    "bpf_lsm",
    "ima",
    "tpm",
    "rapl",
    "nvml",
)


@dataclass(frozen=True)
class HostPaths:
    """Where the probes look; tests substitute a tmp dir for each root."""

    proc: Path = Path("/proc")
    sys: Path = Path("/sys")
    dev: Path = Path("/dev")
    lib_modules: Path = Path("/lib/modules")
    kernel_release: str = field(default_factory=lambda: os.uname().release)


@dataclass
class Capability:
    name: str
    available: bool
    detail: str
    in_use: bool = False

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def find_cgroup2_mount(mountinfo: str) -> Path | None:
    """The cgroup2 mount point from /proc/self/mountinfo text (fields: ... mountpoint ... - fstype ...)."""
    for line in mountinfo.splitlines():
        pre, sep, post = line.partition(" - ")
        if sep and post.split(" ", 1)[0] == "cgroup2":
            return Path(pre.split(" ")[4].replace("\\040", " "))
    return None


def _v1_controller_mounts(mountinfo: str) -> set[str]:
    held: set[str] = set()
    for line in mountinfo.splitlines():
        _, sep, post = line.partition(" - ")
        parts = post.split(" ")
        if sep and parts[0] == "cgroup" and len(parts) >= 3:
            held.update(opt for opt in parts[2].split(",") if opt not in ("rw", "ro"))
    return held


def _probe_cgroups(paths: HostPaths) -> list[Capability]:
    mountinfo = _read(paths.proc / "self" / "mountinfo") or ""
    mount = find_cgroup2_mount(mountinfo)
    if mount is None:
        missing = "no cgroup2 filesystem is mounted (see /proc/self/mountinfo); mount one or boot with " \
                  "systemd.unified_cgroup_hierarchy=1"
        return [Capability("cgroup_v2", False, missing)] + [
            Capability(f"{c}_controller", False, "needs cgroup v2") for c in ("memory", "cpu", "pids")
        ]
    # Tests mount a fake tree: resolve the mount point relative to the fake /sys where it lies under /sys.
    root = paths.sys / mount.relative_to("/sys") if mount.is_relative_to("/sys") else mount
    offered = (_read(root / "cgroup.controllers") or "").split()
    v1 = _v1_controller_mounts(mountinfo)
    caps = [Capability("cgroup_v2", True, f"cgroup2 mounted at {mount}" + (
        " (hybrid host: cgroup v1 hierarchies are mounted too)" if v1 else ""))]
    for controller in ("memory", "cpu", "pids"):
        if controller in offered:
            caps.append(Capability(f"{controller}_controller", True, f"offered at {mount}"))
            continue
        why = f"the cgroup v2 hierarchy at {mount} offers only: {' '.join(offered) or 'no controllers'}"
        if controller in v1:
            why += (f"; {controller} is held by a cgroup v1 hierarchy (hybrid host), so {controller} limits "
                    "cannot be enforced: boot with systemd.unified_cgroup_hierarchy=1 for a pure v2 host")
        caps.append(Capability(f"{controller}_controller", False, why))
    return caps


def _probe_psi(paths: HostPaths) -> Capability:
    text = _read(paths.proc / "pressure" / "memory")
    if text and text.startswith("some"):
        return Capability("psi", True, "pressure stall information at /proc/pressure")
    return Capability("psi", False, "no /proc/pressure/memory: kernel built without CONFIG_PSI or booted psi=0")


def _probe_bcc(paths: HostPaths) -> Capability:
    if importlib.util.find_spec("bcc") is None:
        return Capability("bcc", False, "python module bcc not importable: install Debian's python3-bpfcc and "
                                        "use a venv made with --system-site-packages")
    build = paths.lib_modules / paths.kernel_release / "build"
    if not (build / "Makefile").exists():
        return Capability("bcc", False, f"no kernel headers at {build}: install linux-headers-"
                                        f"{paths.kernel_release} or run scripts/setup.sh")
    target = os.path.realpath(build)
    if paths.kernel_release not in target:
        return Capability("bcc", True, f"headers at {build} are from another kernel ({Path(target).name}): "
                                       "only tracepoint arguments and BTF-typed access are safe")
    return Capability("bcc", True, f"python bcc and headers for {paths.kernel_release}")


def _probe_btf(paths: HostPaths) -> Capability:
    if (paths.sys / "kernel" / "btf" / "vmlinux").exists():
        return Capability("btf", True, "/sys/kernel/btf/vmlinux")
    return Capability("btf", False, "no /sys/kernel/btf/vmlinux: kernel built without CONFIG_DEBUG_INFO_BTF")


def _probe_bpf_lsm(paths: HostPaths) -> Capability:
    lsm = _read(paths.sys / "kernel" / "security" / "lsm")
    if lsm is None:
        return Capability("bpf_lsm", False, "securityfs not mounted or no /sys/kernel/security/lsm: cannot "
                                            "tell the active LSMs (mount -t securityfs none /sys/kernel/security)")
    active = lsm.strip().split(",")
    if "bpf" in active:
        return Capability("bpf_lsm", True, f"active LSMs: {','.join(active)}")
    return Capability("bpf_lsm", False, f"bpf is not an active LSM ({','.join(active)}): boot with lsm=...,bpf")


def _probe_ima(paths: HostPaths) -> Capability:
    security = paths.sys / "kernel" / "security"
    log = security / "ima" / "ascii_runtime_measurements"
    if log.exists():
        return Capability("ima", True, f"measurement list at {log}")
    if _read(security / "lsm") is None and not (security / "ima").exists():
        return Capability("ima", False, f"no IMA measurement list: securityfs is not mounted at {security} "
                                        "or the kernel has no IMA")
    return Capability("ima", False, f"no {log}: kernel without CONFIG_IMA, or IMA not enabled at boot")


def _probe_tpm(paths: HostPaths) -> Capability:
    for dev in ("tpmrm0", "tpm0"):
        if (paths.dev / dev).exists():
            return Capability("tpm", True, f"{paths.dev / dev}")
    return Capability("tpm", False, f"no {paths.dev}/tpmrm0 or tpm0: no TPM on this host (a software TPM "
                                    "can be configured with [attest] tpm_tcti, e.g. swtpm)")


def _probe_rapl(paths: HostPaths) -> Capability:
    powercap = paths.sys / "class" / "powercap"
    zones = sorted(p for p in powercap.glob("intel-rapl:*") if (p / "energy_uj").exists()) if powercap.is_dir() \
        else []
    readable = [z for z in zones if _read(z / "energy_uj") is not None]
    if readable:
        return Capability("rapl", True, f"powercap zones: {', '.join(z.name for z in readable)}")
    if (paths.sys / "bus" / "event_source" / "devices" / "power").is_dir():
        return Capability("rapl", True, "perf power PMU (/sys/bus/event_source/devices/power)")
    if zones:
        return Capability("rapl", False, f"powercap zones exist under {powercap} but energy_uj is unreadable")
    return Capability("rapl", False, f"no RAPL: no {powercap}/intel-rapl:* and no perf power PMU; energy "
                                     "will be estimated from CPU time by the model")


def _probe_nvml() -> Capability:
    if importlib.util.find_spec("pynvml") is None:
        return Capability("nvml", False, "python module pynvml (nvidia-ml-py) not installed")
    if ctypes.util.find_library("nvidia-ml") is None and not Path("/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1") \
            .exists():
        return Capability("nvml", False, "libnvidia-ml.so not found: no NVIDIA driver on this host")
    return Capability("nvml", True, "NVIDIA management library present")


def probe(paths: HostPaths | None = None) -> dict[str, Capability]:
    """Every capability in CAPABILITY_NAMES, keyed by name."""
    paths = paths or HostPaths()
    caps = [
        *_probe_cgroups(paths),
        _probe_psi(paths),
        _probe_bcc(paths),
        _probe_btf(paths),
        _probe_bpf_lsm(paths),
        _probe_ima(paths),
        _probe_tpm(paths),
        _probe_rapl(paths),
        _probe_nvml(),
    ]
    return {c.name: c for c in caps}
