"""The tool-call socket: BeginToolCall and EndToolCall in one SOCK_SEQPACKET datagram each way.

Every tool call makes these two requests while the caller waits, and the caller holds a forked child
during the first. Over gRPC each costs an HTTP/2 round trip through Python's gRPC stack (about 0.36 ms
here), and made right after the fork, while the child's own after-fork work competes for the CPUs, about
1.3 ms; together they added about 3 ms to a call of /bin/true. A datagram round trip costs about 20 us
(0.6 ms right after the fork). Requests and replies are the hostwarden.v1 messages of the same RPCs wrapped in
CallSocketRequest / CallSocketReply (proto/hostwarden/v1/call_socket.proto); authorization, validation
and status codes are the gRPC server's (hostwarden.server), so both paths answer alike.

The socket lives beside the gRPC socket (`<name>-calls.sock`), made with the same mode and group: who may
reach one may reach the other. Each connection is served by a thread of its own, one request at a time.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from hostwarden.endpoints import MAX_REQUEST_BYTES
from hostwarden.proto import call_socket_pb2 as cs
from hostwarden.server import REFUSALS, begin_tool_call, bind_unix_socket, end_tool_call, status_of

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 1024


def error_reply(code: grpc.StatusCode, message: str) -> cs.CallSocketReply:
    return cs.CallSocketReply(code=code.value[0], message=message)


class CallSocketServer:
    """Serves CallSocketRequests on a unix SOCK_SEQPACKET socket with the daemon's Warden."""

    def __init__(self, warden: Any, path: Path, group: str) -> None:
        self.warden = warden
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        bind_unix_socket(path, group, self.listener.bind)
        self.listener.listen(128)
        self._lock = threading.Lock()
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._stopping = False
        self._acceptor = threading.Thread(target=self._accept_loop, name="call-socket", daemon=True)

    def start(self) -> None:
        self._acceptor.start()

    def stop(self, grace: float) -> None:
        """Refuse new connections; let each connection finish the request it is serving, then close it."""
        with self._lock:
            self._stopping = True
            connections = dict(self._connections)
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
        self._acceptor.join(grace)
        self.listener.close()
        for conn in connections:
            with contextlib.suppress(OSError):  # closed meanwhile by its peer
                conn.shutdown(socket.SHUT_RD)  # wakes a thread waiting for its next request, not one replying
        for thread in connections.values():
            thread.join(grace)
        self.path.unlink(missing_ok=True)

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # shut down
            with self._lock:
                if self._stopping:
                    conn.close()
                    return
                if len(self._connections) >= MAX_CONNECTIONS:
                    refused = True
                else:
                    refused = False
                    thread = threading.Thread(target=self._serve, args=(conn,), name="call-socket-conn",
                                              daemon=True)
                    self._connections[conn] = thread
            if refused:
                self._refuse(conn)
            else:
                thread.start()

    @staticmethod
    def _refuse(conn: socket.socket) -> None:
        reply = error_reply(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"{MAX_CONNECTIONS} connections to the tool-call socket are open: close idle ones, "
                            "or use the gRPC socket")
        with contextlib.suppress(OSError):
            conn.send(reply.SerializeToString())
        conn.close()

    def _serve(self, conn: socket.socket) -> None:
        try:
            while True:
                data, _, flags, _ = conn.recvmsg(MAX_REQUEST_BYTES)
                if not data:
                    return  # the peer closed (an empty request is not one either)
                if flags & socket.MSG_TRUNC:
                    reply = error_reply(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                        f"request larger than {MAX_REQUEST_BYTES} bytes: a BeginToolCall or "
                                        "EndToolCall request is a few hundred")
                else:
                    reply = self.handle(data)
                conn.send(reply.SerializeToString())
        except OSError as exc:
            log.debug("tool-call socket connection ended: %s", exc)
        finally:
            with self._lock:
                self._connections.pop(conn, None)
            conn.close()

    def handle(self, data: bytes) -> cs.CallSocketReply:
        """One request to its reply; every failure is a status code and a message, never an exception."""
        try:
            request = cs.CallSocketRequest.FromString(data)
        except DecodeError as exc:
            return error_reply(grpc.StatusCode.INVALID_ARGUMENT,
                               f"not a hostwarden.v1.CallSocketRequest ({exc}): send the serialized message")
        kind = request.WhichOneof("request")
        if kind is None:
            return error_reply(grpc.StatusCode.INVALID_ARGUMENT, "set `begin` or `end` in the CallSocketRequest")
        try:
            principal = self.warden.authenticate(request.token or None)
            if kind == "begin":
                return cs.CallSocketReply(begin=begin_tool_call(self.warden, principal, request.begin))
            return cs.CallSocketReply(end=end_tool_call(self.warden, principal, request.end))
        except REFUSALS as exc:
            return error_reply(status_of(exc), str(exc))
        except Exception:  # a bug: answer like gRPC would (INTERNAL), keep serving, log it
            log.exception("tool-call socket: %s request failed", kind)
            return error_reply(grpc.StatusCode.INTERNAL, f"{kind} failed inside the daemon; its log says why")
