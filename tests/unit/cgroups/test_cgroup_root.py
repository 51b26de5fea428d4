from __future__ import annotations

from pathlib import Path

import pytest

from hostwarden.cgroups.errors import CgroupRootError
from hostwarden.cgroups.root import discover_root, mount_of, own_cgroup, require_cgroup2
from tests.unit.cgroups.fakefs import FakeCgroupFs


def _host(tmp_path, *, cgroup2=True, own="0::/\n", controllers="cpu memory pids"):
    """A fake /proc (mountinfo, self/cgroup) and a fake cgroup2 mount with a v1 hierarchy beside it."""
    mount = tmp_path / "sys" / "fs" / "cgroup" / "unified"
    fs = FakeCgroupFs(mount, controllers)
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    lines = [f"31 23 0:28 / {tmp_path / 'sys/fs/cgroup'} rw - tmpfs tmpfs rw",
             f"35 31 0:32 / {tmp_path / 'sys/fs/cgroup/memory'} rw - cgroup cgroup rw,memory"]
    if cgroup2:
        lines.append(f"41 31 0:38 / {mount} rw,relatime - cgroup2 cgroup2 rw")
    (proc / "self" / "mountinfo").write_text("\n".join(lines) + "\n")
    (proc / "self" / "cgroup").write_text(f"4:memory:/x\n{own}")
    return proc, fs, mount


def test_default_root_is_created_below_the_mount_with_controllers(tmp_path):
    proc, fs, mount = _host(tmp_path)
    root = discover_root(None, under_systemd=False, proc=proc, fs=fs)
    assert root == mount / "hostwarden"
    assert set((mount / "cgroup.subtree_control").read_text().split()) == {"cpu", "memory", "pids"}
    assert set((root / "cgroup.subtree_control").read_text().split()) == {"cpu", "memory", "pids"}
    assert discover_root(None, under_systemd=False, proc=proc, fs=fs) == root  # idempotent


def test_configured_nested_root_is_created(tmp_path):
    proc, fs, mount = _host(tmp_path, controllers="hugetlb")
    root = discover_root(str(mount / "a" / "b"), under_systemd=False, proc=proc, fs=fs)
    assert root.is_dir() and (root / "cgroup.procs").exists()
    assert (mount / "a" / "cgroup.subtree_control").read_text().strip() == ""


@pytest.mark.parametrize("where", ["sys/fs/cgroup/memory/hw", "sys/fs/cgroup/hw", "elsewhere"])
def test_refuses_roots_not_on_cgroup2(tmp_path, where):
    proc, fs, _mount = _host(tmp_path)
    (tmp_path / "sys/fs/cgroup/memory").mkdir()
    with pytest.raises(CgroupRootError, match=r"not cgroup2 .*cgroup2 is mounted at"):
        discover_root(str(tmp_path / where), under_systemd=False, proc=proc, fs=fs)
    assert not (tmp_path / where).exists()


def test_refuses_the_mount_itself_and_hosts_without_cgroup2(tmp_path):
    proc, fs, mount = _host(tmp_path)
    with pytest.raises(CgroupRootError, match="is the cgroup2 mount itself"):
        discover_root(str(mount), under_systemd=False, proc=proc, fs=fs)
    proc, fs, _ = _host(tmp_path / "v1", cgroup2=False)
    with pytest.raises(CgroupRootError, match="no cgroup2 filesystem is mounted"):
        discover_root(None, under_systemd=False, proc=proc, fs=fs)


def test_unreadable_proc_is_a_clear_error(tmp_path):
    with pytest.raises(CgroupRootError, match=r"cannot read .*mountinfo"):
        discover_root(None, under_systemd=False, proc=tmp_path)


def test_systemd_root_is_the_unit_cgroup_and_the_daemon_moves_to_supervisor(tmp_path):
    proc, fs, mount = _host(tmp_path, own="0::/system.slice/hostwarden.service\n")
    # systemd delegates with the controllers enabled down to the unit.
    unit = mount / "system.slice" / "hostwarden.service"
    for node in (mount, unit.parent):
        fs.write(node / "cgroup.subtree_control", "+memory")
        fs.mkdir(node / (unit.parent.name if node == mount else unit.name))
    fs.put_process(unit, 100)
    fs.put_process(unit, 101)
    root = discover_root(None, under_systemd=True, proc=proc, fs=fs)
    assert root == unit
    assert fs.read_pids(unit / "supervisor") == [100, 101] and fs.read_pids(unit) == []
    assert "memory" in (unit / "cgroup.subtree_control").read_text()
    # Restarted daemon already in the leaf: same root.
    (proc / "self" / "cgroup").write_text("0::/system.slice/hostwarden.service/supervisor\n")
    assert discover_root(None, under_systemd=True, proc=proc, fs=fs) == unit


def test_systemd_without_delegation_is_refused(tmp_path):
    proc, fs, _ = _host(tmp_path, own="0::/\n")
    with pytest.raises(CgroupRootError, match="not in a delegated unit cgroup"):
        discover_root(None, under_systemd=True, proc=proc, fs=fs)


def test_mountinfo_helpers():
    info = ("1 0 0:1 / / rw - ext4 /dev/vda rw\n"
            "2 1 0:2 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"
            "3 2 0:3 / /sys/fs/cgroup/my\\040dir rw - cgroup2 cgroup2 rw\n")
    assert mount_of(Path("/sys/fs/cgroup/my dir/x"), info) == (Path("/sys/fs/cgroup/my dir"), "cgroup2")
    assert mount_of(Path("/sys/fs/cgroup/other"), info) == (Path("/sys/fs/cgroup"), "tmpfs")
    assert require_cgroup2(Path("/sys/fs/cgroup/my dir/x"), info) == Path("/sys/fs/cgroup/my dir/x")
    assert own_cgroup("1:cpu:/a\n0::/b/c\n") == "/b/c"
    with pytest.raises(CgroupRootError, match="no cgroup v2 entry"):
        own_cgroup("1:cpu:/a\n")
