"""Intent resolution: caps, floors, defaults, learning from the ledger, priority ceilings, and the reasons."""

from __future__ import annotations

import pytest

from hostwarden.policy.resolve import CPU_PERIOD_US, Intent, IntentError, percentile, resolve
from hostwarden.policy.schema import Priority, SandboxInfo, default_policy, parse_policy

MIB, GIB = 1024**2, 1024**3
POLICY = parse_policy("""
[defaults]
memory_max = "1G"
timeout = "10m"
[limits]
memory_max = "8G"
memory_floor = "128M"
cpu_cores = 4
timeout = "1h"
[priorities.high]
memory_low = 0.5
[auto]
window = 20
min_samples = 5

[[rule]]
name = "untrusted"
match.labels = { trust = "none" }
[rule.limits]
memory_max = "2G"
priority = "normal"
[rule.defaults]
cpu_cores = 0.5
""")
TRUSTED_HIGH = SandboxInfo("web", {"trust": "full"}, Priority.HIGH)
UNTRUSTED_HIGH = SandboxInfo("ext", {"trust": "none"}, Priority.HIGH)
LOW = SandboxInfo("batch", {}, Priority.LOW)

# Peak memory of the last 25 calls of one tool in one sandbox, oldest first, as the ledger hands them over.
LEDGER_PEAKS = [900 * MIB] * 5 + [
    210 * MIB, 250 * MIB, 300 * MIB, 180 * MIB, 240 * MIB, 260 * MIB, 220 * MIB, 230 * MIB, 205 * MIB,
    190 * MIB, 280 * MIB, 270 * MIB, 215 * MIB, 225 * MIB, 245 * MIB, 235 * MIB, 255 * MIB, 265 * MIB,
    200 * MIB, 295 * MIB,
]


def test_no_intent_gets_the_defaults_and_says_so():
    grant = resolve(POLICY, TRUSTED_HIGH, "grep", Intent())
    assert (grant.memory_max, grant.memory_high) == (GIB, int(GIB * 0.9))
    assert grant.reasons["memory.max"] == "defaulted to 1 GiB"
    assert grant.reasons["memory.high"] == "defaulted to 0.9 x memory_max = 922 MiB"
    assert grant.priority is Priority.NORMAL and grant.reasons["priority"] == "defaulted to normal"
    assert grant.cpu_quota_us == 2 * CPU_PERIOD_US and grant.cpu_period_us == CPU_PERIOD_US
    assert grant.timeout_s == 600 and grant.pids_max == 4096 and grant.memory_oom_group
    assert grant.memory_low == 0 and grant.cpu_weight == 100
    assert grant.rule is None


def test_a_declared_peak_gets_headroom_and_the_cap():
    grant = resolve(POLICY, TRUSTED_HIGH, "pytest", Intent(memory_max=2 * GIB))
    assert grant.memory_max == 3 * GIB
    assert grant.reasons["memory.max"] == "requested 2 GiB x headroom 1.5 = 3 GiB"
    grant = resolve(POLICY, UNTRUSTED_HIGH, "pytest", Intent(memory_max=4 * GIB))
    assert grant.memory_max == 2 * GIB and grant.rule == "untrusted"
    assert grant.reasons["memory.max"] == (
        "requested 4 GiB x headroom 1.5 = 6 GiB, capped to 2 GiB by rule 'untrusted' (limits.memory_max)")
    grant = resolve(POLICY, TRUSTED_HIGH, "pytest", Intent(memory_max=100 * GIB))
    assert grant.memory_max == 8 * GIB and grant.reasons["memory.max"].endswith("by policy (limits.memory_max)")


def test_floors_raise_tiny_requests():
    grant = resolve(POLICY, TRUSTED_HIGH, "true", Intent(memory_max=MIB, cpu_cores=0.01, timeout_s=0.1))
    assert grant.memory_max == 128 * MIB
    assert "raised to the floor 128 MiB of policy (limits.memory_floor)" in grant.reasons["memory.max"]
    assert grant.cpu_quota_us == int(0.1 * CPU_PERIOD_US)
    assert grant.timeout_s == 1.0


def test_memory_high_never_exceeds_memory_max():
    grant = resolve(POLICY, UNTRUSTED_HIGH, "x", Intent(memory_max=4 * GIB, memory_high=3 * GIB))
    assert grant.memory_high == grant.memory_max == 2 * GIB
    assert grant.reasons["memory.high"] == "requested 3 GiB, lowered to memory.max 2 GiB"


