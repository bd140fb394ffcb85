"""HTTP errors: the stable runq error codes as HTTP statuses, and the one JSON error body.

Every error answer of the HTTP API has the body ``{"error": {"code": ..., "message": ...}}``
where ``code`` is one of ``runq.protocol.errors.ERROR_CODES`` (the same codes the TCP
protocol sends in its error frames). Bad input of any kind (invalid JSON, wrong types,
unknown fields, numbers out of range, unknown ids, bad query parameters) is a 4xx;
a 5xx only ever means a bug in the server or a database that cannot commit.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from quart import Response
from werkzeug.exceptions import HTTPException

from ...protocol.errors import ERROR_CODES, ProtocolError, RunqError
from ..store import StoreError

__all__ = ["STATUS", "ApiError", "error_for_exception", "error_response"]

log = logging.getLogger("runq.http")

#: HTTP status of each stable error code.
STATUS: dict[str, int] = {
    "bad_frame": 400,
    "frame_too_large": 413,
    "bad_message": 400,
    "unknown_op": 405,
    "hello_required": 400,
    "hello_timeout": 408,
    "version": 400,
    "unauthorized": 401,
    "tls_required": 400,
    "not_found": 404,
    "invalid_state": 409,
    "bad_request": 400,
    "store_error": 503,
    "shutting_down": 503,
    "standby": 503,
    "busy": 503,
    "lease_expired": 409,
    "internal": 500,
    "forbidden": 403,
    "rate_limited": 429,
}


def status_of(code: str) -> int:
    """HTTP status of a stable error code (a code added later without a status here: 400)."""
    return STATUS.get(code, 400)

#: Stable code of the HTTP errors that Quart and Werkzeug raise themselves (routing, body size).
_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "unknown_op",
               408: "hello_timeout", 413: "frame_too_large"}


class ApiError(RunqError):
    """An HTTP request that is answered with an error body.

    Args:
        code: a stable error code (``ERROR_CODES``).
        message: text for a person.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        assert code in ERROR_CODES, code
        self.code = code

    @property
    def status(self) -> int:
        return status_of(self.code)


def error_response(code: str, message: str, status: int | None = None) -> Response:
    """The JSON error answer for ``code``."""
    body: dict[str, Any] = {"error": {"code": code, "message": message}}
    resp = Response(_dumps(body), status=status or status_of(code), content_type="application/json")
    if code == "unauthorized":
        resp.headers["WWW-Authenticate"] = 'Bearer realm="runq"'
    return resp


def error_for_exception(exc: BaseException) -> Response:
    """Translate an exception raised while answering a request into an error answer."""
    if isinstance(exc, HTTPException):
        status = exc.code or 500
        code = _HTTP_CODES.get(status, "bad_request" if status < 500 else "internal")
        resp = error_response(code, exc.description or exc.name, status if status < 500 else None)
        if status == 405 and exc.response is None:
            allowed = getattr(exc, "valid_methods", None)
            if allowed:
                resp.headers["Allow"] = ", ".join(allowed)
        return resp
    if isinstance(exc, StoreError):
        return error_response("store_error", str(exc))
    if isinstance(exc, ProtocolError):
        # message validation shared with the TCP protocol: a bad field is a bad request here
        code = exc.code if exc.code in ("bad_request", "not_found", "invalid_state", "unauthorized",
                                        "frame_too_large", "shutting_down", "busy", "forbidden",
                                        "rate_limited", "standby") else "bad_request"
        resp = error_response(code, str(exc))
        if code == "busy":
            resp.headers["Retry-After"] = "5"
        if code == "rate_limited":
            resp.headers["Retry-After"] = str(max(1, int(getattr(exc, "retry_after", 1) + 0.999)))
        return resp
    if isinstance(exc, RunqError) and exc.code in ERROR_CODES and exc.code != "internal":
        return error_response(exc.code, str(exc))
    log.exception("bug while answering an HTTP request", exc_info=exc)
    return error_response("internal", f"internal error: {type(exc).__name__}")


def _dumps(body: Any) -> str:
    return json.dumps(body)  # ASCII: a message may quote input with lone surrogates
