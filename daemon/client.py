"""A small client for the daemon's socket, used by the CLI, `hostwarden exec`, tests and benchmarks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from hostwarden.config import DEFAULT_SOCKET
from hostwarden.proto import warden_pb2 as pb
from hostwarden.proto import warden_pb2_grpc as pb_grpc
from hostwarden.server import TOKEN_METADATA

SOCKET_ENV = "HOSTWARDEN_SOCKET"


def socket_path(option: str | None) -> str:
    """--socket, then $HOSTWARDEN_SOCKET, then the default."""
    return option or os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


def read_token(token_file: Path | None) -> str | None:
    if token_file is None:
        return os.environ.get("HOSTWARDEN_TOKEN") or None
    return token_file.read_text().strip() or None


class Client:
    def __init__(self, socket: str, token: str | None = None) -> None:
        self.socket = socket
        self.channel = grpc.insecure_channel(f"unix:{socket}")
        self.stub = pb_grpc.WardenStub(self.channel)
        self.metadata = ((TOKEN_METADATA, token),) if token else ()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def call(self, method: str, request: Any, timeout: float | None = 30.0) -> Any:
        return getattr(self.stub, method)(request, metadata=self.metadata, timeout=timeout)

    def watch(self, request: pb.WatchEventsRequest) -> Any:
        return self.stub.WatchEvents(request, metadata=self.metadata)


def to_dict(message: Any) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
