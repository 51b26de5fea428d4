"""CgroupWatcher on plain files: inotify reports their writes just as kernfs reports cgroupfs changes."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from hostwarden.cgroups.errors import CgroupIOError
from hostwarden.cgroups.notify import CgroupWatcher, PsiTrigger

WAIT_S = 5.0  # generous upper bound against a loaded machine; the latency itself is measured in bench/host


def _write_in_place(file: Path, text: str) -> None:
    """One write at offset 0, no truncation: a reader never sees a half-written file."""
    with open(file, "r+") as handle:
        handle.write(text)


def _events(populated: int) -> str:
    return f"populated {populated}\nfrozen 0\n"


class Recorder:
    def __init__(self) -> None:
        self.emptied: list[Path] = []
        self.memory: list[tuple[Path, dict[str, int]]] = []
        self.changed = threading.Condition()

    def on_emptied(self, path: Path) -> None:
        with self.changed:
            self.emptied.append(path)
            self.changed.notify_all()

    def on_memory(self, path: Path, increases: dict[str, int]) -> None:
        with self.changed:
            self.memory.append((path, increases))
            self.changed.notify_all()

    def wait_for(self, predicate) -> bool:
        with self.changed:
            return self.changed.wait_for(predicate, WAIT_S)


@pytest.fixture
def recorder():
    return Recorder()


@pytest.fixture
def watcher(recorder):
    watcher = CgroupWatcher(recorder.on_emptied, recorder.on_memory)
    watcher.start()
    yield watcher
    watcher.stop()


def _cgroup(tmp_path: Path, name: str, populated: int, memory: bool = False) -> Path:
    path = tmp_path / name
    path.mkdir()
    (path / "cgroup.events").write_text(_events(populated))
    if memory:
        (path / "memory.events").write_text("low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n")
    return path


def test_emptied_is_reported_on_the_change(tmp_path, recorder, watcher):
    call = _cgroup(tmp_path, "c1", populated=1)
    watcher.watch(call)
    _write_in_place(call / "cgroup.events", _events(0))
    assert recorder.wait_for(lambda: recorder.emptied == [call])


def test_emptied_before_the_watch_is_reported_at_once(tmp_path, recorder, watcher):
    call = _cgroup(tmp_path, "c1", populated=0)
    watcher.watch(call, attached=True)
    assert recorder.wait_for(lambda: recorder.emptied == [call])


def test_not_yet_attached_waits_for_populated_first(tmp_path, recorder, watcher):
    # A memory.events change serves as a barrier: once it is reported, the earlier cgroup.events
    # change has been read too (inotify delivers in order; cgroup.events is read first).
    idle = _cgroup(tmp_path, "idle", populated=0, memory=True)
    watcher.watch(idle, attached=False)
    _write_in_place(idle / "memory.events", "low 1\nhigh 0\nmax 0\noom 0\noom_kill 0\n")
    assert recorder.wait_for(lambda: len(recorder.memory) == 1)
    assert recorder.emptied == []
    _write_in_place(idle / "cgroup.events", _events(1))
    _write_in_place(idle / "memory.events", "low 2\nhigh 0\nmax 0\noom 0\noom_kill 0\n")
    assert recorder.wait_for(lambda: len(recorder.memory) == 2)
    assert recorder.emptied == []
    _write_in_place(idle / "cgroup.events", _events(0))
    assert recorder.wait_for(lambda: recorder.emptied == [idle])


def test_memory_event_increases_are_delivered(tmp_path, recorder, watcher):
    call = _cgroup(tmp_path, "c1", populated=1, memory=True)
    watcher.watch(call)
    _write_in_place(call / "memory.events", "low 0\nhigh 4\nmax 0\noom 1\noom_kill 1\n")
    assert recorder.wait_for(lambda: recorder.memory)
    assert recorder.memory[0] == (call, {"high": 4, "oom": 1, "oom_kill": 1})
    assert recorder.emptied == []


def test_unwatched_cgroups_are_silent_and_watch_is_idempotent(tmp_path, recorder, watcher):
    quiet = _cgroup(tmp_path, "quiet", populated=1)
    loud = _cgroup(tmp_path, "loud", populated=1)
    watcher.watch(quiet)
    watcher.watch(quiet)
    watcher.watch(loud)
    watcher.unwatch(quiet)
    assert watcher.watched() == [loud]
    _write_in_place(quiet / "cgroup.events", _events(0))
    _write_in_place(loud / "cgroup.events", _events(0))
    assert recorder.wait_for(lambda: recorder.emptied)
    assert recorder.emptied == [loud]


def test_a_failing_callback_does_not_stop_the_thread(tmp_path, recorder):
    calls: list[Path] = []

    def flaky(path: Path) -> None:
        calls.append(path)
        if len(calls) == 1:
            raise RuntimeError("boom")
        recorder.on_emptied(path)

    watcher = CgroupWatcher(flaky)
    watcher.start()
    try:
        first, second = _cgroup(tmp_path, "a", 0), _cgroup(tmp_path, "b", 0)
        watcher.watch(first)
        watcher.watch(second)
        assert recorder.wait_for(lambda: len(calls) == 2)
    finally:
        watcher.stop()
    assert recorder.emptied == [calls[1]]


def test_removed_cgroup_drops_its_watch(tmp_path, recorder, watcher):
    call = _cgroup(tmp_path, "c1", populated=1)
    watcher.watch(call)
    (call / "cgroup.events").unlink()
    other = _cgroup(tmp_path, "c2", populated=0)
    watcher.watch(other)  # processed after the first one's IN_IGNORED
    assert recorder.wait_for(lambda: recorder.emptied == [other])
    assert recorder.wait_for(lambda: watcher.watched() == [other])


def test_watching_a_missing_cgroup_names_the_file(tmp_path, watcher):
    with pytest.raises(CgroupIOError, match=r"cgroup\.events failed: ENOENT"):
        watcher.watch(tmp_path / "nope")
    assert watcher.watched() == []


def test_stop_joins_the_thread(recorder):
    watcher = CgroupWatcher(recorder.on_emptied)
    watcher.start()
    watcher.stop()
    assert not any(t.name == "cgroup-watcher" and t.is_alive() for t in threading.enumerate())


@pytest.mark.parametrize(
    ("kind", "stall", "window", "message"),
    [
        ("half", 1000, 1_000_000, "'some' or 'full'"),
        ("some", 1000, 100_000, "window must be 500000 to 10000000"),
        ("some", 0, 1_000_000, "stall must be above 0"),
        ("full", 2_000_000, 1_000_000, "at most the window"),
    ],
)
def test_psi_trigger_validates_before_touching_the_file(tmp_path, kind, stall, window, message):
    with pytest.raises(ValueError, match=message):
        PsiTrigger(tmp_path / "absent.pressure", kind, stall, window)


def test_psi_trigger_on_missing_file_names_it(tmp_path):
    with pytest.raises(CgroupIOError, match=r"memory\.pressure failed: ENOENT"):
        PsiTrigger(tmp_path / "memory.pressure", "some", 100_000, 1_000_000)


def test_psi_trigger_writes_the_kernel_format(tmp_path):
    pressure = tmp_path / "memory.pressure"
    pressure.write_text("")
    trigger = PsiTrigger(pressure, "full", 150_000, 1_000_000)
    assert trigger.fileno() >= 0
    trigger.close()
    trigger.close()
    assert pressure.read_bytes() == b"full 150000 1000000\0"
    assert os.path.exists(pressure)
