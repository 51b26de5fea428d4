"""Where clients find the daemon, shared by both ends: kept free of heavy imports, since `hostwarden exec`
(one process per tool call) loads it before anything else."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_SOCKET = "/run/hostwarden/hostwarden.sock"
SOCKET_ENV = "HOSTWARDEN_SOCKET"
TOKEN_METADATA = "x-hostwarden-token"  # gRPC metadata key carrying a sandbox's token
# A tool-call socket request is a BeginToolCall or EndToolCall request with a token: a few hundred bytes.
# Larger datagrams are refused whole (the kernel reports them truncated); replies fit the same bound.
MAX_REQUEST_BYTES = 64 * 1024


def socket_path(option: str | None) -> str:
    """--socket, then $HOSTWARDEN_SOCKET, then the default."""
    return option or os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


def call_socket_path(grpc_socket: str | os.PathLike[str]) -> Path:
    """/run/hostwarden/hostwarden.sock -> /run/hostwarden/hostwarden-calls.sock (clients derive it alike)."""
    path = Path(grpc_socket)
    return path.with_name(f"{path.stem}-calls{path.suffix}")
