"""tests/vm/run for real: one boot checks exit status, output, environment, shares, the throwaway root
and cleanup; a second, cut short by --timeout, checks the timeout path. Each boot takes a few seconds."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import require

REPO_ROOT = Path(__file__).resolve().parents[2]
RUNNER = REPO_ROOT / "tests" / "vm" / "run"


@pytest.fixture
def scratch_root() -> Iterator[Path]:
    """The runner's TMPDIR: every path of one run (swtpm state, sockets) lies below it, so leftovers show.
    Short on purpose: the swtpm socket path must fit a unix socket address."""
    require(shutil.which("qemu-system-x86_64") is not None and shutil.which("swtpm") is not None,
            "qemu-system-x86_64 and swtpm (scripts/setup.sh installs them)")
    path = Path(tempfile.mkdtemp(prefix="vmrun-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # the process exited while we looked
            continue
        if text in args:
            found.append(args)
    return found


def run_vm(scratch_root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(RUNNER), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TMPDIR": str(scratch_root), **(env or {})})


def test_runner_returns_the_exit_status_streams_output_and_leaves_nothing(scratch_root):
    share = scratch_root / "share"
    share.mkdir()
    discarded = REPO_ROOT / f".vm-discarded-{uuid.uuid4().hex}"
    script = (f"echo to-stdout; echo to-stderr >&2; pwd > {share}/pwd; "
              f"env > {share}/env; touch {discarded}; exit 3")
    completed = run_vm(scratch_root, "--share", str(share), "--", "sh", "-c", script,
                       env={"HOSTWARDEN_PASSED": "yes", "NOT_PASSED": "no"})

    assert completed.returncode == 3, completed.stderr
    assert completed.stdout == "to-stdout\n"
    assert completed.stderr.startswith("to-stderr\n")
    assert "--- guest console" in completed.stderr  # a failing command shows the console tail
    assert (share / "pwd").read_text().strip() == str(REPO_ROOT)
    guest_env = dict(line.split("=", 1) for line in (share / "env").read_text().splitlines() if "=" in line)
    assert guest_env["HOSTWARDEN_PASSED"] == "yes" and guest_env["HOSTWARDEN_IN_VM"] == "1"
    assert guest_env["HOME"] == "/root" and guest_env["PATH"] == os.environ["PATH"]
    assert "NOT_PASSED" not in guest_env
    assert not discarded.exists(), "a write to the guest's root reached the host"
    assert processes_mentioning(str(scratch_root)) == []
    assert list(scratch_root.iterdir()) == [share], "the run's scratch directory was left behind"


def test_runner_stops_the_guest_at_the_timeout_and_shows_the_console(scratch_root):
    completed = run_vm(scratch_root, "--timeout", "3", "--", "sleep", "60")

    assert completed.returncode == 124
    assert "timed out after 3 s" in completed.stderr
    assert "--- guest console" in completed.stderr
    assert processes_mentioning(str(scratch_root)) == []
    assert list(scratch_root.iterdir()) == []
