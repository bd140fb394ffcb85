"""runq: a durable task queue in one trio process.

Public API::

    from runq import Client, SyncClient, Worker, Retry, TaskContext
"""

from __future__ import annotations

from .protocol.client import Client
from .protocol.errors import (
    ConnectionClosed,
    InvalidState,
    ProtocolError,
    RemoteError,
    RunqError,
    TaskFailed,
    TaskNotFound,
    Unauthorized,
)
from .protocol.sync_client import SyncClient
from .protocol.worker import Retry, TaskContext, Worker

__version__ = "0.1.0"

__all__ = [
    "Client",
    "ConnectionClosed",
    "InvalidState",
    "ProtocolError",
    "RemoteError",
    "Retry",
    "RunqError",
    "SyncClient",
    "TaskContext",
    "TaskFailed",
    "TaskNotFound",
    "Unauthorized",
    "Worker",
    "__version__",
]
