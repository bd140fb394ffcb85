"""The operations layer: every operation any caller can ask for, with its typed input, validated and
authorised once. The TCP frontend (``runq.app.server.tcp``) and the HTTP routes (``runq.app.http``) call it;
it calls the server (``runq.app.server.Server``). See ``operations``."""

from __future__ import annotations

from .auth import NOT_MESSAGES, PERMISSIONS, ROLES, Identity, allowed_ops, authenticate, authorize
from .errors import BadRequest, NotFound, NotPermitted, Unauthenticated
from .inputs import (
    BreakerSettings,
    DeadQuery,
    Done,
    EnqueueRequest,
    EventsQuery,
    Fail,
    LimitScope,
    LimitSettings,
    ListQuery,
    Progress,
    Subscription,
    WaitRequest,
    check_queue_name,
    check_schedule,
    check_schedule_name,
    check_token,
)
from .operations import VERSION, Operations

__all__ = [
    "NOT_MESSAGES",
    "PERMISSIONS",
    "ROLES",
    "VERSION",
    "BadRequest",
    "BreakerSettings",
    "DeadQuery",
    "Done",
    "EnqueueRequest",
    "EventsQuery",
    "Fail",
    "Identity",
    "LimitScope",
    "LimitSettings",
    "ListQuery",
    "NotFound",
    "NotPermitted",
    "Operations",
    "Progress",
    "Subscription",
    "Unauthenticated",
    "WaitRequest",
    "allowed_ops",
    "authenticate",
    "authorize",
    "check_queue_name",
    "check_schedule",
    "check_schedule_name",
    "check_token",
]
