"""Event-driven cgroup notifications: emptied calls, memory.events changes and PSI triggers.

One background thread waits in epoll on one inotify fd (IN_MODIFY on cgroup.events and memory.events,
which kernfs raises on every change) plus one fd per PSI trigger (POLLPRI). Nothing polls on a timer.
Callbacks run on that thread: keep them short and hand real work to another thread.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import select
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hostwarden.cgroups.cgroupfs import CgroupFs
from hostwarden.cgroups.errors import CgroupIOError

log = logging.getLogger(__name__)

_IN_MODIFY = 0x00000002
_IN_IGNORED = 0x00008000
_EVENT_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (name follows)
_libc = ctypes.CDLL(None, use_errno=True)

PSI_WINDOW_RANGE_US = (500_000, 10_000_000)  # kernel/sched/psi.c
# Triggers from a process without CAP_SYS_RESOURCE must use windows in whole multiples of 2 s (6.5+).
UNPRIVILEGED_WINDOW_STEP_US = 2_000_000
_CAP_SYS_RESOURCE = 24


def has_cap_sys_resource() -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> _CAP_SYS_RESOURCE & 1)
    return False


def _check(result: int, what: str) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")
    return result


class PsiTrigger:
    """A registered PSI trigger on a *.pressure file: fires (POLLPRI) when the `kind` stall time within
    any `window_us` exceeds `stall_us`. The kernel rate-limits events to one per window."""

    def __init__(self, pressure_file: Path, kind: str, stall_us: int, window_us: int) -> None:
        if kind not in ("some", "full"):
            raise ValueError(f"PSI trigger kind must be 'some' or 'full', got {kind!r}")
        low, high = PSI_WINDOW_RANGE_US
        if not low <= window_us <= high:
            raise ValueError(f"PSI window must be {low} to {high} us, got {window_us}")
        if not 0 < stall_us <= window_us:
            raise ValueError(f"PSI stall must be above 0 and at most the window ({window_us} us), "
                             f"got {stall_us}")
        self.pressure_file = Path(pressure_file)
        self.kind, self.stall_us, self.window_us = kind, stall_us, window_us
        try:
            self._fd = os.open(self.pressure_file, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as error:
            raise CgroupIOError("opening PSI file", self.pressure_file, error) from error
        try:
            os.write(self._fd, f"{kind} {stall_us} {window_us}\0".encode())
        except OSError as error:
            os.close(self._fd)
            hint = "the kernel needs CONFIG_PSI and psi=1"
            if window_us % UNPRIVILEGED_WINDOW_STEP_US and not has_cap_sys_resource():
                hint = (f"without CAP_SYS_RESOURCE the kernel takes only windows that are multiples of "
                        f"{UNPRIVILEGED_WINDOW_STEP_US} us: grant the capability or use such a window")
            raise CgroupIOError("registering PSI trigger in", self.pressure_file, error, hint) from error

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        """Unregister the trigger (the kernel drops it when the file is closed)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


@dataclass
class _Watch:
    cgroup: Path
    events_wd: int
    memory_wd: int | None
    populated: bool
    memory_counters: dict[str, int] = field(default_factory=dict)


