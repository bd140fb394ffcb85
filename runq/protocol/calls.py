"""The client side of requests, with no I/O: correlation ids, idempotency tokens, reconnect rules.

Theory of operation
-------------------
``Client`` (anyio) and ``SyncClient`` (blocking socket) drive the same ``Calls``: it numbers requests,
stamps each ``enqueue`` with an idempotency token, remembers which requests await a reply, and decides,
when a connection is lost, which of them are sent again on the next one. ``Backoff`` says how long to
wait between connection attempts. Neither touches a socket or a clock.

Rules of this file (docs/clients.md explains them to users):

1. Every request gets a new ``rid`` (1, 2, ...) on every connection it is sent on; a reply is matched by
   it. Replies to a request sent on an earlier connection never arrive (the server forgets a closed
   connection's requests).
2. Every ``enqueue`` carries the idempotency token ``client_id`` (random, one per client object) and
   ``seq`` (0, 1, ... in the order the calls were made), the same on every resend, and ``done_below``:
   every enqueue of this client numbered below it has its reply, so the server may forget their tokens.
   A resent enqueue that the server had already committed is answered with the first ids (protocol.md
   section 5.2), so a lost acknowledgement never creates a task twice.
3. On a lost connection, a request that was never written to a socket is simply sent on the next one.
   One that was written is sent again if doing it twice is harmless (``RESENT``): reads; ``enqueue``
   (rule 2); ``pause``, ``resume`` and ``drain`` (they set a state); ``cancel`` (its second answer
   ``invalid_state`` is turned into the cancelled task by the caller). Any other (``retry``, which would
   start a task over twice; ``subscribe``, whose stream ends with its connection) fails with
   ``ConnectionClosed``, saying it may or may not have been applied.
4. A connection the server closes with an error (``bad_message``, ``internal``, ...) is lost like any
   other: the error frame names the request to blame by its ``rid`` when the server knows it, and that
   call alone fails with it (it is a reply); the others are sent again (rule 3). An error that names no
   request cannot be pinned on one: the calls are sent again all the same, once: a call that was in
   flight on two connections that each ended with such an error fails with it (a request that breaks the
   server every time must not be sent for ever).
5. A request is checked before it is sent (``messages.check_request``): a field of a wrong type is the
   caller's ``TypeError``, never a ``bad_message`` that would close the connection under every other call.
6. A client object belongs to one process. In the child of a ``fork()`` (gunicorn ``--preload``, a
   ``multiprocessing`` pool), every ``Calls`` gets a new ``client_id``, its seqs start over and the
   requests of the parent are forgotten (``forked``, run by ``os.register_at_fork``); its ``on_fork`` lets
   the I/O layer leave the parent's connection to the parent. Two processes with one token would be one
   request to the server: the second process's enqueue answered with the first's task id, its own task
   never created (the server refuses such a request when its tasks differ, docs/protocol.md 5.2).
"""

from __future__ import annotations

import itertools
import os
import random
import secrets
import weakref
from collections.abc import Callable
from typing import Any

from .errors import ConnectionClosed, error_for_code
from .messages import PROTOCOL_VERSION, check_request

__all__ = [
    "RESENT",
    "TRANSIENT_HELLO_ERRORS",
    "Backoff",
    "Calls",
    "Request",
    "closing_error",
    "connect_error",
    "dead_message",
    "hello_message",
]

#: ops sent again on the next connection after one that carried them was lost (rule 3).
RESENT = frozenset({"enqueue", "get", "wait", "events", "list", "queues", "workers", "stats", "ping",
                    "pause", "resume", "drain", "cancel"})
#: the limits and breakers ops: each sets a state or reads (a resent ``remove_*`` may answer ``removed: false``)
RESENT = RESENT | frozenset({"set_limit", "remove_limit", "limits", "set_breaker", "remove_breaker", "open_breaker",
                             "close_breaker", "breakers", "why", "server_events"})
#: the dead-letter listing is a read; a bulk retry or delete is not sent again (a second one would take the next
#: tasks), as ``retry`` is not
RESENT = RESENT | frozenset({"dead_list"})


