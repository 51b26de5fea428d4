"""Validation of sandbox names and call ids, which become cgroup directory names."""

from __future__ import annotations

import re

from hostwarden.cgroups.errors import InvalidName

MAX_NAME_LENGTH = 64
_ALLOWED = re.compile(r"[A-Za-z0-9_.-]+")
# A directory named like an interface file (cgroup.procs, memory.max) would clash with the kernel's files.
_INTERFACE_PREFIX = re.compile(r"^(cgroup|cpu|cpuset|io|memory|pids|hugetlb|rdma|misc)\.")


def validate_name(name: str, what: str = "name") -> str:
    """Return `name` unchanged if it is safe as one cgroup directory name, else raise InvalidName."""
    if not isinstance(name, str):
        raise InvalidName(f"{what} must be a string, got {type(name).__name__}")
    if not name:
        raise InvalidName(f"{what} is empty: use 1 to {MAX_NAME_LENGTH} characters from [A-Za-z0-9_.-]")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidName(f"{what} is {len(name)} characters long: use at most {MAX_NAME_LENGTH}")
    if name in (".", ".."):
        raise InvalidName(f"{what} {name!r} is a path component, not a name: pick another")
    if not _ALLOWED.fullmatch(name):
        bad = next(c for c in name if not _ALLOWED.fullmatch(c))
        kind = "a control character" if ord(bad) < 32 or ord(bad) == 127 else f"{bad!r}"
        raise InvalidName(f"{what} {name!r} contains {kind}: use only letters, digits, '_', '.' and '-'")
    if name.startswith("."):
        # systemd creates hidden cgroups of its own (e.g. `.control` for ExecReload) in a delegated subtree.
        raise InvalidName(f"{what} {name!r} starts with '.': such names are left to systemd; pick another")
    if _INTERFACE_PREFIX.match(name):
        raise InvalidName(f"{what} {name!r} looks like a cgroup interface file: do not start it with "
                          f"'{name.split('.', 1)[0]}.'")
    return name
