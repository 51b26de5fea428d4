"""`hostwarden status` on the running kernel: what it says about cgroups matches what the host mounts.

On a hybrid host (this project's development machines) the v2 hierarchy lacks the memory controller,
which cgroup v1 holds: status must say unavailable and why. tests/vm/test_foundation.py checks that the
same command reports it available in the VM, so the two tiers together show status tells them apart.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from hostwarden.capabilities import CAPABILITY_NAMES


def status(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "hostwarden", "status", *args], check=True,
                          capture_output=True, text=True, timeout=60).stdout


def mounted_cgroups() -> tuple[Path | None, set[str]]:
    """The cgroup2 mount point and the controllers v1 hierarchies hold, read from /proc/self/mounts."""
    cgroup2, held_by_v1 = None, set()
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, mount_point, fstype, options, *_ = line.split()
        if fstype == "cgroup2" and cgroup2 is None:
            cgroup2 = Path(mount_point)
        elif fstype == "cgroup":
            held_by_v1.update(options.split(","))
    return cgroup2, held_by_v1


def test_status_json_reports_the_memory_controller_as_the_host_has_it():
    capabilities = json.loads(status("--json"))["capabilities"]
    assert set(CAPABILITY_NAMES) <= set(capabilities)
    cgroup2, held_by_v1 = mounted_cgroups()
    assert cgroup2 is not None, "no cgroup2 mount on this host: the daemon cannot run here"
    assert capabilities["cgroup_v2"]["available"] is True
    assert str(cgroup2) in capabilities["cgroup_v2"]["detail"]

    memory = capabilities["memory_controller"]
    offered = (cgroup2 / "cgroup.controllers").read_text().split()
    assert memory["available"] is ("memory" in offered), memory
    if "memory" in held_by_v1:
        # The development hosts: the reason must name the v1 hierarchy and how to get a pure v2 host.
        assert memory["available"] is False
        assert "cgroup v1" in memory["detail"] and "hybrid" in memory["detail"], memory["detail"]
        assert "systemd.unified_cgroup_hierarchy=1" in memory["detail"]


def test_status_prints_a_table_with_a_row_per_capability():
    lines = status().splitlines()
    assert lines[0].split()[:2] == ["CAPABILITY", "AVAILABLE"]
    rows = {line.split()[0]: line.split()[1] for line in lines[1:len(CAPABILITY_NAMES) + 1]}
    assert list(rows) == list(CAPABILITY_NAMES)
    capabilities = json.loads(status("--json"))["capabilities"]
    for name, shown in rows.items():
        assert shown == ("yes" if capabilities[name]["available"] else "no"), name
