"""The operations layer: every operation any caller can ask for, with its typed input, validated and
authorised once. The TCP frontend (``runq.app.server.tcp``) and the HTTP routes (``runq.app.http``) call it;
it calls the server (``runq.app.server.Server``). See ``operations``."""

from __future__ import annotations

from .auth import (
    AUDIT_KINDS,
    KIND_OPS,
    NOT_MESSAGES,
    PERMISSIONS,
    ROLES,
    SHARED_ROLES,
    Authenticator,
    Identity,
    allowed_ops,
    authenticate,
    authorize,
)
from .errors import BadRequest, Forbidden, NotFound, NotPermitted, RateLimited, Unauthenticated
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
    "AUDIT_KINDS",
    "KIND_OPS",
    "NOT_MESSAGES",
    "PERMISSIONS",
    "ROLES",
    "SHARED_ROLES",
    "VERSION",
    "Authenticator",
    "BadRequest",
    "BreakerSettings",
    "DeadQuery",
    "Done",
    "EnqueueRequest",
    "EventsQuery",
    "Fail",
    "Forbidden",
    "Identity",
    "LimitScope",
    "LimitSettings",
    "ListQuery",
    "NotFound",
    "NotPermitted",
    "Operations",
    "Progress",
    "RateLimited",
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
