"""The daemon for real in the guest, where cgroup v2 has every controller: `hostwarden exec` with its memory
limit enforced (and an OOM kill of a call over it), `kill -9` mid-call and restart, 1,000 calls that leak
nothing. The same scenarios as the host tier (tests/host/daemon/scenarios.py), on a stock kernel."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hostwarden.capabilities import find_cgroup2_mount
from tests.host.daemon.conftest import DaemonProcess, configured_daemon, remove_tree
from tests.host.daemon.scenarios import (
    create_sandbox,
    exec_memory_hungry,
    kill9_mid_call_then_restart,
    many_calls_leak_nothing,
)
from tests.support import require

MiB = 2**20
# bpf and attestation are not what these test, and their start-up under emulation takes tens of seconds.
PARTS_OFF = "[bpf]\nenabled = false\n[attest]\nenabled = false\n"
STARTUP_TIMEOUT_S = 180


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    mount = find_cgroup2_mount(Path("/proc/self/mountinfo").read_text())
    require(mount is not None and "memory" in (mount / "cgroup.subtree_control").read_text().split(),
            "cgroup v2 with the memory controller")
    assert mount is not None
    root = mount / f"hostwarden-vmtest-daemon-{os.getpid()}-{time.monotonic_ns()}"
    d = configured_daemon(tmp_path, root, PARTS_OFF, start_timeout=STARTUP_TIMEOUT_S)
    d.start()
    try:
        yield d
    finally:
        d.stop()
        remove_tree(root)


def granted_memory_max(summary: dict) -> int:
    limit = next(lim for lim in summary["limits"] if lim["name"] == "memory.max")
    assert limit["enforced"] is True, limit  # the guest has the memory controller: nothing unenforced
    return int(limit["value"])


def test_exec_enforces_memory_max_and_an_oom_kill_ends_only_the_call(daemon: DaemonProcess, tmp_path: Path):
    create_sandbox(daemon)
    fits = exec_memory_hungry(daemon, tmp_path, memory_max="512M", exit_code=4)
    assert fits["exit_code"] == 4 and not fits["oom_killed"]
    assert granted_memory_max(fits) == 768 * MiB  # the default policy's headroom: 1.5x the intent
    assert fits["peak_memory_source"] == "memory.peak" and fits["peak_memory_bytes"] >= 100 * MiB

    over = exec_memory_hungry(daemon, tmp_path, memory_max="32M", exit_code=0)
    assert over["exit_code"] == 128 + 9 and over["oom_killed"] is True, over
    granted = granted_memory_max(over)  # 32M x headroom, or the policy's floor: below what the writer wants
    assert granted < 100 * MiB and 0.8 * granted <= over["peak_memory_bytes"] <= granted
    assert daemon.proc is not None and daemon.proc.poll() is None  # the call died, nothing else


def test_kill9_mid_call_then_restart_finishes_and_records_it(daemon: DaemonProcess, tmp_path: Path):
    kill9_mid_call_then_restart(daemon, tmp_path)


def test_thousand_calls_leak_no_cgroups_or_fds(daemon: DaemonProcess):
    many_calls_leak_nothing(daemon, 1000, timeout=900)
