"""The few bpf(2) operations bcc's Python API does not offer, through ctypes.

- loading a program with BPF_F_SLEEPABLE (bcc 0.26's load_func passes no program flags, and
  bpf_ima_file_hash may only be called from a sleepable program),
- attaching an LSM program (BPF_RAW_TRACEPOINT_OPEN with no name attaches by its BTF id),
- BPF_ENABLE_STATS (run-time statistics held on while the returned fd is open, instead of
  flipping the system-wide kernel.bpf_stats_enabled sysctl),
- a program's run_time_ns / run_cnt from /proc/self/fdinfo,
- the epoll fd of bcc's ring-buffer manager (a libbpf `struct ring_buffer`), so that the reader can
  wait for records without consuming them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from dataclasses import dataclass
from functools import cache

_BPF_SYSCALL = {"x86_64": 321, "aarch64": 280}

# Commands and constants from include/uapi/linux/bpf.h (stable kernel ABI).
_BPF_PROG_LOAD = 5
_BPF_RAW_TRACEPOINT_OPEN = 17
_BPF_ENABLE_STATS = 32
_BPF_STATS_RUN_TIME = 0
_BPF_PROG_TYPE_LSM = 29
_BPF_LSM_MAC = 27
_BPF_F_SLEEPABLE = 1 << 4
_INSTRUCTION_SIZE = 8
_VERIFIER_LOG_SIZE = 1 << 20


class BpfSyscallError(OSError):
    """A bpf(2) call the kernel refused; `log` holds the verifier's log where there is one."""

    def __init__(self, errno_value: int, message: str, log: str = "") -> None:
        super().__init__(errno_value, message)
        self.log = log


class _ProgLoadAttr(ctypes.Structure):
    # The BPF_PROG_LOAD part of union bpf_attr, up to fd_array; fields after it stay zero.
    _fields_ = [
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * 16),
        ("prog_ifindex", ctypes.c_uint32),
        ("expected_attach_type", ctypes.c_uint32),
        ("prog_btf_fd", ctypes.c_uint32),
        ("func_info_rec_size", ctypes.c_uint32),
        ("func_info", ctypes.c_uint64),
        ("func_info_cnt", ctypes.c_uint32),
        ("line_info_rec_size", ctypes.c_uint32),
        ("line_info", ctypes.c_uint64),
        ("line_info_cnt", ctypes.c_uint32),
        ("attach_btf_id", ctypes.c_uint32),
        ("attach_prog_fd", ctypes.c_uint32),
        ("core_relo_cnt", ctypes.c_uint32),
        ("fd_array", ctypes.c_uint64),
    ]


class _RawTracepointAttr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_uint64), ("prog_fd", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


class _EnableStatsAttr(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32)]


_libc = ctypes.CDLL(None, use_errno=True)


def _bpf(command: int, attr: ctypes.Structure) -> int:
    number = _BPF_SYSCALL.get(platform.machine())
    if number is None:
        raise BpfSyscallError(0, f"no bpf(2) syscall number known for {platform.machine()}")
    result = _libc.syscall(ctypes.c_long(number), ctypes.c_int(command), ctypes.byref(attr),
                           ctypes.c_uint(ctypes.sizeof(attr)))
    if result < 0:
        errno_value = ctypes.get_errno()
        raise BpfSyscallError(errno_value, os.strerror(errno_value))
    return int(result)


@cache
def _libbpf() -> ctypes.CDLL:
    path = ctypes.util.find_library("bpf")
    if path is None:
        raise BpfSyscallError(0, "libbpf not found (Debian package libbpf1)")
    return ctypes.CDLL(path, use_errno=True)


def find_lsm_hook_btf_id(hook: str) -> int:
    """The vmlinux BTF id of the BPF LSM attach point for `hook` (e.g. bprm_check_security)."""
    libbpf = _libbpf()
    libbpf.libbpf_find_vmlinux_btf_id.argtypes = [ctypes.c_char_p, ctypes.c_int]
    libbpf.libbpf_find_vmlinux_btf_id.restype = ctypes.c_int
    btf_id = libbpf.libbpf_find_vmlinux_btf_id(hook.encode(), _BPF_LSM_MAC)
    if btf_id < 0:
        raise BpfSyscallError(-btf_id, f"no BTF id for LSM hook {hook}: {os.strerror(-btf_id)} "
                                       "(needs /sys/kernel/btf/vmlinux and CONFIG_BPF_LSM)")
    return int(btf_id)


