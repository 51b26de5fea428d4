"""The policy file: TOML in, frozen dataclasses out, and every error at once with its line and key.

An empty file is the default policy. Unknown keys are errors (a typo must not silently fall back to a
default). See docs/policy.md for the schema with an example.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from types import MappingProxyType
from typing import Any, TypeVar

from hostwarden.network.policy import NetworkPolicy, NetworkPolicyError
from hostwarden.policy.locate import KeyLines, KeyPath, format_path
from hostwarden.policy.units import format_size, parse_duration, parse_size
from hostwarden.power.budget import PowerBudget

T = TypeVar("T")


class Priority(StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"

    @property
    def rank(self) -> int:
        return _PRIORITY_RANK[self]


_PRIORITY_RANK = {Priority.LOW: 0, Priority.NORMAL: 1, Priority.HIGH: 2}


class IntegrityAction(StrEnum):
    REPORT = "report"
    FREEZE = "freeze"
    KILL = "kill"


@dataclass(frozen=True)
class Share:
    """A memory amount written either as a fraction of the call's memory_max (a float) or as bytes."""

    value: float | int
    is_fraction: bool

    def of(self, memory_max: int) -> int:
        amount = int(memory_max * self.value) if self.is_fraction else int(self.value)
        return min(amount, memory_max)

    def describe(self) -> str:
        return f"{self.value:g} x memory_max" if self.is_fraction else format_size(int(self.value))


@dataclass(frozen=True)
class PolicyIssue:
    line: int
    key: str
    message: str

    def format(self, source: str) -> str:
        return f"{source}:{self.line}: {self.key}: {self.message}"


class PolicyError(ValueError):
    """A policy that cannot be used; `errors` lists every problem found, each with its line and key."""

    def __init__(self, errors: list[PolicyIssue], source: str = "<policy>") -> None:
        self.errors = errors
        self.source = source
        super().__init__("\n".join(issue.format(source) for issue in errors))


@dataclass(frozen=True)
class Defaults:
    """What a call gets when its intent says nothing. Sizes in bytes, timeout in seconds."""

    memory_max: int = 4 * 1024**3
    memory_high: Share = Share(0.9, is_fraction=True)
    cpu_cores: float = 2.0
    timeout: float = 1800.0
    pids_max: int = 4096
    priority: Priority = Priority.NORMAL


@dataclass(frozen=True)
class Limits:
    """Caps and floors on what any call may be granted; headroom multiplies declared and learned memory."""

    memory_max: int = 16 * 1024**3
    memory_floor: int = 64 * 1024**2
    cpu_cores: float = 8.0
    cpu_floor: float = 0.1
    timeout: float = 4 * 3600.0
    timeout_floor: float = 1.0
    pids_max: int = 32768
    priority: Priority = Priority.HIGH
    headroom: float = 1.5


@dataclass(frozen=True)
class PriorityClass:
    """Per-priority settings: cpu.weight and memory.low protection (fraction of memory_max or bytes)."""

    cpu_weight: int
    memory_low: Share


@dataclass(frozen=True)
class Ladder:
    """The escalation ladder; PSI values are percentages (avg10), durations seconds, sizes bytes."""

    host_short: float = 0.10
    throttle_step: float = 0.10
    throttle_floor: int = 64 * 1024**2
    freeze_psi: float = 10.0
    freeze_after: float = 5.0
    thaw_psi: float = 2.0
    thaw_after: float = 10.0
    kill_frozen_after: float = 60.0
    kill_stall_psi: float = 50.0
    kill_stall_after: float = 10.0
    post_action_delay: float = 2.0


@dataclass(frozen=True)
class Auto:
    """Learning memory from the ledger: percentile of the peaks of the last `window` calls."""

    enabled: bool = True
    window: int = 20
    percentile: float = 95.0
    min_samples: int = 5


@dataclass(frozen=True)
class Attest:
    on_untrusted: IntegrityAction = IntegrityAction.REPORT
    on_unknown: IntegrityAction = IntegrityAction.REPORT


@dataclass(frozen=True)
class SandboxInfo:
    name: str
    labels: Mapping[str, str]
    priority: Priority


