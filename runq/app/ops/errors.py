"""The errors of the operations layer: each carries the stable code both transports send.

TCP puts ``code`` and the message in an ``error`` frame (closing the connection for the codes of
docs/protocol.md section 4 that do); HTTP maps ``code`` to a status (``runq.app.http.errors.STATUS``). They
are ``ProtocolError`` subclasses, so code that catches the validation errors of ``runq.protocol.messages``
catches these too.
"""

from __future__ import annotations

from ...protocol.errors import ProtocolError

__all__ = ["BadRequest", "Forbidden", "NotFound", "NotPermitted", "RateLimited", "Unauthenticated"]


class BadRequest(ProtocolError):
    """A well-formed request with a value out of range or otherwise invalid (``bad_request``)."""

    code = "bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message, "bad_request")


class NotFound(ProtocolError):
    """No such task, or no such connected worker (``not_found``)."""

    code = "not_found"

    def __init__(self, message: str) -> None:
        super().__init__(message, "not_found")


class Unauthenticated(ProtocolError):
    """A missing or wrong credential (``unauthorized``)."""

    code = "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, "unauthorized")


class NotPermitted(ProtocolError):
    """The caller's role may not ask for this operation (``unknown_op``: the op does not exist for it)."""

    code = "unknown_op"

    def __init__(self, message: str) -> None:
        super().__init__(message, "unknown_op")


class Forbidden(ProtocolError):
    """The caller's role may not ask for this operation (``forbidden``: docs/security.md)."""

    code = "forbidden"

    def __init__(self, message: str) -> None:
        super().__init__(message, "forbidden")


class RateLimited(ProtocolError):
    """Too many failed logins for this user or address lately (``rate_limited``).

    Attributes:
        retry_after: seconds until the next attempt may be made.
    """

    code = "rate_limited"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message, "rate_limited")
        self.retry_after = retry_after
