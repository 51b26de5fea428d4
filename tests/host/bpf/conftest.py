"""Fixtures for the bpf host tier: one monitor per session (loading takes seconds)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hostwarden.bpf import BpfMonitor
from tests.host.bpf.bpf_helpers import BpfTestCgroups, EventLog, require_bcc_host


@pytest.fixture(scope="session")
def event_log() -> EventLog:
    return EventLog()


@pytest.fixture(scope="session")
def monitor(event_log: EventLog) -> Iterator[tuple[BpfMonitor, dict]]:
    require_bcc_host()
    bpf_monitor = BpfMonitor(event_log)
    statuses = bpf_monitor.start()
    yield bpf_monitor, statuses
    bpf_monitor.stop()


@pytest.fixture
def cgroups() -> Iterator[BpfTestCgroups]:
    require_bcc_host()
    made = BpfTestCgroups()
    yield made
    made.remove_all()