@dataclass(frozen=True)
class Match:
    """Which calls a rule applies to; every given criterion must hold, globs as in fnmatch."""

    sandbox: str | None = None
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    tools: tuple[str, ...] = ()
    priorities: tuple[Priority, ...] = ()

    def matches(self, sandbox: SandboxInfo, tool: str) -> bool:
        if self.sandbox is not None and not fnmatch.fnmatchcase(sandbox.name, self.sandbox):
            return False
        for key, pattern in self.labels.items():
            if key not in sandbox.labels or not fnmatch.fnmatchcase(sandbox.labels[key], pattern):
                return False
        if self.tools and not any(fnmatch.fnmatchcase(tool, pattern) for pattern in self.tools):
            return False
        return not self.priorities or sandbox.priority in self.priorities


@dataclass(frozen=True)
class Rule:
    """A named override; `defaults` and `limits` are complete (global values merged with the rule's)."""

    name: str
    match: Match
    defaults: Defaults
    limits: Limits
    overridden: frozenset[str]  # dotted keys the rule sets itself, e.g. "limits.memory_max"


def _default_priorities() -> Mapping[Priority, PriorityClass]:
    return MappingProxyType({
        Priority.HIGH: PriorityClass(cpu_weight=400, memory_low=Share(0.5, is_fraction=True)),
        Priority.NORMAL: PriorityClass(cpu_weight=100, memory_low=Share(0, is_fraction=False)),
        Priority.LOW: PriorityClass(cpu_weight=25, memory_low=Share(0, is_fraction=False)),
    })


@dataclass(frozen=True)
class Policy:
    source: str = "<defaults>"
    dry_run: bool = False
    defaults: Defaults = Defaults()
    limits: Limits = Limits()
    rules: tuple[Rule, ...] = ()
    priorities: Mapping[Priority, PriorityClass] = field(default_factory=_default_priorities)
    ladder: Ladder = Ladder()
    auto: Auto = Auto()
    attest: Attest = Attest()
    power: PowerBudget | None = None  # node power budget ([power], validated by hostwarden.power)
    network: NetworkPolicy | None = None  # egress limits ([network], validated by hostwarden.network)

    def rule_for(self, sandbox: SandboxInfo, tool: str) -> Rule | None:
        """The first rule, in file order, whose match holds."""
        return next((rule for rule in self.rules if rule.match.matches(sandbox, tool)), None)

    def to_effective_dict(self) -> dict[str, Any]:
        """Every setting with defaults filled in; JSON-serialisable, and valid policy TOML again."""
        return {
            "dry_run": self.dry_run,
            "defaults": _plain(self.defaults),
            "limits": _plain(self.limits),
            "priorities": {str(p): _plain(self.priorities[p]) for p in Priority},
            "ladder": _plain(self.ladder),
            "auto": _plain(self.auto),
            "attest": _plain(self.attest),
            "power": _plain(self.power) if self.power is not None else {},
            "network": self.network.to_mapping() if self.network is not None else {},
            "rule": [_rule_dict(rule) for rule in self.rules],
        }


def _plain(value: Any) -> Any:
    if isinstance(value, Share):
        return float(value.value) if value.is_fraction else int(value.value)
    if isinstance(value, StrEnum):
        return str(value)
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    return value


def _rule_dict(rule: Rule) -> dict[str, Any]:
    match: dict[str, Any] = {}
    if rule.match.sandbox is not None:
        match["sandbox"] = rule.match.sandbox
    if rule.match.labels:
        match["labels"] = dict(rule.match.labels)
    if rule.match.tools:
        match["tool"] = list(rule.match.tools)
    if rule.match.priorities:
        match["priority"] = [str(p) for p in rule.match.priorities]
    return {"name": rule.name, "match": match, "defaults": _plain(rule.defaults), "limits": _plain(rule.limits)}


def default_policy() -> Policy:
    return Policy()


# ---------------------------------------------------------------------------------------------------------
# Reading: each table is read through a _Table that records what it used, so leftovers are unknown keys.


class _Issues:
    def __init__(self, lines: KeyLines) -> None:
        self._lines = lines
        self.items: list[PolicyIssue] = []

    def add(self, path: KeyPath, message: str) -> None:
        self.items.append(PolicyIssue(self._lines.line_of(path), format_path(path), message))


