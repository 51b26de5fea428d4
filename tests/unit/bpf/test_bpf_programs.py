from __future__ import annotations

from pathlib import Path

import pytest

from hostwarden.bpf.events import EventKind
from hostwarden.bpf.monitor import check_cpu_offsets, cpu_list, tracefs_events_dir, unavailable_reason
from hostwarden.bpf.programs import (
    DEFAULT_PROGRAMS,
    ProgramSpec,
    RawTracepoint,
    RssSource,
    SleepableLsm,
    Tracepoint,
    compose_source,
    packaged_unit,
)


def fake_sys(tmp_path: Path, *, tracepoints: list[str], lsm: str | None, btf: bool = True) -> Path:
    for name in tracepoints:
        (tmp_path / "kernel/tracing/events" / name).mkdir(parents=True)
    if lsm is not None:
        (tmp_path / "kernel/security").mkdir(parents=True)
        (tmp_path / "kernel/security/lsm").write_text(lsm)
    if btf:
        (tmp_path / "kernel/btf").mkdir(parents=True)
        (tmp_path / "kernel/btf/vmlinux").write_bytes(b"")
    return tmp_path


def test_every_default_program_has_a_packaged_source_defining_its_function():
    for spec in DEFAULT_PROGRAMS:
        source = packaged_unit(spec.unit)
        if isinstance(spec.attach, Tracepoint):
            assert f"TRACEPOINT_PROBE({spec.attach.category}, {spec.attach.event})" in source
        elif isinstance(spec.attach, RawTracepoint):
            assert f"int {spec.attach.function}(struct bpf_raw_tracepoint_args *ctx)" in source
        else:
            assert f"LSM_PROBE({spec.attach.hook}," in source
    assert "BPF_ARRAY(watch_slots" in packaged_unit("common")
    assert "int calibrate_cpu_offset(struct bpf_raw_tracepoint_args *ctx)" in packaged_unit("rss")


def test_each_way_of_counting_rss_has_programs_and_one_sends_spikes():
    for source in RssSource:
        programs = [spec for spec in DEFAULT_PROGRAMS if spec.rss_source is source]
        assert programs, source
        assert sum(EventKind.SPIKE in spec.event_kinds for spec in programs) == 1, source


def test_library_units_come_first_in_the_composed_source():
    text = compose_source({"common": "/* c */", "rss": "/* r */", "memory": "/* m */"}, ["memory"])
    assert text.index("/* c */") < text.index("/* r */") < text.index("/* m */")


def test_cpu_lists_are_read_like_the_kernel_writes_them(tmp_path):
    cpu_dir = tmp_path / "devices/system/cpu"
    cpu_dir.mkdir(parents=True)
    (cpu_dir / "possible").write_text("0-3,6,8-9\n")
    (cpu_dir / "online").write_text("0\n")
    assert cpu_list(tmp_path, "possible") == [0, 1, 2, 3, 6, 8, 9]
    assert cpu_list(tmp_path, "online") == [0]


def test_cpu_offsets_that_agree_with_their_runqueues_pass():
    # Per-CPU areas 2 MiB apart: each CPU's runqueue copy is as far from CPU 0's as its offset is.
    base, runqueue = 0xFFFF888000000000, 0xFFFF888000100000
    found = {cpu: (base + cpu * 0x200000, runqueue + cpu * 0x200000) for cpu in range(4)}
    assert check_cpu_offsets(found) is None


@pytest.mark.parametrize(("found", "problem"), [
    ({0: (0x1000, 0x5000), 1: (0, 0x7000)}, "no offset for CPUs [1]"),
    ({0: (0x1000, 0x5000), 1: (0x3000, 0)}, "no offset for CPUs [1]"),
    ({0: (0x1000, 0x5000), 1: (0x3000, 0x8000)}, "CPU 1's offset 0x3000 and runqueue 0x8000 disagree with CPU 0's"),
    ({0: (0x1000, 0x5000), 1: (0x1000, 0x5000)}, "two CPUs have the same per-CPU offset"),
])
def test_cpu_offsets_that_do_not_add_up_are_refused(found: dict[int, tuple[int, int]], problem: str):
    assert problem in check_cpu_offsets(found)


def test_missing_tracepoint_is_named(tmp_path):
    sys_root = fake_sys(tmp_path, tracepoints=["sched/sched_process_exec"], lsm=None)
    events = tracefs_events_dir(sys_root)
    present = ProgramSpec("exec", "lifecycle", Tracepoint("sched", "sched_process_exec"))
    missing = ProgramSpec("reclaim", "reclaim", Tracepoint("vmscan", "mm_vmscan_memcg_reclaim_end"))
    assert unavailable_reason(present, sys_root, events) is None
    assert "tracepoint vmscan:mm_vmscan_memcg_reclaim_end does not exist" in unavailable_reason(
        missing, sys_root, events)


def test_unmounted_tracefs_says_how_to_mount_it(tmp_path):
    assert tracefs_events_dir(tmp_path) is None
    spec = ProgramSpec("exec", "lifecycle", Tracepoint("sched", "sched_process_exec"))
    assert "mount -t tracefs" in unavailable_reason(spec, tmp_path, None)


def test_lsm_program_needs_an_active_bpf_lsm_and_btf(tmp_path):
    spec = ProgramSpec("exec_digest", "exec_digest", SleepableLsm("bprm_check_security"))
    assert "securityfs not mounted" in unavailable_reason(spec, fake_sys(tmp_path / "a", tracepoints=[],
                                                                            lsm=None), None)
    assert "BPF LSM not active (active LSMs: capability,apparmor" in unavailable_reason(
        spec, fake_sys(tmp_path / "b", tracepoints=[], lsm="capability,apparmor\n"), None)
    assert "no kernel BTF" in unavailable_reason(
        spec, fake_sys(tmp_path / "c", tracepoints=[], lsm="capability,bpf", btf=False), None)
    assert unavailable_reason(spec, fake_sys(tmp_path / "d", tracepoints=[], lsm="capability,bpf"), None) is None
