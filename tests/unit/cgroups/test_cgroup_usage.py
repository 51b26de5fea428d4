from __future__ import annotations

import errno

from hostwarden.cgroups.usage import Pressure, PressureLine, parse_pressure, process_rss, read_usage
from tests.unit.cgroups.fakefs import FakeCgroupFs


def test_reads_every_figure_where_present(tmp_path):
    fs = FakeCgroupFs(tmp_path / "cg", "memory pids")
    cg = fs.root
    (cg / "memory.current").write_text("4096\n")
    (cg / "memory.peak").write_text("8192\n")
    (cg / "memory.events").write_text("low 0\nhigh 3\nmax 1\noom 1\noom_kill 1\n")
    (cg / "memory.stat").write_text("anon 100\nfile 200\n")
    (cg / "cpu.stat").write_text("usage_usec 900\nuser_usec 600\nsystem_usec 300\nnr_periods 0\n")
    (cg / "pids.current").write_text("3\n")
    (cg / "memory.pressure").write_text("some avg10=1.50 avg60=0.20 avg300=0.00 total=1234\n"
                                        "full avg10=0.10 avg60=0.00 avg300=0.00 total=99\n")
    (cg / "io.pressure").write_text("some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
    usage = read_usage(cg, fs)
    assert (usage.memory_current, usage.memory_peak, usage.pids_current) == (4096, 8192, 3)
    assert usage.memory_events["high"] == 3 and usage.memory_events["oom_kill"] == 1
    assert usage.memory_stat == {"anon": 100, "file": 200}
    assert (usage.cpu_usage_usec, usage.cpu_user_usec, usage.cpu_system_usec) == (900, 600, 300)
    assert usage.psi["memory"] == Pressure(PressureLine(1.5, 0.2, 0.0, 1234), PressureLine(0.1, 0.0, 0.0, 99))
    assert usage.psi["io"].full is None
    assert usage.unavailable == {}
    totals = read_usage(cg, fs, totals_only=True)
    assert (totals.memory_peak, totals.memory_events, totals.cpu_usage_usec) == (8192, usage.memory_events, 900)
    assert (totals.memory_current, totals.memory_stat, totals.pids_current, totals.psi) == (None, {}, None, {})


def test_missing_controller_files_are_none_with_the_reason(tmp_path):
    fs = FakeCgroupFs(tmp_path / "cg", "hugetlb")  # like this host's cgroup2: cpu.stat and PSI only
    usage = read_usage(fs.root, fs)
    assert usage.memory_current is None and usage.memory_peak is None and usage.pids_current is None
    assert usage.cpu_usage_usec == 0
    assert usage.unavailable["memory_current"] \
        == "memory.current unreadable: ENOENT (memory controller not enabled here)"
    assert "memory_events" in usage.unavailable and "pids_current" in usage.unavailable
    assert usage.psi["memory"] is None and usage.psi["cpu"] is not None


def test_unreadable_file_is_reported_not_raised(tmp_path):
    fs = FakeCgroupFs(tmp_path / "cg")
    fs.fail_read["cpu.stat"] = errno.EACCES
    usage = read_usage(fs.root, fs)
    assert usage.cpu_usage_usec is None
    assert usage.unavailable["cpu_usage_usec"] == "cpu.stat unreadable: EACCES"


def test_parse_pressure_some_only():
    assert parse_pressure("some avg10=0.00 avg60=1.00 avg300=2.00 total=5\n").some.avg300 == 2.0


def test_process_rss_sums_vmrss_of_member_processes(tmp_path):
    fs = FakeCgroupFs(tmp_path / "cg")
    proc = tmp_path / "proc"
    for pid, status in ((10, "Name:\tx\nVmRSS:\t    100 kB\n"), (11, "Name:\tkthread\n"), (12, "VmRSS:\t 1 kB\n")):
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "status").write_text(status)
        fs.put_process(fs.root, pid)
    fs.put_process(fs.root, 13)  # exited before its status was read
    rss = process_rss(fs.root, fs, proc)
    assert rss.bytes == 101 * 1024 and rss.processes == 2
    assert "summed VmRSS" in rss.source and "no memory controller" in rss.source
