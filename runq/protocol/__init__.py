"""runq's wire protocol and its client and worker SDKs (never imports runq.app)."""

from __future__ import annotations

from .errors import (
    ConnectionClosed,
    FrameTooLarge,
    InvalidState,
    NotRunqServer,
    ProtocolError,
    RemoteError,
    RunqError,
    TaskFailed,
    TaskNotFound,
    TLSError,
    Unauthorized,
)
from .frames import DEFAULT_MAX_FRAME, DEFAULT_MAX_REPLY, Connection, encode_frame
from .messages import PROTOCOL_VERSION, Hello, TaskSpec, parse_hello, parse_task_spec

__all__ = [
    "DEFAULT_MAX_FRAME",
    "DEFAULT_MAX_REPLY",
    "PROTOCOL_VERSION",
    "Connection",
    "ConnectionClosed",
    "FrameTooLarge",
    "Hello",
    "InvalidState",
    "NotRunqServer",
    "ProtocolError",
    "RemoteError",
    "RunqError",
    "TLSError",
    "TaskFailed",
    "TaskNotFound",
    "TaskSpec",
    "Unauthorized",
    "encode_frame",
    "parse_hello",
    "parse_task_spec",
]
