"""The running kernel's struct layout, read from its BTF (/sys/kernel/btf/vmlinux).

The programs read kernel structs directly (a task's exit code and mm, an mm's RSS counters, each CPU's part of
a percpu counter), and the kernel headers on a host need not match the running kernel, so the offsets come from
BTF at load time and reach the programs as -D flags. Only what they need is decoded here: a plain reader of the
BTF format (Documentation/bpf/btf.rst), with no dependency on libbpf's ABI.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")

_MAGIC = 0xEB9F
_HEADER = struct.Struct("<HBBIIIII")  # magic, version, flags, hdr_len, type_off, type_len, str_off, str_len
_TYPE = struct.Struct("<III")  # name_off, info, size or type
_MEMBER = struct.Struct("<III")  # name_off, type, offset
_ARRAY = struct.Struct("<III")  # type, index_type, nelems
_SECTION_ENTRY = struct.Struct("<III")  # variable type id, offset, size
PERCPU_SECTION = ".data..percpu"

KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION = 1, 2, 3, 4, 5
KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT = 8, 9, 10, 11
KIND_FUNC_PROTO, KIND_VAR, KIND_DATASEC, KIND_TYPE_TAG = 13, 14, 15, 18
_QUALIFIERS = (KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG)


def _extra_bytes(kind: int, vlen: int) -> int:
    """Bytes that follow a type's 12-byte common part, by kind."""
    if kind in (KIND_INT, KIND_VAR, 17):  # int encoding; var linkage; decl_tag component index
        return 4
    if kind == KIND_ARRAY:
        return _ARRAY.size
    if kind in (KIND_STRUCT, KIND_UNION, KIND_DATASEC, 19):  # members; datasec entries; enum64 values
        return 12 * vlen
    if kind in (6, KIND_FUNC_PROTO):  # enum values; parameters
        return 8 * vlen
    if kind in (KIND_PTR, 7, KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, 12, 16, KIND_TYPE_TAG):
        return 0
    raise BtfError(f"unknown BTF kind {kind}: a newer BTF format than this reader knows")


class BtfError(Exception):
    """The BTF is unreadable, or lacks what a program needs (the message says what)."""


@dataclass(frozen=True)
class BtfType:
    kind: int
    name: str
    size_or_type: int  # size for int/struct/union/enum; referenced type id for the others
    vlen: int
    kind_flag: bool
    position: int  # of the kind-specific data in the type section


