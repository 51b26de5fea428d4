"""Finding the daemon's cgroup root: the systemd-delegated cgroup, or a configured path on cgroup2."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from hostwarden.capabilities import find_cgroup2_mount
from hostwarden.cgroups.cgroupfs import CgroupFs
from hostwarden.cgroups.errors import CgroupIOError, CgroupRootError
from hostwarden.cgroups.tree import SUPERVISOR_LEAF, enable_controllers

DEFAULT_ROOT_NAME = "hostwarden"


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    for code in ("040", "011", "012", "134"):
        field = field.replace("\\" + code, chr(int(code, 8)))
    return field


def mount_of(path: Path, mountinfo: str) -> tuple[Path, str] | None:
    """The (mount point, filesystem type) of the mount that holds `path`: the deepest one above it,
    the last mounted winning when several share a mount point."""
    best: tuple[Path, str] | None = None
    for line in mountinfo.splitlines():
        pre, sep, post = line.partition(" - ")
        fields = pre.split(" ")
        if not sep or len(fields) < 5:
            continue
        point = Path(_unescape(fields[4]))
        if path.is_relative_to(point) and (best is None or len(point.parts) >= len(best[0].parts)):
            best = (point, post.split(" ", 1)[0])
    return best


def require_cgroup2(path: Path, mountinfo: str) -> Path:
    """`path` resolved, if it lies on a cgroup2 mount; CgroupRootError naming what it is on otherwise."""
    resolved = path.resolve()
    mount = mount_of(resolved, mountinfo)
    if mount is None or mount[1] != "cgroup2":
        found = f"a {mount[1]} mount at {mount[0]}" if mount else "no mount"
        v2 = find_cgroup2_mount(mountinfo)
        where = f"cgroup2 is mounted at {v2}" if v2 else "no cgroup2 filesystem is mounted"
        raise CgroupRootError(f"cgroup root {path} is on {found}, not cgroup2 ({where}): hostwarden manages "
                              "cgroup v2 only; configure a path below the cgroup2 mount")
    return resolved


def own_cgroup(proc_cgroup: str) -> str:
    """The cgroup v2 path (`0::/path` line) from /proc/<pid>/cgroup text."""
    for line in proc_cgroup.splitlines():
        if line.startswith("0::"):
            return line[3:].strip()
    raise CgroupRootError("this process has no cgroup v2 entry ('0::...') in /proc/self/cgroup: the host "
                          "has no cgroup2 hierarchy mounted")


def discover_root(configured: str | None, *, under_systemd: bool, proc: Path = Path("/proc"),
                  fs: CgroupFs | None = None) -> Path:
    """The daemon's cgroup root, made ready for sandboxes (exists, holds no processes, controllers on).

    Under systemd (Delegate=yes): the unit's own cgroup; the daemon's processes there move into the
    `supervisor` leaf first, since only leaves may hold processes. Otherwise `configured`, defaulting
    to `<cgroup2 mount>/hostwarden`, created (with its parents' controllers enabled) if missing.
    """
    fs = fs or CgroupFs()
    mountinfo = _read(proc / "self" / "mountinfo")
    mount = find_cgroup2_mount(mountinfo)
    if mount is None:
        raise CgroupRootError("no cgroup2 filesystem is mounted (see /proc/self/mountinfo): hostwarden needs "
                              "cgroup v2; boot with systemd.unified_cgroup_hierarchy=1 or mount cgroup2")
    if under_systemd:
        return _delegated_root(mount, mountinfo, proc, fs)
    root = require_cgroup2(Path(configured) if configured else mount / DEFAULT_ROOT_NAME, mountinfo)
    mount = require_cgroup2(mount, mountinfo)
    if root == mount:
        raise CgroupRootError(f"cgroup root {root} is the cgroup2 mount itself: configure a directory below "
                              f"it (default {mount / DEFAULT_ROOT_NAME})")
    _create_with_controllers(root, mount, fs)
    return root


def _delegated_root(mount: Path, mountinfo: str, proc: Path, fs: CgroupFs) -> Path:
    relative = own_cgroup(_read(proc / "self" / "cgroup")).lstrip("/")
    current = require_cgroup2(mount / relative, mountinfo)
    # After a restart of the daemon process alone, systemd may leave it in the supervisor leaf already.
    root = current.parent if current.name == SUPERVISOR_LEAF else current
    if root == mount.resolve():
        raise CgroupRootError(f"the daemon runs in the cgroup2 root {root}, not in a delegated unit cgroup: "
                              "run it from hostwarden.service (Delegate=yes) or configure a root path")
    supervisor = root / SUPERVISOR_LEAF
    if not supervisor.is_dir():
        fs.mkdir(supervisor)
    # Every process in the unit's cgroup (the daemon and any helpers it started) goes to the leaf.
    for pid in fs.read_pids(root):
        try:
            fs.write(supervisor / "cgroup.procs", str(pid))
        except CgroupIOError as error:
            if error.errno != errno.ESRCH:  # exited meanwhile
                raise
    _enable(root, fs)
    return root


def _create_with_controllers(root: Path, mount: Path, fs: CgroupFs) -> None:
    node = mount
    for part in root.relative_to(mount).parts:
        _enable(node, fs)
        node = node / part
        if not node.is_dir():
            fs.mkdir(node)
    _enable(root, fs)


def _enable(node: Path, fs: CgroupFs) -> None:
    try:
        enable_controllers(fs, node)
    except CgroupIOError as error:
        raise CgroupRootError(f"cannot enable controllers in {node}: {error}; a cgroup holding processes "
                              "cannot pass controllers down: move them into a leaf") from error


def _read(file: Path) -> str:
    try:
        return file.read_text()
    except OSError as error:
        raise CgroupRootError(f"cannot read {file}: {os.strerror(error.errno or 0)}; is /proc mounted?") \
            from error
