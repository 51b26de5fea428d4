"""Events the eBPF programs send to user space, and their decoding from ring-buffer records.

Pure Python: the layouts mirror `struct event`, `struct path_event` and `struct digest_event` in
common.bpf.c. Every record starts with the header; only exec and exec-digest records are longer.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Literal

# struct event in common.bpf.c: kind, pid, ppid, tgid, cgroup_id, ktime_ns, value0..3, comm.
EVENT_HEADER = struct.Struct("<IIIIQQqqqq16s")
# What follows the header in struct path_event (exec) and struct digest_event (exec digest).
EXEC_TAIL = struct.Struct("<256s")
EXEC_DIGEST_TAIL = struct.Struct("<64s256s")

# enum hash_algo (include/uapi/linux/hash_info.h) -> (name, digest size): what bpf_ima_file_hash returns.
IMA_HASH_ALGORITHMS: dict[int, tuple[str, int]] = {
    1: ("md5", 16),
    2: ("sha1", 20),
    4: ("sha256", 32),
    5: ("sha384", 48),
    6: ("sha512", 64),
    7: ("sha224", 28),
    17: ("sm3-256", 32),
}


class EventKind(enum.IntEnum):
    FORK = 1
    EXEC = 2
    EXIT = 3
    SPIKE = 4
    OOM = 5
    RECLAIM = 6
    EXEC_DIGEST = 7


# Each kind's record size: the header alone, except for the two kinds that carry a path.
RECORD_SIZES: dict[EventKind, int] = {kind: EVENT_HEADER.size for kind in EventKind} | {
    EventKind.EXEC: EVENT_HEADER.size + EXEC_TAIL.size,
    EventKind.EXEC_DIGEST: EVENT_HEADER.size + EXEC_DIGEST_TAIL.size,
}


class EventDecodeError(ValueError):
    """A ring-buffer record that is not a hostwarden event (wrong size or unknown kind)."""


@dataclass(frozen=True)
class ProcessEvent:
    """A process in a watched cgroup was created (fork), ran a new program (exec) or ended (exit).

    `exit_code` is the status the process passed to exit_group; `signal` the signal that killed it.
    Both are None for fork and exec, and both are None at exit when the reason was not seen
    (e.g. the process was killed before the probes were attached).
    """

    kind: Literal["fork", "exec", "exit"]
    pid: int
    ppid: int  # 0 when the parent is unknown (the process entered the cgroup from outside)
    tgid: int
    cgroup_id: int
    comm: str
    filename: str | None
    exit_code: int | None
    signal: int | None
    ktime_ns: int


@dataclass(frozen=True)
class SpikeEvent:
    """The summed RSS of a watched cgroup's processes crossed its spike threshold.

    `pid` and `comm` name the process whose growth crossed it. `source` says what was summed:
    "process_rss" (resident file, anon and shmem pages of the cgroup's processes).
    """

    cgroup_id: int
    pid: int
    comm: str
    bytes: int
    threshold: int
    ktime_ns: int
    source: str = "process_rss"


@dataclass(frozen=True)
class OomEvent:
    """The OOM killer chose a process of a watched cgroup."""

    cgroup_id: int
    pid: int
    comm: str
    rss_bytes: int
    ktime_ns: int


@dataclass(frozen=True)
class ReclaimEvent:
    """Memory-cgroup reclaim ran in a watched cgroup (at most one event per cgroup per 100 ms).

    `reclaimed_pages` and `duration_ns` are the reclaim that produced this event; the totals
    cover every reclaim of the cgroup since it was watched.
    """

    cgroup_id: int
    pid: int
    comm: str
    reclaimed_pages: int
    duration_ns: int
    total_count: int
    total_duration_ns: int
    ktime_ns: int


@dataclass(frozen=True)
class ExecDigestEvent:
    """A file executed in a watched cgroup, with its IMA digest where IMA could give one.

    `digest_hex` and `algo` are None when the kernel refused the hash; `error` then says why.
    """

    cgroup_id: int
    pid: int
    comm: str
    path: str
    digest_hex: str | None
    algo: str | None
    error: str | None
    ktime_ns: int


BpfEvent = ProcessEvent | SpikeEvent | OomEvent | ReclaimEvent | ExecDigestEvent


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", errors="replace")


def _exit_reason(wait_status: int) -> tuple[int | None, int | None]:
    """(exit code, signal) from the wait status the kernel recorded; -1: not seen."""
    if wait_status < 0:
        return None, None
    if wait_status & 0x7F:
        return None, wait_status & 0x7F
    return (wait_status >> 8) & 0xFF, None


def _digest(algo_or_errno: int, raw: bytes) -> tuple[str | None, str | None, str | None]:
    """(digest hex, algorithm, error) from bpf_ima_file_hash's return value and buffer."""
    if algo_or_errno < 0:
        return None, None, f"bpf_ima_file_hash failed: errno {-algo_or_errno}"
    known = IMA_HASH_ALGORITHMS.get(algo_or_errno)
    if known is None:
        return None, None, f"unknown IMA hash algorithm id {algo_or_errno}"
    name, size = known
    return raw[:size].hex(), name, None


def decode_event(record: bytes) -> BpfEvent:
    """Decode one ring-buffer record into its event; EventDecodeError if it is not one."""
    if len(record) < EVENT_HEADER.size:
        raise EventDecodeError(f"event record of {len(record)} bytes, shorter than the "
                               f"{EVENT_HEADER.size}-byte event header")
    (kind, pid, ppid, tgid, cgroup_id, ktime_ns, value0, value1, value2, value3,
     comm_raw) = EVENT_HEADER.unpack_from(record)
    try:
        event_kind = EventKind(kind)
    except ValueError:
        raise EventDecodeError(f"unknown event kind {kind}") from None
    if len(record) < RECORD_SIZES[event_kind]:
        raise EventDecodeError(f"{event_kind.name.lower()} event record of {len(record)} bytes, "
                               f"expected {RECORD_SIZES[event_kind]}")
    comm = _text(comm_raw)
    if event_kind in (EventKind.FORK, EventKind.EXEC, EventKind.EXIT):
        exit_code, signal = _exit_reason(value0) if event_kind is EventKind.EXIT else (None, None)
        filename = None
        if event_kind is EventKind.EXEC:
            (path_raw,) = EXEC_TAIL.unpack_from(record, EVENT_HEADER.size)
            filename = _text(path_raw)
        return ProcessEvent(
            kind=event_kind.name.lower(),  # type: ignore[arg-type]  # FORK/EXEC/EXIT -> the Literal
            pid=pid, ppid=ppid, tgid=tgid, cgroup_id=cgroup_id, comm=comm, filename=filename,
            exit_code=exit_code, signal=signal, ktime_ns=ktime_ns,
        )
    if event_kind is EventKind.SPIKE:
        return SpikeEvent(cgroup_id=cgroup_id, pid=pid, comm=comm, bytes=value0, threshold=value1,
                          ktime_ns=ktime_ns)
    if event_kind is EventKind.OOM:
        return OomEvent(cgroup_id=cgroup_id, pid=pid, comm=comm, rss_bytes=value0, ktime_ns=ktime_ns)
    if event_kind is EventKind.RECLAIM:
        return ReclaimEvent(cgroup_id=cgroup_id, pid=pid, comm=comm, reclaimed_pages=value0,
                            duration_ns=value1, total_count=value2, total_duration_ns=value3,
                            ktime_ns=ktime_ns)
    digest_raw, path_raw = EXEC_DIGEST_TAIL.unpack_from(record, EVENT_HEADER.size)
    digest_hex, algo, error = _digest(value0, digest_raw)
    return ExecDigestEvent(cgroup_id=cgroup_id, pid=pid, comm=comm, path=_text(path_raw),
                           digest_hex=digest_hex, algo=algo, error=error, ktime_ns=ktime_ns)
