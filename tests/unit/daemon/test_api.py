"""The gRPC API over a real unix socket: the tool-call flow, errors and their codes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time

import grpc
import pytest

from hostwarden.client import Client, to_dict
from hostwarden.proto import warden_pb2 as pb
from tests.unit.daemon.conftest import create, make_daemon


def code_of(call, *args) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call(*args)
    return info.value.code()


def test_socket_is_0660_from_creation(daemon):
    mode = stat.S_IMODE(os.stat(daemon.config.daemon.socket).st_mode)
    assert mode == 0o660


def test_tool_call_flow(daemon, admin, sleeper):
    create(admin, "sb")
    begin = admin.call("BeginToolCall", pb.BeginToolCallRequest(
        sandbox="sb", tool="pytest", command="pytest -x", pid=sleeper.pid,
        intent=pb.Intent(memory_max_bytes=256 * 2**20, timeout_seconds=60)))
    assert {lim.name for lim in begin.limits} >= {"memory.max", "memory.high", "cpu.max", "timeout", "priority"}
    memory_max = next(lim for lim in begin.limits if lim.name == "memory.max")
    assert memory_max.enforced and "requested 256 MiB" in memory_max.reason
    assert str(sleeper.pid) in (daemon.tree.call_path("sb", begin.call_id) / "cgroup.procs").read_text()
    running = admin.call("GetToolCall", pb.GetToolCallRequest(call_id=begin.call_id))
    assert running.state == "running"
    summary = admin.call("EndToolCall", pb.EndToolCallRequest(call_id=begin.call_id, exit_code=0))
    assert summary.state == "finished" and summary.exit_code == 0 and summary.end_reason == "ended"
    # The energy part measures every call; this one used no CPU time in the fake cgroupfs.
    assert summary.HasField("energy_joules") and summary.energy_joules == 0
    assert not daemon.tree.call_path("sb", begin.call_id).exists()
    row = daemon.ledger.get_call(begin.call_id)
    assert row is not None and row.state == "finished" and row.summary["exit_code"] == 0
    listed = admin.call("ListToolCalls", pb.ListToolCallsRequest(sandbox="sb"))
    assert [c.call_id for c in listed.calls] == [begin.call_id]


def test_timeout_kills_the_call(daemon, admin, sleeper):
    create(admin, "sb")
    begin = admin.call("BeginToolCall", pb.BeginToolCallRequest(
        sandbox="sb", tool="slow", pid=sleeper.pid, intent=pb.Intent(timeout_seconds=0.2)))
    deadline = time.monotonic() + 5
    while daemon.ledger.get_call(begin.call_id).state != "finished" and time.monotonic() < deadline:
        time.sleep(0.05)
    summary = admin.call("GetToolCall", pb.GetToolCallRequest(call_id=begin.call_id))
    assert summary.end_reason == "timeout"
    assert [a.reason for a in summary.actions] == ["timeout"]
    assert "timeout_seconds" in summary.actions[0].hint


@pytest.mark.parametrize(("name", "code"), [
    ("", grpc.StatusCode.INVALID_ARGUMENT),
    ("../etc", grpc.StatusCode.INVALID_ARGUMENT),
    ("a/b", grpc.StatusCode.INVALID_ARGUMENT),
    ("x" * 65, grpc.StatusCode.INVALID_ARGUMENT),
    ("bad\nname", grpc.StatusCode.INVALID_ARGUMENT),
    ("supervisor", grpc.StatusCode.INVALID_ARGUMENT),
])
def test_bad_sandbox_names(admin, name, code):
    assert code_of(admin.call, "CreateSandbox", pb.CreateSandboxRequest(name=name)) == code


def test_errors_name_the_problem_and_change_nothing(daemon, admin):
    create(admin, "sb")
    before = daemon.ledger.counts(), sorted(p.name for p in daemon.tree.root.iterdir())
    cases = [
        ("CreateSandbox", pb.CreateSandboxRequest(name="sb"), grpc.StatusCode.FAILED_PRECONDITION),
        ("CreateSandbox", pb.CreateSandboxRequest(name="ok", priority=9), grpc.StatusCode.INVALID_ARGUMENT),
        ("DeleteSandbox", pb.DeleteSandboxRequest(name="nope"), grpc.StatusCode.NOT_FOUND),
        ("BeginToolCall", pb.BeginToolCallRequest(sandbox="nope", tool="t"), grpc.StatusCode.NOT_FOUND),
        ("BeginToolCall", pb.BeginToolCallRequest(sandbox="sb", tool=""), grpc.StatusCode.INVALID_ARGUMENT),
        ("BeginToolCall", pb.BeginToolCallRequest(sandbox="sb", tool="t", intent=pb.Intent(cpu_cores=-1)),
         grpc.StatusCode.INVALID_ARGUMENT),
        ("BeginToolCall", pb.BeginToolCallRequest(sandbox="sb", tool="t", pid=2**31 - 1),
         grpc.StatusCode.NOT_FOUND),
        ("AttachProcess", pb.AttachProcessRequest(call_id="0" * 16, pid=1), grpc.StatusCode.NOT_FOUND),
        ("AttachProcess", pb.AttachProcessRequest(call_id="../x", pid=1), grpc.StatusCode.INVALID_ARGUMENT),
        ("EndToolCall", pb.EndToolCallRequest(call_id="0" * 16), grpc.StatusCode.NOT_FOUND),
        ("GetUsage", pb.GetUsageRequest(sandbox="nope"), grpc.StatusCode.NOT_FOUND),
        ("ListToolCalls", pb.ListToolCallsRequest(since_seconds=-1), grpc.StatusCode.INVALID_ARGUMENT),
        ("SetPolicy", pb.SetPolicyRequest(toml="[defaults]\nmemory_max = 'lots'\n"),
         grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for method, request, code in cases:
        with pytest.raises(grpc.RpcError) as info:
            admin.call(method, request)
        assert info.value.code() == code, (method, info.value.details())
        assert len(info.value.details()) > 10
    assert (daemon.ledger.counts(), sorted(p.name for p in daemon.tree.root.iterdir())) == before


def test_end_after_emptied_records_the_exit_code(daemon, admin):
    create(admin, "sb")
    proc = subprocess.Popen(["sleep", "0.1"])
    begin = admin.call("BeginToolCall", pb.BeginToolCallRequest(sandbox="sb", tool="t", pid=proc.pid))
    proc.wait()
    # The fake cgroupfs does not see the exit by itself: empty it as the kernel would; the watcher reports it.
    path = daemon.tree.call_path("sb", begin.call_id)
    (path / "cgroup.procs").write_text("")
    daemon.tree.fs.refresh_populated()
    deadline = time.monotonic() + 5
    while daemon.ledger.get_call(begin.call_id).state != "finished" and time.monotonic() < deadline:
        time.sleep(0.01)
    summary = admin.call("EndToolCall", pb.EndToolCallRequest(call_id=begin.call_id, exit_code=7))
    assert summary.end_reason == "emptied" and summary.exit_code == 7


def test_delete_busy_sandbox_needs_force(daemon, admin, sleeper):
    create(admin, "sb")
    admin.call("BeginToolCall", pb.BeginToolCallRequest(sandbox="sb", tool="t", pid=sleeper.pid))
    assert code_of(admin.call, "DeleteSandbox", pb.DeleteSandboxRequest(name="sb")) == \
        grpc.StatusCode.FAILED_PRECONDITION
    admin.call("DeleteSandbox", pb.DeleteSandboxRequest(name="sb", force=True))
    assert admin.call("ListSandboxes", pb.ListSandboxesRequest()).sandboxes == []


def test_policy_set_validate_and_rejection_keeps_old(daemon, admin):
    good = "[defaults]\nmemory_max = '1G'\n"
    assert admin.call("ValidatePolicy", pb.ValidatePolicyRequest(toml=good)).valid
    bad = admin.call("ValidatePolicy", pb.ValidatePolicyRequest(toml="[defaults]\nmemory_max = 'x'\nnope = 1\n"))
    assert not bad.valid and {e.line for e in bad.errors} == {2, 3}
    admin.call("SetPolicy", pb.SetPolicyRequest(toml=good))
    rejections = daemon.bus.subscribe("", ["policy_rejected"])
    with pytest.raises(grpc.RpcError):
        admin.call("SetPolicy", pb.SetPolicyRequest(toml="[defaults]\nmemory_max = 'x'\n"))
    rejected = rejections.get(timeout=5)
    assert rejected is not None and rejected.attributes["source"] == "SetPolicy"
    doc = admin.call("GetPolicy", pb.GetPolicyRequest())
    assert doc.source.startswith("SetPolicy") and json.loads(doc.effective_json)["defaults"]["memory_max"] == 2**30


def memory_max_of(daemon) -> int:
    return daemon.policy.current().defaults.memory_max


def test_set_policy_outlives_a_restart_until_the_file_rules_again(tmp_path):
    first = make_daemon(tmp_path, policy="[defaults]\nmemory_max = '2G'\n")
    first.start()
    with Client(first.config.daemon.socket) as admin:
        admin.call("SetPolicy", pb.SetPolicyRequest(toml="[defaults]\nmemory_max = '1G'\n"))
    first.shutdown()
    saved = tmp_path / "state" / "policy-set.toml"
    assert saved.read_text() == "[defaults]\nmemory_max = '1G'\n"
    second = make_daemon(tmp_path)  # the file is older than what SetPolicy gave: that stays in force
    try:
        assert memory_max_of(second) == 2**30 and second.policy.source.startswith("SetPolicy")
        assert second.policy.reload()  # SIGHUP: the operator's file rules again, the kept one is dropped
        assert memory_max_of(second) == 2 * 2**30 and not saved.exists()
    finally:
        second.ledger.close()
    saved.write_text("[defaults]\nmemory_max = '1G'\n")
    os.utime(tmp_path / "policy.toml", (time.time() + 60, time.time() + 60))  # edited after the SetPolicy
    third = make_daemon(tmp_path)
    try:
        assert memory_max_of(third) == 2 * 2**30 and third.policy.source == str(tmp_path / "policy.toml")
    finally:
        third.ledger.close()


def test_set_policy_that_cannot_be_kept_changes_nothing(daemon, admin):
    (daemon.config.daemon.state_dir / "policy-set.toml").mkdir()  # where the file would go: not writable
    before = memory_max_of(daemon)
    with pytest.raises(grpc.RpcError) as info:
        admin.call("SetPolicy", pb.SetPolicyRequest(toml="[defaults]\nmemory_max = '1G'\n"))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "policy-set.toml" in info.value.details()
    assert memory_max_of(daemon) == before


def test_restart_adopts_sandboxes_and_running_calls(tmp_path, sleeper):
    first = make_daemon(tmp_path)
    first.start()
    with Client(first.config.daemon.socket) as client:
        token = create(client, "sb")
        begin = client.call("BeginToolCall", pb.BeginToolCallRequest(sandbox="sb", tool="t", pid=sleeper.pid))
    first.shutdown()
    second = make_daemon(tmp_path)
    second.start()
    try:
        assert second.warden.authenticate(token).sandbox == "sb"
        assert begin.call_id in second.warden.calls
        with Client(second.config.daemon.socket) as client:
            summary = client.call("EndToolCall", pb.EndToolCallRequest(call_id=begin.call_id, exit_code=0))
        assert summary.state == "finished"
    finally:
        second.shutdown()


def test_health_and_reflection(daemon):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    channel = grpc.insecure_channel(f"unix:{daemon.config.daemon.socket}")
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="hostwarden.v1.Warden"))
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"hostwarden.v1.Warden", "grpc.health.v1.Health"} <= names
    channel.close()


def test_housekeeping_reaps_strays_keeps_running_calls_and_applies_retention(daemon, admin, sleeper):
    create(admin, "sb")
    running = admin.call("BeginToolCall", pb.BeginToolCallRequest(sandbox="sb", tool="t"))  # not attached yet
    stray = daemon.tree.root / "sb" / "calls" / "stray"
    daemon.tree.fs.mkdir(stray)
    os.utime(stray, (time.time() - 600, time.time() - 600))  # an old stray: one made just now could be a Begin
    young = daemon.tree.root / "sb" / "calls" / "young"
    daemon.tree.fs.mkdir(young)
    daemon.ledger.begin_call("old", "sb", "t", "", "/x", 0.0, None, [])
    daemon.ledger.finish_call("old", 1.0, {})
    daemon.housekeeping()
    assert not stray.exists() and young.exists()
    assert daemon.tree.call_path("sb", running.call_id).is_dir()
    assert daemon.ledger.get_call("old") is None


def test_capabilities_say_what_the_daemon_uses(tmp_path):
    daemon = make_daemon(tmp_path)
    daemon.tree.fs.write(daemon.root / "cgroup.subtree_control", "+memory")  # as a host offering only memory
    daemon.start()
    try:
        with Client(daemon.config.daemon.socket) as admin:
            caps = {c.name: c for c in admin.call("GetCapabilities", pb.GetCapabilitiesRequest()).capabilities}
    finally:
        daemon.shutdown()
    assert caps["cgroup_v2"].in_use
    enabled = (daemon.root / "cgroup.subtree_control").read_text().split()
    assert "memory" in enabled
    for controller in ("memory", "cpu", "pids"):
        assert caps[f"{controller}_controller"].in_use == (controller in enabled)


def test_json_keeps_64_bit_integers_numbers():
    """The proto3 JSON mapping writes (u)int64 as strings; the CLI's --json and --summary-json do not."""
    call = pb.ToolCall(call_id="c", peak_memory_bytes=3 * 2**40, net_rx_bytes=5)
    call.actions.add(kind="kill")
    listed = to_dict(pb.ListToolCallsResponse(calls=[call]))["calls"][0]
    assert listed["peak_memory_bytes"] == 3 * 2**40 and listed["net_rx_bytes"] == 5
    assert to_dict(pb.Event(seq=2**63, kind="x"))["seq"] == 2**63
    assert to_dict(pb.Sandbox(name="s", labels={"a": "1"}))["labels"] == {"a": "1"}
