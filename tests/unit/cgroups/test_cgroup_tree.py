from __future__ import annotations

import errno
import os
import subprocess
import time
from pathlib import Path

import pytest

from hostwarden.cgroups.errors import (
    CgroupBusy,
    CgroupExists,
    CgroupIOError,
    CgroupNotFound,
    InvalidName,
    PathEscape,
)
from hostwarden.cgroups.limits import Limits
from hostwarden.cgroups.tree import CgroupTree
from tests.unit.cgroups.fakefs import FakeCgroupFs


@pytest.fixture
def fs(tmp_path):
    return FakeCgroupFs(tmp_path / "cg" / "hostwarden")


@pytest.fixture
def tree(fs):
    return CgroupTree(fs.root, fs=fs)


def _listing(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir())


def test_root_must_be_a_cgroup(tmp_path):
    with pytest.raises(CgroupNotFound, match="is not a cgroup"):
        CgroupTree(tmp_path)


def test_create_sandbox_lays_out_agent_and_calls_with_controllers(tree, fs):
    path = tree.create_sandbox("s1")
    assert path == fs.root / "s1"
    assert _listing(fs.root) == ["s1", "s1/agent", "s1/calls"]
    for node in (fs.root, path, path / "calls"):
        assert set((node / "cgroup.subtree_control").read_text().split()) == {"cpu", "memory", "pids"}
    assert (path / "agent" / "cgroup.subtree_control").read_text().strip() == ""


def test_create_sandbox_twice_or_reserved_is_refused(tree):
    tree.create_sandbox("s1")
    with pytest.raises(CgroupExists, match="already exists"):
        tree.create_sandbox("s1")
    with pytest.raises(InvalidName, match="reserved"):
        tree.create_sandbox("supervisor")


def test_failed_sandbox_creation_leaves_nothing(tree, fs):
    fs.fail_write["cgroup.subtree_control"] = errno.EACCES
    with pytest.raises(CgroupIOError, match="EACCES"):
        tree.create_sandbox("s1")
    assert _listing(fs.root) == []


@pytest.mark.parametrize("bad", ["..", "../x", "a/b", "", "x\ny"])
def test_bad_names_change_nothing(tree, fs, bad):
    with pytest.raises(InvalidName):
        tree.create_sandbox(bad)
    tree.create_sandbox("ok")
    with pytest.raises(InvalidName):
        tree.create_call("ok", bad, Limits())
    assert _listing(fs.root) == ["ok", "ok/agent", "ok/calls"]


def test_paths_outside_the_root_are_refused(tree, fs, tmp_path):
    tree.create_sandbox("s1")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    sibling = fs.root.parent / (fs.root.name + "-sibling")  # shares the root's name as a string prefix
    for path in (fs.root, fs.root / "..", fs.root / "s1" / ".." / "..", outside, sibling, Path("/"),
                 fs.root / "s1" / "calls" / ".." / ".." / "..", Path("relative/../../..")):
        with pytest.raises(PathEscape, match="not inside the daemon's cgroup root"):
            tree.attach(path, os.getpid())
        with pytest.raises(PathEscape):
            tree.remove(path)
        with pytest.raises(PathEscape):
            tree.kill(path)


def test_create_call_applies_limits_and_reports_outcomes(tree, fs):
    tree.create_sandbox("s1")
    path, outcomes = tree.create_call("s1", "c1", Limits(memory_max=1 << 20, pids_max=8))
    assert path == fs.root / "s1" / "calls" / "c1"
    assert [(o.file, o.enforced) for o in outcomes] == [("memory.max", True), ("pids.max", True)]
    assert (path / "memory.max").read_text().strip() == str(1 << 20)


def test_create_call_errors(tree, fs):
    with pytest.raises(CgroupNotFound, match="no sandbox 'nope'"):
        tree.create_call("nope", "c1", Limits())
    tree.create_sandbox("s1")
    tree.create_call("s1", "c1", Limits())
    with pytest.raises(CgroupExists):
        tree.create_call("s1", "c1", Limits())
    fs.fail_write["memory.max"] = errno.EINVAL
    with pytest.raises(CgroupIOError, match=r"memory\.max failed: EINVAL"):
        tree.create_call("s1", "c2", Limits(memory_max=5))
    assert not (fs.root / "s1" / "calls" / "c2").exists()


