"""systemd/: the unit passes `systemd-analyze verify` and keeps the directives the daemon's design rests on;
sysusers/tmpfiles create the group and directories the unit expects.

systemd need not be PID 1: `verify` only loads unit files. It does check that ExecStart= names an
executable, so it runs on a copy of the unit whose ExecStart points at the console script of the venv
running these tests instead of the install location /opt/hostwarden/.venv.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import require

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "hostwarden.service"
SYSUSERS = REPO / "systemd" / "hostwarden.sysusers"
TMPFILES = REPO / "systemd" / "hostwarden.tmpfiles"
DOC = REPO / "docs" / "systemd.md"
INSTALLED_BINARY = "/opt/hostwarden/.venv/bin/hostwarden"


def directives(unit_text: str) -> dict[str, list[str]]:
    """`Section.Key` -> every value it is given, in order (keys may repeat)."""
    found: dict[str, list[str]] = {}
    section = ""
    for line in unit_text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return found


def verify_problems(unit_text: str, directory: Path) -> list[str]:
    """What `systemd-analyze verify` says about this unit text (empty when clean)."""
    require(shutil.which("systemd-analyze") is not None, "systemd-analyze (Debian package systemd)")
    console_script = Path(sys.prefix) / "bin" / "hostwarden"
    assert console_script.is_file(), f"{console_script} missing: run `make setup` (pip install -e .)"
    copy = directory / UNIT.name
    copy.write_text(unit_text.replace(f"={INSTALLED_BINARY} ", f"={console_script} "))
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(copy)],
                            capture_output=True, text=True, timeout=60)
    problems = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    if result.returncode != 0:
        problems.append(f"systemd-analyze verify exited {result.returncode}")
    return problems


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    assert verify_problems(UNIT.read_text(), tmp_path) == []


def test_verify_check_catches_a_unit_mistake(tmp_path: Path) -> None:
    # A misspelt key is only a warning (exit status 0): the check must still report it.
    broken = UNIT.read_text().replace("KillMode=process", "KilMode=process")
    assert any("KilMode" in problem for problem in verify_problems(broken, tmp_path))


def test_unit_keeps_the_directives_the_design_rests_on() -> None:
    unit = directives(UNIT.read_text())
    expected = {
        "Service.Type": ["notify"],
        "Service.NotifyAccess": ["main"],
        "Service.Delegate": ["yes"],
        "Service.KillMode": ["process"],
        "Service.OOMPolicy": ["continue"],
        "Service.TasksMax": ["infinity"],
        "Service.Restart": ["on-failure"],
        "Service.ExecReload": ["/bin/kill -HUP $MAINPID"],
        "Service.RuntimeDirectory": ["hostwarden"],
        "Service.StateDirectory": ["hostwarden"],
        "Service.ConfigurationDirectory": ["hostwarden"],
        "Service.Group": ["hostwarden"],
        "Service.ProtectControlGroups": ["no"],
        "Service.ProtectKernelTunables": ["no"],
    }
    assert {key: unit.get(key) for key in expected} == expected
    assert unit["Service.ExecStart"] == [f"{INSTALLED_BINARY} daemon --config /etc/hostwarden/hostwarden.toml"]
    (watchdog,) = unit["Service.WatchdogSec"]
    assert re.fullmatch(r"[1-9][0-9]*s", watchdog), watchdog
    # Cgroup-attached settings on this unit would apply to every sandbox below it.
    for confining in ("MemoryMax", "MemoryHigh", "CPUQuota", "DevicePolicy", "IPAddressDeny", "IPAddressAllow"):
        assert f"Service.{confining}" not in unit


def test_every_capability_is_justified_in_the_docs() -> None:
    (bounding,) = directives(UNIT.read_text())["Service.CapabilityBoundingSet"]
    capabilities = bounding.split()
    assert capabilities, "CapabilityBoundingSet is empty"
    doc = DOC.read_text()
    undocumented = [cap for cap in capabilities if f"`{cap}`" not in doc]
    assert undocumented == [], f"docs/systemd.md does not justify {undocumented}"


def test_sysusers_and_tmpfiles_create_what_the_unit_expects(tmp_path: Path) -> None:
    for tool in ("systemd-sysusers", "systemd-tmpfiles"):
        require(shutil.which(tool) is not None, f"{tool} (Debian package systemd)")
    require(os.geteuid() == 0, "root (systemd-tmpfiles chowns to the hostwarden group)")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    subprocess.run(["systemd-sysusers", f"--root={root}", str(SYSUSERS)],
                   check=True, capture_output=True, timeout=60)
    groups = {line.split(":")[0]: int(line.split(":")[2]) for line in (root / "etc" / "group").read_text().splitlines()}
    assert {"hostwarden", "tss"} <= groups.keys()
    subprocess.run(["systemd-tmpfiles", f"--root={root}", "--create", str(TMPFILES)],
                   check=True, capture_output=True, timeout=60)

    unit = directives(UNIT.read_text())
    for directory, mode_key in (("run/hostwarden", "Service.RuntimeDirectoryMode"),
                                ("var/lib/hostwarden", "Service.StateDirectoryMode")):
        made = (root / directory).stat()
        assert (made.st_uid, made.st_gid) == (0, groups["hostwarden"]), directory
        assert f"{made.st_mode & 0o7777:04o}" == unit[mode_key][0], directory


@pytest.mark.parametrize("path", [SYSUSERS, TMPFILES])
def test_files_say_where_they_are_installed(path: Path) -> None:
    assert f"/usr/lib/{path.suffix.removeprefix('.')}.d/hostwarden.conf" in path.read_text()
