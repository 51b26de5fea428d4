"""A small client for the daemon's sockets, used by the CLI, `hostwarden exec`, tests and benchmarks.

Every RPC goes over gRPC, except begin_call / end_call: those take the tool-call socket
(hostwarden.call_socket) when the daemon has one beside its gRPC socket, and gRPC otherwise.
"""

from __future__ import annotations

import os
import socket as sockets
import threading
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.json_format import MessageToDict

from hostwarden.endpoints import MAX_REQUEST_BYTES, TOKEN_METADATA, call_socket_path
from hostwarden.proto import call_socket_pb2 as cs
from hostwarden.proto import warden_pb2 as pb
from hostwarden.proto import warden_pb2_grpc as pb_grpc


def read_token(token_file: Path | None) -> str | None:
    if token_file is None:
        return os.environ.get("HOSTWARDEN_TOKEN") or None
    return token_file.read_text().strip() or None


class CallSocketError(grpc.RpcError):
    """A failed request on the tool-call socket, shaped like the grpc.RpcError the same RPC would raise."""

    _CODES = {code.value[0]: code for code in grpc.StatusCode}

    def __init__(self, code: int | grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self._code = code if isinstance(code, grpc.StatusCode) else self._CODES.get(code, grpc.StatusCode.UNKNOWN)
        self._message = message

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._message


class Client:
    def __init__(self, socket: str, token: str | None = None) -> None:
        self.socket = socket
        self.token = token
        self.metadata = ((TOKEN_METADATA, token),) if token else ()
        self._channel: grpc.Channel | None = None  # made at the first gRPC call: `exec` may need none
        self._stub: pb_grpc.WardenStub | None = None
        self._calls_path = call_socket_path(socket)
        self._idle: list[sockets.socket] = []  # connected to the tool-call socket, not in use
        self._idle_lock = threading.Lock()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        with self._idle_lock:
            for conn in self._idle:
                conn.close()
            self._idle.clear()

    @property
    def stub(self) -> pb_grpc.WardenStub:
        if self._stub is None:
            self._channel = grpc.insecure_channel(f"unix:{self.socket}")
            self._stub = pb_grpc.WardenStub(self._channel)
        return self._stub

    def call(self, method: str, request: Any, timeout: float | None = 30.0) -> Any:
        return getattr(self.stub, method)(request, metadata=self.metadata, timeout=timeout)

    def watch(self, request: pb.WatchEventsRequest) -> Any:
        return self.stub.WatchEvents(request, metadata=self.metadata)

    def begin_call(self, request: pb.BeginToolCallRequest, timeout: float = 30.0) -> pb.BeginToolCallResponse:
        """BeginToolCall, on the tool-call socket where the daemon has one."""
        reply = self._on_call_socket(cs.CallSocketRequest(begin=request), timeout)
        return self.call("BeginToolCall", request, timeout) if reply is None else reply.begin

    def end_call(self, request: pb.EndToolCallRequest, timeout: float = 30.0) -> pb.ToolCall:
        """EndToolCall, on the tool-call socket where the daemon has one."""
        reply = self._on_call_socket(cs.CallSocketRequest(end=request), timeout)
        return self.call("EndToolCall", request, timeout) if reply is None else reply.end

    def _on_call_socket(self, request: cs.CallSocketRequest, timeout: float) -> cs.CallSocketReply | None:
        """The reply, or None when the daemon has no tool-call socket (then gRPC serves the request)."""
        if self.token:
            request.token = self.token
        data = request.SerializeToString()
        conn, reused = self._connection()
        if conn is None:
            return None
        try:
            conn.settimeout(timeout)
            try:
                conn.send(data)
            except OSError:
                if not reused:
                    raise
                # An idle connection the daemon closed (it restarted): the request never reached it.
                conn.close()
                conn, _ = self._connection(fresh=True)
                if conn is None:
                    return None
                conn.settimeout(timeout)
                conn.send(data)
            answer = conn.recv(MAX_REQUEST_BYTES)
        except TimeoutError:
            conn.close()  # a late reply would be read as the next request's
            raise CallSocketError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                  f"no reply from {self._calls_path} within {timeout:g} s") from None
        except OSError as exc:
            conn.close()
            raise CallSocketError(grpc.StatusCode.UNAVAILABLE, f"{self._calls_path}: {exc}") from None
        if not answer:
            conn.close()
            raise CallSocketError(grpc.StatusCode.UNAVAILABLE,
                                  f"{self._calls_path}: the daemon closed the connection (stopping?)")
        with self._idle_lock:
            self._idle.append(conn)
        reply = cs.CallSocketReply.FromString(answer)
        if reply.code:
            raise CallSocketError(reply.code, reply.message)
        return reply

    def _connection(self, *, fresh: bool = False) -> tuple[sockets.socket | None, bool]:
        """An idle connection (reused: True) or a new one; None where the socket does not exist."""
        if not fresh:
            with self._idle_lock:
                if self._idle:
                    return self._idle.pop(), True
        conn = sockets.socket(sockets.AF_UNIX, sockets.SOCK_SEQPACKET | sockets.SOCK_CLOEXEC)
        try:
            conn.connect(str(self._calls_path))
        except (FileNotFoundError, ConnectionRefusedError):
            conn.close()
            return None, False
        except OSError as exc:
            conn.close()
            raise CallSocketError(grpc.StatusCode.UNAVAILABLE, f"{self._calls_path}: {exc}") from None
        return conn, False


_INT64_TYPES = {FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64}


def to_dict(message: Any) -> dict[str, Any]:
    """The message as JSON-ready data, field names as in the proto; 64-bit integers stay numbers (the proto3
    JSON mapping writes them as strings, which would make `jq '.peak_memory_bytes > 1e9'` compare text)."""
    data = MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    _int64_as_numbers(message.DESCRIPTOR, data)
    return data


def _int64_as_numbers(descriptor: Any, data: dict[str, Any]) -> None:
    for field in descriptor.fields:
        if field.name not in data:
            continue
        value = data[field.name]
        if field.cpp_type in _INT64_TYPES:
            data[field.name] = [int(v) for v in value] if isinstance(value, list) else int(value)
        elif field.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE and field.message_type.GetOptions().map_entry is False:
            for item in value if isinstance(value, list) else [value]:
                _int64_as_numbers(field.message_type, item)
