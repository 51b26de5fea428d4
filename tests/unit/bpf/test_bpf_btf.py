from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hostwarden.bpf.btf import (
    KIND_ARRAY,
    KIND_CONST,
    KIND_DATASEC,
    KIND_FUNC_PROTO,
    KIND_INT,
    KIND_PTR,
    KIND_STRUCT,
    KIND_TYPEDEF,
    KIND_UNION,
    KIND_VAR,
    VMLINUX_BTF,
    Btf,
    BtfError,
    CpuOffsetAnchor,
    KernelLayout,
    PercpuCounterLayout,
    RssLayout,
    kernel_layout,
)

_HEADER = struct.Struct("<HBBIIIII")

# A member: (name, type id, bit offset) or (name, type id, bit offset, bitfield size); "" is anonymous.
Member = tuple[str, int, int] | tuple[str, int, int, int]


@dataclass
class BtfEncoder:
    """Builds a little-endian BTF blob (Documentation/bpf/btf.rst); each add_* returns the new type's id."""

    strings: bytearray = field(default_factory=lambda: bytearray(b"\0"))
    types: list[bytes] = field(default_factory=list)
    _offsets: dict[str, int] = field(default_factory=dict)

    def _name(self, name: str) -> int:
        if not name:
            return 0
        if name not in self._offsets:
            self._offsets[name] = len(self.strings)
            self.strings += name.encode() + b"\0"
        return self._offsets[name]

    def _add(self, name: str, kind: int, size_or_type: int, *, vlen: int = 0, kind_flag: bool = False,
             extra: bytes = b"") -> int:
        info = (int(kind_flag) << 31) | (kind << 24) | vlen
        self.types.append(struct.pack("<III", self._name(name), info, size_or_type) + extra)
        return len(self.types)

    def int_(self, name: str, size: int, *, bits: int | None = None, signed: bool = True) -> int:
        encoding = 1 if signed else 0
        data = (encoding << 24) | (bits if bits is not None else size * 8)
        return self._add(name, KIND_INT, size, extra=struct.pack("<I", data))

    def ptr(self, target: int) -> int:
        return self._add("", KIND_PTR, target)

    def array(self, element: int, count: int, index_type: int) -> int:
        return self._add("", KIND_ARRAY, 0, extra=struct.pack("<III", element, index_type, count))

    def struct(self, name: str, size: int, members: list[Member], *, kind_flag: bool = False,
               union: bool = False) -> int:
        extra = b""
        for member in members:
            member_name, member_type, bit_offset = member[0], member[1], member[2]
            bitfield = member[3] if len(member) == 4 else 0
            if bitfield and not kind_flag:
                raise ValueError("a bitfield size in the member offset needs kind_flag")
            offset = (bitfield << 24) | bit_offset if kind_flag else bit_offset
            extra += struct.pack("<III", self._name(member_name), member_type, offset)
        return self._add(name, KIND_UNION if union else KIND_STRUCT, size, vlen=len(members), kind_flag=kind_flag,
                         extra=extra)

    def typedef(self, name: str, target: int) -> int:
        return self._add(name, KIND_TYPEDEF, target)

    def const(self, target: int) -> int:
        return self._add("", KIND_CONST, target)

    def func_proto(self, returns: int, params: list[tuple[str, int]]) -> int:
        extra = b"".join(struct.pack("<II", self._name(name), param_type) for name, param_type in params)
        return self._add("", KIND_FUNC_PROTO, returns, vlen=len(params), extra=extra)

    def var(self, name: str, var_type: int) -> int:
        return self._add(name, KIND_VAR, var_type, extra=struct.pack("<I", 1))  # global linkage

    def datasec(self, name: str, size: int, entries: list[tuple[int, int, int]]) -> int:
        """entries: (type id, offset, size)."""
        extra = b"".join(struct.pack("<III", *entry) for entry in entries)
        return self._add(name, KIND_DATASEC, size, vlen=len(entries), extra=extra)

    def blob(self) -> bytes:
        type_section = b"".join(self.types)
        header = _HEADER.pack(0xEB9F, 1, 0, _HEADER.size, 0, len(type_section), len(type_section), len(self.strings))
        return header + type_section + bytes(self.strings)


# ---- the reader on hand-built types ----------------------------------------------------------


