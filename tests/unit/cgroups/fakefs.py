"""A cgroupfs imitation on plain directories: the kernel's rules the package depends on, nothing more."""

from __future__ import annotations

import errno
import functools
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from hostwarden.cgroups.cgroupfs import CgroupFs
from hostwarden.cgroups.errors import CgroupIOError

_CONTROLLER_FILES = {
    "memory": {"memory.current": "0\n", "memory.peak": "0\n", "memory.max": "max\n", "memory.high": "max\n",
               "memory.low": "0\n", "memory.swap.max": "max\n", "memory.oom.group": "0\n",
               "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n", "memory.stat": "anon 0\nfile 0\n"},
    "cpu": {"cpu.weight": "100\n", "cpu.max": "max 100000\n"},
    "pids": {"pids.max": "max\n", "pids.current": "0\n"},
}
_COMMON_FILES = {
    "cgroup.procs": "", "cgroup.subtree_control": "", "cgroup.freeze": "0\n", "cgroup.kill": "",
    "cgroup.events": "populated 0\nfrozen 0\n", "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\n",
    "cpu.pressure": "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00 avg60=0.00 avg300=0.00 "
                    "total=0\n",
}


def _error(code: int) -> OSError:
    return OSError(code, os.strerror(code))


F = TypeVar("F", bound=Callable[..., Any])


def _atomic(method: F) -> F:
    """The kernel makes each cgroupfs read and write atomic; plain files are not (a reader can see a file
    emptied mid-write), so the fake runs each operation under one lock."""
    @functools.wraps(method)
    def locked(self: FakeCgroupFs, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)
    return locked  # type: ignore[return-value]


class FakeCgroupFs(CgroupFs):
    """Kernel behaviour kept: interface files appear on mkdir, a cgroup's controllers are its parent's
    subtree_control, rmdir fails EBUSY while processes or children remain, writing a pid moves it,
    populated/frozen follow. Failures are injected per file name with `fail_write` / `fail_read`."""

    def __init__(self, root: Path, controllers: str = "cpu memory pids") -> None:
        self._lock = threading.RLock()
        self.root = root
        self.fail_write: dict[str, int] = {}
        self.fail_read: dict[str, int] = {}
        self.dead_pids: set[int] = set()
        self.extra_busy: dict[Path, int] = {}  # rmdir EBUSY this many times (dying tasks)
        self.freezes = True
        self.writes: list[tuple[Path, str]] = []
        root.mkdir(parents=True, exist_ok=True)
        self._populate(root, controllers)

    def _populate(self, path: Path, controllers: str) -> None:
        for name, text in _COMMON_FILES.items():
            (path / name).write_text(text)
        (path / "cgroup.controllers").write_text(controllers + "\n")
        for controller in controllers.split():
            for name, text in _CONTROLLER_FILES.get(controller, {}).items():
                (path / name).write_text(text)

    @_atomic
    def mkdir(self, path: Path) -> None:
        if "mkdir" in self.fail_write:
            raise CgroupIOError("creating cgroup", path, _error(self.fail_write["mkdir"]))
        super().mkdir(path)
        self._populate(path, (path.parent / "cgroup.subtree_control").read_text().strip())

    @_atomic
    def rmdir(self, path: Path) -> None:
        if not path.is_dir():
            raise CgroupIOError("removing cgroup", path, _error(errno.ENOENT))
        if any(p.is_dir() for p in path.iterdir()) or self.read_pids(path) or self.extra_busy.get(path, 0):
            if self.extra_busy.get(path):
                self.extra_busy[path] -= 1
            raise CgroupIOError("removing cgroup", path, _error(errno.EBUSY))
        shutil.rmtree(path)

    @_atomic
    def read(self, file: Path) -> str:
        if file.name in self.fail_read:
            raise CgroupIOError("reading", file, _error(self.fail_read[file.name]))
        return super().read(file)

    @_atomic
    def write(self, file: Path, value: str) -> None:
        if file.name in self.fail_write:
            raise CgroupIOError(f"writing {value!r} to", file, _error(self.fail_write[file.name]))
        if not file.exists():
            raise CgroupIOError("opening for write", file, _error(errno.ENOENT))
        self.writes.append((file, value))
        cgroup = file.parent
        if file.name == "cgroup.procs":
            self._move(int(value), cgroup)
        elif file.name == "cgroup.subtree_control":
            self._enable(cgroup, value)
        elif file.name == "cgroup.freeze":
            self._set_event(cgroup, "frozen", int(value) if self.freezes else 0)
        elif file.name == "cgroup.kill":
            for directory, _subdirs, _files in os.walk(cgroup):
                (Path(directory) / "cgroup.procs").write_text("")
            self.refresh_populated()
        else:
            file.write_text(value + "\n")

    def _move(self, pid: int, destination: Path) -> None:
        if pid in self.dead_pids:
            raise CgroupIOError(f"writing {pid!r} to", destination / "cgroup.procs", _error(errno.ESRCH))
        if (destination / "cgroup.subtree_control").read_text().strip() and destination != self.root:
            raise CgroupIOError("writing to", destination / "cgroup.procs", _error(errno.EBUSY))
        for procs in self.root.rglob("cgroup.procs"):
            pids = [p for p in procs.read_text().split() if p != str(pid)]
            procs.write_text("".join(f"{p}\n" for p in pids))
        with open(destination / "cgroup.procs", "a") as handle:
            handle.write(f"{pid}\n")
        self.refresh_populated()

    def _enable(self, cgroup: Path, value: str) -> None:
        controller = value.lstrip("+")
        if controller not in (cgroup / "cgroup.controllers").read_text().split():
            raise CgroupIOError("writing to", cgroup / "cgroup.subtree_control", _error(errno.ENOENT))
        if cgroup != self.root and self.read_pids(cgroup):
            raise CgroupIOError("writing to", cgroup / "cgroup.subtree_control", _error(errno.EBUSY))
        current = (cgroup / "cgroup.subtree_control").read_text().split()
        (cgroup / "cgroup.subtree_control").write_text(" ".join([*current, controller]) + "\n")

    @_atomic
    def put_process(self, cgroup: Path, pid: int) -> None:
        """A process appearing in `cgroup` by itself (forked there, or started by someone else)."""
        self._move(pid, cgroup)

    @_atomic
    def refresh_populated(self) -> None:
        for events in self.root.rglob("cgroup.events"):
            cgroup = events.parent
            busy = any(p.read_text().strip() for p in cgroup.rglob("cgroup.procs"))
            self._set_event(cgroup, "populated", int(busy))

    @staticmethod
    def _set_event(cgroup: Path, key: str, value: int) -> None:
        events = dict(line.split() for line in (cgroup / "cgroup.events").read_text().splitlines())
        events[key] = str(value)
        (cgroup / "cgroup.events").write_text("".join(f"{k} {v}\n" for k, v in events.items()))

    def wait_event(self, cgroup: Path, key: str, value: int, timeout: float) -> bool:
        # The fake changes state synchronously: what is there now is all there will be.
        return self.read_keyed(cgroup / "cgroup.events").get(key) == value
