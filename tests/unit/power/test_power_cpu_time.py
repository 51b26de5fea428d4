from __future__ import annotations

from hostwarden.power.cpu_time import BUSY_READING_REUSE_S, ProcCpuUsage


def _stat(user_ticks: int) -> str:
    return f"cpu  {user_ticks} 0 0 1000 0 0 0 0 0 0\ncpu0 {user_ticks} 0 0 1000 0 0 0 0 0 0\n"


def test_node_busy_reading_is_shared_within_a_tick_and_fresh_after(tmp_path):
    now = [100.0]
    (tmp_path / "stat").write_text(_stat(100))
    usage = ProcCpuUsage(tmp_path, proc=tmp_path, clock=lambda: now[0])
    first = usage.node_busy_seconds()
    (tmp_path / "stat").write_text(_stat(300))
    now[0] += BUSY_READING_REUSE_S / 2
    assert usage.node_busy_seconds() == first  # the same reading, not a second read of /proc/stat
    now[0] += BUSY_READING_REUSE_S
    assert usage.node_busy_seconds() > first