def load_sleepable_lsm(instructions: bytes, hook: str, name: str, license_text: bytes) -> int:
    """Load compiled BPF instructions as a sleepable LSM program on `hook`; returns its fd."""
    if len(instructions) % _INSTRUCTION_SIZE:
        raise ValueError(f"BPF program of {len(instructions)} bytes is not whole instructions")
    code = ctypes.create_string_buffer(instructions, len(instructions))
    license_buffer = ctypes.create_string_buffer(license_text)
    log = ctypes.create_string_buffer(_VERIFIER_LOG_SIZE)
    attr = _ProgLoadAttr(
        prog_type=_BPF_PROG_TYPE_LSM,
        insn_cnt=len(instructions) // _INSTRUCTION_SIZE,
        insns=ctypes.addressof(code),
        license=ctypes.addressof(license_buffer),
        log_level=1,
        log_size=_VERIFIER_LOG_SIZE,
        log_buf=ctypes.addressof(log),
        prog_flags=_BPF_F_SLEEPABLE,
        prog_name=name.encode()[:15],
        expected_attach_type=_BPF_LSM_MAC,
        attach_btf_id=find_lsm_hook_btf_id(hook),
    )
    try:
        return _bpf(_BPF_PROG_LOAD, attr)
    except BpfSyscallError as refused:
        text = log.value.decode(errors="replace")
        raise BpfSyscallError(refused.errno or 0, f"kernel refused sleepable LSM program {name}: "
                                                  f"{refused.strerror}", text) from None


def attach_lsm(program_fd: int) -> int:
    """Attach a loaded LSM program; returns the link fd (closing it detaches)."""
    return _bpf(_BPF_RAW_TRACEPOINT_OPEN, _RawTracepointAttr(name=0, prog_fd=program_fd))


def attach_raw_tracepoint(program_fd: int, event: str) -> int:
    """Attach a loaded raw-tracepoint program to `event`; returns the link fd (closing it detaches). Unlike
    bcc's attach_raw_tracepoint, this allows a second program on an event bcc attached one to."""
    name = ctypes.create_string_buffer(event.encode())
    return _bpf(_BPF_RAW_TRACEPOINT_OPEN, _RawTracepointAttr(name=ctypes.addressof(name), prog_fd=program_fd))


def enable_run_time_stats() -> int:
    """Turn on BPF run-time statistics for as long as the returned fd stays open."""
    return _bpf(_BPF_ENABLE_STATS, _EnableStatsAttr(type=_BPF_STATS_RUN_TIME))


def ring_buffer_epoll_fd(manager: int) -> int:
    """The epoll fd of a libbpf ring-buffer manager (bcc 0.26 links libbpf.so.1 and hands out its
    `struct ring_buffer *`); readable when a record was submitted with a wake-up."""
    libbpf = _libbpf()
    libbpf.ring_buffer__epoll_fd.argtypes = [ctypes.c_void_p]
    libbpf.ring_buffer__epoll_fd.restype = ctypes.c_int
    fd = libbpf.ring_buffer__epoll_fd(ctypes.c_void_p(manager))
    if fd < 0:
        raise BpfSyscallError(-fd, f"ring_buffer__epoll_fd failed: {os.strerror(-fd)}")
    return int(fd)


@dataclass(frozen=True)
class ProgramCounters:
    run_time_ns: int
    run_count: int


def parse_program_fdinfo(text: str) -> ProgramCounters:
    """run_time_ns and run_cnt from a BPF program fd's /proc/<pid>/fdinfo text (0 when absent)."""
    fields: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("run_time_ns", "run_cnt"):
            fields[key] = int(value.strip())
    return ProgramCounters(run_time_ns=fields.get("run_time_ns", 0), run_count=fields.get("run_cnt", 0))


def program_counters(program_fd: int) -> ProgramCounters:
    with open(f"/proc/self/fdinfo/{program_fd}", encoding="ascii") as fdinfo:
        return parse_program_fdinfo(fdinfo.read())
