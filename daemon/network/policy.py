"""The policy's `[network]` table: which egress limit each sandbox gets.

```toml
[network]                      # every bound sandbox, unless a rule matches; no egress_rate: unlimited
egress_rate = "100mbit"

[[network.rule]]               # first match wins; matched on the sandbox's name and labels (globs)
name = "untrusted"
match = { labels = { trust = "low" } }
egress_rate = "1mbit"
burst = "16k"
```

A rule's limit is its own keys only (`burst` and `latency` default from the rule's rate, not from the
table's), and `egress_rate = "unlimited"` exempts the sandboxes it matches. Parsed by the policy schema
(hostwarden.policy.schema), which reports every issue with its line; this module has no kernel access.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from hostwarden.network.limits import MAPPING_KEYS, EgressLimit, EgressLimitError

UNLIMITED = "unlimited"
_MATCH_KEYS = ("sandbox", "labels")
_RULE_KEYS = ("name", "match", *MAPPING_KEYS)

IssuePath = tuple[str | int, ...]


class NetworkPolicyError(ValueError):
    """Every problem in a `[network]` table: (key path below `network`, message) pairs."""

    def __init__(self, issues: list[tuple[IssuePath, str]]) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, path))}: {message}" for path, message in issues))
        self.issues = issues


@dataclass(frozen=True)
class NetworkRule:
    name: str
    sandbox: str | None = None  # glob on the sandbox's name
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))  # label -> glob
    limit: EgressLimit | None = None  # None: unlimited

    def matches(self, sandbox: str, labels: Mapping[str, str]) -> bool:
        if self.sandbox is not None and not fnmatch.fnmatchcase(sandbox, self.sandbox):
            return False
        return all(key in labels and fnmatch.fnmatchcase(labels[key], glob) for key, glob in self.labels.items())


@dataclass(frozen=True)
class NetworkPolicy:
    default: EgressLimit | None = None
    rules: tuple[NetworkRule, ...] = ()

    def limit_for(self, sandbox: str, labels: Mapping[str, str]) -> tuple[EgressLimit | None, str]:
        """The sandbox's limit (None: unlimited) and where it comes from, for events and messages."""
        for rule in self.rules:
            if rule.matches(sandbox, labels):
                return rule.limit, f"policy [[network.rule]] {rule.name!r}"
        return self.default, "policy [network]"

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> NetworkPolicy:
        """From the parsed `[network]` table; NetworkPolicyError lists every problem with its key path."""
        issues: list[tuple[IssuePath, str]] = []
        for key in mapping:
            if key not in (*MAPPING_KEYS, "rule"):
                issues.append(((key,), f"unknown key; [network] takes {', '.join(MAPPING_KEYS)} and [[network.rule]]"))
        default = _limit(issues, (), {k: v for k, v in mapping.items() if k in MAPPING_KEYS}, optional=True)
        raw_rules = mapping.get("rule", [])
        if not isinstance(raw_rules, list):
            issues.append((("rule",), "write rules as [[network.rule]] tables"))
            raw_rules = []
        rules: list[NetworkRule] = []
        for index, raw in enumerate(raw_rules):
            rule = _rule(issues, index, raw)
            if rule is None:
                continue
            if any(other.name == rule.name for other in rules):
                issues.append((("rule", index, "name"), f"rule name {rule.name!r} is used twice; names must be unique"))
            rules.append(rule)
        if issues:
            raise NetworkPolicyError(issues)
        return cls(default, tuple(rules))

    def to_mapping(self) -> dict[str, Any]:
        """Plain values that `from_mapping` reads back to an equal policy (for the effective policy)."""
        mapping: dict[str, Any] = _limit_mapping(self.default) if self.default is not None else {}
        if self.rules:
            mapping["rule"] = [
                {"name": rule.name, "match": _match_mapping(rule),
                 **(_limit_mapping(rule.limit) if rule.limit is not None else {"egress_rate": UNLIMITED})}
                for rule in self.rules
            ]
        return mapping


def _limit_mapping(limit: EgressLimit) -> dict[str, Any]:
    return {"egress_rate": limit.rate_bits_per_s, "burst": limit.burst_bytes, "latency": f"{limit.latency_us}us"}


def _match_mapping(rule: NetworkRule) -> dict[str, Any]:
    match: dict[str, Any] = {}
    if rule.sandbox is not None:
        match["sandbox"] = rule.sandbox
    if rule.labels:
        match["labels"] = dict(rule.labels)
    return match


def _limit(issues: list[tuple[IssuePath, str]], path: IssuePath, keys: Mapping[str, Any], *,
           optional: bool) -> EgressLimit | None:
    if not keys and optional:
        return None
    if keys.get("egress_rate") == UNLIMITED and not optional:
        extra = sorted(set(keys) - {"egress_rate"})
        if extra:
            issues.append(((*path, extra[0]), "an unlimited rule takes no burst or latency"))
        return None
    try:
        return EgressLimit.from_mapping(keys)
    except EgressLimitError as error:
        issues.append(((*path, error.key), str(error).removeprefix(f"{error.key}: ")))
        return None


def _rule(issues: list[tuple[IssuePath, str]], index: int, raw: Any) -> NetworkRule | None:
    path: IssuePath = ("rule", index)
    if not isinstance(raw, dict):
        issues.append((path, "each rule must be a table: write it as [[network.rule]]"))
        return None
    for key in raw:
        if key not in _RULE_KEYS:
            issues.append(((*path, key), f"unknown key; a network rule takes {', '.join(_RULE_KEYS)}"))
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        issues.append(((*path, "name") if "name" in raw else path,
                       'a rule needs a name (name = "..."): events cite it as the limit\'s source'))
        return None
    match = raw.get("match", {})
    if not isinstance(match, dict) or not match:
        issues.append(((*path, "match"), 'give match = { sandbox = "glob" } and/or { labels = { key = "glob" } }'))
        return None
    sandbox, labels = match.get("sandbox"), match.get("labels", {})
    for key in match:
        if key not in _MATCH_KEYS:
            issues.append(((*path, "match", key), "unknown key; a network rule matches on sandbox and labels"))
    if sandbox is not None and (not isinstance(sandbox, str) or not sandbox):
        issues.append(((*path, "match", "sandbox"), f"expected a glob on the sandbox's name, got {sandbox!r}"))
    if not isinstance(labels, dict) or not all(isinstance(glob, str) for glob in labels.values()):
        issues.append(((*path, "match", "labels"), f'expected {{ key = "glob", ... }}, got {labels!r}'))
        labels = {}
    if "egress_rate" not in raw:
        issues.append((path, f'a rule needs egress_rate (a rate such as "1mbit", or "{UNLIMITED}")'))
        return None
    limit = _limit(issues, path, {k: v for k, v in raw.items() if k in MAPPING_KEYS}, optional=False)
    return NetworkRule(name, sandbox if isinstance(sandbox, str) else None, MappingProxyType(dict(labels)), limit)
