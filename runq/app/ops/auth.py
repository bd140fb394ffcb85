"""Who is asking, and what they may ask: identities and the one permission table.

Rules of this file
------------------
* Every operation of ``Operations`` names itself in ``PERMISSIONS`` and calls ``authorize`` with the caller's
  ``Identity`` before doing anything: this is the only place where a caller is checked against what it may
  do. The TCP sessions and the HTTP routes never decide that themselves.
* One operation is not a message: ``schedule_declare``, the schedules a worker declares in its ``hello``
  (``NOT_MESSAGES``).
* ``authenticate`` is the only place where a secret is compared (constant time). Today the one shared token
  (``ServerConfig.token``) proves nothing but "may use this server", and the role is the one the caller
  announces (TCP ``hello`` role; HTTP callers are clients). Users and roles plug in here: ``authenticate``
  finds the user behind a credential and ``PERMISSIONS`` gains their roles; no transport changes.
* ``PERMISSIONS`` is written out by hand, one line per operation, and checked by a test against the lists of
  docs/protocol.md section 5 (CLIENT_OPS, WORKER_OPS, WATCHER_OPS in ``runq.protocol.messages``).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from .errors import NotPermitted, Unauthenticated

__all__ = ["NOT_MESSAGES", "PERMISSIONS", "ROLES", "Identity", "allowed_ops", "authenticate", "authorize"]

#: The roles a caller may hold today (the TCP hello roles; an HTTP caller is a client).
ROLES = ("client", "worker", "watcher")

_C, _W, _V = "client", "worker", "watcher"
#: operation -> the roles that may ask for it (role x operation). The operation names are the TCP ops'.
PERMISSIONS: dict[str, frozenset[str]] = {
    # producers and operators
    "enqueue": frozenset({_C}),
    "cancel": frozenset({_C}),
    "retry": frozenset({_C}),
    "pause": frozenset({_C}),
    "resume": frozenset({_C}),
    "drain": frozenset({_C}),
    "set_limit": frozenset({_C}),
    "remove_limit": frozenset({_C}),
    "set_breaker": frozenset({_C}),
    "remove_breaker": frozenset({_C}),
    "open_breaker": frozenset({_C}),
    "close_breaker": frozenset({_C}),
    # readers
    "get": frozenset({_C, _V}),
    "wait": frozenset({_C, _V}),
    "events": frozenset({_C, _V}),
    "list": frozenset({_C, _V}),
    "queues": frozenset({_C, _V}),
    "workers": frozenset({_C, _V}),
    "types": frozenset({_C, _V}),
    "stats": frozenset({_C, _V}),
    "subscribe": frozenset({_C, _V}),
    "limits": frozenset({_C, _V}),
    "breakers": frozenset({_C, _V}),
    "why": frozenset({_C, _V}),
    "server_events": frozenset({_C, _V}),
    # workers
    "credit": frozenset({_W}),
    "heartbeat": frozenset({_W}),
    "progress": frozenset({_W}),
    "done": frozenset({_W}),
    "fail": frozenset({_W}),
    "release": frozenset({_W}),
    # anyone
    "ping": frozenset({_C, _W, _V}),
    # periodic tasks (docs/schedules.md): operators change them, readers list them
    "schedule_add": frozenset({_C}),
    "schedule_remove": frozenset({_C}),
    "schedule_pause": frozenset({_C}),
    "schedule_resume": frozenset({_C}),
    "schedule_run": frozenset({_C}),
    "schedules": frozenset({_C, _V}),
    # the dead-letter queue (docs/dead-letters.md): operators retry and delete in bulk, readers list
    "dead_list": frozenset({_C, _V}),
    "dead_retry": frozenset({_C}),
    "dead_delete": frozenset({_C}),
    # a worker's hello ``schedules`` field (the schedules declared next to its tasks): not a message of its own
    "schedule_declare": frozenset({_W}),
}

#: Operations of ``PERMISSIONS`` that are not protocol messages (so not in the op lists of docs/protocol.md 5).
NOT_MESSAGES = frozenset({"schedule_declare"})


def allowed_ops(role: str) -> frozenset[str]:
    """The operations ``role`` may ask for, read from ``PERMISSIONS``."""
    return frozenset(op for op, roles in PERMISSIONS.items() if role in roles)


_ALLOWED = {role: allowed_ops(role) for role in ROLES}


@dataclass(frozen=True, slots=True)
class Identity:
    """The caller of an operation: who it is (``name``) and the role it holds.

    Built only by ``authenticate``. ``ops`` is the set of operations of its role (from ``PERMISSIONS``), kept
    so that ``authorize`` is one set lookup per operation on the hot paths.
    """

    name: str
    role: str
    ops: frozenset[str]


def authenticate(expected: str | None, given: str | bytes | None, role: str, name: str = "") -> Identity:
    """The identity of a caller that presents ``given`` as its token and asks for ``role``.

    Args:
        expected: the server's token (None: the server needs none, anyone may connect).
        given: what the caller sent (bytes: an HTTP header's raw bytes).
        role: the role asked for (one of ``ROLES``).
        name: how the caller is shown (peer address, ...).

    Raises:
        Unauthenticated: ``unauthorized``, a missing or wrong token.
    """
    if expected is not None:
        sent = given if isinstance(given, bytes) else (given or "").encode()
        if not hmac.compare_digest(sent, expected.encode()):
            raise Unauthenticated("missing or wrong token")
    return Identity(name or role, role, _ALLOWED.get(role, frozenset()))


def authorize(identity: Identity, op: str) -> None:
    """Check that ``identity`` may ask for ``op`` (the one authorisation point of every operation).

    Raises:
        NotPermitted: ``unknown_op``, the op is not one its role may ask for (the TCP connection then closes,
            as it did when the role's op lists were checked in the TCP layer).
    """
    if op not in identity.ops:
        raise NotPermitted(f"unknown op {op!r} for a {identity.role}")
