"""An in-process daemon on a fake cgroupfs, served over a real unix socket in a tmp dir."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hostwarden.app import Daemon
from hostwarden.cgroups.tree import CgroupTree
from hostwarden.client import Client
from hostwarden.config import BpfConfig, Config, DaemonConfig, MetricsConfig
from hostwarden.proto import warden_pb2 as pb
from tests.unit.cgroups.fakefs import FakeCgroupFs


def make_daemon(tmp_path: Path, *, policy: str | None = None, queue: int = 1024, **daemon_keys: object) -> Daemon:
    fs = FakeCgroupFs(tmp_path / "cgroup" / "hostwarden")
    policy_path = tmp_path / "policy.toml"
    if policy is not None:
        policy_path.write_text(policy)
    config = Config(daemon=DaemonConfig(socket=str(tmp_path / "hw.sock"), state_dir=tmp_path / "state",
                                        policy=policy_path, event_queue_size=queue, **daemon_keys),
                    metrics=MetricsConfig(address="127.0.0.1:0"),
                    bpf=BpfConfig(enabled=False))  # the unit tier loads no eBPF; tests/unit/monitor fakes it
    return Daemon(config, tree=CgroupTree(fs.root, fs), cgroup_mount=tmp_path / "cgroup")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = make_daemon(tmp_path)
    d.start()
    yield d
    d.shutdown()


@pytest.fixture
def admin(daemon: Daemon) -> Iterator[Client]:
    with Client(daemon.config.daemon.socket) as client:
        yield client


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A live process to attach (the fake cgroupfs only records its pid)."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def create(client: Client, name: str, priority: int = pb.PRIORITY_NORMAL, **labels: str) -> str:
    return client.call("CreateSandbox", pb.CreateSandboxRequest(name=name, priority=priority, labels=labels)).token