@dataclass
class Sample:
    btf: Btf
    ids: dict[str, int]


@pytest.fixture
def sample() -> Sample:
    e = BtfEncoder()
    ids: dict[str, int] = {}
    ids["int"] = e.int_("int", 4)
    ids["u8"] = e.int_("unsigned char", 1, signed=False)
    ids["long"] = e.int_("long", 8)
    ids["u64"] = e.typedef("u64", ids["long"])
    ids["const_u64"] = e.const(ids["u64"])
    ids["counter_t"] = e.typedef("counter_t", ids["const_u64"])
    ids["void_ptr"] = e.ptr(0)
    ids["int_ptr"] = e.ptr(ids["int"])
    ids["ints"] = e.array(ids["int"], 6, ids["int"])
    ids["ints_t"] = e.typedef("ints_t", ids["ints"])
    ids["inner"] = e.struct("", 8, [("deep", ids["int"], 32)])
    ids["anon_union"] = e.struct("", 16, [("alt", ids["long"], 0), ("", ids["inner"], 64)], union=True)
    ids["anon_struct"] = e.struct("", 12, [("hidden", ids["int"], 0), ("later", ids["int"], 64)])
    ids["widget"] = e.struct("widget", 72, [
        ("id", ids["int"], 0),
        ("next", ids["int_ptr"], 64),
        ("", ids["anon_struct"], 128),  # at byte 16
        ("", ids["anon_union"], 256),  # at byte 32
        ("slots", ids["ints_t"], 384),  # at byte 48
    ])
    ids["widget_t"] = e.typedef("widget_t", ids["widget"])
    ids["packed"] = e.struct("packed", 32, [
        ("mode", ids["int"], 0, 4),  # mode:4 at bit 0
        ("flag", ids["u8"], 4, 1),  # flag:1 at bit 4
        ("", ids["anon_struct"], 32),  # at byte 4
        ("count", ids["u64"], 128),  # a plain member (bitfield size 0) at byte 16
        ("tail", ids["u8"], 192, 8),  # tail:8 at bit 192: a bitfield, though in whole bytes
    ], kind_flag=True)
    ids["proto"] = e.func_proto(0, [("", ids["void_ptr"]), ("w", ids["widget_t"]), ("n", ids["int"])])
    ids["proto_ptr"] = e.ptr(ids["proto"])
    ids["btf_trace_widget"] = e.typedef("btf_trace_widget", ids["proto_ptr"])
    ids["btf_trace_int"] = e.typedef("btf_trace_int", ids["int"])
    ids["btf_trace_int_ptr"] = e.typedef("btf_trace_int_ptr", ids["int_ptr"])
    return Sample(Btf(e.blob()), ids)


def test_find_by_name_and_kind(sample: Sample):
    assert sample.btf.find("widget", KIND_STRUCT) == sample.ids["widget"]
    assert sample.btf.find("widget_t", KIND_TYPEDEF) == sample.ids["widget_t"]
    assert sample.btf.find("u64", KIND_TYPEDEF) == sample.ids["u64"]
    with pytest.raises(BtfError, match="kernel BTF has no union widget"):
        sample.btf.find("widget", KIND_UNION)
    with pytest.raises(BtfError, match="kernel BTF has no struct gadget"):
        sample.btf.find("gadget", KIND_STRUCT)


def test_type_reports_kind_name_and_flags(sample: Sample):
    packed = sample.btf.type(sample.ids["packed"])
    assert (packed.kind, packed.name, packed.size_or_type, packed.vlen, packed.kind_flag) == (
        KIND_STRUCT, "packed", 32, 5, True)
    widget = sample.btf.type(sample.ids["widget"])
    assert (widget.kind, widget.vlen, widget.kind_flag) == (KIND_STRUCT, 5, False)
    with pytest.raises(BtfError, match="no BTF type 0"):
        sample.btf.type(0)
    with pytest.raises(BtfError, match="no BTF type 999"):
        sample.btf.type(999)


def test_member_offsets_in_bytes(sample: Sample):
    widget = sample.ids["widget"]
    assert sample.btf.member(widget, "id") == (0, sample.ids["int"])
    assert sample.btf.member(widget, "next") == (8, sample.ids["int_ptr"])
    assert sample.btf.member(widget, "slots") == (48, sample.ids["ints_t"])
    # Through a typedef of the struct, too.
    assert sample.btf.member(sample.ids["widget_t"], "next") == (8, sample.ids["int_ptr"])


