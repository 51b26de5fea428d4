"""Hostile and random input to every mutating RPC: a clear error code, never a crash, never a state change."""

from __future__ import annotations

import subprocess

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hostwarden.proto import warden_pb2 as pb
from tests.unit.daemon.conftest import create

CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED,
         grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ALREADY_EXISTS,
         grpc.StatusCode.UNAVAILABLE}

hostile_text = st.one_of(
    st.text(max_size=300),
    st.sampled_from(["..", ".", "/", "../../etc", "a/../../b", "\x00", "calls", "agent", "supervisor",
                     "x" * 5000, "$(reboot)", "\n", "sb/../other"]),
)
fuzz = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def snapshot(daemon) -> tuple:
    tree = sorted(str(p.relative_to(daemon.tree.root)) for p in daemon.tree.root.rglob("*") if p.is_dir())
    return daemon.ledger.counts(), tree


def check(admin, method: str, request) -> None:
    try:
        admin.call(method, request)
    except grpc.RpcError as exc:
        assert exc.code() in CODES, (method, exc.code(), exc.details())
        assert exc.details()


@fuzz
@given(name=hostile_text, labels=st.dictionaries(hostile_text, hostile_text, max_size=40),
       priority=st.integers(-5, 10))
def test_create_sandbox(daemon, admin, name, labels, priority):
    if "existing" not in daemon.warden.sandboxes:
        create(admin, "existing")
    before = snapshot(daemon)
    try:
        admin.call("CreateSandbox", pb.CreateSandboxRequest(name=name, labels=labels, priority=priority))
    except grpc.RpcError as exc:
        assert exc.code() in CODES and exc.details()
        assert snapshot(daemon) == before
    else:
        admin.call("DeleteSandbox", pb.DeleteSandboxRequest(name=name))
        assert snapshot(daemon) == before


@fuzz
@given(sandbox=hostile_text, tool=hostile_text, pid=st.integers(-2**31, 2**31 - 1),
       memory=st.one_of(st.none(), st.integers(0, 2**64 - 1)), cpu=st.one_of(st.none(), st.floats()),
       timeout=st.one_of(st.none(), st.floats()), priority=st.integers(-3, 9))
def test_begin_tool_call(daemon, admin, sandbox, tool, pid, memory, cpu, timeout, priority):
    before = snapshot(daemon)
    intent = pb.Intent(memory_max_bytes=memory, cpu_cores=cpu, timeout_seconds=timeout, priority=priority)
    try:
        reply = admin.call("BeginToolCall", pb.BeginToolCallRequest(sandbox=sandbox, tool=tool, intent=intent,
                                                                     pid=pid))
    except grpc.RpcError as exc:
        assert exc.code() in CODES and exc.details(), (exc.code(), exc.details())
        assert snapshot(daemon) == before
    else:
        admin.call("EndToolCall", pb.EndToolCallRequest(call_id=reply.call_id))


@fuzz
@given(call_id=hostile_text, pid=st.integers(-2**31, 2**31 - 1), exit_code=st.integers(-2**31, 2**31 - 1),
       nonce=hostile_text, toml=hostile_text)
def test_call_and_policy_rpcs(daemon, admin, call_id, pid, exit_code, nonce, toml):
    before = snapshot(daemon)
    check(admin, "AttachProcess", pb.AttachProcessRequest(call_id=call_id, pid=pid))
    check(admin, "EndToolCall", pb.EndToolCallRequest(call_id=call_id, exit_code=exit_code))
    check(admin, "GetToolCall", pb.GetToolCallRequest(call_id=call_id))
    check(admin, "GetUsage", pb.GetUsageRequest(sandbox=call_id))
    check(admin, "GetQuote", pb.GetQuoteRequest(nonce=nonce))
    check(admin, "ValidatePolicy", pb.ValidatePolicyRequest(toml=toml))
    check(admin, "DeleteSandbox", pb.DeleteSandboxRequest(name=call_id))
    assert snapshot(daemon)[1] == before[1]
    assert daemon.ledger.counts() == before[0]


def test_fuzz_fixture_sanity(daemon, admin):
    """The property tests above would notice a change: a real call does change the snapshot."""
    create(admin, "sb")
    before = snapshot(daemon)
    proc = subprocess.Popen(["sleep", "5"])
    try:
        admin.call("BeginToolCall", pb.BeginToolCallRequest(sandbox="sb", tool="t", pid=proc.pid))
        assert snapshot(daemon) != before
    finally:
        proc.kill()
        proc.wait()
