"""`policy check` and `policy show` through click's runner."""

from __future__ import annotations

import json

from click.testing import CliRunner

from hostwarden.policy.cli import policy_group
from hostwarden.policy.schema import default_policy, parse_policy


def invoke(*args: str, fetch=None):
    return CliRunner().invoke(policy_group(fetch), list(args))


def test_check_valid(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('[defaults]\nmemory_max = "2G"\n')
    result = invoke("check", str(path))
    assert result.exit_code == 0 and result.output == f"{path}: valid\n"


def test_check_lists_every_error_as_file_line_key_message(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('[defaults]\nmemory_max = "lots"\n\n[ladder]\nfreeze_psi = 500\n')
    result = invoke("check", str(path))
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"{path}:2: defaults.memory_max: cannot read 'lots' as a size; write e.g. 512M, 2G, 2GiB or a number of bytes",
        f"{path}:5: ladder.freeze_psi: must be > 0 and <= 100, got 500",
    ]
    assert result.stdout == ""


def test_check_missing_file(tmp_path):
    result = invoke("check", str(tmp_path / "nope.toml"))
    assert result.exit_code == 1 and "cannot read the file" in result.stderr


def test_show_file_as_json_and_toml(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text("dry_run = true\n")
    as_json = invoke("show", "--file", str(path), "--json")
    assert as_json.exit_code == 0
    assert json.loads(as_json.output) == parse_policy("dry_run = true").to_effective_dict()
    as_toml = invoke("show", "--file", str(path))
    assert parse_policy(as_toml.output).to_effective_dict() == json.loads(as_json.output)


def test_show_invalid_file_fails_with_the_errors(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text("dry_run = 1\n")
    result = invoke("show", "--file", str(path))
    assert result.exit_code == 1 and f"{path}:1: dry_run:" in result.stderr


def test_show_without_file_asks_the_daemon_or_explains():
    effective = default_policy().to_effective_dict()
    assert json.loads(invoke("show", "--json", fetch=lambda: effective).output) == effective
    result = invoke("show")
    assert result.exit_code == 2 and "give --file FILE" in result.output
