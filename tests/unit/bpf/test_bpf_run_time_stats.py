from __future__ import annotations

import errno
import logging
import os
import types
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from hostwarden.bpf import kernel
from hostwarden.bpf import monitor as monitor_module
from hostwarden.bpf.events import BpfEvent
from hostwarden.bpf.monitor import RUN_TIME_STATS_MODES, STATS_PERIOD_S, STATS_WINDOW_S, BpfMonitor
from hostwarden.config import ConfigError, parse_config


def ignore(_event: BpfEvent) -> None:
    pass


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class StatsFds:
    """A stand-in for kernel.enable_run_time_stats: each call opens a pipe and hands out its read end."""

    opened: list[int] = field(default_factory=list)

    def __call__(self) -> int:
        read_end, write_end = os.pipe()
        os.close(write_end)
        self.opened.append(read_end)
        return read_end


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    # Only the monitor module's view of `time` is replaced, not the time module itself.
    monkeypatch.setattr(monitor_module, "time", types.SimpleNamespace(monotonic=clock))
    return clock


@pytest.fixture
def stats_fds(monkeypatch: pytest.MonkeyPatch) -> Iterator[StatsFds]:
    fds = StatsFds()
    monkeypatch.setattr(kernel, "enable_run_time_stats", fds)
    yield fds
    for fd in fds.opened:  # any the monitor left open
        if is_open(fd):
            os.close(fd)


def test_modes_and_sampling_window():
    assert RUN_TIME_STATS_MODES == ("sampled", "always", "off")
    assert 0 < STATS_WINDOW_S < STATS_PERIOD_S


def test_unknown_mode_is_refused_naming_the_modes():
    with pytest.raises(ValueError, match="run_time_stats must be one of sampled, always, off, got 'sometimes'"):
        BpfMonitor(ignore, run_time_stats="sometimes")


@pytest.mark.parametrize("mode", RUN_TIME_STATS_MODES)
def test_every_mode_is_accepted_and_starts_with_nothing_counted(mode: str):
    assert BpfMonitor(ignore, run_time_stats=mode).run_time_stats_seconds() == 0.0


def test_seconds_on_are_counted(clock: Clock, stats_fds: StatsFds):
    monitor = BpfMonitor(ignore, run_time_stats="sampled")
    monitor._set_run_time_stats(True)
    assert len(stats_fds.opened) == 1 and is_open(stats_fds.opened[0])
    clock.now += 2.5
    monitor._set_run_time_stats(False)
    assert not is_open(stats_fds.opened[0])
    assert monitor.run_time_stats_seconds() == 2.5
    clock.now += 7.0  # off: not counted
    assert monitor.run_time_stats_seconds() == 2.5


def test_the_running_window_is_included_while_on(clock: Clock, stats_fds: StatsFds):
    monitor = BpfMonitor(ignore, run_time_stats="sampled")
    monitor._set_run_time_stats(True)
    clock.now += 1.0
    assert monitor.run_time_stats_seconds() == 1.0
    clock.now += 1.5
    assert monitor.run_time_stats_seconds() == 2.5
    monitor._set_run_time_stats(False)
    clock.now += 5.0
    monitor._set_run_time_stats(True)
    clock.now += 0.5
    assert monitor.run_time_stats_seconds() == 3.0
    monitor._set_run_time_stats(False)
    assert monitor.run_time_stats_seconds() == 3.0
    assert len(stats_fds.opened) == 2
    assert not any(is_open(fd) for fd in stats_fds.opened)


def test_turning_on_twice_opens_one_fd_and_keeps_the_first_start(clock: Clock, stats_fds: StatsFds):
    monitor = BpfMonitor(ignore, run_time_stats="always")
    monitor._set_run_time_stats(True)
    clock.now += 1.0
    monitor._set_run_time_stats(True)
    assert len(stats_fds.opened) == 1
    clock.now += 1.0
    monitor._set_run_time_stats(False)
    assert monitor.run_time_stats_seconds() == 2.0
    assert not is_open(stats_fds.opened[0])


def test_turning_off_when_off_is_a_no_op(clock: Clock, stats_fds: StatsFds):
    monitor = BpfMonitor(ignore, run_time_stats="off")
    monitor._set_run_time_stats(False)
    clock.now += 3.0
    monitor._set_run_time_stats(False)
    assert monitor.run_time_stats_seconds() == 0.0
    assert stats_fds.opened == []


def test_refusal_leaves_it_off_warns_once_and_is_not_retried(clock: Clock, monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture):
    calls: list[int] = []

    def refuse() -> int:
        calls.append(1)
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(kernel, "enable_run_time_stats", refuse)
    monitor = BpfMonitor(ignore, run_time_stats="always")
    with caplog.at_level(logging.WARNING, logger="hostwarden.bpf.monitor"):
        monitor._set_run_time_stats(True)
        clock.now += 2.0
        monitor._set_run_time_stats(True)
        monitor._set_run_time_stats(False)
        monitor._set_run_time_stats(True)
    assert len(calls) == 1
    assert monitor.run_time_stats_seconds() == 0.0
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "BPF run-time statistics unavailable" in warnings[0].getMessage()
    assert "Operation not permitted" in warnings[0].getMessage()


# ---- [bpf] run_time_stats in the daemon's configuration ----------------------------------------


def test_config_default_is_sampled():
    assert parse_config("", "x.toml").bpf.run_time_stats == "sampled"
    assert parse_config("[bpf]\nenabled = true\n", "x.toml").bpf.run_time_stats == "sampled"


@pytest.mark.parametrize("mode", ["always", "off", "sampled"])
def test_config_modes_parse(mode: str):
    assert parse_config(f'[bpf]\nrun_time_stats = "{mode}"\n', "x.toml").bpf.run_time_stats == mode


def test_config_unknown_mode_names_the_key_and_the_modes():
    with pytest.raises(ConfigError) as refused:
        parse_config('[bpf]\nrun_time_stats = "sometimes"\n', "x.toml")
    message = str(refused.value)
    assert "bpf.run_time_stats" in message
    assert "sampled, always, off" in message
    assert "'sometimes'" in message


def test_config_mode_must_be_a_string():
    with pytest.raises(ConfigError, match=r"bpf\.run_time_stats: expected a string"):
        parse_config("[bpf]\nrun_time_stats = 1\n", "x.toml")


# ---- [bpf] rss ----------------------------------------------------------------------------------


def test_config_rss_default_is_sampled_and_both_ways_parse():
    assert parse_config("", "x.toml").bpf.rss == "sampled"
    assert parse_config('[bpf]\nrss = "every_change"\n', "x.toml").bpf.rss == "every_change"


def test_config_unknown_rss_way_names_the_key_and_the_ways():
    with pytest.raises(ConfigError, match=r"bpf\.rss: expected one of sampled, every_change, got 'sometimes'"):
        parse_config('[bpf]\nrss = "sometimes"\n', "x.toml")