class CgroupWatcher:
    """Reports cgroups that empty (`on_emptied(path)`), memory.events counters that rise
    (`on_memory_event(path, {counter: increase})`) and PSI triggers that fire (per-trigger callback).
    watch/unwatch/add_trigger/remove_trigger may be called from any thread while it runs."""

    def __init__(self, on_emptied: Callable[[Path], None],
                 on_memory_event: Callable[[Path, dict[str, int]], None] | None = None,
                 fs: CgroupFs | None = None) -> None:
        self._on_emptied = on_emptied
        self._on_memory_event = on_memory_event
        self._fs = fs or CgroupFs()
        self._lock = threading.Lock()
        self._by_path: dict[Path, _Watch] = {}
        self._by_wd: dict[int, _Watch] = {}
        self._recheck: set[Path] = set()
        self._triggers: dict[int, tuple[PsiTrigger, Callable[[PsiTrigger], None]]] = {}
        self._inotify = _check(_libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC), "inotify_init1")
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll = select.epoll()
        self._epoll.register(self._inotify, select.EPOLLIN)
        self._epoll.register(self._wake, select.EPOLLIN)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="cgroup-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, wait for it, and release every fd (triggers stay the caller's to close)."""
        self._stopping = True
        os.eventfd_write(self._wake, 1)
        if self._thread.is_alive():
            self._thread.join()
        self._epoll.close()
        os.close(self._inotify)
        os.close(self._wake)

    # --- cgroup watches ----------------------------------------------------------------------------------

    def watch(self, cgroup: Path, *, attached: bool = True) -> None:
        """Watch `cgroup`'s cgroup.events (and memory.events where present).

        With `attached` (a process was put in, or the cgroup was seen populated), on_emptied fires as soon
        as the cgroup is seen empty, even if that happened before this call; without it, only after it
        has been seen populated.
        """
        cgroup = Path(cgroup)
        with self._lock:
            if cgroup in self._by_path:
                return
            events_wd = self._add_watch(cgroup / "cgroup.events")
            memory_file = cgroup / "memory.events"
            memory_wd = self._add_watch(memory_file) if memory_file.exists() else None
            state = _Watch(cgroup, events_wd, memory_wd, attached)
            if memory_wd is not None:
                state.memory_counters = self._fs.read_keyed(memory_file)
                self._by_wd[memory_wd] = state
            self._by_wd[events_wd] = state
            self._by_path[cgroup] = state
            # Changes before the inotify watch existed raised no event: look once now. Only a cgroup that
            # emptied already wakes the thread to report it (the common case, running, costs one read).
            try:
                populated = self._fs.read_keyed(cgroup / "cgroup.events").get("populated", 0) == 1
            except CgroupIOError:
                populated = False  # removed meanwhile: the thread's look finds out
            if populated:
                state.populated = True
                return
            self._recheck.add(cgroup)
        os.eventfd_write(self._wake, 1)

    def unwatch(self, cgroup: Path) -> None:
        with self._lock:
            state = self._by_path.pop(Path(cgroup), None)
            if state is None:
                return
            for wd in (state.events_wd, state.memory_wd):
                if wd is not None:
                    self._by_wd.pop(wd, None)
                    _libc.inotify_rm_watch(self._inotify, wd)  # fails harmlessly if the cgroup is gone

    def watched(self) -> list[Path]:
        with self._lock:
            return list(self._by_path)

    def _add_watch(self, file: Path) -> int:
        wd = _libc.inotify_add_watch(self._inotify, os.fsencode(file), _IN_MODIFY)
        if wd < 0:
            code = ctypes.get_errno()
            raise CgroupIOError("watching", file, OSError(code, os.strerror(code)))
        return wd

    # --- PSI triggers ------------------------------------------------------------------------------------

    def add_trigger(self, trigger: PsiTrigger, callback: Callable[[PsiTrigger], None]) -> None:
        with self._lock:
            self._triggers[trigger.fileno()] = (trigger, callback)
            self._epoll.register(trigger.fileno(), select.EPOLLPRI)

    def remove_trigger(self, trigger: PsiTrigger) -> None:
        with self._lock:
            if self._triggers.pop(trigger.fileno(), None) is not None:
                self._epoll.unregister(trigger.fileno())

    # --- the thread --------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping:
            try:
                ready = self._epoll.poll()
            except InterruptedError:
                continue
            for fd, mask in ready:
                if fd == self._wake:
                    os.eventfd_read(self._wake)
                    with self._lock:
                        paths, self._recheck = self._recheck, set()
                    for path in paths:
                        self._refresh(path, events=True, memory=False)
                elif fd == self._inotify:
                    self._drain_inotify()
                else:
                    self._fire_trigger(fd, mask)

    def _drain_inotify(self) -> None:
        try:
            data = os.read(self._inotify, 64 * 1024)
        except BlockingIOError:
            return
        changed: dict[Path, tuple[bool, bool]] = {}
        offset = 0
        while offset < len(data):
            wd, mask, _cookie, name_len = _EVENT_HEADER.unpack_from(data, offset)
            offset += _EVENT_HEADER.size + name_len
            with self._lock:
                state = self._by_wd.get(wd)
                if state is None:
                    continue
                if mask & _IN_IGNORED:  # the file went away: its cgroup was removed
                    self._by_wd.pop(wd, None)
                    if self._by_path.get(state.cgroup) is state and wd == state.events_wd:
                        del self._by_path[state.cgroup]
                    continue
            events, memory = changed.get(state.cgroup, (False, False))
            changed[state.cgroup] = (events or wd == state.events_wd, memory or wd == state.memory_wd)
        for path, (events, memory) in changed.items():
            self._refresh(path, events=events, memory=memory)

    def _refresh(self, path: Path, *, events: bool, memory: bool) -> None:
        with self._lock:
            state = self._by_path.get(path)
        if state is None:
            return
        try:
            if events:
                populated = self._fs.read_keyed(path / "cgroup.events").get("populated", 0) == 1
                emptied = state.populated and not populated
                state.populated = populated
                if emptied:
                    self._call(self._on_emptied, path)
            if memory and self._on_memory_event is not None:
                counters = self._fs.read_keyed(path / "memory.events")
                increases = {key: value - state.memory_counters.get(key, 0) for key, value in counters.items()
                             if value != state.memory_counters.get(key, 0)}
                state.memory_counters = counters
                if increases:
                    self._call(self._on_memory_event, path, increases)
        except CgroupIOError as error:
            # Removed between the event and the read (ENOENT, or ENODEV from a file of a removed cgroup).
            if error.errno not in (errno.ENOENT, errno.ENODEV):
                log.warning("cgroup watcher: %s", error)

    def _fire_trigger(self, fd: int, mask: int) -> None:
        with self._lock:
            entry = self._triggers.get(fd)
        if entry is None:
            return
        trigger, callback = entry
        if mask & select.EPOLLERR:  # the cgroup holding the pressure file was removed
            self.remove_trigger(trigger)
            return
        self._call(callback, trigger)

    @staticmethod
    def _call(callback: Callable[..., None], *args: object) -> None:
        try:
            callback(*args)
        except Exception:  # a failing callback must not end the thread that serves every watch
            log.exception("cgroup watcher callback %r failed", callback)
