"""Policy files: defaults, every field's parsing, errors with line and key, effective policy round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hostwarden.policy.cli import effective_toml
from hostwarden.policy.schema import (
    IntegrityAction,
    Policy,
    PolicyError,
    Priority,
    SandboxInfo,
    default_policy,
    load_policy_file,
    parse_policy,
)

DOCS_EXAMPLE = Path(__file__).resolve().parents[3] / "docs" / "policy.md"


def errors_of(text: str) -> list[tuple[int, str, str]]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "p.toml")
    return [(issue.line, issue.key, issue.message) for issue in caught.value.errors]


def test_an_empty_file_is_the_default_policy():
    policy = parse_policy("", "empty.toml")
    assert policy.to_effective_dict() == default_policy().to_effective_dict()
    assert policy.source == "empty.toml"
    assert policy.defaults.memory_max == 4 * 1024**3 and policy.defaults.priority is Priority.NORMAL
    assert policy.priorities[Priority.HIGH].memory_low.of(1000) == 500
    assert not policy.dry_run and policy.rules == ()


def test_every_section_is_read():
    policy = parse_policy("""
dry_run = true
[defaults]
memory_max = "1G"
memory_high = "900M"
cpu_cores = 1.5
timeout = "5m"
pids_max = 100
priority = "low"
[limits]
memory_max = "8G"
memory_floor = "32M"
cpu_cores = 4
cpu_floor = 0.5
timeout = "1h"
timeout_floor = "2s"
pids_max = 1000
priority = "normal"
headroom = 2
[priorities.high]
cpu_weight = 1000
memory_low = "256M"
[ladder]
host_short = 0.2
freeze_psi = 30
thaw_psi = 1
freeze_after = "1s"
post_action_delay = 0
[auto]
enabled = false
window = 10
percentile = 90
min_samples = 3
[attest]
on_untrusted = "kill"
on_unknown = "freeze"
[power]
budget_watts = 250
sustain_seconds = 3
""")
    assert policy.dry_run
    assert policy.defaults.memory_high.of(policy.defaults.memory_max) == 900 * 1024**2
    assert policy.defaults.timeout == 300 and policy.defaults.priority is Priority.LOW
    assert policy.limits.headroom == 2.0 and policy.limits.timeout_floor == 2.0
    assert policy.priorities[Priority.HIGH].cpu_weight == 1000
    assert policy.priorities[Priority.NORMAL].cpu_weight == 100  # untouched classes keep their defaults
    assert policy.ladder.freeze_psi == 30 and policy.ladder.post_action_delay == 0
    assert (policy.auto.enabled, policy.auto.window, policy.auto.percentile) == (False, 10, 90.0)
    assert policy.attest.on_untrusted is IntegrityAction.KILL and policy.attest.on_unknown is IntegrityAction.FREEZE
    assert policy.power is not None
    assert (policy.power.budget_watts, policy.power.sustain_seconds) == (250.0, 3.0)
    assert default_policy().power is None


def test_several_errors_are_reported_at_once_with_lines_and_keys():
    text = """dry_run = "yes"
[defaults]
memroy_max = "2G"
cpu_cores = -1

[[rule]]
name = "first"
match.labels = { team = "x*", tier = 3 }
[rule.limits]
memory_max = "1Q"