def test_member_inside_anonymous_struct_and_union(sample: Sample):
    widget = sample.ids["widget"]
    assert sample.btf.member(widget, "hidden") == (16, sample.ids["int"])
    assert sample.btf.member(widget, "later") == (16 + 8, sample.ids["int"])
    assert sample.btf.member(widget, "alt") == (32, sample.ids["long"])
    # widget -> anonymous union at 32 -> anonymous struct at 8 -> deep at 4.
    assert sample.btf.member(widget, "deep") == (32 + 8 + 4, sample.ids["int"])


def test_member_of_a_kind_flag_struct(sample: Sample):
    packed = sample.ids["packed"]
    assert sample.btf.member(packed, "count") == (16, sample.ids["u64"])
    assert sample.btf.member(packed, "later") == (4 + 8, sample.ids["int"])


def test_bitfield_member_is_refused(sample: Sample):
    with pytest.raises(BtfError, match="member flag is a bitfield"):
        sample.btf.member(sample.ids["packed"], "flag")


@pytest.mark.parametrize("name", ["mode", "tail"])
def test_byte_aligned_bitfield_member_is_refused(sample: Sample, name: str):
    with pytest.raises(BtfError, match="bitfield"):
        sample.btf.member(sample.ids["packed"], name)


def test_int_encoded_bitfield_member_is_refused():
    e = BtfEncoder()
    three_bits = e.int_("int", 4, bits=3)
    holder = e.struct("holder", 4, [("small", three_bits, 0)])
    with pytest.raises(BtfError, match="bitfield"):
        Btf(e.blob()).member(holder, "small")


def test_missing_member_and_non_struct_are_refused(sample: Sample):
    with pytest.raises(BtfError, match="widget has no member nothing"):
        sample.btf.member(sample.ids["widget"], "nothing")
    with pytest.raises(BtfError, match="is not a struct or union"):
        sample.btf.member(sample.ids["int"], "x")


def test_resolve_strips_typedefs_and_qualifiers(sample: Sample):
    assert sample.btf.resolve(sample.ids["counter_t"]) == sample.ids["long"]  # typedef -> const -> typedef -> int
    assert sample.btf.resolve(sample.ids["const_u64"]) == sample.ids["long"]
    assert sample.btf.resolve(sample.ids["widget_t"]) == sample.ids["widget"]
    assert sample.btf.resolve(sample.ids["int_ptr"]) == sample.ids["int_ptr"]  # a pointer is not stripped
    assert sample.btf.resolve(0) == 0


def test_size_of_struct_array_pointer_and_int(sample: Sample):
    assert sample.btf.size(sample.ids["widget"]) == 72
    assert sample.btf.size(sample.ids["widget_t"]) == 72
    assert sample.btf.size(sample.ids["ints"]) == 6 * 4
    assert sample.btf.size(sample.ids["ints_t"]) == 6 * 4
    assert sample.btf.size(sample.ids["int_ptr"]) == 8
    assert sample.btf.size(sample.ids["void_ptr"]) == 8
    assert sample.btf.size(sample.ids["counter_t"]) == 8
    assert sample.btf.size(sample.ids["u8"]) == 1


def test_array_element_and_count(sample: Sample):
    assert sample.btf.array(sample.ids["ints"]) == (sample.ids["int"], 6)
    with pytest.raises(BtfError, match="widget is not an array"):
        sample.btf.array(sample.ids["widget"])


def test_percpu_variables_are_read_from_their_section():
    e = BtfEncoder()
    long_t = e.int_("long", 8)
    first, second = e.var("runqueues", long_t), e.var("this_cpu_off", long_t)
    other = e.var("jiffies", long_t)
    e.datasec(".data", 8, [(other, 0, 8)])
    e.datasec(".data..percpu", 4096, [(first, 2048, 8), (second, 64, 8)])
    assert Btf(e.blob()).percpu_variables() == {"runqueues": 2048, "this_cpu_off": 64}


