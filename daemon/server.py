"""The gRPC server: a thin translation between hostwarden.v1.Warden messages and the service.

Each handler authenticates the caller (admin socket or sandbox token), converts the request to plain
Python values, calls the service, and maps WardenError subclasses to gRPC status codes.
"""

from __future__ import annotations

import functools
import grp
import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from hostwarden import errors
from hostwarden.cgroups import errors as cgroup_errors
from hostwarden.endpoints import TOKEN_METADATA
from hostwarden.policy.resolve import Intent
from hostwarden.policy.schema import Priority
from hostwarden.proto import warden_pb2 as pb
from hostwarden.proto import warden_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = "hostwarden.v1.Warden"
MAX_MESSAGE_BYTES = 4 * 1024 * 1024

_STATUS = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    cgroup_errors.InvalidName: grpc.StatusCode.INVALID_ARGUMENT,
    cgroup_errors.InvalidLimit: grpc.StatusCode.INVALID_ARGUMENT,
    cgroup_errors.PathEscape: grpc.StatusCode.INVALID_ARGUMENT,
    cgroup_errors.CgroupNotFound: grpc.StatusCode.NOT_FOUND,
    cgroup_errors.CgroupExists: grpc.StatusCode.ALREADY_EXISTS,
    cgroup_errors.CgroupBusy: grpc.StatusCode.FAILED_PRECONDITION,
    cgroup_errors.CgroupIOError: grpc.StatusCode.INTERNAL,
}


# What the service raises for a request it refuses: answered with a status code, never a crash.
REFUSALS = (errors.WardenError, cgroup_errors.CgroupError)


def status_of(exc: Exception) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in _STATUS:
            return _STATUS[cls]
    return grpc.StatusCode.UNKNOWN

PRIORITY_NAMES = {pb.PRIORITY_LOW: "low", pb.PRIORITY_NORMAL: "normal", pb.PRIORITY_HIGH: "high"}
PRIORITY_VALUES = {v: k for k, v in PRIORITY_NAMES.items()}

F = TypeVar("F", bound=Callable[..., Any])


