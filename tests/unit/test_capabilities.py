"""capabilities.probe against fake /proc, /sys and /dev trees: each capability present, absent, and why."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from hostwarden import capabilities
from hostwarden.capabilities import CAPABILITY_NAMES, HostPaths, find_cgroup2_mount, probe

RELEASE = "6.1.0-99-amd64"
V2_ROOT = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate"
V2_UNIFIED = ("31 25 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:5 - cgroup2 cgroup2 "
              "rw,nsdelegate")
V1_MEMORY = "40 25 0:35 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,memory"
V1_CPU = ("41 25 0:36 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup "
          "rw,cpu,cpuacct")
ROOT_FS = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw"


class FakeHost:
    """A tmp dir laid out like /proc, /sys, /dev and /lib/modules, filled in by each test."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.paths = HostPaths(proc=root / "proc", sys=root / "sys", dev=root / "dev",
                               lib_modules=root / "lib" / "modules", kernel_release=RELEASE)
        for directory in (self.paths.proc / "self", self.paths.sys, self.paths.dev):
            directory.mkdir(parents=True)
        self.mounts(ROOT_FS)

    def write(self, path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def mounts(self, *lines: str) -> None:
        self.write(self.paths.proc / "self" / "mountinfo", "".join(f"{line}\n" for line in lines))

    def cgroup(self, relative: str, controllers: str) -> None:
        self.write(self.paths.sys / "fs" / "cgroup" / relative / "cgroup.controllers", f"{controllers}\n")

    def securityfs(self, lsm: str | None = None, ima: bool = False) -> None:
        security = self.paths.sys / "kernel" / "security"
        security.mkdir(parents=True, exist_ok=True)
        if lsm is not None:
            self.write(security / "lsm", lsm)
        if ima:
            self.write(security / "ima" / "ascii_runtime_measurements",
                       "10 0000 ima-sig sha256:00 boot_aggregate \n")


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    return FakeHost(tmp_path)


def test_every_named_capability_is_reported_in_order(host):
    assert list(probe(host.paths)) == list(CAPABILITY_NAMES)


def test_pure_v2_host_with_memory_cpu_and_pids(host):
    host.mounts(ROOT_FS, V2_ROOT)
    host.cgroup("", "cpuset cpu io memory hugetlb pids rdma misc")
    caps = probe(host.paths)
    assert caps["cgroup_v2"].available and "hybrid" not in caps["cgroup_v2"].detail
    assert "/sys/fs/cgroup" in caps["cgroup_v2"].detail
    for name in ("memory_controller", "cpu_controller", "pids_controller"):
        assert caps[name].available, caps[name].detail


def test_hybrid_host_names_the_v1_hierarchy_that_holds_memory(host):
    host.mounts(ROOT_FS, V2_UNIFIED, V1_MEMORY, V1_CPU)
    host.cgroup("unified", "hugetlb")
    caps = probe(host.paths)
    assert caps["cgroup_v2"].available
    assert "/sys/fs/cgroup/unified" in caps["cgroup_v2"].detail and "hybrid" in caps["cgroup_v2"].detail
    memory = caps["memory_controller"]
    assert not memory.available
    assert "offers only: hugetlb" in memory.detail
    assert "cgroup v1" in memory.detail and "systemd.unified_cgroup_hierarchy=1" in memory.detail
    assert "held by a cgroup v1" in caps["cpu_controller"].detail
    # pids is neither offered by v2 nor held by v1 here: no v1 advice, just what v2 offers.
    assert not caps["pids_controller"].available and "cgroup v1" not in caps["pids_controller"].detail


def test_v2_without_controllers_says_none_are_offered(host):
    host.mounts(ROOT_FS, V2_ROOT)
    host.cgroup("", "")
    assert "offers only: no controllers" in probe(host.paths)["memory_controller"].detail


def test_no_cgroup2_mount_makes_every_controller_unavailable(host):
    host.mounts(ROOT_FS, V1_MEMORY)
    caps = probe(host.paths)
    assert not caps["cgroup_v2"].available and "no cgroup2 filesystem" in caps["cgroup_v2"].detail
    for name in ("memory_controller", "cpu_controller", "pids_controller"):
        assert not caps[name].available and "cgroup v2" in caps[name].detail


def test_find_cgroup2_mount_reads_the_mount_point_after_optional_fields():
    assert find_cgroup2_mount(f"{ROOT_FS}\n{V1_MEMORY}\n{V2_UNIFIED}\n") == Path("/sys/fs/cgroup/unified")
    assert find_cgroup2_mount(
        "50 22 0:40 / /mnt/my\\040cgroups rw shared:9 master:3 - cgroup2 none rw\n") == Path("/mnt/my cgroups")
    assert find_cgroup2_mount(f"{ROOT_FS}\n{V1_MEMORY}\n") is None
    assert find_cgroup2_mount("") is None


def test_psi_present_and_missing(host):
    assert not probe(host.paths)["psi"].available
    host.write(host.paths.proc / "pressure" / "memory", "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
    assert probe(host.paths)["psi"].available


def test_securityfs_not_mounted(host):
    caps = probe(host.paths)
    assert not caps["bpf_lsm"].available and "securityfs" in caps["bpf_lsm"].detail
    assert not caps["ima"].available and "securityfs" in caps["ima"].detail


def test_bpf_lsm_active_and_inactive(host):
    host.securityfs(lsm="lockdown,capability,landlock,yama,apparmor,bpf")
    assert probe(host.paths)["bpf_lsm"].available
    host.securityfs(lsm="lockdown,capability,apparmor")
    bpf_lsm = probe(host.paths)["bpf_lsm"]
    assert not bpf_lsm.available and "lsm=" in bpf_lsm.detail


def test_ima_present_and_absent_with_securityfs_mounted(host):
    host.securityfs(lsm="capability,bpf")
    ima = probe(host.paths)["ima"]
    assert not ima.available and "CONFIG_IMA" in ima.detail
    host.securityfs(ima=True)
    assert probe(host.paths)["ima"].available


@pytest.mark.parametrize("device", ["tpmrm0", "tpm0"])
def test_tpm_device_present(host, device):
    (host.paths.dev / device).touch()
    tpm = probe(host.paths)["tpm"]
    assert tpm.available and device in tpm.detail


def test_tpm_absent(host):
    tpm = probe(host.paths)["tpm"]
    assert not tpm.available and "swtpm" in tpm.detail


def test_btf_present_and_absent(host):
    assert not probe(host.paths)["btf"].available
    host.write(host.paths.sys / "kernel" / "btf" / "vmlinux", "")
    assert probe(host.paths)["btf"].available


def test_rapl_through_powercap(host):
    zone = host.paths.sys / "class" / "powercap" / "intel-rapl:0"
    host.write(zone / "energy_uj", "123456\n")
    rapl = probe(host.paths)["rapl"]
    assert rapl.available and "intel-rapl:0" in rapl.detail


def test_rapl_through_the_perf_power_pmu(host):
    (host.paths.sys / "bus" / "event_source" / "devices" / "power").mkdir(parents=True)
    rapl = probe(host.paths)["rapl"]
    assert rapl.available and "perf power PMU" in rapl.detail


def test_rapl_absent(host):
    rapl = probe(host.paths)["rapl"]
    assert not rapl.available and "estimated" in rapl.detail


def test_rapl_zone_without_readable_energy(host):
    zone = host.paths.sys / "class" / "powercap" / "intel-rapl:0"
    (zone / "energy_uj").mkdir(parents=True)  # exists but cannot be read as a file
    rapl = probe(host.paths)["rapl"]
    assert not rapl.available and "unreadable" in rapl.detail


@pytest.fixture
def bcc_importable(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(capabilities.importlib.util, "find_spec",
                        lambda name: object() if name == "bcc" else real_find_spec(name))


def test_bcc_module_missing(host, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(capabilities.importlib.util, "find_spec",
                        lambda name: None if name == "bcc" else real_find_spec(name))
    bcc = probe(host.paths)["bcc"]
    assert not bcc.available and "python3-bpfcc" in bcc.detail


def test_bcc_without_headers(host, bcc_importable):
    bcc = probe(host.paths)["bcc"]
    assert not bcc.available and f"linux-headers-{RELEASE}" in bcc.detail


def test_bcc_with_matching_headers(host, bcc_importable):
    headers = host.root / "usr" / "src" / f"linux-headers-{RELEASE}"
    host.write(headers / "Makefile", "")
    (host.paths.lib_modules / RELEASE).mkdir(parents=True)
    (host.paths.lib_modules / RELEASE / "build").symlink_to(headers)
    bcc = probe(host.paths)["bcc"]
    assert bcc.available and "another kernel" not in bcc.detail


def test_bcc_with_another_kernels_headers_warns(host, bcc_importable):
    headers = host.root / "usr" / "src" / "linux-headers-5.10.0-1-amd64"
    host.write(headers / "Makefile", "")
    (host.paths.lib_modules / RELEASE).mkdir(parents=True)
    (host.paths.lib_modules / RELEASE / "build").symlink_to(headers)
    bcc = probe(host.paths)["bcc"]
    assert bcc.available and "another kernel" in bcc.detail and "tracepoint" in bcc.detail


def test_to_dict_carries_every_field(host):
    assert set(probe(host.paths)["psi"].to_dict()) == {"name", "available", "detail", "in_use"}