class Btf:
    """Types of one BTF blob, looked up by name; type id 0 is void."""

    def __init__(self, blob: bytes) -> None:
        if len(blob) < _HEADER.size:
            raise BtfError("BTF data shorter than its header")
        magic, _version, _flags, header_len, type_off, type_len, str_off, str_len = _HEADER.unpack_from(blob)
        if magic != _MAGIC:
            raise BtfError(f"not BTF data (magic {magic:#x}; a big-endian blob is not supported)")
        if header_len < _HEADER.size:
            raise BtfError(f"BTF header length {header_len} is shorter than the header ({_HEADER.size} bytes)")
        self._types = blob[header_len + type_off:header_len + type_off + type_len]
        self._strings = blob[header_len + str_off:header_len + str_off + str_len]
        if len(self._types) != type_len or len(self._strings) != str_len:
            raise BtfError("BTF data truncated")
        self._positions = [0]  # type id -> offset of its common part
        self._by_name: dict[tuple[str, int], int] = {}
        position = 0
        while position < type_len:
            if position + _TYPE.size > type_len:
                raise BtfError(f"BTF type section ends inside a type record (at byte {position})")
            self._positions.append(position)
            name_off, info, _ = _TYPE.unpack_from(self._types, position)
            kind = (info >> 24) & 0x1F
            if name_off and kind in (KIND_STRUCT, KIND_UNION, KIND_TYPEDEF):
                self._by_name.setdefault((self._string(name_off), kind), len(self._positions) - 1)
            position += _TYPE.size + _extra_bytes(kind, info & 0xFFFF)
        if position != type_len:
            raise BtfError("BTF type section ends inside a type record's members")

    @classmethod
    def load(cls, path: Path = VMLINUX_BTF) -> Btf:
        try:
            return cls(path.read_bytes())
        except OSError as unreadable:
            raise BtfError(f"cannot read kernel BTF {path}: {os.strerror(unreadable.errno or 0)} "
                           "(the kernel needs CONFIG_DEBUG_INFO_BTF)") from None

    def _string(self, offset: int) -> str:
        end = self._strings.find(b"\0", offset)
        if end < 0:
            raise BtfError(f"BTF name offset {offset} is outside the string section")
        try:
            return self._strings[offset:end].decode()
        except UnicodeDecodeError:
            raise BtfError(f"BTF name at offset {offset} is not UTF-8") from None

    def type(self, type_id: int) -> BtfType:
        if not 0 < type_id < len(self._positions):
            raise BtfError(f"no BTF type {type_id}")
        position = self._positions[type_id]
        name_off, info, size_or_type = _TYPE.unpack_from(self._types, position)
        return BtfType(kind=(info >> 24) & 0x1F, name=self._string(name_off), size_or_type=size_or_type,
                       vlen=info & 0xFFFF, kind_flag=bool(info >> 31), position=position + _TYPE.size)

    def find(self, name: str, kind: int) -> int:
        """The id of the struct, union or typedef called `name`."""
        try:
            return self._by_name[(name, kind)]
        except KeyError:
            raise BtfError(f"kernel BTF has no {_KIND_NAMES.get(kind, kind)} {name}") from None

    def resolve(self, type_id: int) -> int:
        """`type_id` with typedefs and qualifiers stripped."""
        while type_id and self.type(type_id).kind in _QUALIFIERS:
            type_id = self.type(type_id).size_or_type
        return type_id

    def size(self, type_id: int) -> int:
        resolved = self.type(self.resolve(type_id))
        if resolved.kind == KIND_ARRAY:
            element, count = self.array(self.resolve(type_id))
            return self.size(element) * count
        if resolved.kind == KIND_PTR:
            return 8
        return resolved.size_or_type

    def array(self, type_id: int) -> tuple[int, int]:
        """(element type id, element count) of an array type."""
        array = self.type(type_id)
        if array.kind != KIND_ARRAY:
            raise BtfError(f"BTF type {array.name or type_id} is not an array")
        element, _index, count = _ARRAY.unpack_from(self._types, array.position)
        return element, count

    def member(self, struct_id: int, name: str) -> tuple[int, int]:
        """(byte offset, type id) of member `name`, also inside anonymous struct and union members."""
        found = self._find_member(self.resolve(struct_id), name)
        if found is None:
            raise BtfError(f"kernel BTF: {self.type(self.resolve(struct_id)).name or 'struct'} has no member {name}")
        return found

    def _find_member(self, struct_id: int, name: str) -> tuple[int, int] | None:
        container = self.type(struct_id)
        if container.kind not in (KIND_STRUCT, KIND_UNION):
            raise BtfError(f"BTF type {container.name or struct_id} is not a struct or union")
        for index in range(container.vlen):
            name_off, member_type, offset = _MEMBER.unpack_from(self._types, container.position + 12 * index)
            bit_offset = offset & 0xFFFFFF if container.kind_flag else offset
            if name_off and self._string(name_off) == name:
                if bit_offset % 8 or (container.kind_flag and offset >> 24) or self._is_int_bitfield(member_type):
                    raise BtfError(f"member {name} is a bitfield")
                return bit_offset // 8, member_type
            if not name_off and self.type(self.resolve(member_type)).kind in (KIND_STRUCT, KIND_UNION):
                inner = self._find_member(self.resolve(member_type), name)
                if inner is not None:
                    return bit_offset // 8 + inner[0], inner[1]
        return None

    def _is_int_bitfield(self, type_id: int) -> bool:
        """An INT narrower than its size: how a bitfield of a struct without kind_flag is typed."""
        resolved = self.type(self.resolve(type_id))
        if resolved.kind != KIND_INT:
            return False
        (encoding,) = struct.unpack_from("<I", self._types, resolved.position)
        return (encoding & 0xFF) != resolved.size_or_type * 8 or (encoding >> 16) & 0xFF != 0

    def percpu_variables(self) -> dict[str, int]:
        """Each per-CPU variable's offset in the .data..percpu section (the kernel's BTF lists them all)."""
        variables: dict[str, int] = {}
        for type_id in range(1, len(self._positions)):
            section = self.type(type_id)
            if section.kind != KIND_DATASEC or section.name != PERCPU_SECTION:
                continue
            for index in range(section.vlen):
                variable, offset, _size = _SECTION_ENTRY.unpack_from(self._types, section.position + 12 * index)
                if self.type(variable).kind != KIND_VAR:
                    raise BtfError(f"{PERCPU_SECTION} entry {index} is not a variable (BTF type {variable})")
                variables[self.type(variable).name] = offset
        return variables


