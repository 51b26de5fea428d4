from __future__ import annotations

import pytest

from hostwarden.bpf.events import (
    EVENT_HEADER,
    EXEC_DIGEST_TAIL,
    EXEC_TAIL,
    RECORD_SIZES,
    EventDecodeError,
    EventKind,
    ExecDigestEvent,
    OomEvent,
    ProcessEvent,
    ReclaimEvent,
    SpikeEvent,
    decode_event,
)


def record(kind: int, *, pid: int = 10, ppid: int = 9, tgid: int = 10, cgroup_id: int = 4242,
           ktime_ns: int = 123, values: tuple[int, int, int, int] = (0, 0, 0, 0), comm: bytes = b"sh",
           digest: bytes = b"", path: bytes = b"") -> bytes:
    """A record as the programs write it: the header, then the tail its kind carries."""
    header = EVENT_HEADER.pack(kind, pid, ppid, tgid, cgroup_id, ktime_ns, *values, comm)
    if kind == EventKind.EXEC:
        return header + EXEC_TAIL.pack(path)
    if kind == EventKind.EXEC_DIGEST:
        return header + EXEC_DIGEST_TAIL.pack(digest, path)
    return header


def test_layouts_match_the_c_struct_sizes():
    # common.bpf.c asserts the same sizes (_Static_assert) for struct event, path_event, digest_event.
    assert EVENT_HEADER.size == 16 + 16 + 32 + 16  # 4 u32 + 2 u64 + 4 s64 + comm[16]
    assert RECORD_SIZES[EventKind.EXEC] == EVENT_HEADER.size + 256
    assert RECORD_SIZES[EventKind.EXEC_DIGEST] == EVENT_HEADER.size + 64 + 256
    assert {RECORD_SIZES[kind] for kind in (EventKind.FORK, EventKind.EXIT, EventKind.SPIKE, EventKind.OOM,
                                            EventKind.RECLAIM)} == {EVENT_HEADER.size}


def test_exec_carries_the_filename_and_no_exit_reason():
    event = decode_event(record(EventKind.EXEC, comm=b"true\0junk", path=b"/bin/true\0stale bytes"))
    assert event == ProcessEvent(kind="exec", pid=10, ppid=9, tgid=10, cgroup_id=4242, comm="true",
                                 filename="/bin/true", exit_code=None, signal=None, ktime_ns=123)


@pytest.mark.parametrize(("wait_status", "exit_code", "signal"), [
    (3 << 8, 3, None),
    (0, 0, None),
    (9, None, 9),
    (-1, None, None),  # the probes never saw why it ended
])
def test_exit_decodes_the_wait_status(wait_status, exit_code, signal):
    event = decode_event(record(EventKind.EXIT, values=(wait_status, 0, 0, 0)))
    assert isinstance(event, ProcessEvent)
    assert (event.kind, event.exit_code, event.signal, event.filename) == ("exit", exit_code, signal, None)


def test_fork_has_no_filename():
    event = decode_event(record(EventKind.FORK))
    assert isinstance(event, ProcessEvent) and event.kind == "fork" and event.filename is None


def test_spike_oom_and_reclaim_numbers():
    assert decode_event(record(EventKind.SPIKE, values=(300 << 20, 100 << 20, 0, 0), comm=b"alloc")) == \
        SpikeEvent(cgroup_id=4242, pid=10, comm="alloc", bytes=300 << 20, threshold=100 << 20, ktime_ns=123)
    assert decode_event(record(EventKind.OOM, values=(5 << 20, 0, 0, 0))) == \
        OomEvent(cgroup_id=4242, pid=10, comm="sh", rss_bytes=5 << 20, ktime_ns=123)
    assert decode_event(record(EventKind.RECLAIM, values=(32, 1500, 4, 9000))) == \
        ReclaimEvent(cgroup_id=4242, pid=10, comm="sh", reclaimed_pages=32, duration_ns=1500,
                     total_count=4, total_duration_ns=9000, ktime_ns=123)


def test_exec_digest_takes_as_many_bytes_as_the_algorithm_makes():
    digest = bytes(range(64))
    event = decode_event(record(EventKind.EXEC_DIGEST, values=(4, 0, 0, 0), digest=digest, path=b"/usr/bin/ls"))
    assert event == ExecDigestEvent(cgroup_id=4242, pid=10, comm="sh", path="/usr/bin/ls",
                                    digest_hex=digest[:32].hex(), algo="sha256", error=None, ktime_ns=123)


def test_exec_digest_refused_by_the_kernel_says_why():
    event = decode_event(record(EventKind.EXEC_DIGEST, values=(-95, 0, 0, 0), path=b"/x"))
    assert isinstance(event, ExecDigestEvent)
    assert (event.digest_hex, event.algo) == (None, None)
    assert event.error == "bpf_ima_file_hash failed: errno 95"


def test_unknown_kind_and_short_records_are_refused():
    with pytest.raises(EventDecodeError, match="unknown event kind 99"):
        decode_event(record(99))
    with pytest.raises(EventDecodeError, match="16 bytes, shorter than the 80-byte event header"):
        decode_event(b"\0" * 16)
    with pytest.raises(EventDecodeError, match="exec event record of 80 bytes, expected 336"):
        decode_event(record(EventKind.EXEC)[:EVENT_HEADER.size])
