from __future__ import annotations

from pathlib import Path

from hostwarden.bpf.monitor import tracefs_events_dir, unavailable_reason
from hostwarden.bpf.programs import (
    DEFAULT_PROGRAMS,
    ProgramSpec,
    RawTracepoint,
    SleepableLsm,
    Tracepoint,
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
        elif isinstance(spec.attach, RawTracepoint):  # and the regular one, for kernels without BTF
            assert f"RAW_TRACEPOINT_PROBE({spec.attach.tracepoint.event})" in source
            assert f"TRACEPOINT_PROBE({spec.attach.tracepoint.category}, {spec.attach.tracepoint.event})" in source
        else:
            assert f"LSM_PROBE({spec.attach.hook}," in source
    assert "BPF_HASH(watched_cgroups" in packaged_unit("common")


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
