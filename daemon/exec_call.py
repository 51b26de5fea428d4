"""`hostwarden exec`: run one command as one tool call, attached to its cgroup before it runs.

The child is forked before any gRPC channel exists (forking a process with gRPC threads is unsafe) and
blocks on a pipe; the daemon moves it into the call cgroup (BeginToolCall with its pid), then the parent
releases it to exec the command. Signals the parent receives are forwarded to the child.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from typing import Any

import grpc

from hostwarden.client import Client, to_dict
from hostwarden.proto import warden_pb2 as pb

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
                     signal.SIGUSR2, signal.SIGWINCH)
EXEC_FAILED = 127


@dataclass
class ExecResult:
    exit_code: int
    summary: dict[str, Any] | None
    call_id: str


class ExecError(Exception):
    """The call could not be started; nothing ran."""


def _fork_waiting_child(argv: list[str]) -> tuple[int, int, int]:
    """Fork a child that execs argv once a byte arrives on its pipe. Returns (pid, go_fd, error_fd)."""
    go_read, go_write = os.pipe()
    err_read, err_write = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # child: wait for the go byte, then become the command
        try:
            os.close(go_write)
            os.close(err_read)
            if os.read(go_read, 1) != b"1":
                os._exit(EXEC_FAILED)
            os.close(go_read)
            for sig in FORWARDED_SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            os.execvp(argv[0], argv)
        except OSError as exc:
            os.write(err_write, f"{argv[0]}: {exc.strerror}".encode())
        finally:
            os._exit(EXEC_FAILED)
    os.close(go_read)
    os.close(err_write)
    return pid, go_write, err_read


def _exit_status(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def run_tool_call(socket: str, token: str | None, sandbox: str, tool: str, intent: pb.Intent,
                  argv: list[str]) -> ExecResult:
    pid, go_fd, err_fd = _fork_waiting_child(argv)
    released = False
    try:
        with Client(socket, token) as client:
            try:
                reply = client.call("BeginToolCall", pb.BeginToolCallRequest(
                    sandbox=sandbox, tool=tool, intent=intent, command=" ".join(argv)[:200], pid=pid))
            except grpc.RpcError as exc:
                raise ExecError(f"BeginToolCall failed: {exc.code().name}: {exc.details()}") from None
            for sig in FORWARDED_SIGNALS:
                signal.signal(sig, lambda signum, _frame: os.kill(pid, signum))
            os.write(go_fd, b"1")
            released = True
            os.close(go_fd)
            _, status = os.waitpid(pid, 0)
            exec_error = os.read(err_fd, 4096).decode(errors="replace")
            if exec_error:
                print(f"hostwarden exec: {exec_error}", file=sys.stderr)
            code = _exit_status(status)
            try:
                summary = client.call("EndToolCall", pb.EndToolCallRequest(call_id=reply.call_id, exit_code=code))
                return ExecResult(code, to_dict(summary), reply.call_id)
            except grpc.RpcError as exc:
                print(f"hostwarden exec: EndToolCall failed: {exc.code().name}: {exc.details()}", file=sys.stderr)
                return ExecResult(code, None, reply.call_id)
    finally:
        if not released:
            os.kill(pid, signal.SIGKILL)
            os.close(go_fd)
            os.waitpid(pid, 0)
        os.close(err_fd)
