import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Priority(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRIORITY_UNSPECIFIED: _ClassVar[Priority]
    PRIORITY_LOW: _ClassVar[Priority]
    PRIORITY_NORMAL: _ClassVar[Priority]
    PRIORITY_HIGH: _ClassVar[Priority]
PRIORITY_UNSPECIFIED: Priority
PRIORITY_LOW: Priority
PRIORITY_NORMAL: Priority
PRIORITY_HIGH: Priority

class Sandbox(_message.Message):
    __slots__ = ("name", "labels", "priority", "cgroup_path", "created_at", "running_calls", "adopted", "network")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    CGROUP_PATH_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    RUNNING_CALLS_FIELD_NUMBER: _ClassVar[int]
    ADOPTED_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    name: str
    labels: _containers.ScalarMap[str, str]
    priority: Priority
    cgroup_path: str
    created_at: _timestamp_pb2.Timestamp
    running_calls: int
    adopted: bool
    network: str
    def __init__(self, name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., priority: _Optional[_Union[Priority, str]] = ..., cgroup_path: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., running_calls: _Optional[int] = ..., adopted: _Optional[bool] = ..., network: _Optional[str] = ...) -> None: ...

class CreateSandboxRequest(_message.Message):
    __slots__ = ("name", "labels", "priority", "network")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    name: str
    labels: _containers.ScalarMap[str, str]
    priority: Priority
    network: str
    def __init__(self, name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., priority: _Optional[_Union[Priority, str]] = ..., network: _Optional[str] = ...) -> None: ...

class BindNetworkRequest(_message.Message):
    __slots__ = ("sandbox", "network")
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    sandbox: str
    network: str
    def __init__(self, sandbox: _Optional[str] = ..., network: _Optional[str] = ...) -> None: ...

class CreateSandboxResponse(_message.Message):
    __slots__ = ("sandbox", "token")
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    sandbox: Sandbox
    token: str
    def __init__(self, sandbox: _Optional[_Union[Sandbox, _Mapping]] = ..., token: _Optional[str] = ...) -> None: ...

class AdoptSandboxRequest(_message.Message):
    __slots__ = ("name", "cgroup_path", "labels", "priority")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    CGROUP_PATH_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    name: str
    cgroup_path: str
    labels: _containers.ScalarMap[str, str]
    priority: Priority
    def __init__(self, name: _Optional[str] = ..., cgroup_path: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., priority: _Optional[_Union[Priority, str]] = ...) -> None: ...

class DeleteSandboxRequest(_message.Message):
    __slots__ = ("name", "force")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    force: bool
    def __init__(self, name: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class DeleteSandboxResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSandboxesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSandboxesResponse(_message.Message):
    __slots__ = ("sandboxes",)
    SANDBOXES_FIELD_NUMBER: _ClassVar[int]
    sandboxes: _containers.RepeatedCompositeFieldContainer[Sandbox]
    def __init__(self, sandboxes: _Optional[_Iterable[_Union[Sandbox, _Mapping]]] = ...) -> None: ...

class Intent(_message.Message):
    __slots__ = ("memory_max_bytes", "memory_high_bytes", "cpu_cores", "timeout_seconds", "priority", "auto")
    MEMORY_MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_HIGH_BYTES_FIELD_NUMBER: _ClassVar[int]
    CPU_CORES_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    AUTO_FIELD_NUMBER: _ClassVar[int]
    memory_max_bytes: int
    memory_high_bytes: int
    cpu_cores: float
    timeout_seconds: float
    priority: Priority
    auto: bool
    def __init__(self, memory_max_bytes: _Optional[int] = ..., memory_high_bytes: _Optional[int] = ..., cpu_cores: _Optional[float] = ..., timeout_seconds: _Optional[float] = ..., priority: _Optional[_Union[Priority, str]] = ..., auto: _Optional[bool] = ...) -> None: ...

class GrantedLimit(_message.Message):
    __slots__ = ("name", "value", "reason", "enforced")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ENFORCED_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: str
    reason: str
    enforced: bool
    def __init__(self, name: _Optional[str] = ..., value: _Optional[str] = ..., reason: _Optional[str] = ..., enforced: _Optional[bool] = ...) -> None: ...

class BeginToolCallRequest(_message.Message):
    __slots__ = ("sandbox", "tool", "intent", "command", "pid")
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    INTENT_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    sandbox: str
    tool: str
    intent: Intent
    command: str
    pid: int
    def __init__(self, sandbox: _Optional[str] = ..., tool: _Optional[str] = ..., intent: _Optional[_Union[Intent, _Mapping]] = ..., command: _Optional[str] = ..., pid: _Optional[int] = ...) -> None: ...

class BeginToolCallResponse(_message.Message):
    __slots__ = ("call_id", "cgroup_path", "limits", "deadline")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    CGROUP_PATH_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    cgroup_path: str
    limits: _containers.RepeatedCompositeFieldContainer[GrantedLimit]
    deadline: _timestamp_pb2.Timestamp
    def __init__(self, call_id: _Optional[str] = ..., cgroup_path: _Optional[str] = ..., limits: _Optional[_Iterable[_Union[GrantedLimit, _Mapping]]] = ..., deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AttachProcessRequest(_message.Message):
    __slots__ = ("call_id", "pid")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    pid: int
    def __init__(self, call_id: _Optional[str] = ..., pid: _Optional[int] = ...) -> None: ...

class AttachProcessResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EndToolCallRequest(_message.Message):
    __slots__ = ("call_id", "exit_code")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    exit_code: int
    def __init__(self, call_id: _Optional[str] = ..., exit_code: _Optional[int] = ...) -> None: ...

class GetToolCallRequest(_message.Message):
    __slots__ = ("call_id",)
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    def __init__(self, call_id: _Optional[str] = ...) -> None: ...

class ListToolCallsRequest(_message.Message):
    __slots__ = ("sandbox", "since_seconds", "limit")
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    SINCE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    sandbox: str
    since_seconds: float
    limit: int
    def __init__(self, sandbox: _Optional[str] = ..., since_seconds: _Optional[float] = ..., limit: _Optional[int] = ...) -> None: ...

class ListToolCallsResponse(_message.Message):
    __slots__ = ("calls",)
    CALLS_FIELD_NUMBER: _ClassVar[int]
    calls: _containers.RepeatedCompositeFieldContainer[ToolCall]
    def __init__(self, calls: _Optional[_Iterable[_Union[ToolCall, _Mapping]]] = ...) -> None: ...

class Action(_message.Message):
    __slots__ = ("kind", "reason", "detail", "hint", "at", "dry_run")
    KIND_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    HINT_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    kind: str
    reason: str
    detail: str
    hint: str
    at: _timestamp_pb2.Timestamp
    dry_run: bool
    def __init__(self, kind: _Optional[str] = ..., reason: _Optional[str] = ..., detail: _Optional[str] = ..., hint: _Optional[str] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class ToolCall(_message.Message):
    __slots__ = ("call_id", "sandbox", "tool", "state", "end_reason", "started_at", "ended_at", "exit_code", "duration_seconds", "peak_memory_bytes", "peak_memory_source", "cpu_seconds", "energy_joules", "energy_source", "oom_killed", "actions", "executables", "limits", "net_rx_bytes", "net_tx_bytes", "net_source", "command", "executables_omitted")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    END_REASON_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PEAK_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    PEAK_MEMORY_SOURCE_FIELD_NUMBER: _ClassVar[int]
    CPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ENERGY_JOULES_FIELD_NUMBER: _ClassVar[int]
    ENERGY_SOURCE_FIELD_NUMBER: _ClassVar[int]
    OOM_KILLED_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    EXECUTABLES_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    NET_RX_BYTES_FIELD_NUMBER: _ClassVar[int]
    NET_TX_BYTES_FIELD_NUMBER: _ClassVar[int]
    NET_SOURCE_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    EXECUTABLES_OMITTED_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    sandbox: str
    tool: str
    state: str
    end_reason: str
    started_at: _timestamp_pb2.Timestamp
    ended_at: _timestamp_pb2.Timestamp
    exit_code: int
    duration_seconds: float
    peak_memory_bytes: int
    peak_memory_source: str
    cpu_seconds: float
    energy_joules: float
    energy_source: str
    oom_killed: bool
    actions: _containers.RepeatedCompositeFieldContainer[Action]
    executables: _containers.RepeatedScalarFieldContainer[str]
    limits: _containers.RepeatedCompositeFieldContainer[GrantedLimit]
    net_rx_bytes: int
    net_tx_bytes: int
    net_source: str
    command: str
    executables_omitted: int
    def __init__(self, call_id: _Optional[str] = ..., sandbox: _Optional[str] = ..., tool: _Optional[str] = ..., state: _Optional[str] = ..., end_reason: _Optional[str] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ended_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., exit_code: _Optional[int] = ..., duration_seconds: _Optional[float] = ..., peak_memory_bytes: _Optional[int] = ..., peak_memory_source: _Optional[str] = ..., cpu_seconds: _Optional[float] = ..., energy_joules: _Optional[float] = ..., energy_source: _Optional[str] = ..., oom_killed: _Optional[bool] = ..., actions: _Optional[_Iterable[_Union[Action, _Mapping]]] = ..., executables: _Optional[_Iterable[str]] = ..., limits: _Optional[_Iterable[_Union[GrantedLimit, _Mapping]]] = ..., net_rx_bytes: _Optional[int] = ..., net_tx_bytes: _Optional[int] = ..., net_source: _Optional[str] = ..., command: _Optional[str] = ..., executables_omitted: _Optional[int] = ...) -> None: ...

class GetUsageRequest(_message.Message):
    __slots__ = ("sandbox",)
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    sandbox: str
    def __init__(self, sandbox: _Optional[str] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("sandbox", "memory_current_bytes", "memory_source", "cpu_seconds", "pids", "memory_pressure_some_avg10", "cpu_pressure_some_avg10", "calls", "energy_joules", "energy_source", "net_rx_bytes", "net_tx_bytes")
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    MEMORY_CURRENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_SOURCE_FIELD_NUMBER: _ClassVar[int]
    CPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PIDS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_PRESSURE_SOME_AVG10_FIELD_NUMBER: _ClassVar[int]
    CPU_PRESSURE_SOME_AVG10_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    ENERGY_JOULES_FIELD_NUMBER: _ClassVar[int]
    ENERGY_SOURCE_FIELD_NUMBER: _ClassVar[int]
    NET_RX_BYTES_FIELD_NUMBER: _ClassVar[int]
    NET_TX_BYTES_FIELD_NUMBER: _ClassVar[int]
    sandbox: str
    memory_current_bytes: int
    memory_source: str
    cpu_seconds: float
    pids: int
    memory_pressure_some_avg10: float
    cpu_pressure_some_avg10: float
    calls: _containers.RepeatedCompositeFieldContainer[CallUsage]
    energy_joules: float
    energy_source: str
    net_rx_bytes: int
    net_tx_bytes: int
    def __init__(self, sandbox: _Optional[str] = ..., memory_current_bytes: _Optional[int] = ..., memory_source: _Optional[str] = ..., cpu_seconds: _Optional[float] = ..., pids: _Optional[int] = ..., memory_pressure_some_avg10: _Optional[float] = ..., cpu_pressure_some_avg10: _Optional[float] = ..., calls: _Optional[_Iterable[_Union[CallUsage, _Mapping]]] = ..., energy_joules: _Optional[float] = ..., energy_source: _Optional[str] = ..., net_rx_bytes: _Optional[int] = ..., net_tx_bytes: _Optional[int] = ...) -> None: ...

class CallUsage(_message.Message):
    __slots__ = ("call_id", "tool", "memory_current_bytes", "cpu_seconds", "elapsed_seconds", "frozen")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    MEMORY_CURRENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    CPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FROZEN_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    tool: str
    memory_current_bytes: int
    cpu_seconds: float
    elapsed_seconds: float
    frozen: bool
    def __init__(self, call_id: _Optional[str] = ..., tool: _Optional[str] = ..., memory_current_bytes: _Optional[int] = ..., cpu_seconds: _Optional[float] = ..., elapsed_seconds: _Optional[float] = ..., frozen: _Optional[bool] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("sandbox", "kinds")
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    sandbox: str
    kinds: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, sandbox: _Optional[str] = ..., kinds: _Optional[_Iterable[str]] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("seq", "at", "kind", "sandbox", "call_id", "message", "attributes", "dropped", "kernel_time_ns")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SEQ_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    KERNEL_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    at: _timestamp_pb2.Timestamp
    kind: str
    sandbox: str
    call_id: str
    message: str
    attributes: _containers.ScalarMap[str, str]
    dropped: int
    kernel_time_ns: int
    def __init__(self, seq: _Optional[int] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., kind: _Optional[str] = ..., sandbox: _Optional[str] = ..., call_id: _Optional[str] = ..., message: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ..., dropped: _Optional[int] = ..., kernel_time_ns: _Optional[int] = ...) -> None: ...

class GetPolicyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PolicyDocument(_message.Message):
    __slots__ = ("toml", "effective_json", "source")
    TOML_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_JSON_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    toml: str
    effective_json: str
    source: str
    def __init__(self, toml: _Optional[str] = ..., effective_json: _Optional[str] = ..., source: _Optional[str] = ...) -> None: ...

class SetPolicyRequest(_message.Message):
    __slots__ = ("toml",)
    TOML_FIELD_NUMBER: _ClassVar[int]
    toml: str
    def __init__(self, toml: _Optional[str] = ...) -> None: ...

class ValidatePolicyRequest(_message.Message):
    __slots__ = ("toml",)
    TOML_FIELD_NUMBER: _ClassVar[int]
    toml: str
    def __init__(self, toml: _Optional[str] = ...) -> None: ...

class PolicyError(_message.Message):
    __slots__ = ("line", "key", "message")
    LINE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    line: int
    key: str
    message: str
    def __init__(self, line: _Optional[int] = ..., key: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ValidatePolicyResponse(_message.Message):
    __slots__ = ("valid", "errors")
    VALID_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    valid: bool
    errors: _containers.RepeatedCompositeFieldContainer[PolicyError]
    def __init__(self, valid: _Optional[bool] = ..., errors: _Optional[_Iterable[_Union[PolicyError, _Mapping]]] = ...) -> None: ...

class GetIntegrityRequest(_message.Message):
    __slots__ = ("sandbox",)
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    sandbox: str
    def __init__(self, sandbox: _Optional[str] = ...) -> None: ...

class IntegrityState(_message.Message):
    __slots__ = ("scope", "state", "reasons", "attribution", "evaluated_at")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    EVALUATED_AT_FIELD_NUMBER: _ClassVar[int]
    scope: str
    state: str
    reasons: _containers.RepeatedScalarFieldContainer[str]
    attribution: str
    evaluated_at: _timestamp_pb2.Timestamp
    def __init__(self, scope: _Optional[str] = ..., state: _Optional[str] = ..., reasons: _Optional[_Iterable[str]] = ..., attribution: _Optional[str] = ..., evaluated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class IntegrityReport(_message.Message):
    __slots__ = ("host", "sandboxes")
    HOST_FIELD_NUMBER: _ClassVar[int]
    SANDBOXES_FIELD_NUMBER: _ClassVar[int]
    host: IntegrityState
    sandboxes: _containers.RepeatedCompositeFieldContainer[IntegrityState]
    def __init__(self, host: _Optional[_Union[IntegrityState, _Mapping]] = ..., sandboxes: _Optional[_Iterable[_Union[IntegrityState, _Mapping]]] = ...) -> None: ...

class GetQuoteRequest(_message.Message):
    __slots__ = ("nonce", "ima_offset")
    NONCE_FIELD_NUMBER: _ClassVar[int]
    IMA_OFFSET_FIELD_NUMBER: _ClassVar[int]
    nonce: str
    ima_offset: int
    def __init__(self, nonce: _Optional[str] = ..., ima_offset: _Optional[int] = ...) -> None: ...

class Quote(_message.Message):
    __slots__ = ("quote", "hash_alg", "ak_public_pem", "ima_measurement_list", "ima_offset", "ima_entries")
    QUOTE_FIELD_NUMBER: _ClassVar[int]
    HASH_ALG_FIELD_NUMBER: _ClassVar[int]
    AK_PUBLIC_PEM_FIELD_NUMBER: _ClassVar[int]
    IMA_MEASUREMENT_LIST_FIELD_NUMBER: _ClassVar[int]
    IMA_OFFSET_FIELD_NUMBER: _ClassVar[int]
    IMA_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    quote: str
    hash_alg: str
    ak_public_pem: str
    ima_measurement_list: str
    ima_offset: int
    ima_entries: int
    def __init__(self, quote: _Optional[str] = ..., hash_alg: _Optional[str] = ..., ak_public_pem: _Optional[str] = ..., ima_measurement_list: _Optional[str] = ..., ima_offset: _Optional[int] = ..., ima_entries: _Optional[int] = ...) -> None: ...

class GetCapabilitiesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Capability(_message.Message):
    __slots__ = ("name", "available", "in_use", "detail")
    NAME_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    IN_USE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    name: str
    available: bool
    in_use: bool
    detail: str
    def __init__(self, name: _Optional[str] = ..., available: _Optional[bool] = ..., in_use: _Optional[bool] = ..., detail: _Optional[str] = ...) -> None: ...

class Capabilities(_message.Message):
    __slots__ = ("capabilities",)
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    capabilities: _containers.RepeatedCompositeFieldContainer[Capability]
    def __init__(self, capabilities: _Optional[_Iterable[_Union[Capability, _Mapping]]] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Status(_message.Message):
    __slots__ = ("version", "uptime_seconds", "sandboxes", "running_calls", "cgroup_root", "capabilities", "policy_source", "metrics_address", "call_socket")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SANDBOXES_FIELD_NUMBER: _ClassVar[int]
    RUNNING_CALLS_FIELD_NUMBER: _ClassVar[int]
    CGROUP_ROOT_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    POLICY_SOURCE_FIELD_NUMBER: _ClassVar[int]
    METRICS_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CALL_SOCKET_FIELD_NUMBER: _ClassVar[int]
    version: str
    uptime_seconds: float
    sandboxes: int
    running_calls: int
    cgroup_root: str
    capabilities: _containers.RepeatedCompositeFieldContainer[Capability]
    policy_source: str
    metrics_address: str
    call_socket: str
    def __init__(self, version: _Optional[str] = ..., uptime_seconds: _Optional[float] = ..., sandboxes: _Optional[int] = ..., running_calls: _Optional[int] = ..., cgroup_root: _Optional[str] = ..., capabilities: _Optional[_Iterable[_Union[Capability, _Mapping]]] = ..., policy_source: _Optional[str] = ..., metrics_address: _Optional[str] = ..., call_socket: _Optional[str] = ...) -> None: ...
