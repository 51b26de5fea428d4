"""The bpf monitor in a daemon on a real kernel (the QEMU guest): spikes, OOM kills, LSM exec digests.

One in-process daemon for the whole module: compiling the programs takes ~25 s in the emulated guest.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hostwarden.app import Daemon
from hostwarden.bpf.btf import Btf, kernel_layout
from hostwarden.capabilities import find_cgroup2_mount
from hostwarden.config import Config, DaemonConfig, MetricsConfig
from hostwarden.events import Event, Subscription
from hostwarden.monitor import Monitor
from hostwarden.policy.resolve import Intent
from hostwarden.service import ADMIN, RunningCall
from tests.support import require

MIB = 1 << 20
MOUNT = find_cgroup2_mount(Path("/proc/self/mountinfo").read_text())
# Waits for a line on stdin (so that it is inside its call before it allocates), then writes N MiB.
ALLOCATE = "import sys, time; sys.stdin.readline(); b = b'x' * (int(sys.argv[1]) << 20); time.sleep(0.3)"


@dataclass
class VmDaemon:
    daemon: Daemon
    monitor: Monitor
    workdir: Path

    def run_call(self, intent: Intent, argv: list[str], *, prepare: Callable[[RunningCall], None] = lambda _c: None,
                 ) -> tuple[RunningCall, subprocess.Popen[bytes], dict]:
        """Start argv (it waits for a line on stdin), put it into a new call of sandbox `sb`, `prepare` the
        call, then let the process go and run to its end; returns the call's summary too."""
        process = subprocess.Popen(argv, stdin=subprocess.PIPE)
        call = self.daemon.warden.begin_call(ADMIN, "sb", Path(argv[0]).name, intent, " ".join(argv),
                                             pid=process.pid)
        prepare(call)
        assert process.stdin is not None
        process.stdin.write(b"go\n")
        process.stdin.close()
        process.wait(timeout=120)
        assert call.finished.wait(timeout=30), "the call did not end when its cgroup emptied"
        row = self.daemon.ledger.get_call(call.call_id)
        assert row is not None and row.summary is not None
        return call, process, row.summary


@pytest.fixture(scope="module")
def vm_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VmDaemon]:
    require(MOUNT is not None, "a cgroup2 mount")
    workdir = tmp_path_factory.mktemp("bpf-vm")
    config = Config(daemon=DaemonConfig(socket=str(workdir / "hw.sock"), state_dir=workdir / "state",
                                        cgroup_root=str(MOUNT / f"hostwarden-vmtest-bpf-{os.getpid()}"),
                                        policy=workdir / "policy.toml"),
                    metrics=MetricsConfig(address=""))
    daemon = Daemon(config)
    daemon.start()
    monitor = next(part for part in daemon.parts if isinstance(part, Monitor))
    daemon.warden.create_sandbox(ADMIN, "sb", {}, "normal")
    yield VmDaemon(daemon, monitor, workdir)
    daemon.warden.delete_sandbox(ADMIN, "sb", force=True)
    daemon.shutdown()
    daemon.tree.fs.rmdir(daemon.root)


def drain(subscription: Subscription, settle_s: float = 1.0) -> list[Event]:
    """Every event the subscription holds, waiting `settle_s` after the last one for stragglers."""
    events = []
    while (event := subscription.get(timeout=settle_s)) is not None:
        events.append(event)
    return events


def test_the_guest_kernels_layout_comes_from_its_btf() -> None:
    layout = kernel_layout(Btf.load())
    assert layout.task_mm > 0 and layout.task_exit_code > 0
    # An mm's RSS counters are readable: atomic longs before 6.2, percpu counters from 6.2.
    assert layout.rss is not None, layout.rss_unavailable
    release = tuple(int(part) for part in os.uname().release.split("-")[0].split(".")[:2])
    assert (layout.rss.percpu is None) == (release < (6, 2)), layout.rss


def test_a_300_mib_allocation_over_a_100_mib_threshold_is_one_spike_naming_the_process(vm_daemon: VmDaemon) -> None:
    monitor = vm_daemon.monitor
    sampler = monitor.statuses["rss_sample"]
    assert sampler.loaded and "RSS sampled" in sampler.detail, sampler.detail
    spikes = vm_daemon.daemon.bus.subscribe(kinds=["memory_spike"])
    # The call's own threshold (a fraction of memory.high) lies above 300 MiB here; the test sets 100 MiB
    # the way the policy would, before the process allocates.
    call, process, _summary = vm_daemon.run_call(
        Intent(memory_max=900 * MIB, memory_high=800 * MIB), [sys.executable, "-c", ALLOCATE, "300"],
        prepare=lambda call: monitor.set_call_threshold(call.call_id, 100 * MIB))
    assert process.returncode == 0
    events = drain(spikes)
    spikes.close()
    assert len(events) == 1, [e.message for e in events]
    spike = events[0]
    assert (spike.sandbox, spike.call_id, spike.attributes["pid"]) == ("sb", call.call_id, str(process.pid))
    assert spike.attributes["comm"].startswith("python")
    assert 100 * MIB <= int(spike.attributes["bytes"]) < 300 * MIB
    assert spike.kernel_time_ns > 0


def test_an_oom_kill_inside_a_memory_max_limited_call_is_attributed_to_it(vm_daemon: VmDaemon) -> None:
    assert vm_daemon.monitor.statuses["oom_victim"].loaded, vm_daemon.monitor.statuses["oom_victim"].detail
    ooms = vm_daemon.daemon.bus.subscribe(kinds=["oom"])
    call, process, summary = vm_daemon.run_call(Intent(memory_max=64 * MIB),
                                                [sys.executable, "-c", ALLOCATE, "300"])
    events = drain(ooms)
    ooms.close()
    assert process.returncode == -9
    assert [(e.call_id, e.attributes["pid"]) for e in events] == [(call.call_id, str(process.pid))]
    assert summary["oom_killed"] is True


def test_the_lsm_digest_of_an_executed_file_is_its_sha256(vm_daemon: VmDaemon) -> None:
    status = vm_daemon.monitor.statuses["exec_digest"]
    assert status.loaded, f"exec_digest (sleepable BPF LSM) did not load: {status.detail}"
    assert "IMA digests" in status.detail, status.detail
    executable = vm_daemon.workdir / "probe-true"
    shutil.copy2("/bin/true", executable)
    with executable.open("ab") as tail:  # a file IMA has never seen: its digest must be computed, not cached
        tail.write(f"hostwarden {time.time_ns()}".encode())
    seen: list[tuple[str, str, str | None]] = []
    vm_daemon.monitor.on_exec_digest = lambda sandbox, path, digest: seen.append((sandbox, path, digest))
    try:
        _call, process, summary = vm_daemon.run_call(Intent(), ["/bin/sh", "-c", f"read line; exec {executable}"])
    finally:
        vm_daemon.monitor.on_exec_digest = None
    assert process.returncode == 0
    assert summary["executables"] == [str(executable)]
    expected = hashlib.sha256(executable.read_bytes()).hexdigest()
    assert seen == [("sb", str(executable), expected)]
