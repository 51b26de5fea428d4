from hostwarden.proto import warden_pb2 as _warden_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CallSocketRequest(_message.Message):
    __slots__ = ("token", "begin", "end")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    BEGIN_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    token: str
    begin: _warden_pb2.BeginToolCallRequest
    end: _warden_pb2.EndToolCallRequest
    def __init__(self, token: _Optional[str] = ..., begin: _Optional[_Union[_warden_pb2.BeginToolCallRequest, _Mapping]] = ..., end: _Optional[_Union[_warden_pb2.EndToolCallRequest, _Mapping]] = ...) -> None: ...

class CallSocketReply(_message.Message):
    __slots__ = ("code", "message", "begin", "end")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    BEGIN_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    begin: _warden_pb2.BeginToolCallResponse
    end: _warden_pb2.ToolCall
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., begin: _Optional[_Union[_warden_pb2.BeginToolCallResponse, _Mapping]] = ..., end: _Optional[_Union[_warden_pb2.ToolCall, _Mapping]] = ...) -> None: ...
