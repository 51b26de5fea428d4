"""The few cgroupfs operations the package uses, in one class so unit tests can substitute a fake tree.

Everything here takes and returns plain values; errors become CgroupIOError naming the file and errno.
"""

from __future__ import annotations

import os
import select
import time
from pathlib import Path

from hostwarden.cgroups.errors import CgroupIOError


def parse_keyed(text: str) -> dict[str, int]:
    """`key value` lines (cgroup.events, memory.events, memory.stat, cpu.stat) as a dict of ints."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            values[key] = int(value)
    return values


def read_small_file(file: str | os.PathLike[str]) -> str:
    """A kernel file of a few bytes (cgroupfs, /proc): plain read(2) calls, not open()'s buffered text
    layer, since the daemon reads several per tool call. OSError as the syscalls raise it."""
    fd = os.open(file, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode()


class CgroupFs:
    """Direct access to a real cgroupfs."""

    def mkdir(self, path: Path) -> None:
        try:
            os.mkdir(path)
        except OSError as error:
            raise CgroupIOError("creating cgroup", path, error) from error

    def rmdir(self, path: Path) -> None:
        try:
            os.rmdir(path)
        except OSError as error:
            raise CgroupIOError("removing cgroup", path, error) from error

    def read(self, file: Path) -> str:
        try:
            return read_small_file(file)
        except OSError as error:
            raise CgroupIOError("reading", file, error) from error

    def write(self, file: Path, value: str) -> None:
        # One write(2) per value: cgroupfs parses each write on its own, and buffered IO could split it.
        try:
            fd = os.open(file, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as error:
            raise CgroupIOError(f"opening for write ({value!r})", file, error) from error
        try:
            os.write(fd, value.encode())
        except OSError as error:
            raise CgroupIOError(f"writing {value!r} to", file, error) from error
        finally:
            os.close(fd)

    def read_keyed(self, file: Path) -> dict[str, int]:
        return parse_keyed(self.read(file))

    def read_pids(self, cgroup: Path) -> list[int]:
        return [int(line) for line in self.read(cgroup / "cgroup.procs").split()]

    def wait_event(self, cgroup: Path, key: str, value: int, timeout: float) -> bool:
        """Block until cgroup.events shows `key value`, woken by the kernel's POLLPRI; False on timeout."""
        file = cgroup / "cgroup.events"
        deadline = time.monotonic() + timeout
        try:
            fd = os.open(file, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as error:
            raise CgroupIOError("opening", file, error) from error
        try:
            poller = select.poll()
            poller.register(fd, select.POLLPRI | select.POLLERR)
            while True:
                # Reading re-arms kernfs's change notification for this open file.
                if parse_keyed(os.pread(fd, 4096, 0).decode()).get(key) == value:
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                poller.poll(max(1, int(remaining * 1000)))
        except OSError as error:
            raise CgroupIOError("polling", file, error) from error
        finally:
            os.close(fd)
