"""Who is asking, and what they may ask: identities and the one permission table (docs/security.md).

Rules of this file
------------------
* Every operation of ``Operations`` names itself in ``PERMISSIONS`` and calls ``authorize`` with the caller's
  ``Identity`` before doing anything: this is the only place where a caller is checked against what it may
  do. The TCP sessions and the HTTP routes never decide that themselves.
* ``PERMISSIONS`` maps each operation to the roles of principals that may ask for it: ``admin``, ``user``,
  ``viewer`` (read-only), ``worker``. It is written out by hand, one line per operation, and is the table of
  docs/security.md; one test (tests/ops/test_permissions.py) walks every TCP op and every HTTP route for every
  role and expects exactly this table.
* A connection also has a kind, the TCP ``hello`` role (``client``, ``watcher``, ``worker``; an HTTP caller is
  a client): the ops of its kind are those of docs/protocol.md section 5 (``KIND_OPS``). An op outside its
  kind is ``unknown_op`` (the TCP connection closes, as always); an op of its kind that its role may not ask
  for is ``forbidden`` (the request is refused, the connection stays).
* ``Authenticator.authenticate`` is the only place where a credential is checked. Three kinds, tried in
  this order: an API token (``rq_...``: its SHA-256 looked up among the loaded tokens), an access token of an
  HTTP login (a JWT: ``runq.app.auth.access``), the server's one shared token (constant-time comparison).
  With the shared token, or with no credential on a server that has neither a shared token nor any user or
  API token (open), the role follows the connection's kind (``SHARED_ROLES``): a client is an admin, a
  watcher a viewer, a worker a worker, and tasks have no owner (the simplest mode, as before users existed).
  Every refusal is ``unauthorized`` with one message (``BAD_TOKEN``), whatever the reason.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass

from ...protocol.messages import CLIENT_OPS, WATCHER_OPS, WORKER_OPS
from ..auth.access import BAD_TOKEN, AccessKeys, BadCredential
from ..auth.credentials import API_PREFIX, token_hash
from ..auth.principals import Principals
from .errors import Forbidden, NotPermitted, Unauthenticated

__all__ = ["AUDIT_KINDS", "KIND_OPS", "NOT_MESSAGES", "PERMISSIONS", "ROLES", "SHARED_ROLES", "Authenticator", "Identity",
           "allowed_ops", "authenticate", "authorize"]

#: The roles of principals (users and API tokens): docs/security.md.
ROLES = ("admin", "user", "viewer", "worker")

_A, _U, _V, _W = "admin", "user", "viewer", "worker"
_ALL = frozenset(ROLES)
#: operation -> the roles that may ask for it (role x operation). The operation names are the TCP ops', plus
#: the few of ``NOT_MESSAGES``. docs/security.md shows this table.
PERMISSIONS: dict[str, frozenset[str]] = {
    # producers: users enqueue and act on their own tasks (ownership: operations.py), admins on all
    "enqueue": frozenset({_A, _U}),
    "cancel": frozenset({_A, _U}),
    "retry": frozenset({_A, _U}),
    # operators
    "pause": frozenset({_A}),
    "resume": frozenset({_A}),
    "drain": frozenset({_A}),
    "set_limit": frozenset({_A}),
    "remove_limit": frozenset({_A}),
    "set_breaker": frozenset({_A}),
    "remove_breaker": frozenset({_A}),
    "open_breaker": frozenset({_A}),
    "close_breaker": frozenset({_A}),
    # readers of tasks (a user sees its own only)
    "get": frozenset({_A, _U, _V}),
    "wait": frozenset({_A, _U, _V}),
    "events": frozenset({_A, _U, _V}),
    "list": frozenset({_A, _U, _V}),
    "subscribe": frozenset({_A, _U, _V}),
    "why": frozenset({_A, _U, _V}),
    "types": frozenset({_A, _U, _V}),
    # readers of the whole server (counts of everybody's tasks, workers, the audit log)
    "queues": frozenset({_A, _V}),
    "workers": frozenset({_A, _V}),
    "stats": frozenset({_A, _V}),
    "limits": frozenset({_A, _V}),
    "breakers": frozenset({_A, _V}),
    "server_events": frozenset({_A, _V}),
    "schedules": frozenset({_A, _V}),
    # workers
    "credit": frozenset({_W}),
    "heartbeat": frozenset({_W}),
    "progress": frozenset({_W}),
    "done": frozenset({_W}),
    "fail": frozenset({_W}),
    "release": frozenset({_W}),
    # anyone
    "ping": _ALL,
    # periodic tasks (docs/schedules.md): operators change them
    "schedule_add": frozenset({_A}),
    "schedule_remove": frozenset({_A}),
    "schedule_pause": frozenset({_A}),
    "schedule_resume": frozenset({_A}),
    "schedule_run": frozenset({_A}),
    # the dead-letter queue (docs/dead-letters.md): operators retry and delete in bulk, readers of the whole
    # server list (a user's own dead tasks: the task list, ``state=dead``)
    "dead_list": frozenset({_A, _V}),
    "dead_retry": frozenset({_A}),
    "dead_delete": frozenset({_A}),
    # a worker's hello ``schedules`` field (the schedules declared next to its tasks): not a message of its own
    "schedule_declare": frozenset({_W}),
    # who am I (HTTP GET /api/auth/me; over TCP the welcome says it)
    "whoami": _ALL,
}

#: Operations of ``PERMISSIONS`` that are not protocol messages (so not in the op lists of docs/protocol.md 5).
NOT_MESSAGES = frozenset({"schedule_declare", "whoami"})

#: The ops of each kind of connection (TCP hello role; HTTP is a client): docs/protocol.md section 5.
KIND_OPS: dict[str, frozenset[str]] = {
    "client": CLIENT_OPS | {"whoami"},
    "watcher": WATCHER_OPS | {"whoami"},
    "worker": WORKER_OPS | {"schedule_declare", "whoami"},
}

#: The kinds of the audit log's events (``server_events`` with an ``actor``; docs/security.md): operators'
#: actions, user and token changes (``runq users`` / ``runq tokens``), failed logins.
AUDIT_KINDS = ("task_cancelled", "task_retried", "queue_paused", "queue_resumed", "worker_drained",
               "schedule_added", "schedule_removed", "schedule_paused", "schedule_resumed", "schedule_run",
               "user_added", "user_password", "user_disabled", "user_enabled", "token_created", "token_revoked",
               "login_failed", "dead_retried", "dead_deleted")

#: The role of a caller with the shared token, or of anyone on an open server, by connection kind.
SHARED_ROLES = {"client": _A, "watcher": _V, "worker": _W}


def allowed_ops(role: str) -> frozenset[str]:
    """The operations ``role`` may ask for, read from ``PERMISSIONS``."""
    return frozenset(op for op, roles in PERMISSIONS.items() if role in roles)


_ALLOWED = {role: allowed_ops(role) for role in ROLES}


@dataclass(frozen=True, slots=True)
class Identity:
    """The caller of an operation (built only by ``authenticate`` / ``Authenticator``).

    Attributes:
        name: who it is, for people and the audit log's ``actor`` (a user's name, ``token:<id>``, or the peer
            with the shared token).
        role: its role (``ROLES``).
        ops: what it may ask for: its role's ops (``PERMISSIONS``) that its connection's kind has; one set lookup
            per operation on the hot paths.
        kind_ops: the ops of its connection's kind (``KIND_OPS``): an op outside is ``unknown_op``.
        owner: the owner of the tasks it enqueues and the one whose tasks it sees when ``sees_all`` is False;
            None without users (the shared token, an open server).
        sees_all: it sees every task (admins, viewers, the shared token), not only its own.
        queues: the queues it is held to (an API token's scope: a worker takes tasks, a producer enqueues, only
            there); None: any.
        expires_at: when its credential expires (an access token); None: it does not.
    """

    name: str
    role: str
    ops: frozenset[str]
    kind_ops: frozenset[str] = frozenset()
    owner: str | None = None
    sees_all: bool = True
    queues: frozenset[str] | None = None
    expires_at: float | None = None

    def sees(self, owner: str | None) -> bool:
        """Whether it may see a task of ``owner``."""
        return self.sees_all or (owner is not None and owner == self.owner)


def _identity(name: str, role: str, kind: str, owner: str | None = None, queues: frozenset[str] | None = None,
              expires_at: float | None = None) -> Identity:
    kind_ops = KIND_OPS.get(kind, frozenset())
    return Identity(name, role, _ALLOWED.get(role, frozenset()) & kind_ops, kind_ops, owner,
                    owner is None or role in (_A, _V), queues, expires_at)


def authenticate(expected: str | None, given: str | bytes | None, role: str, name: str = "") -> Identity:
    """The identity of a caller of a server without users, that presents ``given`` and connects as ``role``
    (its kind: ``client``, ``watcher``, ``worker``).

    Args:
        expected: the server's shared token (None: the server needs none, anyone may connect).
        given: what the caller sent (bytes: an HTTP header's raw bytes).
        role: the connection's kind (the hello role).
        name: how the caller is shown (peer address, ...).

    Raises:
        Unauthenticated: ``unauthorized``, a missing or wrong token.
    """
    if expected is not None:
        sent = given if isinstance(given, bytes) else (given or "").encode()
        if not hmac.compare_digest(sent, expected.encode()):
            raise Unauthenticated(BAD_TOKEN)
    return _identity(name or role, SHARED_ROLES.get(role, ""), role)


class Authenticator:
    """Checks credentials against the shared token, the loaded users and API tokens, and the access-token keys.

    Args:
        shared: the server's shared token (None: none).
        principals: the users and API tokens as last loaded.
        keys: the access-token keys (None until the server has loaded them: no JWT is accepted).
        clock: the wall clock (expiry).
    """

    def __init__(self, shared: str | None, principals: Principals, keys: AccessKeys | None,
                 clock: Callable[[], float]) -> None:
        self.shared = shared
        self.principals = principals
        self.keys = keys
        self.clock = clock

    @property
    def open(self) -> bool:
        """No shared token and no user or API token: anyone may connect (loopback only: config.py)."""
        return self.shared is None and not self.principals.any

    def authenticate(self, given: str | bytes | None, kind: str, name: str = "") -> Identity:
        """The identity of a caller presenting ``given`` on a connection of ``kind``.

        Raises:
            Unauthenticated: ``unauthorized`` (one message for every reason).
        """
        if self.open:  # (whatever is presented: there is nothing to check it against)
            return _identity(name or kind, SHARED_ROLES.get(kind, ""), kind)
        if isinstance(given, bytes):
            try:
                given = given.decode()
            except UnicodeDecodeError:
                raise Unauthenticated(BAD_TOKEN) from None
        if not given:
            raise Unauthenticated(BAD_TOKEN)
        now = self.clock()
        if given.startswith(API_PREFIX):
            t = self.principals.token(token_hash(given), now)
            if t is None:
                raise Unauthenticated(BAD_TOKEN)
            owner = t.username if t.username is not None else f"token:{t.id}"
            queues = frozenset(t.queues.split(",")) if t.queues else None
            return _identity(t.username or f"token:{t.id}", t.role, kind, owner, queues, t.expires_at)
        if given.count(".") == 2 and self.keys is not None:
            try:
                claims = self.keys.verify(given, now)
            except BadCredential:
                raise Unauthenticated(BAD_TOKEN) from None
            user = self.principals.active_user(claims.sub)
            if user is None:  # (disabled or removed since the login)
                raise Unauthenticated(BAD_TOKEN)
            return _identity(user.name, user.role, kind, user.name, None, claims.exp)
        if self.shared is not None and hmac.compare_digest(given.encode(), self.shared.encode()):
            return _identity(name or kind, SHARED_ROLES.get(kind, ""), kind)
        raise Unauthenticated(BAD_TOKEN)

    def still_valid(self, identity: Identity, now: float) -> bool:
        """Whether an identity authenticated earlier (cached per connection) still holds: its credential has not
        expired and, for a user, the user is not disabled since."""
        if identity.expires_at is not None and identity.expires_at <= now:
            return False
        return identity.owner is None or identity.owner.startswith("token:") or \
            self.principals.active_user(identity.owner) is not None


def authorize(identity: Identity, op: str) -> None:
    """Check that ``identity`` may ask for ``op`` (the one authorisation point of every operation).

    Raises:
        NotPermitted: ``unknown_op``, the op is not one of its connection's kind (the TCP connection then
            closes, as it did when the role's op lists were checked in the TCP layer).
        Forbidden: ``forbidden``, its role may not ask for it (PERMISSIONS).
    """
    if op not in identity.ops:
        if op in identity.kind_ops:
            raise Forbidden(f"a{'n' if identity.role[:1] in 'aeiou' else ''} {identity.role} may not {op}")
        raise NotPermitted(f"unknown op {op!r} for a {identity.role}")
