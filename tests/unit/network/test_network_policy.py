"""The policy's [network] table: which limit each sandbox gets, errors with their line, round trip."""

from __future__ import annotations

import pytest

from hostwarden.network.limits import EgressLimit
from hostwarden.network.policy import NetworkPolicy, NetworkPolicyError
from hostwarden.policy.cli import effective_toml
from hostwarden.policy.schema import PolicyError, parse_policy

POLICY = """
[network]
egress_rate = "100mbit"

[[network.rule]]
name = "untrusted"
match = { labels = { trust = "low*" } }
egress_rate = "1mbit"
burst = "16k"

[[network.rule]]
name = "mirror"
match = { sandbox = "mirror-*" }
egress_rate = "unlimited"
"""


def test_first_matching_rule_wins_else_the_table_default():
    policy = parse_policy(POLICY).network
    assert policy is not None
    assert policy.limit_for("ci-1", {"trust": "lowest"}) == (EgressLimit(1_000_000, 16384),
                                                            "policy [[network.rule]] 'untrusted'")
    assert policy.limit_for("mirror-eu", {}) == (None, "policy [[network.rule]] 'mirror'")
    default, source = policy.limit_for("ci-2", {"trust": "high"})
    assert default is not None and default.rate_bits_per_s == 100_000_000 and source == "policy [network]"


def test_no_table_or_no_default_rate_means_unlimited():
    assert parse_policy("").network is None
    only_rules = NetworkPolicy.from_mapping({"rule": [{"name": "r", "match": {"sandbox": "x"}, "egress_rate": 8000}]})
    assert only_rules.limit_for("y", {}) == (None, "policy [network]")


def test_effective_policy_parses_back_to_itself():
    effective = parse_policy(POLICY).to_effective_dict()
    assert parse_policy(effective_toml(effective)).to_effective_dict() == effective
    assert effective["network"]["rule"][1]["egress_rate"] == "unlimited"


@pytest.mark.parametrize(("text", "line", "key", "words"), [
    ('[network]\nburst = "16k"', 1, "network.egress_rate", "required"),
    ('[network]\negress_rate = "1mbit"\nrate = 3', 3, "network.rate", "unknown key"),
    ('[network]\negress_rate = "fast"', 2, "network.egress_rate", "not a rate"),
    ('[[network.rule]]\nname = "r"\nmatch = { sandbox = "a" }\negress_rate = "1mbit"\nburst = 100', 5,
     "network.rule[1].burst", "a frame must fit"),
    ('[[network.rule]]\nname = "r"\nmatch = { sandbox = "a" }', 1, "network.rule[1]", "needs egress_rate"),
    ('[[network.rule]]\nname = "r"\negress_rate = "1mbit"', 1, "network.rule[1].match", "match ="),
    ('[[network.rule]]\nname = "r"\nmatch = { tool = "x" }\negress_rate = "1mbit"', 3,
     "network.rule[1].match.tool", "sandbox and labels"),
    ('[[network.rule]]\nname = "r"\nmatch = { sandbox = "a" }\negress_rate = "unlimited"\nburst = "16k"', 5,
     "network.rule[1].burst", "unlimited rule"),
    ('[[network.rule]]\nname = "r"\nmatch = { sandbox = "a" }\negress_rate = "1mbit"\n'
     '[[network.rule]]\nname = "r"\nmatch = { sandbox = "b" }\negress_rate = "1mbit"', 6,
     "network.rule[2].name", "used twice"),
])
def test_errors_name_line_and_key(text, line, key, words):
    with pytest.raises(PolicyError) as caught:
        parse_policy(text)
    issue = caught.value.errors[0]
    assert (issue.line, issue.key) == (line, key) and words in issue.message, issue


def test_every_problem_is_reported_at_once():
    with pytest.raises(NetworkPolicyError) as caught:
        NetworkPolicy.from_mapping({"egress_rate": "x", "oops": 1, "rule": [3]})
    assert [path for path, _ in caught.value.issues] == [("oops",), ("egress_rate",), ("rule", 0)]