[[rule]]
name = "first"
[rule.match]
priority = ["high", "urgent"]
[ladder]
thaw_psi = 50
timeout = "5m"
"""
    assert errors_of(text) == [
        (1, "dry_run", "expected true or false, got 'yes'"),
        (3, "defaults.memroy_max", "unknown key in [defaults]; did you mean 'memory_max'?"),
        (4, "defaults.cpu_cores", "must be > 0, got -1"),
        (8, "rule[1].match.labels", "label 'tier' must be matched by a string (exact or glob), got 3"),
        (10, "rule[1].limits.memory_max",
         "cannot read '1Q' as a size; write e.g. 512M, 2G, 2GiB or a number of bytes"),
        (13, "rule[2].name", "rule name 'first' is used twice; names must be unique"),
        (15, "rule[2].match.priority", "expected one of 'low', 'normal', 'high', got 'urgent'"),
        (17, "ladder.thaw_psi",
         "thaw_psi 50 is above freeze_psi 10: calls would thaw while still pressured; lower it"),
        (18, "ladder.timeout", errors_of("[ladder]\ntimeout = 1")[0][2]),
    ]


def test_cross_key_errors_name_the_fix():
    assert errors_of('[defaults]\nmemory_max = "1G"\nmemory_high = "2G"') == [
        (3, "defaults.memory_high",
         "memory_high 2 GiB is above memory_max 1 GiB; lower it or write a fraction such as 0.9")]
    assert errors_of('[limits]\nmemory_max = "1G"\nmemory_floor = "2G"')[0][:2] == (3, "limits.memory_floor")
    assert errors_of("[auto]\nwindow = 3\nmin_samples = 5")[0][:2] == (3, "auto.min_samples")


def test_a_rule_is_blamed_only_for_conflicts_it_makes():
    # The global memory_high conflicts; the rule does not repeat that error.
    assert [key for _, key, _ in errors_of('[defaults]\nmemory_high = "5G"\n[[rule]]\nname = "r"\n')] == [
        "defaults.memory_high"]
    assert errors_of('[[rule]]\nname = "r"\n[rule.defaults]\nmemory_max = "1G"\nmemory_high = "2G"')[0][:2] == (
        5, "rule[1].defaults.memory_high")


def test_rule_without_name_and_wrong_types():
    assert errors_of('[[rule]]\nmatch.tool = "x"') == [
        (1, "rule[1]", 'a rule needs a name (name = "..."): grants cite it as their reason')]
    assert errors_of("defaults = 3")[0][:2] == (1, "defaults")
    assert errors_of("[[rule]]\nname = \"r\"\nmatch = 5")[0][:2] == (3, "rule[1].match")
    assert "unknown key in the top level" in errors_of("colour = 1")[0][2]


def test_syntax_errors_carry_tomllib_line():
    assert errors_of('[defaults]\nmemory_max = "2G"\ncpu_cores = = 2\n') == [
        (3, "(syntax)", "Invalid value; fix the TOML syntax")]
    assert errors_of("a = [\n1,\n")[0][0] == 3  # at the end of the document


def test_power_budget_errors_come_from_hostwarden_power_with_their_line():
    assert errors_of("[power]\nbudget_watts = 300\nrelease_fraction = 2")[0][:2] == (3, "power.release_fraction")
    assert errors_of("[power]\nsustain_seconds = 3")[0][:2] == (1, "power.budget_watts")
    assert errors_of("[power]\nbudget_watts = 300\nwhen = 2024-01-01")[0][:2] == (3, "power.when")


def test_rules_match_labels_tool_and_priority_first_match_wins():
    policy = parse_policy("""
[[rule]]
name = "untrusted-tests"
[rule.match]
labels = { tenant = "ext-*", stage = "ci" }
tool = ["pytest*", "make"]
[rule.limits]
memory_max = "1G"

[[rule]]
name = "low"
match.priority = "low"
match.sandbox = "batch-*"

[[rule]]
name = "everything"
""")

    def rule(name: str, labels: dict[str, str], priority: Priority, tool: str) -> str | None:
        found = policy.rule_for(SandboxInfo(name, labels, priority), tool)
        return found.name if found else None

    ext_ci = {"tenant": "ext-42", "stage": "ci"}
    assert rule("a", ext_ci, Priority.LOW, "pytest -x") == "untrusted-tests"
    assert rule("a", ext_ci, Priority.LOW, "make") == "untrusted-tests"
    assert rule("a", ext_ci, Priority.LOW, "make all") == "everything"  # globs match the whole tool name
    assert rule("a", {"tenant": "ext-42"}, Priority.LOW, "pytest") == "everything"  # every label must match
    assert rule("a", {"tenant": "int", "stage": "ci"}, Priority.HIGH, "pytest") == "everything"
    assert rule("batch-7", {}, Priority.LOW, "grep") == "low"
    assert rule("batch-7", {}, Priority.NORMAL, "grep") == "everything"
    assert rule("a", ext_ci, Priority.HIGH, "pytest") == "untrusted-tests"  # first match wins
    assert policy.rules[0].limits.memory_max == 1024**3
    assert policy.rules[0].overridden == {"limits.memory_max"}
    assert policy.rules[0].defaults == policy.defaults  # the rest is inherited


def test_effective_policy_is_json_and_parses_back_to_itself():
    policy = parse_policy("""
dry_run = true
[defaults]
memory_high = "1G"
[[rule]]
name = "r"
match.labels = { team = "a*" }
match.tool = "cargo*"
[rule.limits]
cpu_cores = 1
[power]
budget_watts = 300
""")
    effective = policy.to_effective_dict()
    assert json.loads(json.dumps(effective)) == effective
    again = parse_policy(effective_toml(effective))
    assert again.to_effective_dict() == effective
    assert effective["rule"][0]["limits"]["cpu_cores"] == 1.0
    assert effective["defaults"]["memory_high"] == 1024**3


def test_policy_objects_are_frozen():
    policy: Policy = default_policy()
    with pytest.raises(AttributeError):
        policy.dry_run = True  # type: ignore[misc]
    with pytest.raises(TypeError):
        policy.priorities[Priority.LOW] = policy.priorities[Priority.HIGH]  # type: ignore[index]


def test_load_policy_file_errors(tmp_path):
    with pytest.raises(PolicyError, match="cannot read the file"):
        load_policy_file(str(tmp_path / "missing.toml"))
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"a = 1\n\xff\xfe")
    with pytest.raises(PolicyError, match="not UTF-8"):
        load_policy_file(str(binary))


def test_the_documented_example_is_valid():
    text = DOCS_EXAMPLE.read_text()
    example = text.split("```toml\n", 1)[1].split("```", 1)[0]
    policy = parse_policy(example, "docs/policy.md")
    assert policy.rules, "the documented example shows rules"