def timestamp(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def priority_name(value: int, field: str) -> str | None:
    if value == pb.PRIORITY_UNSPECIFIED:
        return None
    try:
        return PRIORITY_NAMES[value]
    except KeyError:
        raise errors.InvalidArgument(f"{field}: unknown priority {value}; use LOW, NORMAL or HIGH") from None


def _abort_on_error(method: F) -> F:
    @functools.wraps(method)
    def wrapper(self: WardenServicer, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except REFUSALS as exc:
            context.abort(status_of(exc), str(exc))
    return wrapper  # type: ignore[return-value]


def call_message(summary: dict[str, Any]) -> pb.ToolCall:
    msg = pb.ToolCall(
        call_id=summary["call_id"], sandbox=summary["sandbox"], tool=summary["tool"],
        state=summary.get("state", ""), end_reason=summary.get("end_reason", ""),
        command=summary.get("command", ""),
        duration_seconds=summary.get("duration_seconds") or 0.0,
        peak_memory_source=summary.get("peak_memory_source", ""),
        cpu_seconds=summary.get("cpu_seconds") or 0.0,
        energy_source=summary.get("energy_source", "unavailable"),
        oom_killed=bool(summary.get("oom_killed")),
        executables=summary.get("executables", []),
        executables_omitted=summary.get("executables_omitted", 0),
        net_source=summary.get("net_source", ""),
    )
    msg.started_at.CopyFrom(timestamp(summary["started_at"]))
    if summary.get("ended_at") is not None:
        msg.ended_at.CopyFrom(timestamp(summary["ended_at"]))
    for name in ("exit_code", "peak_memory_bytes", "energy_joules", "net_rx_bytes", "net_tx_bytes"):
        if summary.get(name) is not None:
            setattr(msg, name, summary[name])
    for action in summary.get("actions", []):
        msg.actions.add(kind=action["kind"], reason=action["reason"], detail=action["detail"], hint=action["hint"],
                        at=timestamp(action["at"]), dry_run=action["dry_run"])
    for limit in summary.get("limits", []):
        msg.limits.add(name=limit["name"], value=str(limit["value"]), reason=limit.get("reason", ""),
                       enforced=bool(limit.get("enforced")))
    return msg


def begin_tool_call(warden: Any, principal: Any, request: pb.BeginToolCallRequest) -> pb.BeginToolCallResponse:
    """BeginToolCall for either transport (this gRPC server or hostwarden.call_socket)."""
    i = request.intent
    wanted = priority_name(i.priority, "intent.priority")
    intent = Intent(
        memory_max=i.memory_max_bytes if i.HasField("memory_max_bytes") else None,
        memory_high=i.memory_high_bytes if i.HasField("memory_high_bytes") else None,
        cpu_cores=i.cpu_cores if i.HasField("cpu_cores") else None,
        timeout_s=i.timeout_seconds if i.HasField("timeout_seconds") else None,
        priority=Priority(wanted) if wanted else None, auto=i.auto)
    call = warden.begin_call(principal, request.sandbox, request.tool, intent, request.command, request.pid)
    reply = pb.BeginToolCallResponse(call_id=call.call_id, cgroup_path=str(call.path))
    for limit in call.granted:
        reply.limits.add(name=limit["name"], value=str(limit["value"]), reason=limit["reason"],
                         enforced=limit["enforced"])
    if call.deadline_mono is not None:
        reply.deadline.CopyFrom(timestamp(time.time() + call.deadline_mono - time.monotonic()))
    return reply


def end_tool_call(warden: Any, principal: Any, request: pb.EndToolCallRequest) -> pb.ToolCall:
    """EndToolCall for either transport."""
    exit_code = request.exit_code if request.HasField("exit_code") else None
    return call_message(warden.end_call(principal, request.call_id, exit_code))


class WardenServicer(pb_grpc.WardenServicer):
    """Translates RPCs to the Daemon facade (hostwarden.daemon.Daemon)."""

    def __init__(self, daemon: Any) -> None:
        self.d = daemon

    def _principal(self, context: grpc.ServicerContext) -> Any:
        token = dict(context.invocation_metadata()).get(TOKEN_METADATA)
        return self.d.warden.authenticate(token)

    def _sandbox_msg(self, sandbox: Any) -> pb.Sandbox:
        return pb.Sandbox(name=sandbox.name, labels=sandbox.labels, priority=PRIORITY_VALUES[sandbox.priority],
                          cgroup_path=str(sandbox.path), created_at=timestamp(sandbox.created_at),
                          running_calls=self.d.warden.running_calls_of(sandbox.name), adopted=sandbox.adopted,
                          network=self.d.network_spec(sandbox.name))

    @_abort_on_error
    def CreateSandbox(self, request: pb.CreateSandboxRequest, context: grpc.ServicerContext) -> Any:
        priority = priority_name(request.priority, "priority") or "normal"
        sandbox, token = self.d.create_sandbox(self._principal(context), request.name, dict(request.labels),
                                               priority, request.network)
        return pb.CreateSandboxResponse(sandbox=self._sandbox_msg(sandbox), token=token)

    @_abort_on_error
    def BindNetwork(self, request: pb.BindNetworkRequest, context: grpc.ServicerContext) -> Any:
        return self._sandbox_msg(self.d.bind_network(self._principal(context), request.sandbox, request.network))

    @_abort_on_error
    def AdoptSandbox(self, request: pb.AdoptSandboxRequest, context: grpc.ServicerContext) -> Any:
        priority = priority_name(request.priority, "priority") or "normal"
        sandbox, token = self.d.warden.adopt_sandbox(self._principal(context), request.name, request.cgroup_path,
                                                     dict(request.labels), priority)
        return pb.CreateSandboxResponse(sandbox=self._sandbox_msg(sandbox), token=token)

    @_abort_on_error
    def DeleteSandbox(self, request: pb.DeleteSandboxRequest, context: grpc.ServicerContext) -> Any:
        self.d.warden.delete_sandbox(self._principal(context), request.name, request.force)
        return pb.DeleteSandboxResponse()

    @_abort_on_error
    def ListSandboxes(self, request: pb.ListSandboxesRequest, context: grpc.ServicerContext) -> Any:
        sandboxes = self.d.warden.list_sandboxes(self._principal(context))
        return pb.ListSandboxesResponse(sandboxes=[self._sandbox_msg(s) for s in sandboxes])

    @_abort_on_error
    def BeginToolCall(self, request: pb.BeginToolCallRequest, context: grpc.ServicerContext) -> Any:
        return begin_tool_call(self.d.warden, self._principal(context), request)

    @_abort_on_error
    def AttachProcess(self, request: pb.AttachProcessRequest, context: grpc.ServicerContext) -> Any:
        self.d.warden.attach(self._principal(context), request.call_id, request.pid)
        return pb.AttachProcessResponse()

    @_abort_on_error
    def EndToolCall(self, request: pb.EndToolCallRequest, context: grpc.ServicerContext) -> Any:
        return end_tool_call(self.d.warden, self._principal(context), request)

    @_abort_on_error
    def GetToolCall(self, request: pb.GetToolCallRequest, context: grpc.ServicerContext) -> Any:
        return call_message(self.d.warden.get_call(self._principal(context), request.call_id))

    @_abort_on_error
    def ListToolCalls(self, request: pb.ListToolCallsRequest, context: grpc.ServicerContext) -> Any:
        if request.since_seconds < 0:
            raise errors.InvalidArgument("since_seconds: must be 0 (no bound) or a positive number of seconds")
        since = time.time() - request.since_seconds if request.since_seconds else None
        calls = self.d.warden.list_calls(self._principal(context), request.sandbox, since, request.limit or 100)
        return pb.ListToolCallsResponse(calls=[call_message(c) for c in calls])

    @_abort_on_error
    def GetUsage(self, request: pb.GetUsageRequest, context: grpc.ServicerContext) -> Any:
        return self.d.usage(self._principal(context), request.sandbox)

    def WatchEvents(self, request: pb.WatchEventsRequest, context: grpc.ServicerContext) -> Iterator[pb.Event]:
        try:
            principal = self._principal(context)
            sandbox = request.sandbox
            if sandbox:
                self.d.warden.list_sandboxes(principal)  # validates the token
                principal.check(sandbox)
            elif not principal.is_admin:
                sandbox = principal.sandbox
            if len(request.kinds) > 64 or any(len(k) > 64 for k in request.kinds):
                raise errors.InvalidArgument("kinds: at most 64 kinds of at most 64 characters each")
        except errors.WardenError as exc:
            context.abort(status_of(exc), str(exc))
        sub = self.d.bus.subscribe(sandbox, request.kinds)
        context.add_callback(sub.close)
        try:
            while context.is_active() and not sub.closed:
                event = sub.get(timeout=0.5)
                if event is None:
                    continue
                yield pb.Event(seq=event.seq, at=timestamp(event.at), kind=event.kind, sandbox=event.sandbox,
                               call_id=event.call_id, message=event.message, attributes=event.attributes,
                               dropped=event.dropped, kernel_time_ns=event.kernel_time_ns)
        finally:
            sub.close()

    @_abort_on_error
    def GetPolicy(self, request: pb.GetPolicyRequest, context: grpc.ServicerContext) -> Any:
        self._principal(context)
        return self.d.policy_document()

    @_abort_on_error
    def SetPolicy(self, request: pb.SetPolicyRequest, context: grpc.ServicerContext) -> Any:
        if not self._principal(context).is_admin:
            raise errors.PermissionDenied("only the admin socket may change the policy")
        return self.d.set_policy(request.toml)

    @_abort_on_error
    def ValidatePolicy(self, request: pb.ValidatePolicyRequest, context: grpc.ServicerContext) -> Any:
        self._principal(context)
        return self.d.validate_policy(request.toml)

    @_abort_on_error
    def GetIntegrity(self, request: pb.GetIntegrityRequest, context: grpc.ServicerContext) -> Any:
        return self.d.integrity(self._principal(context), request.sandbox)

    @_abort_on_error
    def GetQuote(self, request: pb.GetQuoteRequest, context: grpc.ServicerContext) -> Any:
        return self.d.quote(self._principal(context), request.nonce, request.ima_offset)

    @_abort_on_error
    def GetCapabilities(self, request: pb.GetCapabilitiesRequest, context: grpc.ServicerContext) -> Any:
        self._principal(context)
        return pb.Capabilities(capabilities=self.d.capability_messages())

    @_abort_on_error
    def GetStatus(self, request: pb.GetStatusRequest, context: grpc.ServicerContext) -> Any:
        self._principal(context)
        return self.d.status_message()


def bind_unix_socket(path: Path, group: str, bind: Callable[[str], object]) -> None:
    """Bind a socket with its final mode from the start (umask 0117 -> 0660), so there is no chmod race;
    then hand it to the `hostwarden` group."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_socket():
        path.unlink()  # a stale socket from a previous run; a live daemon would still hold its pid file
    old = os.umask(0o117)
    try:
        bind(str(path))
    finally:
        os.umask(old)
    try:
        os.chown(path, -1, grp.getgrnam(group).gr_gid)
    except KeyError:
        log.warning("group %r does not exist: %s stays 0660 root:root", group, path)


class GrpcServer:
    def __init__(self, daemon: Any, socket_path: Path, socket_group: str, *, workers: int = 16,
                 tcp_address: str | None = None, tls: tuple[bytes, bytes, bytes] | None = None) -> None:
        options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
                                  options=options, maximum_concurrent_rpcs=workers * 8)
        pb_grpc.add_WardenServicer_to_server(WardenServicer(daemon), self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (pb.DESCRIPTOR.services_by_name["Warden"].full_name, health.SERVICE_NAME, reflection.SERVICE_NAME),
            self.server)
        self.socket_path = socket_path
        bind_unix_socket(socket_path, socket_group, lambda path: self.server.add_insecure_port(f"unix:{path}"))
        if tcp_address and tls:
            key, cert, ca = tls
            creds = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)
            self.server.add_secure_port(tcp_address, creds)

    def start(self) -> None:
        self.server.start()
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float) -> None:
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.server.stop(grace).wait()