class Backoff:
    """Delays between reconnection attempts: exponential, capped, with jitter.

    The n-th delay (from 0) is ``min(cap, base * 2**n)`` times a random factor in [0.5, 1.0], so that many
    clients that lost the same server do not come back in step. ``reset()`` after a session that worked.

    Args:
        base: the first delay, in seconds.
        cap: the longest delay before jitter.
        rng: randomness for the jitter (a seeded ``random.Random`` in tests).
    """

    def __init__(self, base: float = 0.05, cap: float = 2.0, rng: random.Random | None = None) -> None:
        if not 0 < base <= cap:
            raise ValueError(f"Backoff: need 0 < base <= cap, got base={base}, cap={cap}")
        self.base = base
        self.cap = cap
        self.rng = rng or random.Random()
        self.failures = 0

    def next(self) -> float:
        """The delay before the next attempt (and count this failure)."""
        delay: float = min(self.cap, self.base * 2.0 ** min(self.failures, 30))
        self.failures += 1
        return delay * self.rng.uniform(0.5, 1.0)

    def reset(self) -> None:
        """Start again from the first delay (after a session that worked: a new outage, not a longer one)."""
        self.failures = 0


class Request:
    """One request and, once it came, its reply."""

    __slots__ = ("epoch", "error", "frame", "msg", "reply", "rid", "sent", "seq", "struck", "tries", "waiter")

    def __init__(self, msg: dict[str, Any], seq: int | None) -> None:
        self.msg = msg
        self.seq = seq
        self.rid = 0
        self.sent = False  # written to a socket (the server may have seen it)
        self.tries = 0  # connections it was written to
        self.struck = False  # in flight on a connection the server closed with an error naming no request
        self.reply: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.waiter: Any = None  # the I/O layer's wake-up object (an anyio Event)
        self.frame = b""  # its bytes for the connection numbered ``epoch`` (the I/O layer's numbering)
        self.epoch = -1

    @property
    def op(self) -> str:
        return str(self.msg["op"])


class Calls:
    """The requests of one client, across its connections (see the module docstring).

    Args:
        client_id: the idempotency token's client part (default: 16 random hex digits).
        on_fork: called in the child of a ``fork()``, once this client is another one there (rule 6): the I/O
            layer leaves the parent's connection to the parent.
    """

    def __init__(self, client_id: str | None = None, on_fork: Callable[[], None] | None = None) -> None:
        self.client_id = client_id or secrets.token_hex(8)
        self.pending: dict[int, Request] = {}
        self._rids = itertools.count(1)
        self._next_seq = 0
        self._low = 0  # every enqueue numbered below it has its reply
        self._open_seqs: set[int] = set()
        #: called in the child of a fork, after ``forked`` (rule 6)
        self.on_fork = on_fork
        _LIVE.add(self)

    def forked(self) -> None:
        """This process is the child of a ``fork()`` of the one that made this client: start over as another
        client (rule 6)."""
        self.client_id = secrets.token_hex(8)
        self.pending = {}
        self._rids = itertools.count(1)
        self._next_seq = 0
        self._low = 0
        self._open_seqs = set()
        if self.on_fork is not None:
            self.on_fork()

    def new(self, msg: dict[str, Any], checked: bool = False) -> Request:
        """A call for ``msg`` (not yet sent); an enqueue gets its idempotency token here.

        Args:
            msg: the request.
            checked: the caller built ``msg`` from values of the right types (else they are checked here).

        Raises:
            TypeError: a field of ``msg`` has a type the server refuses (rule 5).
        """
        if not checked:
            check_request(msg)
        seq = None
        if msg["op"] == "enqueue":
            seq = self._next_seq
            self._next_seq += 1
            self._open_seqs.add(seq)
            msg["client_id"] = self.client_id
            msg["seq"] = seq
        return Request(msg, seq)

    def message(self, call: Request) -> dict[str, Any]:
        """``call``'s message with a fresh ``rid``, registered as awaiting its reply (rule 1)."""
        rid = next(self._rids)
        self.pending.pop(call.rid, None)
        call.rid = rid
        self.pending[rid] = call
        msg = call.msg
        msg["rid"] = rid
        if call.seq is not None:
            msg["done_below"] = self._low
        return msg

    def reply(self, msg: dict[str, Any]) -> Request | None:
        """The call a reply answers (now done), or ``None`` when it answers none still awaited."""
        rid = msg.get("rid")
        call = self.pending.pop(rid, None) if type(rid) is int else None
        if call is not None:
            self.done(call)
        return call

    def done(self, call: Request) -> None:
        """``call`` has its outcome (a reply, or a failure the caller will see): no resend from now on."""
        self.pending.pop(call.rid, None)
        if call.seq is not None and call.seq in self._open_seqs:
            self._open_seqs.discard(call.seq)
            low = self._low
            while low < self._next_seq and low not in self._open_seqs:
                low += 1
            self._low = low

    def lost(self, error: BaseException | None = None) -> tuple[list[Request], list[Request]]:
        """The connection was lost: (calls to send on the next one, in order; calls that fail).

        Each failed call's ``error`` says why. ``error``: the server closed the connection with this error,
        naming no request (rule 4): a call sent on it is sent again unless it was in flight when an earlier
        connection ended that way too (then it fails with ``error``).
        """
        again: list[Request] = []
        failed: list[Request] = []
        for call in self.pending.values():
            if not call.sent:
                again.append(call)
            elif call.op not in RESENT:
                why = "lost" if error is None else f"ended ({error})"
                call.error = ConnectionClosed(f"the connection was {why} after {call.op!r} was sent: it may or "
                                              "may not have been applied")
                failed.append(call)
            elif error is not None and call.struck:
                call.error = error
                failed.append(call)
            else:
                call.sent = False
                call.struck = call.struck or error is not None
                again.append(call)
        self.pending = {}
        for call in failed:
            self.done(call)
        return again, failed


