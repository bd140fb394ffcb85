"""Errors of runq, one flat module.

Every error that crosses the wire carries a stable ``code`` (a short snake_case
string, listed in docs/protocol.md). The server sends it in an ``error`` frame,
the HTTP layer maps it to a status, and the SDK raises the matching class here.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ERROR_CODES",
    "REQUEST_ERROR_CODES",
    "ConnectionClosed",
    "Forbidden",
    "FrameTooLarge",
    "InvalidState",
    "NotRunqServer",
    "ProtocolError",
    "RemoteError",
    "RunqError",
    "TLSError",
    "TaskFailed",
    "TaskNotFound",
    "Unauthorized",
    "error_for_code",
    "looks_like",
]


class RunqError(Exception):
    """Base class of every error runq raises on purpose."""

    code = "internal"


class ProtocolError(RunqError):
    """A peer broke the wire protocol: malformed frame, unknown or invalid message.

    Raised by the sans-IO ``Connection`` and by message validation. The server
    answers it with an error frame carrying ``code`` and closes that connection.
    """

    code = "bad_message"
    #: the ``rid`` of the request that caused it, when it is known (the server then names that request in the
    #: error frame that closes the connection: docs/protocol.md section 4)
    rid: Any = None

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class FrameTooLarge(ProtocolError):
    """A frame header announced more bytes than the negotiated limit.

    Attributes:
        size: the body size the header announced (0 when not known).
        rid: (``ProtocolError``) the ``rid`` of the message in that frame, when its first bytes (the first
            read) show it: the request it was, or the request it answers.
    """

    code = "frame_too_large"
    size = 0


class NotRunqServer(ProtocolError):
    """The peer at an address is not a runq server: it answered the ``hello`` with bytes that are not a
    runq frame (an HTTP server, as the HTTP API's port does; a TLS or SSH server; any other program).

    Raised by ``Client``, ``SyncClient`` and ``Worker`` when they connect, from the first bytes of the
    answer; never sent on the wire. Its message is one line that says what the peer looked like.

    Attributes:
        address: the ``HOST:PORT`` connected to.
        answer: the first bytes the peer sent (at most 64).
        looks_like: ``"http"``, ``"tls"``, ``"ssh"`` or ``None`` (unknown).
    """

    code = "not_runq_server"

    def __init__(self, address: str, answer: bytes) -> None:
        self.address = address
        self.answer = bytes(answer[:64])
        self.looks_like = looks_like(self.answer)
        why = _PEERS.get(self.looks_like or "")
        if why is not None:
            what = f"it answered like {why}"
            if self.looks_like == "http":
                first = self.answer.split(b"\r\n", 1)[0].decode("ascii", "replace").strip()
                what += f" ({first!r})"
        else:
            what = f"it answered with bytes that are not a runq frame: {self.answer[:16]!r}"
        hint = f"; {_TLS_HINT}" if self.looks_like == "tls" else ""
        super().__init__(f"{address} is not a runq server: {what}; {_WHERE}{hint}")


_PEERS = {"http": "an HTTP server", "tls": "a TLS server", "ssh": "an SSH server"}
#: the end of NotRunqServer's message: where the runq port is
_WHERE = ("the runq TCP port is the one `runq serve --port` listens on (7700 by default), the HTTP API "
          "has its own (--http-port, 7701 by default)")


#: the end of NotRunqServer's message for a TLS server (a runq server with TLS answers a plain hello itself)
_TLS_HINT = "if it is a runq server with TLS, connect with TLS (tls=True or a CA file; --tls or --tls-ca FILE)"


class TLSError(RunqError):
    """TLS between this client and the server failed: the server's certificate is not trusted (another
    CA, a host name it is not valid for), the server does not speak TLS (a runq server without
    ``--tls-cert``), or a CA file cannot be read.

    Raised by ``Client``, ``SyncClient`` and ``Worker`` when they connect (runq/protocol/tls.py); never sent on
    the wire. Its message is one line naming the address and what to do.

    Attributes:
        address: the ``HOST:PORT`` connected to (empty for a CA file that cannot be read).
    """

    code = "tls_error"

    def __init__(self, address: str, message: str) -> None:
        self.address = address
        super().__init__(f"{address}: {message}" if address else message)


def looks_like(answer: bytes) -> str | None:
    """What kind of server sends ``answer`` first (to a runq hello, i.e. to bytes it does not understand)."""
    if answer.startswith(b"HTTP/"):
        return "http"
    if len(answer) >= 2 and answer[0] in (0x15, 0x16) and answer[1] == 0x03:  # a TLS alert or handshake record
        return "tls"
    if answer.startswith(b"SSH-"):
        return "ssh"
    return None


class RemoteError(RunqError):
    """The server answered a request with an error frame.

    Attributes:
        code: the stable error code from the frame.
        message: the server's human-readable text.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class TaskNotFound(RemoteError):
    """No task has the requested id (or it was pruned); for ``drain``, no connected worker has that id."""