def test_priority_never_exceeds_the_sandbox_nor_the_rule():
    assert resolve(POLICY, LOW, "x", Intent(priority=Priority.HIGH)).priority is Priority.LOW
    assert resolve(POLICY, LOW, "x", Intent(priority=Priority.HIGH)).reasons["priority"] == (
        "requested high, capped to low (the sandbox's priority)")
    untrusted = resolve(POLICY, UNTRUSTED_HIGH, "x", Intent(priority=Priority.HIGH))
    assert untrusted.priority is Priority.NORMAL
    assert untrusted.reasons["priority"] == "requested high, capped to normal by rule 'untrusted' (limits.priority)"
    high = resolve(POLICY, TRUSTED_HIGH, "x", Intent(priority=Priority.HIGH, memory_max=GIB))
    assert high.priority is Priority.HIGH and high.cpu_weight == 400
    assert high.memory_low == int(1.5 * GIB * 0.5)
    assert high.reasons["memory.low"] == (
        "protection for high priority: 0.5 x memory_max = 768 MiB (priorities.high.memory_low)")


def test_rule_defaults_are_attributed_to_the_rule():
    grant = resolve(POLICY, UNTRUSTED_HIGH, "x", Intent())
    assert grant.cpu_quota_us == CPU_PERIOD_US // 2
    assert grant.reasons["cpu.max"] == "defaulted to 0.5 cores by rule 'untrusted'"


def test_auto_learns_the_p95_of_the_last_window_times_headroom():
    grant = resolve(POLICY, TRUSTED_HIGH, "pytest", Intent(auto=True), LEDGER_PEAKS)
    last_20 = LEDGER_PEAKS[-20:]  # the five old 900 MiB peaks fall out of the window
    assert percentile(last_20, 95) == 295 * MIB
    assert grant.memory_max == int(295 * MIB * 1.5)
    assert grant.reasons["memory.max"] == "learned: p95 of last 20 calls = 295 MiB x headroom 1.5 = 442 MiB"


def test_auto_with_too_few_samples_falls_back_to_the_default_and_says_why():
    grant = resolve(POLICY, TRUSTED_HIGH, "pytest", Intent(auto=True), LEDGER_PEAKS[:3])
    assert grant.memory_max == GIB
    assert grant.reasons["memory.max"] == "auto: only 3 earlier calls of this tool, 5 needed; defaulted to 1 GiB"


def test_auto_off_in_policy_and_declared_memory_wins_over_auto():
    off = parse_policy("[auto]\nenabled = false")
    grant = resolve(off, TRUSTED_HIGH, "pytest", Intent(auto=True), LEDGER_PEAKS)
    assert grant.memory_max == default_policy().defaults.memory_max
    assert grant.reasons["memory.max"].startswith("auto is off in this policy (auto.enabled)")
    declared = resolve(POLICY, TRUSTED_HIGH, "pytest", Intent(auto=True, memory_max=GIB), LEDGER_PEAKS)
    assert declared.reasons["memory.max"].startswith("requested 1 GiB")


def test_learned_values_are_capped_like_any_other():
    huge = [10 * GIB] * 20
    grant = resolve(POLICY, UNTRUSTED_HIGH, "pytest", Intent(auto=True), huge)
    assert grant.memory_max == 2 * GIB and "capped to 2 GiB by rule 'untrusted'" in grant.reasons["memory.max"]


def test_percentile_is_nearest_rank():
    assert percentile([5], 95) == 5
    assert percentile(list(range(1, 101)), 95) == 95
    assert percentile([3, 1, 2], 50) == 2
    assert percentile([1, 2, 3, 4], 100) == 4


def test_kernel_files_are_what_cgroupfs_takes():
    grant = resolve(POLICY, TRUSTED_HIGH, "x", Intent(cpu_cores=1.5, memory_max=GIB, priority=Priority.HIGH))
    files = grant.kernel_files()
    assert list(files)[:2] == ["memory.high", "memory.max"]
    assert files["cpu.max"] == "150000 100000"
    assert files["memory.max"] == str(int(1.5 * GIB)) and files["memory.oom.group"] == "1"
    assert set(grant.reasons) == set(files) - {"memory.oom.group"} | {"timeout", "priority"}


@pytest.mark.parametrize("intent", [Intent(memory_max=0), Intent(cpu_cores=-1.0), Intent(timeout_s=float("nan")),
                                    Intent(memory_high=0)])
def test_out_of_range_intents_are_refused(intent):
    with pytest.raises(IntentError, match="must be a positive number"):
        resolve(POLICY, TRUSTED_HIGH, "x", intent)
