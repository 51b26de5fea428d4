"""A real daemon process on this host's cgroup v2 hierarchy, with its own socket, state and cgroup root."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hostwarden.capabilities import find_cgroup2_mount
from tests.support import require

REPO = Path(__file__).resolve().parents[3]
HOSTWARDEN = [sys.executable, "-m", "hostwarden"]


@dataclass
class DaemonProcess:
    config: Path
    socket: str
    state_dir: Path
    cgroup_root: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    # Under emulation (the vm tier), with other guests busy on the same host, start-up was seen over 30 s.
    start_timeout: float = 60.0

    def start(self) -> None:
        started_before = self.log.read_text().count("serving on") if self.log.exists() else 0
        self.proc = subprocess.Popen([*HOSTWARDEN, "daemon", "--config", str(self.config)],
                                     stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.start_timeout
        while not os.path.exists(self.socket) or self.log.read_text().count("serving on") <= started_before:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"daemon did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)

    def cli(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "HOSTWARDEN_SOCKET": self.socket}
        result = subprocess.run([*HOSTWARDEN, *args], capture_output=True, text=True, env=env, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"hostwarden {' '.join(args)} -> {result.returncode}\n{result.stdout}{result.stderr}")
        return result


def remove_tree(root: Path) -> None:
    """Kill whatever is left under root and remove it, deepest first."""
    if not root.exists():
        return
    for directory in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        if (directory / "cgroup.kill").exists():
            (directory / "cgroup.kill").write_text("1")
    time.sleep(0.1)
    for directory in sorted((p for p in [root, *root.rglob("*")] if p.is_dir()), key=lambda p: -len(p.parts)):
        for _ in range(50):
            try:
                directory.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.02)


@pytest.fixture
def cgroup_root() -> Iterator[Path]:
    mount = find_cgroup2_mount(Path("/proc/self/mountinfo").read_text())
    require(mount is not None and os.geteuid() == 0, "root and a cgroup2 mount")
    assert mount is not None
    root = mount / f"hostwarden-test-{os.getpid()}-{time.monotonic_ns()}"
    yield root
    remove_tree(root)


def configured_daemon(tmp_path: Path, cgroup_root: Path, extra_toml: str = "", *,
                      start_timeout: float = 60.0) -> DaemonProcess:
    """A daemon process (not started) with its own socket, state dir, policy path and cgroup root; `extra_toml`
    adds sections ([bpf], [power], [attest]...)."""
    config = tmp_path / "hostwarden.toml"
    socket = tmp_path / "hw.sock"
    config.write_text(f"""
[daemon]
socket = "{socket}"
state_dir = "{tmp_path / 'state'}"
cgroup_root = "{cgroup_root}"
policy = "{tmp_path / 'policy.toml'}"
[metrics]
address = "127.0.0.1:0"
""" + extra_toml)
    return DaemonProcess(config, str(socket), tmp_path / "state", cgroup_root, tmp_path / "daemon.log",
                         start_timeout=start_timeout)


@pytest.fixture
def daemon_process(tmp_path: Path, cgroup_root: Path) -> Iterator[DaemonProcess]:
    daemon = configured_daemon(tmp_path, cgroup_root)
    daemon.start()
    yield daemon
    daemon.stop()