class _Table:
    def __init__(self, issues: _Issues, path: KeyPath, data: Mapping[str, Any]) -> None:
        self.issues = issues
        self.path = path
        self.data = data
        self._known: set[str] = set()

    def has(self, key: str) -> bool:
        self._known.add(key)
        return key in self.data

    def get(self, key: str, parse: Callable[[Any], T], default: T) -> T:
        if not self.has(key):
            return default
        try:
            return parse(self.data[key])
        except ValueError as error:
            self.issues.add((*self.path, key), str(error))
            return default

    def table(self, key: str) -> _Table:
        value = self.data.get(key, {}) if self.has(key) else {}
        if not isinstance(value, dict):
            self.issues.add((*self.path, key), f"expected a table ([{format_path((*self.path, key))}]), "
                                               f"got {type(value).__name__}")
            value = {}
        return _Table(self.issues, (*self.path, key), value)

    def finish(self, allowed: list[str]) -> None:
        """Report keys nobody read, suggesting the closest known one."""
        for key in self.data:
            if key in self._known:
                continue
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(sorted(allowed))}"
            where = f"[{format_path(self.path)}]" if self.path else "the top level"
            self.issues.add((*self.path, key), f"unknown key in {where}; {hint}")


def _share(value: Any) -> Share:
    if isinstance(value, float):
        if not 0 < value <= 1:
            raise ValueError(f"a fraction of memory_max must be in (0, 1], got {value}; or write a size")
        return Share(value, is_fraction=True)
    return Share(parse_size(value), is_fraction=False)


def _number(low: float, high: float | None = None, *, low_open: bool = False) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {value!r}")
        too_low = value <= low if low_open else value < low
        if too_low or (high is not None and value > high):
            bounds = f"{'>' if low_open else '>='} {low:g}" + (f" and <= {high:g}" if high is not None else "")
            raise ValueError(f"must be {bounds}, got {value}")
        return float(value)
    return parse


def _integer(low: int, high: int | None = None) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {value!r}")
        if value < low or (high is not None and value > high):
            raise ValueError(f"must be between {low} and {high}, got {value}" if high is not None
                             else f"must be >= {low}, got {value}")
        return value
    return parse


def _positive_size(value: Any) -> int:
    size = parse_size(value)
    if size == 0:
        raise ValueError("must be larger than 0")
    return size


def _positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds == 0:
        raise ValueError("must be longer than 0")
    return seconds


def _choice(kind: type[StrEnum]) -> Callable[[Any], Any]:
    def parse(value: Any) -> Any:
        try:
            return kind(value)
        except ValueError:
            raise ValueError(f"expected one of {', '.join(repr(str(m)) for m in kind)}, got {value!r}") from None
    return parse


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value


def _strings(value: Any) -> tuple[str, ...]:
    """One string or an array of strings."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(i, str) and i for i in items):
        raise ValueError(f"expected a string or a non-empty array of strings, got {value!r}")
    return tuple(items)


def _priorities(value: Any) -> tuple[Priority, ...]:
    return tuple(_choice(Priority)(item) for item in _strings(value))


def _labels(value: Any) -> Mapping[str, str]:
    if not isinstance(value, dict):
        raise ValueError(f"expected a table of label = \"glob\" pairs, got {value!r}")
    for key, pattern in value.items():
        if not isinstance(pattern, str):
            raise ValueError(f"label {key!r} must be matched by a string (exact or glob), got {pattern!r}")
    return MappingProxyType(dict(value))


_FIELD_PARSERS: dict[type, dict[str, Callable[[Any], Any]]] = {
    Defaults: {
        "memory_max": _positive_size, "memory_high": _share, "cpu_cores": _number(0, low_open=True),
        "timeout": _positive_duration, "pids_max": _integer(1), "priority": _choice(Priority),
    },
    Limits: {
        "memory_max": _positive_size, "memory_floor": parse_size, "cpu_cores": _number(0, low_open=True),
        "cpu_floor": _number(0, low_open=True), "timeout": _positive_duration, "timeout_floor": parse_duration,
        "pids_max": _integer(1), "priority": _choice(Priority), "headroom": _number(1.0),
    },
    Ladder: {
        "host_short": _number(0, 1), "throttle_step": _number(0, 0.9, low_open=True),
        "throttle_floor": parse_size, "freeze_psi": _number(0, 100, low_open=True),
        "freeze_after": parse_duration, "thaw_psi": _number(0, 100), "thaw_after": parse_duration,
        "kill_frozen_after": _positive_duration, "kill_stall_psi": _number(0, 100, low_open=True),
        "kill_stall_after": parse_duration, "post_action_delay": parse_duration,
    },
    Auto: {
        "enabled": _boolean, "window": _integer(1, 10000), "percentile": _number(0, 100, low_open=True),
        "min_samples": _integer(1, 10000),
    },
    Attest: {"on_untrusted": _choice(IntegrityAction), "on_unknown": _choice(IntegrityAction)},
}


def _read_fields(table: _Table, base: T) -> tuple[T, set[str]]:
    """Override `base`'s fields from the table; returns the result and the keys that were set."""
    parsers = _FIELD_PARSERS[type(base)]
    changes = {key: table.get(key, parse, getattr(base, key)) for key, parse in parsers.items() if table.has(key)}
    table.finish(list(parsers))
    return replace(base, **changes), set(changes)  # type: ignore[type-var]


