from __future__ import annotations

import shutil
import subprocess
import urllib.request

import pytest

from hostwarden.metrics import ToolNames, call_outcome
from hostwarden.proto import warden_pb2 as pb
from tests.unit.daemon.conftest import create


def test_tool_names_are_normalised_and_capped():
    names = ToolNames(cap=2)
    assert names.label("Bash: pytest -x") == "bash_pytest_x"
    assert names.label("x" * 100) == "x" * 32
    assert names.label("third") == "other"
    assert names.label("BASH: PYTEST -X") == "bash_pytest_x"


@pytest.mark.parametrize(("summary", "outcome"), [
    ({"exit_code": 0}, "success"), ({"exit_code": 2}, "failure"), ({"oom_killed": True, "exit_code": 137},
                                                                   "oom_killed"),
    ({"end_reason": "timeout"}, "timeout"), ({}, "unknown")])
def test_outcomes(summary, outcome):
    assert call_outcome(summary) == outcome


def scrape(daemon) -> str:
    with urllib.request.urlopen(f"http://{daemon.metrics_address}/metrics", timeout=5) as reply:
        return reply.read().decode()


def test_exposition_has_bounded_labels_and_forgets_deleted_sandboxes(daemon, admin, sleeper):
    create(admin, "sb")
    call = admin.call("BeginToolCall", pb.BeginToolCallRequest(sandbox="sb", tool="pytest", pid=sleeper.pid))
    admin.call("EndToolCall", pb.EndToolCallRequest(call_id=call.call_id, exit_code=0))
    text = scrape(daemon)
    for name in ("hostwarden_tool_calls_total{outcome=\"success\",tool=\"pytest\"} 1.0",
                 "hostwarden_tool_call_duration_seconds_bucket", "hostwarden_tool_call_peak_memory_bytes_bucket",
                 "hostwarden_tool_call_cpu_seconds_bucket", "hostwarden_sandboxes 1.0",
                 "hostwarden_running_tool_calls 0.0", "hostwarden_sandbox_cpu_seconds_total{sandbox=\"sb\"}",
                 "hostwarden_sandbox_memory_bytes{sandbox=\"sb\"}", "hostwarden_events_dropped_total",
                 "hostwarden_build_info{version="):
        assert name in text, name
    assert call.call_id not in text
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is needed: run scripts/setup.sh"
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    admin.call("DeleteSandbox", pb.DeleteSandboxRequest(name="sb"))
    assert 'sandbox="sb"' not in scrape(daemon)