def test_attach_moves_the_process_and_marks_populated(tree, fs):
    tree.create_sandbox("s1")
    path, _ = tree.create_call("s1", "c1", Limits())
    tree.attach(path, 4242)
    assert tree.pids(path) == [4242]
    assert tree.populated(path) and tree.populated(fs.root / "s1")
    fs.dead_pids.add(99)
    with pytest.raises(CgroupNotFound, match="process 99 does not exist"):
        tree.attach(path, 99)
    for bad in (0, -1, True, "12"):
        with pytest.raises(CgroupNotFound, match="positive integer"):
            tree.attach(path, bad)
    with pytest.raises(CgroupNotFound, match="no cgroup at"):
        tree.attach(fs.root / "s1" / "calls" / "gone", 1)


def test_freeze_and_thaw_confirmed_by_events(tree, fs):
    tree.create_sandbox("s1")
    path, _ = tree.create_call("s1", "c1", Limits())
    tree.freeze(path)
    assert fs.read_keyed(path / "cgroup.events")["frozen"] == 1
    tree.thaw(path)
    assert fs.read_keyed(path / "cgroup.events")["frozen"] == 0
    fs.freezes = False
    with pytest.raises(CgroupBusy, match="was not frozen within"):
        tree.freeze(path, timeout=0.01)


def test_kill_uses_cgroup_kill(tree, fs):
    tree.create_sandbox("s1")
    path, _ = tree.create_call("s1", "c1", Limits())
    tree.attach(path, 4242)
    tree.kill(path)
    assert (path / "cgroup.kill", "1") in fs.writes
    assert not tree.populated(path)
    tree.remove(path)
    with pytest.raises(CgroupNotFound, match="no cgroup at"):
        tree.kill(path)  # found out by the write itself, once cgroup.kill is known to exist


def test_kill_without_cgroup_kill_signals_each_process_while_frozen(tree, fs):
    tree.create_sandbox("s1")
    path, _ = tree.create_call("s1", "c1", Limits())
    (path / "cgroup.kill").unlink()
    child = subprocess.Popen(["sleep", "30"])
    try:
        fs.put_process(path, child.pid)
        tree.kill(path)
        assert child.wait(timeout=5) == -9
    finally:
        child.kill()
    assert [v for f, v in fs.writes if f.name == "cgroup.freeze"] == ["1", "0"]


def test_remove_retries_while_dying_then_succeeds(tree, fs):
    tree.create_sandbox("s1")
    path, _ = tree.create_call("s1", "c1", Limits())
    fs.extra_busy[path] = 3
    tree.remove(path, timeout=1.0)
    assert not path.exists()


def test_remove_gives_up_with_a_clear_error(tree, fs):
    tree.create_sandbox("s1")
    path, _ = tree.create_call("s1", "c1", Limits())
    tree.attach(path, 4242)
    with pytest.raises(CgroupBusy, match=r"still holds 1 process\(es\) .*4242.*kill the cgroup first"):
        tree.remove(path, timeout=0.01)
    assert path.exists()
    with pytest.raises(CgroupBusy, match="still has child cgroups"):
        tree.remove(fs.root / "s1" / "calls", timeout=0.0)
    fs.fail_write["mkdir"] = errno.ENOSPC
    with pytest.raises(CgroupIOError, match="ENOSPC"):
        tree.create_call("s1", "c2", Limits())


def test_remove_missing(tree, fs):
    with pytest.raises(CgroupNotFound, match="does not exist"):
        tree.remove(fs.root / "nope")
    tree.remove(fs.root / "nope", missing_ok=True)


def test_delete_sandbox_refuses_while_running_unless_forced(tree, fs):
    tree.create_sandbox("s1")
    path, _ = tree.create_call("s1", "c1", Limits())
    tree.attach(fs.root / "s1" / "agent", 7)
    with pytest.raises(CgroupBusy, match=r"still runs 1 process\(es\) .*7.*delete with force"):
        tree.delete_sandbox("s1", force=False)
    assert path.exists()
    tree.delete_sandbox("s1", force=True)
    assert _listing(fs.root) == []
    with pytest.raises(CgroupNotFound):
        tree.delete_sandbox("s1", force=True)


