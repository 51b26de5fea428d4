"""The daemon's cgroup hierarchy: `<root>/<sandbox>/agent` and `<root>/<sandbox>/calls/<call-id>`.

Only leaves hold processes (cgroup v2's no-internal-processes rule); controllers are enabled on the inner
nodes as the host offers them. Every path is checked to lie inside the root before anything is written.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from hostwarden.cgroups.cgroupfs import CgroupFs
from hostwarden.cgroups.errors import (
    CgroupBusy,
    CgroupExists,
    CgroupIOError,
    CgroupNotFound,
    InvalidName,
    PathEscape,
)
from hostwarden.cgroups.limits import LimitOutcome, Limits, apply_limits
from hostwarden.cgroups.names import validate_name

AGENT_LEAF = "agent"
CALLS_DIR = "calls"
# The leaf the daemon moves itself into under systemd (see root.py); never a sandbox name.
SUPERVISOR_LEAF = "supervisor"
WANTED_CONTROLLERS = ("cpu", "memory", "pids")
# How often moving processes out of a cgroup is retried while it keeps forking.
_MIGRATE_ROUNDS = 50
_REMOVE_BACKOFF_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05)


@dataclass(frozen=True)
class CallState:
    call_id: str
    path: Path
    populated: bool


@dataclass(frozen=True)
class SandboxState:
    name: str
    path: Path
    agent_path: Path
    calls: list[CallState]


def enable_controllers(fs: CgroupFs, node: Path) -> set[str]:
    """Enable in `node`'s subtree_control each wanted controller it is offered; returns those enabled."""
    offered = set(fs.read(node / "cgroup.controllers").split())
    current = set(fs.read(node / "cgroup.subtree_control").split())
    for controller in WANTED_CONTROLLERS:
        if controller in offered and controller not in current:
            fs.write(node / "cgroup.subtree_control", f"+{controller}")
            current.add(controller)
    return current & set(WANTED_CONTROLLERS)