_KIND_NAMES = {KIND_STRUCT: "struct", KIND_UNION: "union", KIND_TYPEDEF: "typedef"}


@dataclass(frozen=True)
class CpuOffsetAnchor:
    """How a program finds a CPU's per-CPU offset (__per_cpu_offset[cpu], which kallsyms need not list): from
    the running task's runqueue (task_struct.se.cfs_rq->rq, that CPU's copy of the per-CPU variable runqueues)
    back to the start of that CPU's per-CPU area, where the variable this_cpu_off holds the offset (x86-64)."""

    task_cfs_rq: int  # task_struct.se.cfs_rq
    cfs_rq_rq: int
    rq_cpu: int
    runqueues: int  # per-CPU variables' offsets in the .data..percpu section
    this_cpu_off: int
    cpu_number: int | None  # a check where the kernel has it as a variable of its own (6.15 and later)

    def cflags(self) -> list[str]:
        flags = [f"-DTASK_CFS_RQ_OFFSET={self.task_cfs_rq}", f"-DCFS_RQ_RQ_OFFSET={self.cfs_rq_rq}",
                 f"-DRQ_CPU_OFFSET={self.rq_cpu}", f"-DPCPU_RUNQUEUES={self.runqueues}",
                 f"-DPCPU_THIS_CPU_OFF={self.this_cpu_off}"]
        return flags if self.cpu_number is None else [*flags, f"-DPCPU_CPU_NUMBER={self.cpu_number}"]


@dataclass(frozen=True)
class PercpuCounterLayout:
    """struct percpu_counter (mm counters from 6.2): a global s64 part and an s32 per CPU."""

    count: int
    counters: int
    anchor: CpuOffsetAnchor


@dataclass(frozen=True)
class RssLayout:
    """Where an mm's RSS counters are: counter `member` at mm_struct.rss_stat + member * counter_size; atomic
    longs before 6.2, percpu counters (`percpu`) from 6.2. `task_vfork_done` tells a vfork child, which runs in
    its parent's mm until it execs."""

    mm_rss_stat: int
    counter_size: int
    percpu: PercpuCounterLayout | None
    task_vfork_done: int

    def cflags(self, page_size: int, possible_cpus: int) -> list[str]:
        flags = ["-DRSS_SAMPLING", f"-DTASK_VFORK_DONE_OFFSET={self.task_vfork_done}",
                 f"-DMM_RSS_STAT_OFFSET={self.mm_rss_stat}",
                 f"-DRSS_COUNTER_SIZE={self.counter_size}", f"-DRSS_PAGE_SHIFT={page_size.bit_length() - 1}"]
        if self.percpu is None:
            return flags
        return [*flags, "-DRSS_PERCPU", f"-DRSS_CPUS={possible_cpus}",
                f"-DPERCPU_COUNTER_COUNT_OFFSET={self.percpu.count}",
                f"-DPERCPU_COUNTER_COUNTERS_OFFSET={self.percpu.counters}", *self.percpu.anchor.cflags()]


@dataclass(frozen=True)
class KernelLayout:
    """The offsets hostwarden's programs read on the running kernel; `rss` is None where an mm's RSS counters
    cannot be read (`rss_unavailable` says why): RSS is then counted from kmem:rss_stat's records."""

    task_mm: int
    task_exit_code: int
    rss: RssLayout | None
    rss_unavailable: str = ""

    def cflags(self, page_size: int, possible_cpus: int) -> list[str]:
        flags = ["-DKERNEL_LAYOUT", f"-DTASK_MM_OFFSET={self.task_mm}",
                 f"-DTASK_EXIT_CODE_OFFSET={self.task_exit_code}"]
        return flags if self.rss is None else [*flags, *self.rss.cflags(page_size, possible_cpus)]


