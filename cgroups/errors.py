"""Errors raised by hostwarden.cgroups; each message names what is wrong and what to do.

The daemon maps them onto gRPC codes: InvalidName/InvalidLimit/PathEscape -> INVALID_ARGUMENT,
CgroupNotFound -> NOT_FOUND, CgroupExists -> ALREADY_EXISTS, CgroupBusy -> FAILED_PRECONDITION,
CgroupIOError -> INTERNAL, CgroupRootError -> the daemon refuses to start.
"""

from __future__ import annotations

import errno as errno_module
import os
from pathlib import Path


class CgroupError(Exception):
    """Base of every error this package raises on purpose."""


class InvalidName(CgroupError, ValueError):
    """A sandbox name or call id that cannot be a cgroup directory name."""


class InvalidLimit(CgroupError, ValueError):
    """A limit value the kernel would refuse."""


class PathEscape(CgroupError, ValueError):
    """A path that resolves outside the daemon's cgroup root."""


class CgroupNotFound(CgroupError, LookupError):
    """A sandbox, call or process that does not exist."""


class CgroupExists(CgroupError):
    """A sandbox or call that already exists."""


class CgroupBusy(CgroupError):
    """The cgroup still holds processes (or did not reach the asked state in time)."""


class CgroupRootError(CgroupError):
    """The daemon's cgroup root cannot be found or is not on a cgroup2 mount."""


class CgroupIOError(CgroupError, OSError):
    """A cgroupfs read or write failed; carries the file and the errno."""

    def __init__(self, action: str, file: Path, error: OSError, hint: str = "") -> None:
        code = error.errno or 0
        name = errno_module.errorcode.get(code, str(code))
        message = f"{action} {file} failed: {name} ({os.strerror(code)})"
        super().__init__(code, message + (f"; {hint}" if hint else ""))
        self.file = file
        self.errno_name = name

    def __str__(self) -> str:
        return str(self.strerror)
