"""Sandbox tokens: a sandbox's callers see and touch only their own sandbox and calls."""

from __future__ import annotations

import grpc
import pytest

from hostwarden.client import Client
from hostwarden.proto import warden_pb2 as pb
from tests.unit.daemon.conftest import create


def denied(client: Client, method: str, request) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        client.call(method, request)
    return info.value.code()


def test_sandbox_a_cannot_touch_sandbox_b(daemon, admin, sleeper):
    token_a = create(admin, "a", pb.PRIORITY_LOW)
    create(admin, "b")
    b_call = admin.call("BeginToolCall", pb.BeginToolCallRequest(sandbox="b", tool="t"))
    before = daemon.ledger.counts()
    with Client(daemon.config.daemon.socket, token_a) as a:
        assert [s.name for s in a.call("ListSandboxes", pb.ListSandboxesRequest()).sandboxes] == ["a"]
        assert all(c.sandbox == "a" for c in a.call("ListToolCalls", pb.ListToolCallsRequest()).calls)
        PD = grpc.StatusCode.PERMISSION_DENIED
        for method, request in [
            ("GetUsage", pb.GetUsageRequest(sandbox="b")),
            ("ListToolCalls", pb.ListToolCallsRequest(sandbox="b")),
            ("BeginToolCall", pb.BeginToolCallRequest(sandbox="b", tool="t")),
            ("GetToolCall", pb.GetToolCallRequest(call_id=b_call.call_id)),
            ("AttachProcess", pb.AttachProcessRequest(call_id=b_call.call_id, pid=sleeper.pid)),
            ("EndToolCall", pb.EndToolCallRequest(call_id=b_call.call_id)),
            ("DeleteSandbox", pb.DeleteSandboxRequest(name="b")),
            ("CreateSandbox", pb.CreateSandboxRequest(name="c")),
            ("SetPolicy", pb.SetPolicyRequest(toml="")),
            ("GetIntegrity", pb.GetIntegrityRequest(sandbox="b")),
        ]:
            assert denied(a, method, request) == PD, method
        # Its own calls work, but it cannot raise its priority above the sandbox's, nor attach a foreign pid.
        own = a.call("BeginToolCall", pb.BeginToolCallRequest(
            sandbox="a", tool="t", intent=pb.Intent(priority=pb.PRIORITY_HIGH)))
        priority = next(lim for lim in own.limits if lim.name == "priority")
        assert priority.value == "low" and "capped" in priority.reason
        assert denied(a, "AttachProcess", pb.AttachProcessRequest(call_id=own.call_id, pid=sleeper.pid)) == PD
        a.call("EndToolCall", pb.EndToolCallRequest(call_id=own.call_id, exit_code=0))
        stream = a.watch(pb.WatchEventsRequest(sandbox="b"))
        with pytest.raises(grpc.RpcError) as info:
            next(stream)
        assert info.value.code() == PD
    assert daemon.ledger.counts()["sandboxes"] == before["sandboxes"]
    assert b_call.call_id in daemon.warden.calls


def test_unknown_token_is_unauthenticated(daemon):
    with Client(daemon.config.daemon.socket, "not-a-token") as c:
        assert denied(c, "ListSandboxes", pb.ListSandboxesRequest()) == grpc.StatusCode.UNAUTHENTICATED


def test_token_survives_restart_only_as_a_hash(daemon, admin):
    token = create(admin, "a")
    row = daemon.ledger.sandboxes()[0]
    assert token not in row.token_sha256 and len(row.token_sha256) == 64