def _member_of_size(btf: Btf, struct_id: int, name: str, size: int) -> int:
    offset, member_type = btf.member(struct_id, name)
    if btf.size(member_type) != size:
        raise BtfError(f"{btf.type(struct_id).name}.{name} is {btf.size(member_type)} bytes, not {size}")
    return offset


def kernel_layout(btf: Btf) -> KernelLayout:
    """The layout on the kernel `btf` describes; BtfError says what is missing from task_struct."""
    task = btf.find("task_struct", KIND_STRUCT)
    task_mm = _member_of_size(btf, task, "mm", 8)
    task_exit_code = _member_of_size(btf, task, "exit_code", 4)
    try:
        rss = rss_layout(btf)
    except BtfError as missing:
        return KernelLayout(task_mm, task_exit_code, None, str(missing))
    return KernelLayout(task_mm, task_exit_code, rss)


# MM_FILEPAGES, MM_ANONPAGES, MM_SWAPENTS, MM_SHMEMPAGES: the counters rss_stat holds since Linux 4.5
_RSS_COUNTERS = 4


def rss_layout(btf: Btf) -> RssLayout:
    """Where mm_struct keeps its RSS counters; BtfError when that, or (for percpu counters) the way to each CPU's
    part, is missing."""
    vfork_done = _member_of_size(btf, btf.find("task_struct", KIND_STRUCT), "vfork_done", 8)
    mm_rss_stat, stat_type = btf.member(btf.find("mm_struct", KIND_STRUCT), "rss_stat")
    stat = btf.type(btf.resolve(stat_type))
    if stat.kind == KIND_STRUCT:  # before 6.2: struct mm_rss_stat { atomic_long_t count[NR_MM_COUNTERS]; }
        count_offset, count_type = btf.member(btf.resolve(stat_type), "count")
        element, count = btf.array(btf.resolve(count_type))
        if count < _RSS_COUNTERS or btf.size(element) != 8:
            raise BtfError(f"mm_rss_stat.count is {count} counters of {btf.size(element)} bytes, "
                           f"not at least {_RSS_COUNTERS} of 8")
        return RssLayout(mm_rss_stat + count_offset, 8, None, vfork_done)
    element, count = btf.array(btf.resolve(stat_type))
    counter = btf.resolve(element)
    if btf.type(counter).name != "percpu_counter" or count < _RSS_COUNTERS:
        raise BtfError(f"mm_struct.rss_stat is {count} of {btf.type(counter).name or 'an unnamed type'}, "
                       f"not at least {_RSS_COUNTERS} percpu_counter")
    percpu = PercpuCounterLayout(count=_member_of_size(btf, counter, "count", 8),
                                 counters=_member_of_size(btf, counter, "counters", 8),
                                 anchor=cpu_offset_anchor(btf))
    if (btf.size(element) | percpu.count | percpu.counters) % 8:
        # The program loads these fields of each counter as 8-byte words: they must be aligned in every one.
        raise BtfError(f"percpu_counter is {btf.size(element)} bytes with count at {percpu.count} and counters at "
                       f"{percpu.counters}: not all multiples of 8")
    return RssLayout(mm_rss_stat, btf.size(element), percpu, vfork_done)


def cpu_offset_anchor(btf: Btf) -> CpuOffsetAnchor:
    task_se, se_type = btf.member(btf.find("task_struct", KIND_STRUCT), "se")
    se_cfs_rq = _member_of_size(btf, se_type, "cfs_rq", 8)  # CONFIG_FAIR_GROUP_SCHED
    cfs_rq_rq = _member_of_size(btf, btf.find("cfs_rq", KIND_STRUCT), "rq", 8)
    rq_cpu = _member_of_size(btf, btf.find("rq", KIND_STRUCT), "cpu", 4)
    variables = btf.percpu_variables()
    for needed in ("runqueues", "this_cpu_off"):
        if needed not in variables:
            raise BtfError(f"kernel BTF has no per-CPU variable {needed} (needed to find each CPU's part of a "
                           "percpu counter; this_cpu_off exists on x86-64)")
    return CpuOffsetAnchor(task_cfs_rq=task_se + se_cfs_rq, cfs_rq_rq=cfs_rq_rq, rq_cpu=rq_cpu,
                           runqueues=variables["runqueues"], this_cpu_off=variables["this_cpu_off"],
                           cpu_number=variables.get("cpu_number"))