class CgroupTree:
    """Sandboxes and tool calls under one cgroup root. Safe to use from several threads for distinct
    sandboxes/calls; the kernel serialises cgroupfs writes."""

    def __init__(self, root: Path, fs: CgroupFs | None = None) -> None:
        self.root = Path(root).resolve()
        self._root_text = str(self.root)
        self._root_prefix = self._root_text.rstrip("/") + "/"
        self.fs = fs or CgroupFs()
        self._has_kill_file: bool | None = None  # cgroup.kill (Linux >= 5.14), looked up at the first kill
        if not (self.root / "cgroup.procs").exists():
            raise CgroupNotFound(f"{self.root} is not a cgroup (no cgroup.procs): create it on a cgroup2 "
                                 "mount or fix the configured root")

    # --- paths -------------------------------------------------------------------------------------------

    def inside(self, path: Path) -> Path:
        """`path` made absolute and normalised, if it lies strictly below the root; PathEscape otherwise.

        The check is lexical: cgroupfs cannot hold symlinks, and the root itself was resolved once, so
        this is as strict as resolving and far cheaper on the per-call path.
        """
        text = os.fspath(path)
        normal = os.path.normpath(os.path.join(self._root_text, text))
        if not normal.startswith(self._root_prefix):
            raise PathEscape(f"{path} is not inside the daemon's cgroup root {self.root}: only cgroups below "
                             "the root can be used")
        # Strings, not Path arithmetic: this runs several times per tool call.
        return path if normal == text and isinstance(path, Path) else Path(normal)

    def sandbox_path(self, name: str) -> Path:
        validate_name(name, "sandbox name")
        if name == SUPERVISOR_LEAF:
            raise InvalidName(f"sandbox name {name!r} is reserved for the daemon's own leaf: pick another")
        return self.inside(self.root / name)

    def call_path(self, sandbox: str, call_id: str) -> Path:
        validate_name(call_id, "call id")
        return self.inside(self.sandbox_path(sandbox) / CALLS_DIR / call_id)

    def _existing_sandbox(self, name: str) -> Path:
        path = self.sandbox_path(name)
        if not (path / AGENT_LEAF).is_dir():
            raise CgroupNotFound(f"no sandbox {name!r} under {self.root}: create or adopt it first")
        return path

    # --- controllers -------------------------------------------------------------------------------------

    def enable_controllers(self, node: Path) -> set[str]:
        return enable_controllers(self.fs, node)

    # --- sandboxes ---------------------------------------------------------------------------------------

    def create_sandbox(self, name: str) -> Path:
        """Make `<root>/<name>/{agent,calls}`; returns the sandbox path. CgroupExists if it is there."""
        path = self.sandbox_path(name)
        if path.exists():
            raise CgroupExists(f"sandbox {name!r} already exists at {path}: delete it or adopt it")
        self.enable_controllers(self.root)
        self._mkdir(path)
        try:
            self._lay_out(path)
        except BaseException:
            self._remove_empty_tree(path)
            raise
        return path

    def _lay_out(self, sandbox: Path) -> None:
        self._mkdir(sandbox / AGENT_LEAF)
        self.enable_controllers(sandbox)
        self._mkdir(sandbox / CALLS_DIR)
        self.enable_controllers(sandbox / CALLS_DIR)

    def adopt_sandbox(self, name: str, existing: Path) -> Path:
        """Take over a cgroup below the root: its processes move into `<root>/<name>/agent`.

        `existing` may be `<root>/<name>` itself (laid out in place) or another cgroup below the root,
        which is removed once emptied if it has no child cgroups of its own.
        """
        target = self.sandbox_path(name)
        source = self.inside(existing)
        if not (source / "cgroup.procs").exists():
            raise CgroupNotFound(f"{existing} is not a cgroup: give the path of an existing cgroup below "
                                 f"{self.root}")
        if source == target:
            if (target / AGENT_LEAF).is_dir():
                raise CgroupExists(f"sandbox {name!r} is already laid out at {target}")
            self._mkdir(target / AGENT_LEAF)
            self._migrate(source, target / AGENT_LEAF)
            self.enable_controllers(target)
            self._mkdir(target / CALLS_DIR)
            self.enable_controllers(target / CALLS_DIR)
            return target
        if target.is_relative_to(source) or source.is_relative_to(target):
            raise PathEscape(f"{existing} and the sandbox path {target} contain one another: adopt a cgroup "
                             "that is neither the sandbox's parent nor inside it")
        self.create_sandbox(name)
        self._migrate(source, target / AGENT_LEAF)
        if not any(child.is_dir() for child in source.iterdir()):
            self.remove(source)
        return target

    def _migrate(self, source: Path, destination: Path) -> None:
        """Move every process of `source` into `destination`, repeating while the source keeps forking."""
        for _ in range(_MIGRATE_ROUNDS):
            pids = self.fs.read_pids(source)
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(CgroupNotFound):  # exited meanwhile
                    self.attach(destination, pid)
        raise CgroupBusy(f"{source} kept gaining processes while they were moved to {destination}: "
                         "freeze it first or stop the process that forks")

    def delete_sandbox(self, name: str, *, force: bool, timeout: float = 2.0) -> None:
        """Remove a sandbox; CgroupBusy while processes run in it unless `force` (then they are killed)."""
        path = self._existing_sandbox(name)
        if self.populated(path):
            if not force:
                pids = self._subtree_pids(path)
                raise CgroupBusy(f"sandbox {name!r} still runs {len(pids)} process(es) (e.g. pids "
                                 f"{', '.join(map(str, pids[:5]))}): stop them or delete with force")
            self.kill(path)
            if not self.fs.wait_event(path, "populated", 0, timeout):
                raise CgroupBusy(f"sandbox {name!r}: processes still present {timeout}s after kill")
        calls = path / CALLS_DIR
        if calls.is_dir():
            for call in sorted(p for p in calls.iterdir() if p.is_dir()):
                self.remove(call, timeout=timeout)
        self._remove_empty_tree(path)

    # --- calls -------------------------------------------------------------------------------------------

    def create_call(self, sandbox: str, call_id: str, limits: Limits) -> tuple[Path, list[LimitOutcome]]:
        """Make `<root>/<sandbox>/calls/<call_id>` with `limits`; nothing is left behind on error."""
        path = self.call_path(sandbox, call_id)
        try:
            self.fs.mkdir(path)
        except CgroupIOError as error:
            if error.errno == errno.ENOENT:
                raise CgroupNotFound(f"no sandbox {sandbox!r} under {self.root}: create or adopt it first") \
                    from error
            if error.errno == errno.EEXIST:
                raise CgroupExists(f"call {call_id!r} already exists in sandbox {sandbox!r}") from error
            raise
        try:
            outcomes = apply_limits(self.fs, path, limits)
        except BaseException:
            self._remove_empty_tree(path)
            raise
        return path, outcomes

    def set_limits(self, path: Path, limits: Limits) -> list[LimitOutcome]:
        return apply_limits(self.fs, self._existing(path), limits)

    def attach(self, path: Path, pid: int) -> None:
        """Move process `pid` (all its threads) into the leaf cgroup `path`."""
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            raise CgroupNotFound(f"pid must be a positive integer, got {pid!r}")
        path = self.inside(path)
        try:
            self.fs.write(path / "cgroup.procs", str(pid))
        except CgroupIOError as error:
            if error.errno == errno.ESRCH:
                raise CgroupNotFound(f"process {pid} does not exist (exited?): start it again") from error
            if error.errno == errno.ENOENT:
                raise CgroupNotFound(f"no cgroup at {path}: it was removed or never created") from error
            raise

    # --- state changes -----------------------------------------------------------------------------------

    def freeze(self, path: Path, timeout: float = 1.0) -> None:
        """Freeze every process below `path`; returns once cgroup.events says `frozen 1`."""
        path = self._existing(path)
        self.fs.write(path / "cgroup.freeze", "1")
        if not self.fs.wait_event(path, "frozen", 1, timeout):
            raise CgroupBusy(f"{path} was not frozen within {timeout}s (a process in uninterruptible "
                             "sleep?): retry, or kill it")

    def thaw(self, path: Path, timeout: float = 1.0) -> None:
        path = self._existing(path)
        self.fs.write(path / "cgroup.freeze", "0")
        if not self.fs.wait_event(path, "frozen", 0, timeout):
            raise CgroupBusy(f"{path} still reports frozen {timeout}s after thaw (an ancestor is frozen?)")

    def kill(self, path: Path) -> None:
        """SIGKILL every process below `path`: cgroup.kill, or where the kernel lacks it (< 5.14), freeze,
        signal each process and thaw, so nothing forks past the kill."""
        if self._has_kill_file is None:
            self._has_kill_file = (self._existing(path) / "cgroup.kill").exists()
        if self._has_kill_file:
            path = self.inside(path)
            try:
                self.fs.write(path / "cgroup.kill", "1")
            except CgroupIOError as error:
                if error.errno == errno.ENOENT:  # checked by the write itself: one syscall less per call
                    raise CgroupNotFound(f"no cgroup at {path}: it was removed or never created") from error
                raise
            return
        path = self._existing(path)
        has_freezer = (path / "cgroup.freeze").exists()
        if has_freezer:
            self.freeze(path)
        try:
            for pid in self._subtree_pids(path):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        finally:
            if has_freezer:
                self.thaw(path)

    def remove(self, path: Path, *, timeout: float = 1.0, missing_ok: bool = False) -> None:
        """rmdir a leaf, waiting up to `timeout` for dying processes to leave; CgroupBusy if they don't."""
        resolved = self.inside(path)
        if resolved in (self.root / SUPERVISOR_LEAF,):
            raise PathEscape(f"{path} is the daemon's own leaf: it is never removed")
        deadline = time.monotonic() + timeout
        backoff = iter(_REMOVE_BACKOFF_S)
        while True:
            try:
                self.fs.rmdir(resolved)
                return
            except CgroupIOError as error:
                if error.errno == errno.ENOENT:
                    if missing_ok:
                        return
                    raise CgroupNotFound(f"{path} does not exist (already removed?)") from error
                if error.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                    raise
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise CgroupBusy(self._busy_reason(resolved, timeout)) from error
                if self.populated(resolved):
                    self.fs.wait_event(resolved, "populated", 0, remaining)
                else:
                    # Empty but still busy: the kernel is finishing exits of dying tasks; back off briefly.
                    time.sleep(min(next(backoff, _REMOVE_BACKOFF_S[-1]), remaining))

    def _busy_reason(self, path: Path, timeout: float) -> str:
        children = [p.name for p in path.iterdir() if p.is_dir()] if path.is_dir() else []
        if children:
            return f"{path} still has child cgroups ({', '.join(children[:5])}): remove them first"
        pids = self._subtree_pids(path)
        return (f"{path} still holds {len(pids)} process(es) after {timeout}s (pids "
                f"{', '.join(map(str, pids[:5]))}): kill the cgroup first")

    def reap_empty_calls(self, keep: Collection[Path] = (), made_before: float | None = None) -> list[Path]:
        """Remove call cgroups with no processes, except those in `keep` (calls made but not yet attached) and,
        with `made_before` (a time.time() value), those made at or after it: a call being begun exists as a
        cgroup a moment before its caller can list it in `keep`."""
        kept = {Path(p).resolve() for p in keep}
        reaped: list[Path] = []
        for sandbox in self.scan():
            for call in sandbox.calls:
                if call.populated or call.path in kept:
                    continue
                if made_before is not None and self._made_at(call.path) >= made_before:
                    continue
                try:
                    self.remove(call.path, timeout=0.0, missing_ok=True)
                except CgroupBusy:
                    continue  # repopulated since the scan: it is running again
                reaped.append(call.path)
        return reaped

    @staticmethod
    def _made_at(path: Path) -> float:
        """When the cgroup was made: cgroupfs sets a directory's mtime at mkdir, and attaching processes or
        writing its files leaves it alone. A cgroup gone meanwhile counts as made now (nothing to reap)."""
        try:
            return os.stat(path).st_mtime
        except FileNotFoundError:
            return time.time()

    # --- reading the tree --------------------------------------------------------------------------------

    def scan(self) -> list[SandboxState]:
        """Every sandbox and call under the root, from the tree alone (restart adoption)."""
        states: list[SandboxState] = []
        for entry in sorted(self.root.iterdir()):
            if not entry.is_dir() or entry.name == SUPERVISOR_LEAF or not (entry / AGENT_LEAF).is_dir():
                continue
            calls_dir = entry / CALLS_DIR
            calls = [
                CallState(call.name, call, self.populated(call))
                for call in sorted(calls_dir.iterdir() if calls_dir.is_dir() else [])
                if call.is_dir()
            ]
            states.append(SandboxState(entry.name, entry, entry / AGENT_LEAF, calls))
        return states

    def populated(self, path: Path) -> bool:
        return self.fs.read_keyed(path / "cgroup.events").get("populated", 0) == 1

    def pids(self, path: Path) -> list[int]:
        return self.fs.read_pids(self._existing(path))

    def cgroup_id(self, path: Path) -> int:
        """The id bpf_get_current_cgroup_id() reports for tasks in `path`: its inode number on cgroup2."""
        try:
            return os.stat(self.inside(path)).st_ino
        except FileNotFoundError:
            raise CgroupNotFound(f"no cgroup at {path}: it was removed or never created") from None

    # --- helpers -----------------------------------------------------------------------------------------

    def _existing(self, path: Path) -> Path:
        resolved = self.inside(path)
        if not (resolved / "cgroup.procs").exists():
            raise CgroupNotFound(f"no cgroup at {path}: it was removed or never created")
        return resolved

    def _mkdir(self, path: Path) -> None:
        try:
            self.fs.mkdir(path)
        except CgroupIOError as error:
            if error.errno == errno.EEXIST:
                raise CgroupExists(f"{path} already exists") from error
            raise

    def _subtree_pids(self, path: Path) -> list[int]:
        pids: list[int] = []
        for directory, subdirs, _files in os.walk(path):
            subdirs.sort()
            with contextlib.suppress(CgroupIOError):  # removed while walking
                pids.extend(self.fs.read_pids(Path(directory)))
        return pids

    def _remove_empty_tree(self, path: Path) -> None:
        """rmdir `path` and its child cgroups, deepest first; they must hold no processes."""
        if not path.is_dir():
            return
        for child in sorted((p for p in path.iterdir() if p.is_dir()), reverse=True):
            self._remove_empty_tree(child)
        self.remove(path, missing_ok=True)
