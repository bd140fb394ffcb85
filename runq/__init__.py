"""runq: a durable task queue in one trio process.

Public API::

    from runq import task, Client, SyncClient, Worker, Retry, RetryPolicy, TaskContext, Cron, Every, Batch, BatchItem
"""

from __future__ import annotations

from .protocol.client import Client
from .protocol.errors import (
    ConnectionClosed,
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
from .protocol.retry_policy import RetryPolicy
from .protocol.schedules import Cron, Every
from .protocol.sync_client import SyncClient
from .protocol.tasks import (
    BadArguments,
    Batch,
    BatchItem,
    Call,
    NoClient,
    SyncTaskHandle,
    TaskDef,
    TaskHandle,
    TaskOptions,
    task,
)
from .protocol.worker import Retry, TaskContext, Worker

__version__ = "0.1.0"

__all__ = [
    "BadArguments",
    "Batch",
    "BatchItem",
    "Call",
    "Client",
    "ConnectionClosed",
    "Cron",
    "Every",
    "InvalidState",
    "NoClient",
    "NotRunqServer",
    "ProtocolError",
    "RemoteError",
    "Retry",
    "RetryPolicy",
    "RunqError",
    "SyncClient",
    "SyncTaskHandle",
    "TLSError",
    "TaskContext",
    "TaskDef",
    "TaskFailed",
    "TaskHandle",
    "TaskNotFound",
    "TaskOptions",
    "Unauthorized",
    "Worker",
    "__version__",
    "task",
]
