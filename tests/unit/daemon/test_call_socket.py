"""The tool-call socket (hostwarden.call_socket): Begin and End in one datagram each way, answered like the
gRPC RPCs of the same names, with the same authorization; hostile datagrams get a status, never a crash."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hostwarden import call_socket
from hostwarden.client import CallSocketError, Client
from hostwarden.endpoints import MAX_REQUEST_BYTES, call_socket_path
from hostwarden.proto import call_socket_pb2 as cs
from hostwarden.proto import warden_pb2 as pb
from tests.unit.daemon.conftest import create, make_daemon
from tests.unit.daemon.test_fuzz import CODES, fuzz, snapshot


def raw_connection(daemon) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    conn.settimeout(10)
    conn.connect(str(call_socket_path(daemon.config.daemon.socket)))
    return conn


def exchange(conn: socket.socket, data: bytes) -> cs.CallSocketReply:
    conn.send(data)
    return cs.CallSocketReply.FromString(conn.recv(MAX_REQUEST_BYTES))


def test_path_sits_beside_the_grpc_socket_with_its_mode(daemon):
    path = call_socket_path(daemon.config.daemon.socket)
    assert path.name == "hw-calls.sock" and path.parent == Path(daemon.config.daemon.socket).parent
    assert call_socket_path("/run/hostwarden/hostwarden.sock").name == "hostwarden-calls.sock"
    mode = os.stat(path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o660
    with Client(daemon.config.daemon.socket) as client:  # and `hostwarden status` says where it is
        assert client.call("GetStatus", pb.GetStatusRequest()).call_socket == str(path)


def test_begin_and_end_without_grpc(daemon, admin, sleeper):
    create(admin, "sb")
    admin.close()  # the gRPC channel used for CreateSandbox is gone; a fresh client makes none
    with Client(daemon.config.daemon.socket) as client:
        begin = client.begin_call(pb.BeginToolCallRequest(
            sandbox="sb", tool="pytest", pid=sleeper.pid, intent=pb.Intent(memory_max_bytes=256 * 2**20)))
        memory_max = next(lim for lim in begin.limits if lim.name == "memory.max")
        assert memory_max.enforced and "requested 256 MiB" in memory_max.reason
        assert str(sleeper.pid) in (daemon.tree.call_path("sb", begin.call_id) / "cgroup.procs").read_text()
        summary = client.end_call(pb.EndToolCallRequest(call_id=begin.call_id, exit_code=3))
        assert summary.call_id == begin.call_id and summary.exit_code == 3 and summary.end_reason == "ended"
        assert client._channel is None  # both went over the tool-call socket
    row = daemon.ledger.get_call(begin.call_id)
    assert row is not None and row.state == "finished" and row.summary["exit_code"] == 3
    assert not daemon.tree.call_path("sb", begin.call_id).exists()


def test_errors_carry_the_grpc_code_and_message(daemon, admin):
    create(admin, "sb")
    before = snapshot(daemon)
    for request, code, words in [
        (pb.BeginToolCallRequest(sandbox="nope", tool="t"), grpc.StatusCode.NOT_FOUND, "nope"),
        (pb.BeginToolCallRequest(sandbox="sb", tool=""), grpc.StatusCode.INVALID_ARGUMENT, "tool"),
        (pb.BeginToolCallRequest(sandbox="sb", tool="t", pid=2**31 - 1), grpc.StatusCode.NOT_FOUND, "pid"),
    ]:
        with pytest.raises(CallSocketError) as info:
            admin.begin_call(request)
        assert info.value.code() == code and words in info.value.details()
        # The same request over gRPC gets the same answer.
        with pytest.raises(grpc.RpcError) as over_grpc:
            admin.call("BeginToolCall", request)
        assert (over_grpc.value.code(), over_grpc.value.details()) == (code, info.value.details())
    with pytest.raises(CallSocketError) as info:
        admin.end_call(pb.EndToolCallRequest(call_id="0123abcd"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert snapshot(daemon) == before


def test_a_sandbox_token_reaches_only_its_own_sandbox(daemon, admin):
    token_a = create(admin, "a", pb.PRIORITY_LOW)
    create(admin, "b")
    b_call = admin.begin_call(pb.BeginToolCallRequest(sandbox="b", tool="t"))
    before = snapshot(daemon)
    with Client(daemon.config.daemon.socket, token_a) as a:
        for attempt in (lambda: a.begin_call(pb.BeginToolCallRequest(sandbox="b", tool="t")),
                        lambda: a.end_call(pb.EndToolCallRequest(call_id=b_call.call_id))):
            with pytest.raises(CallSocketError) as info:
                attempt()
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert snapshot(daemon) == before
        own = a.begin_call(pb.BeginToolCallRequest(sandbox="a", tool="t", intent=pb.Intent(priority=pb.PRIORITY_HIGH)))
        priority = next(lim for lim in own.limits if lim.name == "priority")
        assert priority.value == "low" and "capped" in priority.reason  # never above its sandbox's
        a.end_call(pb.EndToolCallRequest(call_id=own.call_id, exit_code=0))
    assert b_call.call_id in daemon.warden.calls
    with Client(daemon.config.daemon.socket, "not-a-token") as stranger, pytest.raises(CallSocketError) as info:
        stranger.begin_call(pb.BeginToolCallRequest(sandbox="a", tool="t"))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_malformed_empty_and_oversized_datagrams(daemon, admin):
    create(admin, "sb")
    before = snapshot(daemon)
    with raw_connection(daemon) as conn:
        garbage = exchange(conn, b"\xff\xff\xff\xff")
        assert garbage.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "CallSocketRequest" in garbage.message
        neither = exchange(conn, cs.CallSocketRequest(token="").SerializeToString() + b"\x0a\x00")
        assert neither.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "`begin` or `end`" in neither.message
        huge = exchange(conn, b"\x0a" + b"x" * (MAX_REQUEST_BYTES + 10))
        assert huge.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] and str(MAX_REQUEST_BYTES) in huge.message
        # The connection still serves after all that.
        ok = exchange(conn, cs.CallSocketRequest(begin=pb.BeginToolCallRequest(sandbox="sb", tool="t"))
                      .SerializeToString())
        assert ok.code == 0 and ok.begin.call_id
    admin.end_call(pb.EndToolCallRequest(call_id=ok.begin.call_id))
    assert snapshot(daemon)[1] == before[1]


@fuzz
@given(data=st.one_of(st.binary(min_size=1, max_size=2000),
                      st.builds(lambda token, sandbox, tool, pid: cs.CallSocketRequest(
                          token=token, begin=pb.BeginToolCallRequest(sandbox=sandbox, tool=tool, pid=pid))
                          .SerializeToString(), st.text(max_size=80), st.text(max_size=300), st.text(max_size=300),
                          st.integers(-2**31, 2**31 - 1)),
                      st.builds(lambda call_id, code: cs.CallSocketRequest(
                          end=pb.EndToolCallRequest(call_id=call_id, exit_code=code)).SerializeToString(),
                          st.text(max_size=300), st.integers(-2**31, 2**31 - 1))))
def test_hostile_datagrams_get_a_status_and_change_nothing(daemon, admin, data):
    if "sb" not in daemon.warden.sandboxes:
        create(admin, "sb")
    before = snapshot(daemon)
    with raw_connection(daemon) as conn:
        reply = exchange(conn, data)
    if reply.code == 0:  # a valid Begin: undo it; the fuzz is after the failures
        admin.end_call(pb.EndToolCallRequest(call_id=reply.begin.call_id))
        return
    codes = {code.value[0] for code in CODES | {grpc.StatusCode.UNAUTHENTICATED}}
    assert reply.code in codes and reply.message, reply
    assert snapshot(daemon) == before


def test_connections_beyond_the_limit_are_refused_with_a_reason(daemon, monkeypatch):
    monkeypatch.setattr(call_socket, "MAX_CONNECTIONS", 2)
    first, second = raw_connection(daemon), raw_connection(daemon)
    try:
        for conn in (first, second):  # served: each answers
            assert exchange(conn, b"\xff").code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        with raw_connection(daemon) as third:
            refused = cs.CallSocketReply.FromString(third.recv(MAX_REQUEST_BYTES))
            assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] and "connections" in refused.message
            assert third.recv(MAX_REQUEST_BYTES) == b""  # and closed
    finally:
        first.close()
        second.close()


def test_shutdown_removes_the_socket_and_a_client_reconnects_after_a_restart(tmp_path, sleeper):
    daemon = make_daemon(tmp_path)
    daemon.start()
    with Client(daemon.config.daemon.socket) as client:
        create(client, "sb")
        call = client.begin_call(pb.BeginToolCallRequest(sandbox="sb", tool="t", pid=sleeper.pid))
        daemon.shutdown()
        assert not call_socket_path(daemon.config.daemon.socket).exists()
        with Client(daemon.config.daemon.socket) as other, pytest.raises(grpc.RpcError) as info:
            other.end_call(pb.EndToolCallRequest(call_id=call.call_id), timeout=2)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        restarted = make_daemon(tmp_path)
        restarted.start()
        try:  # `client` still holds its connection to the stopped daemon: it finds the new one
            assert client.end_call(pb.EndToolCallRequest(call_id=call.call_id, exit_code=0)).exit_code == 0
        finally:
            restarted.shutdown()


def test_without_the_call_socket_the_client_uses_grpc(tmp_path, sleeper):
    daemon = make_daemon(tmp_path, call_socket=False)
    daemon.start()
    try:
        assert not call_socket_path(daemon.config.daemon.socket).exists()
        with Client(daemon.config.daemon.socket) as client:
            assert client.call("GetStatus", pb.GetStatusRequest()).call_socket == ""
            create(client, "sb")
            begin = client.begin_call(pb.BeginToolCallRequest(sandbox="sb", tool="t", pid=sleeper.pid))
            assert client.end_call(pb.EndToolCallRequest(call_id=begin.call_id, exit_code=0)).exit_code == 0
            with pytest.raises(grpc.RpcError) as info:
                client.end_call(pb.EndToolCallRequest(call_id=begin.call_id + "x"))
            assert info.value.code() == grpc.StatusCode.NOT_FOUND and not isinstance(info.value, CallSocketError)
    finally:
        daemon.shutdown()