def test_a_percpu_section_entry_that_is_not_a_variable_is_refused():
    e = BtfEncoder()
    long_t = e.int_("long", 8)
    e.datasec(".data..percpu", 8, [(long_t, 0, 8)])
    with pytest.raises(BtfError, match=r"\.data\.\.percpu entry 0 is not a variable"):
        Btf(e.blob()).percpu_variables()


# ---- kernel_layout on synthetic kernels ------------------------------------------------------

TASK_MM, TASK_EXIT_CODE, TASK_SE, SE_CFS_RQ, CFS_RQ_RQ, RQ_CPU, TASK_VFORK_DONE = 1136, 1164, 128, 168, 312, 2984, 2040
MM_RSS_STAT, ANON_AT = 960, 64
RUNQUEUES, THIS_CPU_OFF, CPU_NUMBER = 178816, 86056, 86068


def synthetic_kernel(*, percpu_counters: bool = True, exit_code: bool = True, fair_group_sched: bool = True,
                     percpu_variables: tuple[str, ...] = ("runqueues", "this_cpu_off", "cpu_number"),
                     counter_layout: tuple[int, int, int] = (40, 8, 32)) -> bytes:
    """A vmlinux BTF shaped like Linux >= 6.2 (mm counters are percpu_counters: `counter_layout` is their size and
    the offsets of count and counters); percpu_counters=False makes it 6.1-like (atomic longs)."""
    e = BtfEncoder()
    int_t = e.int_("int", 4)
    long_long = e.int_("long long", 8)
    s64 = e.typedef("s64", long_long)
    u32 = e.int_("unsigned int", 4, signed=False)
    s32_ptr = e.ptr(int_t)
    if percpu_counters:
        size, count_at, counters_at = counter_layout
        raw_spinlock = e.struct("raw_spinlock", 4, [("raw_lock", u32, 0)])
        counter = e.struct("percpu_counter", size, [
            ("lock", e.typedef("raw_spinlock_t", raw_spinlock), 0), ("count", s64, count_at * 8),
            ("counters", s32_ptr, counters_at * 8)])
        rss_stat = e.array(counter, 4, int_t)
    else:
        atomic_long = e.typedef("atomic_long_t", e.typedef("atomic64_t", e.struct("", 8, [("counter", s64, 0)])))
        rss_stat = e.struct("mm_rss_stat", 32, [("count", e.array(atomic_long, 4, int_t), 0)])
    anonymous = e.struct("", MM_RSS_STAT - ANON_AT + 160, [("rss_stat", rss_stat, (MM_RSS_STAT - ANON_AT) * 8)])
    mm_struct = e.struct("mm_struct", 1200, [("pgd", s32_ptr, 0), ("", anonymous, ANON_AT * 8)])
    rq = e.struct("rq", 3584, [("nr_running", u32, 0), ("cpu", int_t, RQ_CPU * 8)])
    cfs_rq = e.struct("cfs_rq", 512, [("load", u32, 0), ("rq", e.ptr(rq), CFS_RQ_RQ * 8)])
    entity_members: list[Member] = [("load", u32, 0)]
    if fair_group_sched:
        entity_members.append(("cfs_rq", e.ptr(cfs_rq), SE_CFS_RQ * 8))
    entity = e.struct("sched_entity", 256, entity_members)
    task_members: list[Member] = [("__state", u32, 192), ("se", entity, TASK_SE * 8),
                                  ("mm", e.ptr(mm_struct), TASK_MM * 8), ("vfork_done", s32_ptr, TASK_VFORK_DONE * 8)]
    if exit_code:
        task_members.append(("exit_code", int_t, TASK_EXIT_CODE * 8))
    e.struct("task_struct", 9000, task_members)
    offsets = {"runqueues": RUNQUEUES, "this_cpu_off": THIS_CPU_OFF, "cpu_number": CPU_NUMBER}
    e.datasec(".data..percpu", 200000, [(e.var(name, long_long), offsets[name], 8) for name in percpu_variables])
    return e.blob()


ANCHOR = CpuOffsetAnchor(task_cfs_rq=TASK_SE + SE_CFS_RQ, cfs_rq_rq=CFS_RQ_RQ, rq_cpu=RQ_CPU, runqueues=RUNQUEUES,
                         this_cpu_off=THIS_CPU_OFF, cpu_number=CPU_NUMBER)


