"""`hostwarden policy check|show` (click). daemon/cli.py registers the group made by policy_group()."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

import click

_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")

# Fetches the effective policy from the running daemon (GetPolicy); supplied by daemon/cli.py.
DaemonPolicyFetcher = Callable[[], Mapping[str, Any]]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY_RE.fullmatch(key) else json.dumps(key)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(item, Mapping) for item in value)


def _toml_table(lines: list[str], header: str, table: Mapping[str, Any], array: bool = False) -> None:
    """Plain values first under the header, then sub-tables, then arrays of tables: the order TOML needs."""
    plain = {k: v for k, v in table.items() if not (isinstance(v, Mapping) and v) and not _is_table_array(v)}
    if header and (plain or array or len(plain) == len(table)):
        lines.append(f"\n[[{header}]]" if array else f"\n[{header}]")
    lines.extend(f"{_toml_key(key)} = {_toml_value(value)}" for key, value in plain.items())
    nested = {key: f"{header}.{_toml_key(key)}" if header else _toml_key(key) for key in table}
    for key, value in table.items():
        if isinstance(value, Mapping) and value:
            _toml_table(lines, nested[key], value)
    for key, value in table.items():
        if _is_table_array(value):
            for item in value:
                _toml_table(lines, nested[key], item, array=True)


def effective_toml(effective: Mapping[str, Any]) -> str:
    """The effective policy (Policy.to_effective_dict()) as policy TOML that parses back to itself."""
    lines = ["# effective policy: every setting, defaults filled in (sizes in bytes, durations in seconds)"]
    _toml_table(lines, "", effective)
    return "\n".join(lines) + "\n"


def policy_group(fetch_from_daemon: DaemonPolicyFetcher | None = None) -> click.Group:
    """The `policy` command group; with fetch_from_daemon, `policy show` without --file asks the daemon.
    More commands (`policy set`) can be added to the returned group with add_command."""

    @click.group(name="policy")
    def group() -> None:
        """Check and show policy files (TOML)."""

    @group.command()
    @click.argument("file", type=click.Path(dir_okay=False))
    def check(file: str) -> None:
        """Validate FILE; print "valid", or every error as FILE:LINE: key: message and exit 1."""
        from hostwarden.policy.schema import PolicyError, load_policy_file  # heavy: only where used
        try:
            load_policy_file(file)
        except PolicyError as error:
            for issue in error.errors:
                click.echo(issue.format(file), err=True)
            raise SystemExit(1) from None
        click.echo(f"{file}: valid")

    @group.command()
    @click.option("--file", "file", type=click.Path(dir_okay=False), help="A policy file instead of the daemon's.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    def show(file: str | None, as_json: bool) -> None:
        """The effective policy: every setting with defaults filled in."""
        if file is not None:
            from hostwarden.policy.schema import PolicyError, load_policy_file  # heavy: only where used
            try:
                effective: Mapping[str, Any] = load_policy_file(file).to_effective_dict()
            except PolicyError as error:
                for issue in error.errors:
                    click.echo(issue.format(file), err=True)
                raise SystemExit(1) from None
        elif fetch_from_daemon is not None:
            effective = fetch_from_daemon()
        else:
            raise click.UsageError("give --file FILE (asking the running daemon is not available here)")
        click.echo(json.dumps(effective, indent=2) if as_json else effective_toml(effective), nl=as_json)

    return group
