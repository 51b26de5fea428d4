"""The daemon for real: a process, a unix socket, cgroup v2 on this kernel, SQLite on disk."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

from hostwarden.call_socket import call_socket_path
from tests.host.daemon.conftest import HOSTWARDEN, DaemonProcess

ALLOCATE_100M = "import time; b = bytearray(100 * 2**20); b[::4096] = b'x' * (len(b) // 4096); time.sleep(0.2)"


def call_dirs(daemon: DaemonProcess) -> list[Path]:
    calls = daemon.cgroup_root / "sb" / "calls"
    return [p for p in calls.iterdir() if p.is_dir()] if calls.exists() else []


def running_sleeps(call: Path) -> int:
    count = 0
    for pid in (call / "cgroup.procs").read_text().split():
        with contextlib.suppress(OSError):
            count += Path(f"/proc/{pid}/comm").read_text().strip() == "sleep"
    return count


def ledger_row(daemon: DaemonProcess, call_id: str) -> tuple:
    db = sqlite3.connect(daemon.state_dir / "ledger.sqlite3")
    try:
        return db.execute("SELECT state, summary FROM calls WHERE call_id=?", (call_id,)).fetchone()
    finally:
        db.close()


def test_exec_memory_hungry_command(daemon_process: DaemonProcess, tmp_path: Path):
    d = daemon_process
    # `exec` sends Begin and End on the tool-call socket, bound beside the gRPC socket with its mode.
    assert stat.S_IMODE(call_socket_path(d.socket).stat().st_mode) == 0o660
    created = json.loads(d.cli("sandbox", "create", "sb", "--label", "team=a", "--json").stdout)
    assert created["token"] and Path(created["sandbox"]["cgroup_path"]).is_dir()
    summary_file = tmp_path / "summary.json"
    result = d.cli("exec", "--sandbox", "sb", "--tool", "alloc", "--memory-max", "512M", "--timeout", "60",
                   "--summary-json", str(summary_file), "--", sys.executable, "-c", ALLOCATE_100M + "; exit(4)",
                   check=False)
    assert result.returncode == 4, result.stderr
    summary = json.loads(summary_file.read_text())
    assert summary["exit_code"] == 4 and summary["tool"] == "alloc" and summary["state"] == "finished"
    assert summary["duration_seconds"] >= 0.2 and summary["cpu_seconds"] > 0
    memory_max = next(lim for lim in summary["limits"] if lim["name"] == "memory.max")
    # This host's cgroup v2 has no memory controller: the limit is reported, not pretended.
    assert memory_max["enforced"] is False and "memory controller" in memory_max["reason"]
    state, stored = ledger_row(d, summary["call_id"])
    assert state == "finished" and json.loads(stored)["exit_code"] == 4
    assert not call_dirs(d)
    calls = json.loads(d.cli("calls", "--sandbox", "sb", "--json").stdout)
    assert [c["call_id"] for c in calls] == [summary["call_id"]]


def test_exec_forwards_signals_and_reports_128_plus_signal(daemon_process: DaemonProcess):
    d = daemon_process
    d.cli("sandbox", "create", "sb")
    proc = subprocess.Popen([*HOSTWARDEN, "exec", "--socket", d.socket, "--sandbox", "sb", "--", "sleep", "30"])
    deadline = time.monotonic() + 20
    while not sum(running_sleeps(c) for c in call_dirs(d)):
        assert time.monotonic() < deadline, "the call never got its process"
        time.sleep(0.02)
    proc.terminate()
    assert proc.wait(timeout=20) == 128 + 15


def test_exec_of_missing_command_fails_cleanly(daemon_process: DaemonProcess):
    d = daemon_process
    d.cli("sandbox", "create", "sb")
    result = d.cli("exec", "--sandbox", "sb", "--", "/nonexistent/tool", check=False)
    assert result.returncode == 127 and "No such file" in result.stderr


def test_kill9_mid_call_then_restart_finishes_and_records_it(daemon_process: DaemonProcess):
    d = daemon_process
    d.cli("sandbox", "create", "sb")
    # Outlives the restart (the restarted daemon loads its bpf programs first), so it ends through EndToolCall.
    running = subprocess.Popen([*HOSTWARDEN, "exec", "--socket", d.socket, "--sandbox", "sb", "--", "sleep", "8"],
                               stderr=subprocess.PIPE, text=True)
    ended_while_down = subprocess.Popen(
        [*HOSTWARDEN, "exec", "--socket", d.socket, "--sandbox", "sb", "--", "sleep", "0.3"],
        stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while sum(running_sleeps(c) for c in call_dirs(d)) < 2:  # both released: BeginToolCall has answered
        assert time.monotonic() < deadline
        time.sleep(0.02)
    d.kill9()
    assert ended_while_down.wait(timeout=20) == 0  # the command's status, even though End could not be sent
    d.start()
    assert running.wait(timeout=30) == 0, running.stderr.read()
    db = sqlite3.connect(d.state_dir / "ledger.sqlite3")
    rows = db.execute("SELECT state, json_extract(summary, '$.end_reason') FROM calls").fetchall()
    db.close()
    assert sorted(rows) == [("finished", "ended"), ("finished", "recovered")] or \
        sorted(rows) == [("finished", "emptied"), ("finished", "recovered")]
    assert not call_dirs(d), "a call cgroup leaked"


def test_thousand_calls_leak_no_cgroups_or_fds(daemon_process: DaemonProcess):
    d = daemon_process
    d.cli("sandbox", "create", "sb")
    fds_before = len(list(Path(f"/proc/{d.proc.pid}/fd").iterdir()))
    # One client for all calls, as a runtime would hold it; each child is forked and held until attached.
    loop = ("from hostwarden.client import Client\nfrom hostwarden.exec_call import WaitingChild, run_tool_call\n"
            "from hostwarden.proto import warden_pb2 as pb\n"
            f"client = Client({d.socket!r})\n"
            "for i in range(1000):\n"
            "    child = WaitingChild.fork(['/bin/true'])\n"
            "    r = run_tool_call(client, child, 'sb', 'true', pb.Intent(), ['/bin/true'])\n"
            "    assert r.exit_code == 0 and r.summary is not None, r\n")
    subprocess.run([sys.executable, "-c", loop], check=True, timeout=600)
    assert not call_dirs(d), "call cgroups leaked"
    fds_after = len(list(Path(f"/proc/{d.proc.pid}/fd").iterdir()))
    assert fds_after <= fds_before + 5, (fds_before, fds_after)
    status = json.loads(d.cli("status", "--json").stdout)
    assert status["daemon"]["running_calls"] == 0
    db = sqlite3.connect(d.state_dir / "ledger.sqlite3")
    assert db.execute("SELECT count(*) FROM calls WHERE state='finished'").fetchone()[0] == 1000
    db.close()