#: every ``Calls`` of this process, for the child of a fork (rule 6)
_LIVE: weakref.WeakSet[Calls] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for calls in list(_LIVE):
        calls.forked()


os.register_at_fork(after_in_child=_after_fork_in_child)


def hello_message(role: str, token: str | None) -> dict[str, Any]:
    """The ``hello`` a client sends first on every connection."""
    import socket

    hello: dict[str, Any] = {"op": "hello", "version": PROTOCOL_VERSION, "role": role,
                             "host": socket.gethostname(), "pid": os.getpid()}
    if token:
        hello["token"] = token
    return hello


#: error codes at hello after which another try (another server, or the same one later) may succeed
TRANSIENT_HELLO_ERRORS = frozenset({"shutting_down", "hello_timeout", "busy", "internal", "standby"})


def closing_error(msg: dict[str, Any]) -> BaseException | None:
    """The error to hand ``Calls.lost`` for an error frame that closes the connection and names no request:
    None for a server that stops (no request's fault: what was in flight is sent to the next one), else the
    error (rule 4)."""
    code = str(msg.get("code"))
    return None if code == "shutting_down" else error_for_code(code, str(msg.get("message")))


def connect_error(address: str, exc: BaseException) -> BaseException:
    """The error to raise when ``address`` could not be reached: it says where to, and why.

    anyio says "All connection attempts failed" with the reason as the cause; a timeout stays a
    ``TimeoutError``.
    """
    if isinstance(exc, TimeoutError):
        return TimeoutError(f"cannot connect to {address}: no answer within the connect timeout")
    if isinstance(exc, OSError):
        why = exc.__cause__ if exc.errno is None and isinstance(exc.__cause__, OSError) else exc
        if why.errno is not None:
            return type(why)(why.errno, f"cannot connect to {address}: {why.strerror}")
        return OSError(f"cannot connect to {address}: {why}")
    return exc

def dead_message(op: str, queue: str | None, type: str | None, error: str | None, since: float | None,
              until: float | None, limit: int, cursor: int | None = None) -> dict[str, Any]:
    """A dead-letter request (docs/protocol.md 5.11): the filters given, the limit."""
    msg: dict[str, Any] = {"op": op, "limit": limit}
    for k, v in (("queue", queue), ("type", type), ("error", error), ("since", since), ("until", until),
                 ("cursor", cursor)):
        if v is not None:
            msg[k] = float(v) if k in ("since", "until") else v
    return msg