def _check_defaults_and_limits(issues: _Issues, path: KeyPath, defaults: Defaults, limits: Limits,
                               changed: set[str] | None = None) -> None:
    """Cross-key checks; for a rule (`changed` = the keys it sets) only conflicts the rule itself makes."""
    def concerns(*keys: str) -> bool:
        return changed is None or any(key in changed for key in keys)

    if (not defaults.memory_high.is_fraction and defaults.memory_high.value > defaults.memory_max
            and concerns("defaults.memory_high", "defaults.memory_max")):
        issues.add((*path, "defaults", "memory_high"),
                   f"memory_high {format_size(int(defaults.memory_high.value))} is above memory_max "
                   f"{format_size(defaults.memory_max)}; lower it or write a fraction such as 0.9")
    for floor, cap, unit in (("memory_floor", "memory_max", format_size), ("cpu_floor", "cpu_cores", str),
                             ("timeout_floor", "timeout", str)):
        if getattr(limits, floor) > getattr(limits, cap) and concerns(f"limits.{floor}", f"limits.{cap}"):
            issues.add((*path, "limits", floor),
                       f"floor {unit(getattr(limits, floor))} is above the cap limits.{cap} = "
                       f"{unit(getattr(limits, cap))}; lower the floor or raise the cap")


def _read_rule(issues: _Issues, index: int, data: Any, defaults: Defaults, limits: Limits) -> Rule | None:
    path: KeyPath = ("rule", index)
    if not isinstance(data, dict):
        issues.add(path, "each rule must be a table: write it as [[rule]]")
        return None
    table = _Table(issues, path, data)
    name = table.get("name", _string, "")
    if not table.has("name"):
        issues.add(path, "a rule needs a name (name = \"...\"): grants cite it as their reason")
    match_table = table.table("match")
    match = Match(
        sandbox=match_table.get("sandbox", _string, None),
        labels=match_table.get("labels", _labels, MappingProxyType({})),
        tools=match_table.get("tool", _strings, ()),
        priorities=match_table.get("priority", _priorities, ()),
    )
    match_table.finish(["sandbox", "labels", "tool", "priority"])
    rule_defaults, set_defaults = _read_fields(table.table("defaults"), defaults)
    rule_limits, set_limits = _read_fields(table.table("limits"), limits)
    table.finish(["name", "match", "defaults", "limits"])
    overridden = {f"defaults.{key}" for key in set_defaults} | {f"limits.{key}" for key in set_limits}
    _check_defaults_and_limits(issues, path, rule_defaults, rule_limits, overridden)
    return Rule(name, match, rule_defaults, rule_limits, frozenset(overridden))


_POWER_ERROR_RE = re.compile(r"^\[power\] (\w+): (.*)$", re.DOTALL)


def _read_power(issues: _Issues, table: _Table) -> PowerBudget | None:
    """[power] is the power budget, validated by hostwarden.power; an absent or empty table means none."""
    if not table.data:
        return None
    try:
        return PowerBudget.from_mapping(table.data)
    except ValueError as error:
        found = _POWER_ERROR_RE.match(str(error))
        key, message = (found.group(1), found.group(2)) if found else (None, str(error))
        issues.add(("power", key) if key else ("power",), f"{message} (see docs/power.md)")
        return None


