from __future__ import annotations

import pytest

from hostwarden.bpf.kernel import ProgramCounters, load_sleepable_lsm, parse_program_fdinfo


def test_counters_from_fdinfo():
    text = ("pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nprog_type:\t5\nprog_jited:\t1\n"
            "prog_tag:\tcafe\nmemlock:\t4096\nprog_id:\t77\nrun_time_ns:\t52000\nrun_cnt:\t40\n"
            "recursion_misses:\t0\nverified_insns:\t120\n")
    assert parse_program_fdinfo(text) == ProgramCounters(run_time_ns=52000, run_count=40)


def test_counters_absent_read_as_zero():
    assert parse_program_fdinfo("pos:\t0\nprog_type:\t5\n") == ProgramCounters(0, 0)


def test_partial_instructions_are_refused_before_any_syscall():
    with pytest.raises(ValueError, match="not whole instructions"):
        load_sleepable_lsm(b"\0" * 12, "bprm_check_security", "exec_digest", b"GPL")
