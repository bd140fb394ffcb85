"""The TCP protocol frontend: one task per connection, messages to server operations.

Every connection runs ``serve_connection``: it reads bytes, lets the session's
sans-IO ``Connection`` cut them into messages, hands each to a handler, and
after each read calls ``server.flush()`` once, so everything that arrived in one
read shares one group commit. docs/protocol.md is the normative description.
"""

from __future__ import annotations

import hmac
import logging
import math
import secrets
from typing import Any

import trio

from ...protocol.errors import ProtocolError, RunqError
from ...protocol.messages import (
    CLIENT_OPS,
    WATCHER_OPS,
    WORKER_OPS,
    is_int,
    optional,
    parse_hello,
    parse_task_spec,
    require,
)
from ..core import IllegalTransition, TaskMissing
from .server import VERSION, Server
from .session import Session, Subscription

__all__ = ["TcpFrontend"]

log = logging.getLogger("runq.server")

#: Errors that answer one request and leave the connection open.
_REQUEST_ERRORS = frozenset({"bad_request", "not_found", "invalid_state", "store_error", "busy"})
#: The longest ``retry_in`` a worker may ask for (as for a spec's ``delay``: under ten years).
_MAX_RETRY_IN = 10 * 365 * 86400


class TcpFrontend:
    """Serves the msgpack TCP protocol for ``server``."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.config = server.config
        self._worker_seq = 0

    async def serve_connection(self, stream: trio.SocketStream) -> None:
        srv = self.server
        try:
            host, port = stream.socket.getpeername()[:2]
            peer = f"{host}:{port}"
        except OSError:
            peer = "?"
        sess = Session(stream, peer, self.config.max_frame, self.config.subscriber_backlog)
        srv.sessions.add(sess)
        srv.stats.connections += 1
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sess.sender)
                try:
                    await self._read_loop(sess)
                except ProtocolError as exc:
                    srv.stats.protocol_errors += 1
                    log.warning("protocol error from %s (%s): %s", peer, exc.code, exc)
                    sess.close({"op": "error", "code": exc.code, "message": str(exc)})
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    sess.close()
                except Exception as exc:  # noqa: BLE001 - a bug outside a request (hello, flush)
                    self._internal_error(sess, "?", exc)
                else:
                    sess.close()
        finally:
            srv.sessions.discard(sess)
            srv.unsubscribe(sess)
            if sess.role == "worker" and srv.workers.get(sess.id) is sess:
                del srv.workers[sess.id]
                if not srv.stopping.is_set():
                    # (when the server stops, running tasks stay running on disk and
                    # come back as 'recovered' at the next start, no attempt lost)
                    srv.core.worker_left(sess.id, srv.clock(), reason="connection closed")
                    srv.flush()

    async def _read_loop(self, sess: Session) -> None:
        conn = sess.conn
        stream = sess.stream
        hello = None
        with trio.move_on_after(self.config.hello_timeout):
            while hello is None:
                data = await stream.receive_some(65536)
                conn.receive_data(data)
                hello = conn.next_message()
                if hello is None and conn.eof:
                    return
        if hello is None:
            raise ProtocolError(f"no hello within {self.config.hello_timeout}s", "hello_timeout")
        self._hello(sess, hello)
        ops = {"client": CLIENT_OPS, "worker": WORKER_OPS, "watcher": WATCHER_OPS}[sess.role]
        broken = False
        while True:
            for msg in conn.messages():
                op = msg["op"]
                if op not in ops:
                    raise ProtocolError(f"unknown op {op!r} for a {sess.role}", "unknown_op")
                try:
                    if sess.role == "worker":
                        self._worker_message(sess, op, msg)
                    else:
                        await self._client_message(sess, op, msg)
                except (TaskMissing, IllegalTransition, RunqError) as exc:
                    if isinstance(exc, ProtocolError) and exc.code not in _REQUEST_ERRORS:
                        raise
                    sess.send({"op": "error", "rid": msg.get("rid"), "code": exc.code, "message": str(exc)})
                except KeyError as exc:
                    sess.send({"op": "error", "rid": msg.get("rid"), "code": "not_found",
                               "message": f"not found: {exc}"})
                except Exception as exc:  # noqa: BLE001 - a bug (docs/protocol.md: internal): this connection only
                    self._internal_error(sess, op, exc)
                    broken = True
                    break
            self.server.flush()  # (what the messages before it changed is carried out all the same)
            if conn.eof or broken:
                return
            data = await stream.receive_some(65536)
            conn.receive_data(data)

    def _hello(self, sess: Session, msg: dict[str, Any]) -> None:
        srv = self.server
        hello = parse_hello(msg)
        if self.config.token is not None and not hmac.compare_digest(
            (hello.token or "").encode(), self.config.token.encode()
        ):
            raise ProtocolError("missing or wrong token", "unauthorized")
        if srv.stopping.is_set():
            raise ProtocolError("server is stopping", "shutting_down")
        sess.role = hello.role
        welcome: dict[str, Any] = {
            "op": "welcome", "version": hello.version, "server": f"runq/{VERSION}",
            "max_frame": self.config.max_frame, "lease_timeout": self.config.core.lease_timeout,
            "heartbeat": self.config.core.lease_timeout / 3,
        }
        if hello.role == "worker":
            self._worker_seq += 1
            sess.id = f"w{self._worker_seq}-{secrets.token_hex(3)}"
            srv.workers[sess.id] = sess
            srv.core.worker_joined(sess.id, srv.clock(), hello.queues, hello.concurrency,
                                   hello.name, hello.host or sess.peer.rsplit(":", 1)[0], hello.pid, hello.types,
                                   hello.type_options)
            welcome["worker_id"] = sess.id
        sess.send(welcome)

    # ------------------------------------------------------------------ workers
    def _worker_message(self, sess: Session, op: str, msg: dict[str, Any]) -> None:
        core = self.server.core
        now = self.server.clock()
        wid = sess.id
        if op == "done":
            results = require(msg, "results", list)
            for r in results:
                if not (type(r) is list and len(r) == 3 and is_int(r[0]) and is_int(r[1])
                        and type(r[2]) is bytes):
                    raise ProtocolError("done: each result must be [id: int, lease: int, result: bin]")
            core.done(wid, results, now)
            n = optional(msg, "credit", int, 0)
            if n:
                core.credit(wid, n, now)
        elif op == "credit":
            core.credit(wid, require(msg, "n", int), now)
        elif op == "heartbeat":
            core.heartbeat(wid, now)
        elif op == "fail":
            task_id, lease, error = require(msg, "id", int), require(msg, "lease", int), require(msg, "error", str)
            retry_in = optional(msg, "retry_in", (int, float))
            if retry_in is not None and not 0 <= retry_in < _MAX_RETRY_IN:  # (NaN fails both comparisons)
                raise ProtocolError("fail: 'retry_in' must be a number of seconds >= 0 and under ten years",
                                    "bad_request")
            retries = optional(msg, "retries", int)
            if retries is not None and not 0 <= retries <= 1000:
                raise ProtocolError("fail: 'retries' must be between 0 and 1000", "bad_request")
            core.fail(wid, task_id, lease, error, now, retry_in=float(retry_in) if retry_in is not None else None,
                      timed_out=bool(msg.get("timeout")), max_retries=retries)
            n = optional(msg, "credit", int, 0)
            if n:
                core.credit(wid, n, now)
        elif op == "progress":
            core.progress(wid, require(msg, "id", int), require(msg, "lease", int),
                          require(msg, "value", bytes), now)
        elif op == "release":
            core.release(wid, require(msg, "ids", list), now)
        elif op == "ping":
            core.heartbeat(wid, now)
            sess.send({"op": "pong", "rid": msg.get("rid")})

    # ------------------------------------------------------------------ clients
    async def _client_message(self, sess: Session, op: str, msg: dict[str, Any]) -> None:
        srv = self.server
        rid = msg.get("rid")
        if op == "enqueue":
            specs = [parse_task_spec(d) for d in require(msg, "tasks", list)]

            def tell(res: list[tuple[int, bool]], err: BaseException | None) -> None:
                if err is None:
                    sess.send({"op": "enqueued", "rid": rid, "ids": [r[0] for r in res],
                               "created": [r[1] for r in res]})
                else:
                    sess.send({"op": "error", "rid": rid, "code": "store_error",
                               "message": f"not committed, nothing was enqueued: {err}"})

            srv.enqueue_nowait(specs, tell, _token(msg))
        elif op == "get":
            sess.send({"op": "task", "rid": rid, "task": await srv.get_task(require(msg, "id", int))})
        elif op == "wait":
            tid = require(msg, "id", int)
            timeout = float(optional(msg, "timeout", (int, float), 60.0))
            if math.isnan(timeout):
                raise ProtocolError("wait: 'timeout' must be a number, not NaN", "bad_request")
            await srv.get_task(tid)  # not_found at once
            # answered later, so that this session keeps reading meanwhile
            srv.nursery.start_soon(self._answer_wait, sess, rid, tid, timeout)
        elif op == "cancel":
            sess.send({"op": "task", "rid": rid, "task": await srv.cancel(require(msg, "id", int))})
        elif op == "retry":
            sess.send({"op": "task", "rid": rid, "task": await srv.retry(require(msg, "id", int))})
        elif op == "events":
            sess.send({"op": "events", "rid": rid, "events": await srv.task_events(require(msg, "id", int))})
        elif op == "list":
            tasks, cursor = await srv.list_tasks(
                state=optional(msg, "state", str), queue=optional(msg, "queue", str),
                type=optional(msg, "type", str), limit=optional(msg, "limit", int, 100),
                cursor=optional(msg, "cursor", int))
            sess.send({"op": "tasks", "rid": rid, "tasks": tasks, "cursor": cursor})
        elif op in ("pause", "resume"):
            def told(err: BaseException | None) -> None:
                sess.send({"op": "ok", "rid": rid} if err is None else
                          {"op": "error", "rid": rid, "code": "store_error", "message": str(err)})

            srv.set_paused_nowait(require(msg, "queue", str), op == "pause", told)
        elif op == "queues":
            sess.send({"op": "queues", "rid": rid, "queues": srv.queue_stats()})
        elif op == "workers":
            sess.send({"op": "workers", "rid": rid, "workers": srv.worker_list()})
        elif op == "types":
            sess.send({"op": "types", "rid": rid, "types": srv.task_types()})
        elif op == "drain":
            wid = require(msg, "worker", str)
            if wid not in srv.core.workers:
                raise ProtocolError(f"no connected worker {wid!r}", "not_found")
            sess.send({"op": "worker", "rid": rid, "worker": srv.drain_worker(wid)})
        elif op == "stats":
            sess.send({"op": "stats", "rid": rid, "stats": srv.statistics()})
        elif op == "subscribe":
            subscription = Subscription(
                queues=_set(msg, "queues", str), types=_set(msg, "types", str), ids=_set(msg, "ids", int),
            )
            srv.subscribe(sess)  # (refused with 'busy' at the max_subscribers limit, the filter unchanged)
            sess.subscription = subscription
            sess.send({"op": "ok", "rid": rid})
        elif op == "ping":
            sess.send({"op": "pong", "rid": rid})

    async def _answer_wait(self, sess: Session, rid: Any, tid: int, timeout: float) -> None:
        try:
            task = await self.server.wait_task(tid, timeout)
        except RunqError as exc:
            sess.send({"op": "error", "rid": rid, "code": exc.code, "message": str(exc)})
            return
        except Exception as exc:  # noqa: BLE001 - a bug: this runs in the server's nursery, it must not escape
            self._internal_error(sess, "wait", exc)
            return
        sess.send({"op": "task", "rid": rid, "task": task})

    def _internal_error(self, sess: Session, op: str, exc: Exception) -> None:
        """A bug met while handling ``op``: log and count it, tell the peer, close that connection only."""
        self.server.stats.internal_errors += 1
        log.error("internal error handling %r from %s (closing that connection)", op, sess.peer, exc_info=exc)
        # like every error that closes a connection, it answers no request: no rid (docs/protocol.md section 4)
        sess.close({"op": "error", "code": "internal",
                    "message": f"internal error handling {op!r}: {type(exc).__name__}: {exc}"})


def _token(msg: dict[str, Any]) -> tuple[str, int, int | None] | None:
    """An enqueue's idempotency token (client_id, seq) and done_below, checked (docs/protocol.md 5.2)."""
    client_id = optional(msg, "client_id", str)
    seq = optional(msg, "seq", int)
    done_below = optional(msg, "done_below", int)
    if client_id is None and seq is None:
        return None
    if client_id is None or seq is None:
        raise ProtocolError("enqueue: give 'client_id' and 'seq' together (the idempotency token)", "bad_request")
    if not 0 < len(client_id) <= 100:
        raise ProtocolError("enqueue: 'client_id' must be 1 to 100 chars", "bad_request")
    if seq < 0 or (done_below is not None and done_below < 0):
        raise ProtocolError("enqueue: 'seq' and 'done_below' must be >= 0", "bad_request")
    return client_id, seq, done_below


def _set(msg: dict[str, Any], field: str, kind: type) -> frozenset[Any] | None:
    """A subscribe filter: nil (any) or an array of ``kind``."""
    v = optional(msg, field, list)
    if v is None:
        return None
    if not all(is_int(x) if kind is int else isinstance(x, kind) for x in v):
        raise ProtocolError(f"subscribe: {field!r} must be an array of {kind.__name__}")
    return frozenset(v)