def _read_network(issues: _Issues, table: _Table) -> NetworkPolicy | None:
    """[network] holds egress limits, validated by hostwarden.network; an absent or empty table means none."""
    if not table.data:
        return None
    try:
        return NetworkPolicy.from_mapping(table.data)
    except NetworkPolicyError as error:
        for path, message in error.issues:
            issues.add(("network", *path), f"{message} (see docs/network.md)")
        return None


def _read_priorities(root: _Table) -> Mapping[Priority, PriorityClass]:
    table = root.table("priorities")
    result = dict(_default_priorities())
    for priority in Priority:
        sub = table.table(str(priority))
        base = result[priority]
        result[priority] = PriorityClass(
            cpu_weight=sub.get("cpu_weight", _integer(1, 10000), base.cpu_weight),
            memory_low=sub.get("memory_low", _share, base.memory_low),
        )
        sub.finish(["cpu_weight", "memory_low"])
    table.finish([str(p) for p in Priority])
    return MappingProxyType(result)


_SYNTAX_POSITION_RE = re.compile(r"\(at (?:line (\d+), column \d+|end of document)\)")


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    """Parse and validate policy TOML; raises PolicyError listing every problem (line, key, message)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        position = _SYNTAX_POSITION_RE.search(str(error))
        line = int(position.group(1)) if position and position.group(1) else text.count("\n") + 1
        message = _SYNTAX_POSITION_RE.sub("", str(error)).strip()
        raise PolicyError([PolicyIssue(line, "(syntax)", f"{message}; fix the TOML syntax")], source) from None
    issues = _Issues(KeyLines(text))
    root = _Table(issues, (), data)
    dry_run = root.get("dry_run", _boolean, False)
    defaults, _ = _read_fields(root.table("defaults"), Defaults())
    limits, _ = _read_fields(root.table("limits"), Limits())
    _check_defaults_and_limits(issues, (), defaults, limits)
    ladder, _ = _read_fields(root.table("ladder"), Ladder())
    if ladder.thaw_psi > ladder.freeze_psi:
        issues.add(("ladder", "thaw_psi"), f"thaw_psi {ladder.thaw_psi:g} is above freeze_psi "
                   f"{ladder.freeze_psi:g}: calls would thaw while still pressured; lower it")
    auto, _ = _read_fields(root.table("auto"), Auto())
    if auto.min_samples > auto.window:
        issues.add(("auto", "min_samples"), f"min_samples {auto.min_samples} exceeds window {auto.window}: "
                   "learning could never start; lower it or widen the window")
    attest, _ = _read_fields(root.table("attest"), Attest())
    priorities = _read_priorities(root)
    power = _read_power(issues, root.table("power"))
    network = _read_network(issues, root.table("network"))
    rules: list[Rule] = []
    if root.has("rule"):
        raw_rules = data["rule"] if isinstance(data["rule"], list) else [data["rule"]]
        for index, raw in enumerate(raw_rules):
            rule = _read_rule(issues, index, raw, defaults, limits)
            if rule is None:
                continue
            if rule.name and any(r.name == rule.name for r in rules):
                issues.add(("rule", index, "name"), f"rule name {rule.name!r} is used twice; names must be unique")
            rules.append(rule)
    root.finish(["dry_run", "defaults", "limits", "ladder", "auto", "attest", "priorities", "power", "network",
                 "rule"])
    if issues.items:
        raise PolicyError(sorted(issues.items, key=lambda issue: issue.line), source)
    return Policy(source=source, dry_run=dry_run, defaults=defaults, limits=limits, rules=tuple(rules),
                  priorities=priorities, ladder=ladder, auto=auto, attest=attest,
                  power=power, network=network)


def load_policy_file(path: str) -> Policy:
    """Read and parse a policy file; unreadable or non-UTF-8 files are PolicyErrors too."""
    try:
        with open(path, "rb") as handle:
            text = handle.read().decode("utf-8")
    except OSError as error:
        raise PolicyError([PolicyIssue(1, "(file)", f"cannot read the file: {error.strerror}")], path) from None
    except UnicodeDecodeError as error:
        raise PolicyError([PolicyIssue(1, "(file)", f"not UTF-8 text (byte {error.start}); save it as UTF-8")],
                          path) from None
    return parse_policy(text, path)