def test_adopt_in_place_moves_processes_into_agent(tree, fs):
    existing = fs.root / "legacy"
    fs.mkdir(existing)
    fs.put_process(existing, 11)
    fs.put_process(existing, 12)
    assert tree.adopt_sandbox("legacy", existing) == existing
    assert tree.pids(existing / "agent") == [11, 12]
    assert fs.read_pids(existing) == []
    assert _listing(fs.root) == ["legacy", "legacy/agent", "legacy/calls"]
    with pytest.raises(CgroupExists):
        tree.adopt_sandbox("legacy", existing)


def test_adopt_from_another_cgroup_below_root(tree, fs):
    fs.mkdir(fs.root / "runtime")
    fs.mkdir(fs.root / "runtime" / "box")
    fs.put_process(fs.root / "runtime" / "box", 21)
    path = tree.adopt_sandbox("s2", fs.root / "runtime" / "box")
    assert tree.pids(path / "agent") == [21]
    assert not (fs.root / "runtime" / "box").exists()
    assert [s.name for s in tree.scan()] == ["s2"]


def test_adopt_refuses_outside_root_and_non_cgroups(tree, fs, tmp_path):
    with pytest.raises(PathEscape):
        tree.adopt_sandbox("s", tmp_path)
    with pytest.raises(PathEscape):
        tree.adopt_sandbox("s", fs.root)
    (fs.root / "plain").mkdir()
    with pytest.raises(CgroupNotFound, match="not a cgroup"):
        tree.adopt_sandbox("s", fs.root / "plain")


def test_adopt_gives_up_on_a_cgroup_that_keeps_forking(tree, fs, monkeypatch):
    fs.mkdir(fs.root / "forky")
    fs.put_process(fs.root / "forky", 1)
    real_attach = tree.attach
    pid_source = iter(range(100, 1000))

    def attach_and_fork(path, pid):
        real_attach(path, pid)
        fs.put_process(fs.root / "forky", next(pid_source))

    monkeypatch.setattr(tree, "attach", attach_and_fork)
    with pytest.raises(CgroupBusy, match="kept gaining processes"):
        tree.adopt_sandbox("forky", fs.root / "forky")


def test_scan_rebuilds_sandboxes_and_calls_from_the_tree(tree, fs):
    tree.create_sandbox("a")
    tree.create_sandbox("b")
    running, _ = tree.create_call("a", "c1", Limits())
    tree.create_call("a", "c2", Limits())
    tree.attach(running, 5)
    fs.mkdir(fs.root / "supervisor")
    fs.mkdir(fs.root / "stranger")  # not laid out by us: not a sandbox
    after_restart = CgroupTree(fs.root, fs=fs)
    states = after_restart.scan()
    assert [s.name for s in states] == ["a", "b"]
    assert states[0].agent_path == fs.root / "a" / "agent"
    assert [(c.call_id, c.populated) for c in states[0].calls] == [("c1", True), ("c2", False)]
    assert states[1].calls == []


def test_reaper_removes_empty_calls_but_keeps_running_and_kept(tree, fs):
    tree.create_sandbox("a")
    running, _ = tree.create_call("a", "run", Limits())
    pending, _ = tree.create_call("a", "pending", Limits())
    stray, _ = tree.create_call("a", "stray", Limits())
    tree.attach(running, 5)
    assert tree.reap_empty_calls(keep=[pending]) == [stray]
    assert running.exists() and pending.exists() and not stray.exists()


def test_reaper_leaves_calls_made_since_a_given_time(tree, fs):
    """A call being begun exists as an empty cgroup before its caller could list it in `keep`."""
    tree.create_sandbox("a")
    old, _ = tree.create_call("a", "old", Limits())
    os.utime(old, (time.time() - 60, time.time() - 60))
    new, _ = tree.create_call("a", "new", Limits())
    assert tree.reap_empty_calls(made_before=time.time() - 10) == [old]
    assert new.exists() and not old.exists()


def test_cgroup_id_is_the_directory_inode(tree, fs):
    tree.create_sandbox("a")
    path, _ = tree.create_call("a", "c", Limits())
    assert tree.cgroup_id(path) == os.stat(path).st_ino


def test_unreadable_files_raise_naming_the_file(tree, fs):
    tree.create_sandbox("a")
    fs.fail_read["cgroup.controllers"] = errno.EACCES
    with pytest.raises(CgroupIOError, match=r"reading .*cgroup\.controllers failed: EACCES"):
        tree.create_call("a", "c", Limits(pids_max=5))
    assert not (fs.root / "a" / "calls" / "c").exists()