def test_layout_of_a_linux_6_2_kernel_sums_percpu_counters_with_offsets_found_from_runqueues():
    layout = kernel_layout(Btf(synthetic_kernel()))
    assert layout == KernelLayout(task_mm=TASK_MM, task_exit_code=TASK_EXIT_CODE,
                                  rss=RssLayout(MM_RSS_STAT, 40, PercpuCounterLayout(8, 32, ANCHOR), TASK_VFORK_DONE))
    assert layout.cflags(4096, 8) == [
        "-DKERNEL_LAYOUT", f"-DTASK_MM_OFFSET={TASK_MM}", f"-DTASK_EXIT_CODE_OFFSET={TASK_EXIT_CODE}",
        "-DRSS_SAMPLING", f"-DTASK_VFORK_DONE_OFFSET={TASK_VFORK_DONE}", f"-DMM_RSS_STAT_OFFSET={MM_RSS_STAT}",
        "-DRSS_COUNTER_SIZE=40", "-DRSS_PAGE_SHIFT=12",
        "-DRSS_PERCPU", "-DRSS_CPUS=8", "-DPERCPU_COUNTER_COUNT_OFFSET=8", "-DPERCPU_COUNTER_COUNTERS_OFFSET=32",
        f"-DTASK_CFS_RQ_OFFSET={TASK_SE + SE_CFS_RQ}", f"-DCFS_RQ_RQ_OFFSET={CFS_RQ_RQ}", f"-DRQ_CPU_OFFSET={RQ_CPU}",
        f"-DPCPU_RUNQUEUES={RUNQUEUES}", f"-DPCPU_THIS_CPU_OFF={THIS_CPU_OFF}", f"-DPCPU_CPU_NUMBER={CPU_NUMBER}"]
    assert "-DRSS_PAGE_SHIFT=16" in layout.cflags(65536, 8)


def test_layout_of_a_linux_6_1_kernel_reads_atomic_counters():
    layout = kernel_layout(Btf(synthetic_kernel(percpu_counters=False)))
    assert layout.rss == RssLayout(MM_RSS_STAT, 8, None, TASK_VFORK_DONE)
    assert layout.cflags(4096, 8)[3:] == ["-DRSS_SAMPLING", f"-DTASK_VFORK_DONE_OFFSET={TASK_VFORK_DONE}",
                                          f"-DMM_RSS_STAT_OFFSET={MM_RSS_STAT}", "-DRSS_COUNTER_SIZE=8",
                                          "-DRSS_PAGE_SHIFT=12"]


def test_cpu_number_is_a_check_only_where_the_kernel_has_it():
    layout = kernel_layout(Btf(synthetic_kernel(percpu_variables=("runqueues", "this_cpu_off"))))
    assert layout.rss is not None and layout.rss.percpu is not None
    assert layout.rss.percpu.anchor.cpu_number is None
    assert not any(flag.startswith("-DPCPU_CPU_NUMBER") for flag in layout.cflags(4096, 2))


@pytest.mark.parametrize(("kernel", "reason"), [
    (dict(percpu_variables=("runqueues",)), "no per-CPU variable this_cpu_off"),
    (dict(percpu_variables=("this_cpu_off",)), "no per-CPU variable runqueues"),
    (dict(fair_group_sched=False), "sched_entity has no member cfs_rq"),
    (dict(counter_layout=(36, 8, 28)), "percpu_counter is 36 bytes with count at 8 and counters at 28"),
])
def test_unreadable_percpu_counters_leave_rss_to_kmem_rss_stat_with_a_reason(kernel: dict, reason: str):
    layout = kernel_layout(Btf(synthetic_kernel(**kernel)))
    assert layout.rss is None
    assert reason in layout.rss_unavailable
    assert layout.task_mm == TASK_MM and layout.task_exit_code == TASK_EXIT_CODE
    assert layout.cflags(4096, 2) == ["-DKERNEL_LAYOUT", f"-DTASK_MM_OFFSET={TASK_MM}",
                                      f"-DTASK_EXIT_CODE_OFFSET={TASK_EXIT_CODE}"]


def test_task_struct_without_exit_code_is_an_error():
    with pytest.raises(BtfError, match="task_struct has no member exit_code"):
        kernel_layout(Btf(synthetic_kernel(exit_code=False)))


