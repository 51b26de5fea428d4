"""cgroup v2 hierarchy for sandboxes and tool calls: the only code that touches cgroupfs.

Modules: names (validation), root (finding the daemon's root), limits (Limits -> interface files),
tree (CgroupTree: sandboxes, calls, freeze/kill/remove, scan), usage (read_usage, process_rss),
notify (CgroupWatcher, PsiTrigger), errors (what each raises).
"""

from hostwarden.cgroups.errors import (
    CgroupBusy,
    CgroupError,
    CgroupExists,
    CgroupIOError,
    CgroupNotFound,
    CgroupRootError,
    InvalidLimit,
    InvalidName,
    PathEscape,
)
from hostwarden.cgroups.limits import LimitOutcome, Limits
from hostwarden.cgroups.names import validate_name
from hostwarden.cgroups.notify import CgroupWatcher, PsiTrigger
from hostwarden.cgroups.root import discover_root
from hostwarden.cgroups.tree import CallState, CgroupTree, SandboxState
from hostwarden.cgroups.usage import ProcessRss, Usage, process_rss, read_usage

__all__ = [
    "CallState",
    "CgroupBusy",
    "CgroupError",
    "CgroupExists",
    "CgroupIOError",
    "CgroupNotFound",
    "CgroupRootError",
    "CgroupTree",
    "CgroupWatcher",
    "InvalidLimit",
    "InvalidName",
    "LimitOutcome",
    "Limits",
    "PathEscape",
    "ProcessRss",
    "PsiTrigger",
    "SandboxState",
    "Usage",
    "discover_root",
    "process_rss",
    "read_usage",
    "validate_name",
]
