"""The guest tests/vm/run boots has what the daemon needs, and `hostwarden status` sees all of it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
IMA_LOG = Path("/sys/kernel/security/ima/ascii_runtime_measurements")
TPM_DEVICE = "device:/dev/tpmrm0"


def pcr10() -> str:
    """PCR 10 (sha256 bank) read through the kernel's TPM resource manager, as lowercase hex."""
    output = subprocess.run(["tpm2_pcrread", "-T", TPM_DEVICE, "sha256:10"], check=True,
                            capture_output=True, text=True).stdout
    match = re.search(r"10\s*:\s*0x([0-9A-Fa-f]{64})", output)
    assert match, f"no sha256 PCR 10 in tpm2_pcrread output: {output!r}"
    return match.group(1).lower()


def test_cgroup_v2_offers_and_delegates_every_controller_the_daemon_uses():
    offered = (CGROUP_ROOT / "cgroup.controllers").read_text().split()
    enabled = (CGROUP_ROOT / "cgroup.subtree_control").read_text().split()
    for controller in ("memory", "cpu", "pids", "io"):
        assert controller in offered, f"{controller} not offered: {offered}"
        assert controller in enabled, f"{controller} not enabled for children: {enabled}"
    assert Path("/proc/pressure/memory").read_text().startswith("some ")


def test_kernel_filesystems_are_mounted():
    mounts = {line.split()[1]: line.split()[2] for line in Path("/proc/self/mounts").read_text().splitlines()}
    expected = {"/sys/fs/cgroup": "cgroup2", "/sys/kernel/tracing": "tracefs", "/sys/kernel/debug": "debugfs",
                "/sys/kernel/security": "securityfs", "/sys/fs/bpf": "bpf", "/tmp": "tmpfs", "/": "overlay",
                "/dev/pts": "devpts", "/dev/shm": "tmpfs"}
    for path, fstype in expected.items():
        assert mounts.get(path) == fstype, f"{path}: expected {fstype}, mounted: {mounts.get(path)}"
    assert "bpf" in Path("/sys/kernel/security/lsm").read_text().strip().split(",")


def test_ima_measures_into_pcr10_and_a_new_file_extends_it():
    entries = IMA_LOG.read_text().splitlines()
    assert entries, "the IMA measurement list is empty"
    assert entries[0].split()[0] == "10" and entries[0].split()[-1] == "boot_aggregate"
    before = pcr10()
    assert before != "0" * 64, "PCR 10 is all zeros although IMA measured files"

    # A file root reads for the first time is measured (ima_policy=tcb); /var/tmp is on the overlay,
    # which IMA measures (tmpfs it does not).
    fresh = Path("/var/tmp") / f"measured-{uuid.uuid4().hex}"
    fresh.write_text(fresh.name)
    subprocess.run(["cat", str(fresh)], check=True, capture_output=True)

    assert any(line.endswith(f" {fresh}") or f" {fresh} " in line for line in IMA_LOG.read_text().splitlines())
    assert pcr10() != before, "PCR 10 did not change after a new measurement"


def test_status_reports_every_kernel_feature_available():
    completed = subprocess.run([sys.executable, "-m", "hostwarden", "status", "--json"], check=True,
                               capture_output=True, text=True)
    capabilities = json.loads(completed.stdout)["capabilities"]
    for name in ("cgroup_v2", "memory_controller", "cpu_controller", "pids_controller", "psi", "ima", "tpm",
                 "bpf_lsm", "btf"):
        assert capabilities[name]["available"] is True, f"{name}: {capabilities[name]['detail']}"
