"""`hostwarden policy set|show` against an in-process daemon: a bad file is refused with every error's line
and key and changes nothing; a good one is in force and shown."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from hostwarden.app import Daemon
from hostwarden.cli import main


def run(daemon: Daemon, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), env={"HOSTWARDEN_SOCKET": daemon.config.daemon.socket})
    return result.exit_code, result.stdout, result.stderr


def test_set_refuses_a_bad_policy_with_each_error_and_keeps_the_running_one(daemon: Daemon, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[ladder]\nfreeze_psi = 10\nthaw_psi = 50\n\n[defaults]\nmemroy_max = \"1G\"\n")
    code, _out, err = run(daemon, "policy", "set", str(bad))
    assert code == 1
    assert f"{bad}:6: defaults.memroy_max:" in err and "did you mean 'memory_max'" in err
    assert f"{bad}:3: ladder.thaw_psi:" in err
    assert daemon.policy.source == "built-in defaults"


def test_set_puts_a_good_policy_in_force_and_show_reads_it_back(daemon: Daemon, tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text("dry_run = true\n[ladder]\nfreeze_after = \"3s\"\n")
    code, out, _err = run(daemon, "policy", "set", str(good))
    assert code == 0 and "in force (source: SetPolicy (kept in " in out
    assert daemon.policy.current().dry_run and daemon.policy.current().ladder.freeze_after == 3.0
    code, out, _err = run(daemon, "policy", "show", "--json")
    assert code == 0
    shown = json.loads(out)
    assert shown["dry_run"] is True and shown["ladder"]["freeze_after"] == 3.0
