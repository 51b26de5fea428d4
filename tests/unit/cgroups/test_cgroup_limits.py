from __future__ import annotations

import errno

import pytest

from hostwarden.cgroups.errors import CgroupIOError, InvalidLimit
from hostwarden.cgroups.limits import Limits, apply_limits
from tests.unit.cgroups.fakefs import FakeCgroupFs


def _leaf(tmp_path, controllers="cpu memory pids"):
    fs = FakeCgroupFs(tmp_path / "root", controllers)
    for controller in controllers.split():
        fs.write(fs.root / "cgroup.subtree_control", f"+{controller}")
    fs.mkdir(fs.root / "leaf")
    return fs, fs.root / "leaf"


ALL = Limits(memory_high=200, memory_max=300, memory_low=100, memory_swap_max=0, memory_oom_group=True,
             cpu_weight=50, cpu_max_quota_us=50000, cpu_max_period_us=100000, pids_max=64)


def test_files_lists_each_requested_limit_only():
    assert Limits().files() == []
    assert dict(ALL.files()) == {
        "memory.low": "100", "memory.max": "300", "memory.high": "200", "memory.swap.max": "0",
        "memory.oom.group": "1", "cpu.weight": "50", "cpu.max": "50000 100000", "pids.max": "64",
    }
    assert Limits(memory_oom_group=False).files() == [("memory.oom.group", "0")]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"memory_max": -1}, "memory_max must be a non-negative integer"),
        ({"pids_max": 1.5}, "pids_max must be a non-negative integer"),
        ({"memory_high": True}, "memory_high must be a non-negative integer"),
        ({"memory_oom_group": 1}, "memory_oom_group must be true, false or None"),
        ({"cpu_weight": 0}, "cpu_weight must be an integer from 1 to 10000"),
        ({"cpu_weight": 10001}, "cpu_weight must be an integer from 1 to 10000"),
        ({"cpu_max_quota_us": 999}, "cpu_max_quota_us must be an integer from 1000"),
        ({"cpu_max_period_us": 500}, "cpu_max_period_us must be an integer from 1000 to 1000000"),
        ({"memory_high": 10, "memory_max": 5}, "memory_high .* is above memory_max"),
    ],
)
def test_refuses_values_the_kernel_would_reject(kwargs, message):
    with pytest.raises(InvalidLimit, match=message):
        Limits(**kwargs)


def test_apply_writes_every_limit_when_controllers_are_enabled(tmp_path):
    fs, leaf = _leaf(tmp_path)
    outcomes = apply_limits(fs, leaf, ALL)
    assert [o.enforced for o in outcomes] == [True] * 8
    assert (leaf / "memory.max").read_text().strip() == "300"
    assert (leaf / "cpu.max").read_text().strip() == "50000 100000"
    assert (leaf / "memory.oom.group").read_text().strip() == "1"


def test_missing_controller_is_reported_unenforced_not_dropped(tmp_path):
    fs, leaf = _leaf(tmp_path, controllers="cpu")
    outcomes = {o.file: o for o in apply_limits(fs, leaf, ALL)}
    assert len(outcomes) == 8
    assert outcomes["cpu.weight"].enforced
    for file in ("memory.max", "memory.oom.group", "pids.max"):
        assert not outcomes[file].enforced
        controller = file.split(".")[0]
        assert f"the {controller} controller is not available" in outcomes[file].reason
    assert not (leaf / "memory.max").exists()


def test_controller_offered_but_not_enabled_says_where_to_enable(tmp_path):
    fs = FakeCgroupFs(tmp_path / "root", "memory")
    fs.mkdir(fs.root / "leaf")  # subtree_control of root left empty
    (outcome,) = apply_limits(fs, fs.root / "leaf", Limits(memory_max=10))
    assert not outcome.enforced
    assert "not enabled in" in outcome.reason and "+memory" in outcome.reason


def test_missing_interface_file_is_reported(tmp_path):
    fs, leaf = _leaf(tmp_path)
    (leaf / "memory.swap.max").unlink()
    (outcome,) = apply_limits(fs, leaf, Limits(memory_swap_max=0))
    assert not outcome.enforced and "memory.swap.max does not exist" in outcome.reason


def test_write_error_names_file_and_errno(tmp_path):
    fs, leaf = _leaf(tmp_path)
    fs.fail_write["memory.max"] = errno.EINVAL
    with pytest.raises(CgroupIOError, match=r"memory\.max failed: EINVAL \(Invalid argument\)") as raised:
        apply_limits(fs, leaf, Limits(memory_max=10))
    assert raised.value.file == leaf / "memory.max" and raised.value.errno == errno.EINVAL
