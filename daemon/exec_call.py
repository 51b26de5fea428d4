"""`hostwarden exec`: run one command as one tool call, attached to its cgroup before it runs.

The child is forked before the gRPC channel exists (see WaitingChild.fork) and
blocks on a pipe; the daemon moves it into the call cgroup (BeginToolCall with its pid, on the tool-call
socket where the daemon has one), then the parent releases it to exec the command. Signals the parent
receives are forwarded to the child.
"""

from __future__ import annotations

import contextlib
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


@dataclass
class WaitingChild:
    """A forked child that execs argv only once released: the daemon moves it into the call first."""

    pid: int
    go_fd: int
    error_fd: int
    released: bool = False

    @classmethod
    def fork(cls, argv: list[str]) -> WaitingChild:
        """Fork before any gRPC channel exists in this process where possible: forking while gRPC's
        threads come and go (channels created and closed) can deadlock them."""
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
        return cls(pid, go_write, err_read)

    def release(self) -> None:
        """Let it exec; a child already killed by a forwarded signal has nothing left to release."""
        with contextlib.suppress(BrokenPipeError):
            os.write(self.go_fd, b"1")
        os.close(self.go_fd)
        self.released = True

    def wait(self) -> tuple[int, str]:
        """The exit status as a shell reports it (128+signal when killed), and any exec error."""
        _, status = os.waitpid(self.pid, 0)
        error = os.read(self.error_fd, 4096).decode(errors="replace")
        os.close(self.error_fd)
        if os.WIFSIGNALED(status):
            return 128 + os.WTERMSIG(status), error
        return os.WEXITSTATUS(status), error

    def discard(self) -> None:
        """Never released: kill it before it runs anything."""
        os.kill(self.pid, signal.SIGKILL)
        os.close(self.go_fd)
        os.waitpid(self.pid, 0)
        os.close(self.error_fd)


def run_tool_call(client: Client, child: WaitingChild, sandbox: str, tool: str, intent: pb.Intent,
                  argv: list[str]) -> ExecResult:
    """Begin a call holding `child`, release it, wait for it, end the call with its status."""
    # Forward from the start: a signal that arrives before the release ends the held child, and the call
    # then reports it as the command's status (128+signal), as it would once the command runs.
    previous = {sig: signal.signal(sig, lambda signum, _frame: os.kill(child.pid, signum))
                for sig in FORWARDED_SIGNALS}
    try:
        try:
            reply = client.begin_call(pb.BeginToolCallRequest(
                sandbox=sandbox, tool=tool, intent=intent, command=" ".join(argv)[:200], pid=child.pid))
        except grpc.RpcError as exc:
            child.discard()
            raise ExecError(f"BeginToolCall failed: {exc.code().name}: {exc.details()}") from None
        child.release()
        code, exec_error = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if exec_error:
        print(f"hostwarden exec: {exec_error}", file=sys.stderr)
    try:
        summary = client.end_call(pb.EndToolCallRequest(call_id=reply.call_id, exit_code=code))
    except grpc.RpcError as exc:
        print(f"hostwarden exec: EndToolCall failed: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return ExecResult(code, None, reply.call_id)
    return ExecResult(code, to_dict(summary), reply.call_id)