class InvalidState(RemoteError):
    """The operation is not legal in the task's current state."""


class Unauthorized(RemoteError):
    """The token was missing or wrong."""


class Forbidden(RemoteError):
    """The caller is known, but its role may not do this (docs/security.md)."""


class ConnectionClosed(RunqError):
    """The connection to the server ended while a request was outstanding."""

    code = "connection_closed"


class TaskFailed(RunqError):
    """Raised by ``wait(..., raise_on_failure=True)`` when a task ended dead or cancelled."""

    code = "task_failed"

    def __init__(self, task: dict[str, object]) -> None:
        super().__init__(f"task {task.get('id')} ended {task.get('state')}: {task.get('error')}")
        self.task = task


#: Every stable error code, with what it means (docs/protocol.md repeats this table).
ERROR_CODES: dict[str, str] = {
    "bad_frame": "the bytes are not a valid frame (bad msgpack, not a map)",
    "frame_too_large": "the frame header announced more than max_frame bytes",
    "bad_message": "the message is missing a field or a field has the wrong type",
    "unknown_op": "the message's op is not one this server knows for this role",
    "hello_required": "the first frame was not hello",
    "hello_timeout": "no hello arrived within the deadline",
    "version": "no protocol version in common",
    "unauthorized": "missing or wrong token",
    "tls_required": "the server speaks TLS only and the peer sent its hello in plain text",
    "not_found": "no such task (for drain: no such connected worker)",
    "invalid_state": "the operation is not legal in the task's current state",
    "bad_request": "a well-formed request with an invalid value",
    "store_error": "the database could not commit (disk full, locked, ...)",
    "shutting_down": "the server is stopping",
    "standby": "the server is a standby (another server holds the database's lease): try the next address",
    "busy": "a limit of the server is reached (max_subscribers live event streams); try again later",
    "lease_expired": "(to a worker) it was silent for lease_timeout: its leases are gone",
    "reply_too_large": "the answer would be a frame over the server's max_reply (a reply no request can cut)",
    "internal": "a bug in the server met while handling this connection's input: logged, that connection closed",
    # users and roles (docs/security.md)
    "forbidden": "the caller's role may not do this (docs/security.md, the permission table)",
    "rate_limited": "too many failed logins for this user or address lately; try again later",
}

#: The codes of errors that answer one request and leave the connection open (docs/protocol.md section 9);
#: every other error frame is followed by the end of the connection.
REQUEST_ERROR_CODES = frozenset({"not_found", "invalid_state", "bad_request", "store_error", "busy",
                                 "reply_too_large", "forbidden"})

_CLASSES: dict[str, type[RemoteError]] = {
    "not_found": TaskNotFound,
    "invalid_state": InvalidState,
    "unauthorized": Unauthorized,
    "forbidden": Forbidden,
}


def error_for_code(code: str, message: str) -> RemoteError:
    """Build the SDK exception for an error frame's code."""
    return _CLASSES.get(code, RemoteError)(code, message)
