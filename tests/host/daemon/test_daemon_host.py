"""The daemon for real: a process, a unix socket, cgroup v2 on this kernel, SQLite on disk."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tests.host.daemon.conftest import HOSTWARDEN, DaemonProcess
from tests.host.daemon.scenarios import (
    call_dirs,
    create_sandbox,
    exec_memory_hungry,
    kill9_mid_call_then_restart,
    many_calls_leak_nothing,
    released,
)


def test_exec_memory_hungry_command(daemon_process: DaemonProcess, tmp_path: Path):
    create_sandbox(daemon_process)
    summary = exec_memory_hungry(daemon_process, tmp_path, exit_code=4)
    assert summary["exit_code"] == 4 and summary["duration_seconds"] >= 0.2
    memory_max = next(lim for lim in summary["limits"] if lim["name"] == "memory.max")
    # This host's cgroup v2 has no memory controller: the limit is reported, not pretended.
    assert memory_max["enforced"] is False and "memory controller" in memory_max["reason"]


def test_exec_forwards_signals_and_reports_128_plus_signal(daemon_process: DaemonProcess):
    d = daemon_process
    d.cli("sandbox", "create", "sb")
    proc = subprocess.Popen([*HOSTWARDEN, "exec", "--socket", d.socket, "--sandbox", "sb", "--", "sleep", "30"])
    deadline = time.monotonic() + 20
    while not sum(released(c) for c in call_dirs(d)):
        assert time.monotonic() < deadline, "the call never got its process"
        time.sleep(0.02)
    proc.terminate()
    assert proc.wait(timeout=20) == 128 + 15


def test_exec_of_missing_command_fails_cleanly(daemon_process: DaemonProcess):
    d = daemon_process
    d.cli("sandbox", "create", "sb")
    result = d.cli("exec", "--sandbox", "sb", "--", "/nonexistent/tool", check=False)
    assert result.returncode == 127 and "No such file" in result.stderr


def test_kill9_mid_call_then_restart_finishes_and_records_it(daemon_process: DaemonProcess, tmp_path: Path):
    kill9_mid_call_then_restart(daemon_process, tmp_path)


def test_thousand_calls_leak_no_cgroups_or_fds(daemon_process: DaemonProcess):
    many_calls_leak_nothing(daemon_process, 1000, timeout=600)
