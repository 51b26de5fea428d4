"""Scenarios of a real daemon process that the host and vm tiers both run, each with its own daemon
(tests/host/daemon/test_daemon_host.py, tests/vm/daemon/test_daemon_vm.py)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hostwarden.endpoints import call_socket_path
from tests.host.daemon.conftest import HOSTWARDEN, DaemonProcess

# Writes every page of 100 MiB, holds it 0.2 s, then exits with argv[1].
ALLOCATE_100M = ("import sys, time; b = bytearray(100 * 2**20); b[::4096] = b'x' * (len(b) // 4096); "
                 "time.sleep(0.2); sys.exit(int(sys.argv[1]))")


def call_dirs(daemon: DaemonProcess) -> list[Path]:
    calls = daemon.cgroup_root / "sb" / "calls"
    return [p for p in calls.iterdir() if p.is_dir()] if calls.exists() else []


def released(call: Path) -> int:
    """Processes of the call that already exec'd their command (`sleep` or `sh`; a held child is python)."""
    count = 0
    for pid in (call / "cgroup.procs").read_text().split():
        with contextlib.suppress(OSError):
            count += Path(f"/proc/{pid}/comm").read_text().strip() in ("sleep", "sh")
    return count


def ledger_row(daemon: DaemonProcess, call_id: str) -> tuple:
    db = sqlite3.connect(daemon.state_dir / "ledger.sqlite3")
    try:
        return db.execute("SELECT state, summary FROM calls WHERE call_id=?", (call_id,)).fetchone()
    finally:
        db.close()


def create_sandbox(d: DaemonProcess) -> None:
    """Sandbox `sb`, through the CLI: its token is printed once, and its cgroup exists."""
    created = json.loads(d.cli("sandbox", "create", "sb", "--label", "team=a", "--json").stdout)
    assert created["token"] and Path(created["sandbox"]["cgroup_path"]).is_dir()


def exec_memory_hungry(d: DaemonProcess, tmp_path: Path, memory_max: str = "512M",
                       exit_code: int = 4) -> dict[str, Any]:
    """`hostwarden exec` of a 100 MiB writer in sandbox `sb`; checks what holds on every host (the exit status,
    the summary, the ledger row, `calls`, no leftover cgroup) and returns the summary."""
    # `exec` sends Begin and End on the tool-call socket, bound beside the gRPC socket with its mode.
    assert stat.S_IMODE(call_socket_path(d.socket).stat().st_mode) == 0o660
    summary_file = tmp_path / "summary.json"
    result = d.cli("exec", "--sandbox", "sb", "--tool", "alloc", "--memory-max", memory_max, "--timeout", "60",
                   "--summary-json", str(summary_file), "--", sys.executable, "-c", ALLOCATE_100M, str(exit_code),
                   check=False)
    summary = json.loads(summary_file.read_text())
    assert result.returncode == summary["exit_code"], result.stderr
    assert summary["tool"] == "alloc" and summary["state"] == "finished" and summary["cpu_seconds"] > 0
    state, stored = ledger_row(d, summary["call_id"])
    assert state == "finished" and json.loads(stored)["exit_code"] == summary["exit_code"]
    assert not call_dirs(d)
    calls = json.loads(d.cli("calls", "--sandbox", "sb", "--json").stdout)
    assert calls[0]["call_id"] == summary["call_id"]  # newest first
    return summary


def kill9_mid_call_then_restart(d: DaemonProcess, tmp_path: Path) -> None:
    """Two calls run when the daemon is killed with SIGKILL: one ends while it is down (finished as
    `recovered` at the restart), the other runs until after the restart and ends through EndToolCall."""
    d.cli("sandbox", "create", "sb")
    go_on = tmp_path / "restarted"
    running = subprocess.Popen([*HOSTWARDEN, "exec", "--socket", d.socket, "--sandbox", "sb", "--", "sh", "-c",
                                f"until [ -e {go_on} ]; do sleep 0.05; done"], stderr=subprocess.PIPE, text=True)
    ended_while_down = subprocess.Popen(
        [*HOSTWARDEN, "exec", "--socket", d.socket, "--sandbox", "sb", "--", "sleep", "0.3"],
        stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while sum(bool(released(c)) for c in call_dirs(d)) < 2:  # both released: BeginToolCall has answered
        assert time.monotonic() < deadline
        time.sleep(0.02)
    d.kill9()
    assert ended_while_down.wait(timeout=60) == 0  # the command's status, even though End could not be sent
    d.start()
    go_on.touch()
    assert running.wait(timeout=60) == 0, running.stderr.read()
    db = sqlite3.connect(d.state_dir / "ledger.sqlite3")
    rows = db.execute("SELECT state, json_extract(summary, '$.end_reason') FROM calls").fetchall()
    db.close()
    assert sorted(rows) == [("finished", "ended"), ("finished", "recovered")] or \
        sorted(rows) == [("finished", "emptied"), ("finished", "recovered")]
    assert not call_dirs(d), "a call cgroup leaked"


def many_calls_leak_nothing(d: DaemonProcess, calls: int, timeout: float) -> None:
    """`calls` tool calls of /bin/true from one client leave no call cgroup, no daemon fd, no running call."""
    d.cli("sandbox", "create", "sb")
    assert d.proc is not None
    fds_before = len(list(Path(f"/proc/{d.proc.pid}/fd").iterdir()))
    # One client for all calls, as a runtime would hold it; each child is forked and held until attached.
    loop = ("from hostwarden.client import Client\nfrom hostwarden.exec_call import WaitingChild, run_tool_call\n"
            "from hostwarden.proto import warden_pb2 as pb\n"
            f"client = Client({d.socket!r})\n"
            f"for i in range({calls}):\n"
            "    child = WaitingChild.fork(['/bin/true'])\n"
            "    r = run_tool_call(client, child, 'sb', 'true', pb.Intent(), ['/bin/true'])\n"
            "    assert r.exit_code == 0 and r.summary is not None, r\n")
    subprocess.run([sys.executable, "-c", loop], check=True, timeout=timeout)
    assert not call_dirs(d), "call cgroups leaked"
    fds_after = len(list(Path(f"/proc/{d.proc.pid}/fd").iterdir()))
    assert fds_after <= fds_before + 5, (fds_before, fds_after)
    status = json.loads(d.cli("status", "--json").stdout)
    assert status["daemon"]["running_calls"] == 0 and status["daemon"]["call_socket"] == str(call_socket_path(d.socket))
    db = sqlite3.connect(d.state_dir / "ledger.sqlite3")
    assert db.execute("SELECT count(*) FROM calls WHERE state='finished'").fetchone()[0] == calls
    db.close()