def test_kernel_without_task_struct_is_an_error():
    e = BtfEncoder()
    e.int_("int", 4)
    with pytest.raises(BtfError, match="no struct task_struct"):
        kernel_layout(Btf(e.blob()))


def test_member_of_the_wrong_size_is_an_error():
    e = BtfEncoder()
    int_t = e.int_("int", 4)
    e.struct("task_struct", 64, [("mm", int_t, 0), ("exit_code", int_t, 32)])
    with pytest.raises(BtfError, match=r"task_struct\.mm is 4 bytes, not 8"):
        kernel_layout(Btf(e.blob()))


# ---- bad blobs -------------------------------------------------------------------------------


def test_wrong_magic_is_refused():
    blob = bytearray(synthetic_kernel())
    blob[0:2] = struct.pack(">H", 0xEB9F)  # a big-endian blob
    with pytest.raises(BtfError, match="not BTF data"):
        Btf(bytes(blob))
    with pytest.raises(BtfError, match="not BTF data"):
        Btf(b"\x7fELF" + bytes(40))


def test_truncated_blob_is_refused():
    blob = synthetic_kernel()
    with pytest.raises(BtfError, match="BTF data truncated"):
        Btf(blob[:-1])
    with pytest.raises(BtfError, match="BTF data truncated"):
        Btf(blob[:_HEADER.size + 5])


@pytest.mark.parametrize("blob", [b"", b"\x9f\xeb\x01\x00", bytes(_HEADER.size - 1)])
def test_blob_shorter_than_its_header_is_refused(blob: bytes):
    with pytest.raises(BtfError, match="shorter than its header"):
        Btf(blob)


def test_type_section_cut_inside_a_record_is_refused():
    e = BtfEncoder()
    e.int_("int", 4)
    types = e.types[0][:8]  # the common part cut after 8 of its 12 bytes
    header = _HEADER.pack(0xEB9F, 1, 0, _HEADER.size, 0, len(types), len(types), len(e.strings))
    with pytest.raises(BtfError):
        Btf(header + types + bytes(e.strings))


def _raw_blob(types: bytes, strings: bytes, header_len: int = _HEADER.size) -> bytes:
    header = _HEADER.pack(0xEB9F, 1, 0, header_len, 0, len(types), len(types), len(strings))
    return header + bytes(header_len - _HEADER.size) + types + strings


def test_a_struct_whose_members_run_past_the_type_section_is_refused():
    e = BtfEncoder()
    holder = e.struct("holder", 8, [("a", 0, 0), ("b", 0, 32)])
    types = e.types[holder - 1][:-12]  # declares 2 members, holds 1
    with pytest.raises(BtfError, match="ends inside a type record's members"):
        Btf(_raw_blob(types, bytes(e.strings)))


@pytest.mark.parametrize(("strings", "message"), [(b"\0", "outside the string section"),
                                                  (b"\0\xff\xfe\0", "not UTF-8")])
def test_a_bad_name_is_refused(strings: bytes, message: str):
    types = struct.pack("<III", 1, KIND_STRUCT << 24, 4)  # a struct named at offset 1
    with pytest.raises(BtfError, match=message):
        Btf(_raw_blob(types, strings))


def test_a_header_length_below_the_header_is_refused():
    blob = bytearray(_raw_blob(b"", b"\0"))
    struct.pack_into("<I", blob, 4, 8)  # hdr_len
    with pytest.raises(BtfError, match="header length 8 is shorter than the header"):
        Btf(bytes(blob))


def test_load_of_a_missing_file_names_the_path(tmp_path: Path):
    missing = tmp_path / "no-such-vmlinux"
    with pytest.raises(BtfError, match=f"cannot read kernel BTF {missing}: No such file or directory"):
        Btf.load(missing)


def test_load_reads_a_file(tmp_path: Path):
    path = tmp_path / "vmlinux"
    path.write_bytes(synthetic_kernel())
    assert kernel_layout(Btf.load(path)).task_mm == TASK_MM


def test_layout_of_the_running_kernel():
    if not VMLINUX_BTF.exists():
        pytest.skip(f"{VMLINUX_BTF} absent: the running kernel has no CONFIG_DEBUG_INFO_BTF")
    layout = kernel_layout(Btf.load())  # about 0.1 s for a 5.5 MB vmlinux BTF
    assert layout.task_mm > 0
    assert layout.task_exit_code > 0
