"""The TCP protocol frontend: one task per connection, messages to the operations layer.

Every connection runs ``serve_connection``: it reads bytes, lets the session's
sans-IO ``Connection`` cut them into messages, hands each to a handler, and
after each read calls ``server.flush()`` once, so everything that arrived in one
read shares one group commit. docs/protocol.md is the normative description.

A handler only decodes (the fields' wire types, with ``runq.protocol.messages``),
calls one method of ``runq.app.ops.Operations`` with the session's ``Identity``
(set by ``hello``), and encodes the answer or the error frame: authorisation and
the range checks of every input are the operations layer's, shared with HTTP.

The hot path costs few trio rounds: bytes are read straight from the
non-blocking socket (``_receive``: one ``os.read``, ``wait_readable`` only when
nothing is there); the messages of one read are handled synchronously in one
write round of the server's ``Outbox`` (their replies leave in one write), except
the few that must wait for the store (``_client_later``); and consecutive
``enqueue`` requests of one read make one call of ``Operations.enqueue_nowait``
(one call of the core, one commit).
"""

from __future__ import annotations

import functools
import logging
import os
from typing import TYPE_CHECKING, Any

import msgpack
import trio

from ...protocol.errors import REQUEST_ERROR_CODES, ProtocolError, RunqError
from ...protocol.frames import INVALID_OP
from ...protocol.messages import (
    CLIENT_OPS,
    DEAD_OPS,
    LIMIT_OPS,
    WORKER_OPS,
    is_int,
    optional,
    parse_hello,
    parse_schedule,
    parse_task_spec,
    require,
)
from ..core import IllegalTransition, TaskMissing
from ..core.requests import digest
from ..ops import (
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
    check_token,
)
from .session import Session
from .tls import accept_tls

if TYPE_CHECKING:
    from ...protocol.messages import TaskSpec
    from ..ops.inputs import Token
    from .server import Server

__all__ = ["TcpFrontend"]

log = logging.getLogger("runq.server")

#: Client ops that change nothing the server must carry out (a read made only of them needs no flush).
_READS = frozenset({"get", "ping", "queues", "workers", "types", "stats", "wait", "subscribe", "schedules"})
#: Schedule changes: each answered once committed (``_client_later``).
_SCHEDULE_CHANGES = frozenset({"schedule_add", "schedule_remove", "schedule_pause", "schedule_resume",
                               "schedule_run"})
#: Errors that answer one request and leave the connection open.
_REQUEST_ERRORS = REQUEST_ERROR_CODES
#: The longest a connection closed for an error waits for the commit of what its earlier messages changed, so
#: that their answers go before the error frame.
_SETTLE = 5.0
#: Every op of the protocol (one its role may not ask for is refused by the operations layer: ``unknown_op``).
_OPS = CLIENT_OPS | WORKER_OPS
_INT64_MAX = 2**63 - 1
#: bytes of a reply besides its list and its rid (op, cursor, omitted, the headers), with room to spare
_ENVELOPE = 256
_packb = msgpack.Packer(use_bin_type=True).pack
#: The first bytes of a TLS handshake record (a hello frame begins with 0x00: its length is small).
_TLS_RECORD = b"\x16\x03"


class TcpFrontend:
    """Serves the msgpack TCP protocol for ``server``."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.ops = server.ops
        self.config = server.config

    async def serve_connection(self, stream: trio.SocketStream) -> None:
        srv = self.server
        try:
            host, port = stream.socket.getpeername()[:2]
            peer = f"{host}:{port}"
        except OSError:
            peer = "?"
        tls = srv.tls
        if tls is not None:  # (the handshake first, bounded: tls.py)
            secure = await accept_tls(stream, tls, self.config.hello_timeout, peer)
            if secure is None:
                return
            await self._serve(secure, peer)
        else:
            await self._serve(stream, peer)

    async def _serve(self, stream: trio.abc.Stream, peer: str) -> None:
        srv = self.server
        sess = Session(stream, peer, self.config.max_frame, srv.outbox, self.config.subscriber_backlog,
                       self.config.max_reply)
        srv.sessions.add(sess)
        srv.stats.connections += 1
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sess.sender)
                try:
                    await self._read_loop(sess)
                except ProtocolError as exc:
                    if exc.code == "standby":  # (routine: a client trying its addresses meets a standby)
                        log.info("hello from %s refused: %s", peer, exc)
                    else:
                        srv.stats.protocol_errors += 1
                        log.warning("protocol error from %s (%s): %s", peer, exc.code, exc)
                    # What the messages before the broken one changed is carried out and, once committed,
                    # answered: they are not left waiting for another connection's flush, and their answers
                    # come before the error frame (a client sends the others again: docs/clients.md).
                    srv.flush()
                    with trio.move_on_after(_SETTLE):
                        await srv.wait_committed()
                    error: dict[str, Any] = {"op": "error", "code": exc.code, "message": str(exc)}
                    if exc.rid is not None:
                        error["rid"] = exc.rid  # (the request that caused it: docs/protocol.md section 4)
                    sess.close(error)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    sess.close()
                except Exception as exc:  # noqa: BLE001 - a bug outside a request (hello, flush)
                    self._internal_error(sess, "?", exc)
                else:
                    sess.close()
        finally:
            srv.sessions.discard(sess)
            srv.unsubscribe(sess)
            if sess.role == "worker":
                self.ops.worker_left(sess.id, sess)

    async def _read_loop(self, sess: Session) -> None:
        conn = sess.conn
        stream = sess.stream
        hello = None
        with trio.move_on_after(self.config.hello_timeout):
            while hello is None:
                data = await stream.receive_some(65536)
                if data[:2] == _TLS_RECORD and not conn.buffered:  # (a TLS ClientHello: say so, not a frame size)
                    raise ProtocolError("the peer began a TLS handshake: this server speaks no TLS (runq serve "
                                        "--tls-cert FILE --tls-key FILE for TLS)", "bad_frame")
                conn.receive_data(data)
                hello = conn.next_message()
                if hello is None and conn.eof:
                    return
        if hello is None:
            raise ProtocolError(f"no hello within {self.config.hello_timeout}s", "hello_timeout")
        self._hello(sess, hello)
        srv = self.server
        outbox = srv.outbox
        worker = sess.role == "worker"
        ident = sess.identity
        # (a credential that can stop being valid: an access token expires, a user may be disabled; checked at
        # each read, an attribute test for the shared token: docs/security.md)
        recheck = ident.expires_at is not None or ident.owner is not None
        still_valid = srv.authenticator.still_valid
        while True:
            if recheck and not still_valid(ident, srv.clock()):
                raise ProtocolError("the connection's credential expired or its user was disabled", "unauthorized")
            msgs = conn.messages()
            # (a read of nothing but questions changes nothing: no flush; a worker's messages all change things)
            if worker or len(msgs) != 1:
                changed = worker or not all(m["op"] in _READS for m in msgs)
            else:
                changed = msgs[0]["op"] not in _READS
            i = 0
            while True:
                with outbox:  # (one write per session for what this read answers, when no await came between)
                    i = self._handle_now(sess, msgs, i)
                    if i < 0 or i == len(msgs):
                        if changed or i < 0:
                            srv.flush_read(sess.fd)  # (what the messages before a broken one changed is carried out)
                        break
                if not await self._handle_later(sess, msgs[i]):  # (one that must wait: outside any round)
                    i = -1
                    srv.flush()
                    break
                i += 1
            if conn.eof or i < 0:
                return
            conn.receive_data(await self._receive(sess))

    #: seconds a connection's reads may go on without a scheduling point (a turn, as in any cooperative
    #: scheduler: other connections, the committer and the timers wait at most this long)
    TURN = 0.0002

    async def _receive(self, sess: Session) -> bytes | bytearray:
        """The next bytes of the connection (b"" at its end).

        Read straight from the (non-blocking) socket: what is there now, else once it has come. Bytes that
        are there at once are taken after a checkpoint (other tasks get their turn under a steady flow, and
        a cancellation its chance), unless this task passed one less than ``TURN`` ago: a sequential
        client's next request is often there as soon as its reply is written, and that scheduling round
        would be all cost. (Not ``current_statistics().tasks_runnable``: it costs ~2 us a call.)
        """
        fd = sess.fd
        if fd < 0:
            return await sess.stream.receive_some(65536)
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            pass
        except OSError as exc:
            raise trio.BrokenResourceError(f"reading from {sess.peer}: {exc}") from exc
        else:
            if trio.current_time() - sess.turn_at >= self.TURN:
                await trio.lowlevel.checkpoint()
                sess.turn_at = trio.current_time()
            return data
        while True:
            await trio.lowlevel.wait_readable(fd)
            sess.turn_at = trio.current_time()
            try:
                return os.read(fd, 65536)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(f"reading from {sess.peer}: {exc}") from exc

    def _handle_now(self, sess: Session, msgs: list[dict[str, Any]], i: int) -> int:
        """Handle ``msgs[i:]`` that need no waiting, in order; return the index of the first one that does
        (``len(msgs)`` once all are handled), or -1 after a bug that ends the connection."""
        n = len(msgs)
        worker = sess.role == "worker"
        ident = sess.identity
        get_nowait = self.ops.get_nowait
        while i < n:
            msg = msgs[i]
            op = msg["op"]
            if op == "get" and "get" in ident.ops:  # (the most frequent question: a task in memory, answered at once)
                tid = msg.get("id")
                if type(tid) is int:
                    task = get_nowait(ident, tid)
                    if task is not None:
                        sess.send({"op": "task", "rid": msg.get("rid"), "task": task})
                        i += 1
                        continue
            if op not in _OPS:
                if op == INVALID_OP:  # (a map with a key that is not a str: frames.py rule 4)
                    sess.send({"op": "error", "rid": msg["rid"], "code": "bad_request", "message": msg["message"]})
                    i += 1
                    continue
                exc = ProtocolError(f"unknown op {op!r} for a {sess.role}", "unknown_op")
                exc.rid = msg.get("rid")
                raise exc
            if op == "enqueue":  # consecutive enqueues: one call of the core (and one commit)
                j = i + 1
                while j < n and msgs[j]["op"] == "enqueue":
                    j += 1
                if not self._enqueue(sess, msgs, i, j):
                    return -1
                i = j
                continue
            try:
                if worker:
                    self._worker_message(sess, op, msg)
                elif not self._client_now(sess, op, msg):
                    return i
            except Exception as exc:  # noqa: BLE001 - answered, or the connection ends (_request_error)
                if not self._request_error(sess, op, msg, exc):
                    return -1
            i += 1
        return n

    async def _handle_later(self, sess: Session, msg: dict[str, Any]) -> bool:
        """Handle one client message that may wait (a read from the store); False after a bug."""
        op = msg["op"]
        try:
            await self._client_later(sess, op, msg)
        except Exception as exc:  # noqa: BLE001 - answered, or the connection ends (_request_error)
            return self._request_error(sess, op, msg, exc)
        return True

    def _request_error(self, sess: Session, op: str, msg: dict[str, Any], exc: Exception) -> bool:
        """Answer a request that failed with ``exc``; return False when it was a bug (the connection then
        ends: docs/protocol.md, internal). An error that ends the connection is raised again."""
        if isinstance(exc, (TaskMissing, IllegalTransition, RunqError)):
            if isinstance(exc, ProtocolError) and exc.code not in _REQUEST_ERRORS:
                exc.rid = msg.get("rid")
                raise exc
            sess.send({"op": "error", "rid": msg.get("rid"), "code": exc.code, "message": str(exc)})
            return True
        if isinstance(exc, KeyError):
            sess.send({"op": "error", "rid": msg.get("rid"), "code": "not_found", "message": f"not found: {exc}"})
            return True
        self._internal_error(sess, op, exc, msg.get("rid"))
        return False

    def _hello(self, sess: Session, msg: dict[str, Any]) -> None:
        if msg["op"] == INVALID_OP:
            raise ProtocolError(msg["message"], "bad_request")
        hello = parse_hello(msg)
        ident = self.ops.authenticate(hello.token, hello.role, sess.peer)
        welcome = self.ops.hello(ident, hello, sess.peer.rsplit(":", 1)[0], sess)
        sess.identity = ident
        sess.role = hello.role
        if hello.role == "worker":
            sess.id = welcome["worker_id"]
        sess.send(welcome)

    # ------------------------------------------------------------------ workers
    def _worker_message(self, sess: Session, op: str, msg: dict[str, Any]) -> None:
        ops = self.ops
        ident = sess.identity
        wid = sess.id
        if op == "done":
            results = require(msg, "results", list)
            for r in results:
                if not (type(r) is list and len(r) == 3 and is_int(r[0]) and is_int(r[1])
                        and type(r[2]) is bytes):
                    raise ProtocolError("done: each result must be [id: int, lease: int, result: bin]")
            ops.done(ident, wid, Done(results, optional(msg, "credit", int, 0)))
        elif op == "credit":
            ops.credit(ident, wid, require(msg, "n", int))
        elif op == "heartbeat":
            ops.heartbeat(ident, wid)
        elif op == "fail":
            retry_in = optional(msg, "retry_in", (int, float))
            ops.fail(ident, wid, Fail(
                require(msg, "id", int), require(msg, "lease", int), require(msg, "error", str),
                retry_in=float(retry_in) if retry_in is not None else None,
                timed_out=optional(msg, "timeout", bool, False),
                retries=optional(msg, "retries", int), credit=optional(msg, "credit", int, 0),
                error_types=tuple(optional(msg, "error_types", list, ()))))
        elif op == "progress":
            ops.progress(ident, wid, Progress(require(msg, "id", int), require(msg, "lease", int),
                                              require(msg, "value", bytes)))
        elif op == "release":
            ops.release(ident, wid, require(msg, "ids", list))
        elif op == "ping":
            ops.ping(ident, wid)
            sess.send({"op": "pong", "rid": msg.get("rid")})
        else:
            raise ProtocolError(f"unknown op {op!r} for a {sess.role}", "unknown_op")

    # ------------------------------------------------------------------ clients
    def _enqueue(self, sess: Session, msgs: list[dict[str, Any]], i: int, j: int) -> bool:
        """Enqueue requests ``msgs[i:j]`` with one call of the operations layer; False after a bug."""
        requests: list[tuple[EnqueueRequest, Any]] = []
        try:
            for k in range(i, j):
                msg = msgs[k]
                try:
                    tasks = msg.get("tasks")
                    if type(tasks) is not list:
                        tasks = require(msg, "tasks", list)
                    specs = [parse_task_spec(d) for d in tasks]
                    requests.append((EnqueueRequest(specs, _token(msg, specs)), (sess, msg.get("rid"))))
                except Exception as exc:  # noqa: BLE001 - answered, or the connection ends (_request_error)
                    if not self._request_error(sess, "enqueue", msg, exc):
                        return False
        finally:  # (those before a request that ends the connection are enqueued all the same, as they come)
            if requests:
                try:
                    self.ops.enqueue_nowait(sess.identity, requests, _tell_enqueued)
                except ProtocolError as exc:  # (not permitted for this role: the connection ends with that error,
                    if exc.code in _REQUEST_ERRORS:  # naming the first request of the run: docs/protocol.md section 4;
                        for _, (s, rid) in requests:  # forbidden: each request is refused, the connection stays)
                            s.send({"op": "error", "rid": rid, "code": exc.code, "message": str(exc)})
                        return True
                    exc.rid = msgs[i].get("rid")
                    raise
                except Exception as exc:  # noqa: BLE001 - a bug: this connection only
                    self._internal_error(sess, "enqueue", exc)
                    return False
        return True

    def _client_now(self, sess: Session, op: str, msg: dict[str, Any]) -> bool:
        """Handle a client message that needs no waiting; False (nothing done) for one that may wait."""
        srv = self.server
        ops = self.ops
        ident = sess.identity
        rid = msg.get("rid")
        if op == "get":
            task = ops.get_nowait(ident, require(msg, "id", int))
            if task is None:
                return False  # (not in memory: read from the store)
            sess.send({"op": "task", "rid": rid, "task": task})
        elif op == "ping":
            ops.ping(ident)
            sess.send({"op": "pong", "rid": rid})
        elif op == "wait":
            req = _wait(msg)
            if not ops.wait_nowait(ident, req):
                return False  # (not in memory: does it exist?)
            # answered later, so that this session keeps reading meanwhile
            srv.nursery.start_soon(self._answer_wait, sess, rid, req)
        elif op in ("pause", "resume"):
            ops.pause_nowait(ident, require(msg, "queue", str), op == "pause",
                             functools.partial(_tell_paused, sess, rid))
        elif op == "queues":
            sess.send({"op": "queues", "rid": rid, "queues": ops.queues(ident)})
        elif op == "workers":
            sess.send({"op": "workers", "rid": rid, "workers": ops.workers(ident)})
        elif op == "types":
            sess.send({"op": "types", "rid": rid, "types": ops.types(ident)})
        elif op == "drain":
            sess.send({"op": "worker", "rid": rid, "worker": ops.drain(ident, require(msg, "worker", str))})
        elif op == "stats":
            sess.send({"op": "stats", "rid": rid, "stats": ops.stats(ident)})
        elif op == "subscribe":
            subscription = Subscription(
                queues=_set(msg, "queues", str), types=_set(msg, "types", str), ids=_set(msg, "ids", int),
            )
            ops.subscribe(ident, sess, subscription)  # ('busy' at the max_subscribers limit, the filter unchanged)
            sess.send({"op": "ok", "rid": rid})
        elif op == "schedules":
            sess.send({"op": "schedules", "rid": rid, "schedules": ops.schedules(ident)})
        elif op in ("cancel", "retry", "events", "list") or op in _SCHEDULE_CHANGES:
            return False
        elif op in LIMIT_OPS or op in DEAD_OPS:
            return False  # (answered in _client_later: the changes once committed, the store read for events)
        else:
            raise ProtocolError(f"unknown op {op!r} for a {sess.role}", "unknown_op")
        return True

    async def _client_later(self, sess: Session, op: str, msg: dict[str, Any]) -> None:
        """Handle a client message that may wait for the store."""
        srv = self.server
        ops = self.ops
        ident = sess.identity
        rid = msg.get("rid")
        if op == "get":
            sess.send({"op": "task", "rid": rid, "task": await ops.get(ident, require(msg, "id", int))})
        elif op == "wait":
            req = _wait(msg)
            await ops.get(ident, req.id)  # not_found at once
            srv.nursery.start_soon(self._answer_wait, sess, rid, req)
        elif op == "cancel":
            sess.send({"op": "task", "rid": rid, "task": await ops.cancel(ident, require(msg, "id", int))})
        elif op == "retry":
            sess.send({"op": "task", "rid": rid, "task": await ops.retry(ident, require(msg, "id", int))})
        elif op == "events":
            events = await ops.events(ident, require(msg, "id", int))
            room = sess.max_reply - _ENVELOPE - len(_packb(rid))
            sizes = [len(_packb(e)) for e in events]
            if sum(sizes) > room:  # (the latest events that fit: docs/protocol.md section 5)
                k = len(events)
                while k and room >= sizes[k - 1]:
                    k -= 1
                    room -= sizes[k]
                sess.send({"op": "events", "rid": rid, "events": events[k:], "omitted": k})
            else:
                sess.send({"op": "events", "rid": rid, "events": events})
        elif op == "list":
            tasks, cursor = await ops.list_tasks(ident, ListQuery(
                state=optional(msg, "state", str), queue=optional(msg, "queue", str),
                type=optional(msg, "type", str), limit=optional(msg, "limit", int, 100),
                cursor=optional(msg, "cursor", int)))
            room = sess.max_reply - _ENVELOPE - len(_packb(rid))
            for k, task in enumerate(tasks):  # (a page is cut short where it would pass max_reply)
                room -= len(_packb(task))
                if room < 0 and k:
                    tasks, cursor = tasks[:k], tasks[k - 1]["id"]
                    break
            sess.send({"op": "tasks", "rid": rid, "tasks": tasks, "cursor": cursor})
        elif op == "schedule_add":
            schedule = await ops.add_schedule(ident, parse_schedule(require(msg, "schedule", dict)))
            sess.send({"op": "schedule", "rid": rid, "schedule": schedule})
        elif op == "schedule_remove":
            await ops.remove_schedule(ident, require(msg, "name", str))
            sess.send({"op": "ok", "rid": rid})
        elif op in ("schedule_pause", "schedule_resume"):
            schedule = await ops.pause_schedule(ident, require(msg, "name", str), op == "schedule_pause")
            sess.send({"op": "schedule", "rid": rid, "schedule": schedule})
        elif op == "schedule_run":
            tid = await ops.run_schedule_now(ident, require(msg, "name", str))
            sess.send({"op": "enqueued", "rid": rid, "ids": [tid], "created": [True]})
        elif op in LIMIT_OPS:
            sess.send(await self._limits_op(sess, op, msg))
        elif op in DEAD_OPS:
            sess.send(await self._dead_op(sess, op, msg))

    async def _dead_op(self, sess: Session, op: str, msg: dict[str, Any]) -> dict[str, Any]:
        """A dead-letter op (docs/protocol.md 5.11): decoded, called, its answer."""
        ops = self.ops
        ident = sess.identity
        rid = msg.get("rid")
        since, until = optional(msg, "since", (int, float)), optional(msg, "until", (int, float))
        q = DeadQuery(optional(msg, "queue", str), optional(msg, "type", str), optional(msg, "error", str),
                      None if since is None else float(since), None if until is None else float(until),
                      optional(msg, "limit", int, 100), optional(msg, "cursor", int))
        if op == "dead_list":
            tasks, cursor = await ops.dead_list(ident, q)
            room = sess.max_reply - _ENVELOPE - len(_packb(rid))
            for k, task in enumerate(tasks):  # (a page is cut short where it would pass max_reply)
                room -= len(_packb(task))
                if room < 0 and k:
                    tasks, cursor = tasks[:k], tasks[k - 1]["id"]
                    break
            return {"op": "tasks", "rid": rid, "tasks": tasks, "cursor": cursor}
        call = ops.dead_retry if op == "dead_retry" else ops.dead_delete
        return {"op": "dead", "rid": rid, **await call(ident, q)}

    async def _limits_op(self, sess: Session, op: str, msg: dict[str, Any]) -> dict[str, Any]:
        """A limits or breakers op (docs/protocol.md 5.4): decoded, called, its answer."""
        ops = self.ops
        ident = sess.identity
        rid = msg.get("rid")
        if op == "set_limit":
            rate = optional(msg, "rate", (int, float))
            lim = await ops.set_limit(ident, LimitSettings(
                _scope(msg), None if rate is None else float(rate), float(optional(msg, "period", (int, float), 1.0)),
                optional(msg, "burst", int, 1), optional(msg, "concurrency", int)))
            return {"op": "limit", "rid": rid, "limit": lim}
        if op == "remove_limit":
            return {"op": "removed", "rid": rid, "removed": await ops.remove_limit(ident, _scope(msg))}
        if op == "limits":
            return {"op": "limits", "rid": rid, "limits": ops.limits(ident)}
        if op == "set_breaker":
            d = BreakerSettings(require(msg, "type", str))
            br = await ops.set_breaker(ident, BreakerSettings(
                d.type, float(optional(msg, "threshold", (int, float), d.threshold)),
                float(optional(msg, "window", (int, float), d.window)), optional(msg, "min_calls", int, d.min_calls),
                float(optional(msg, "cooldown", (int, float), d.cooldown)), optional(msg, "probes", int, d.probes)))
            return {"op": "breaker", "rid": rid, "breaker": br}
        if op == "remove_breaker":
            return {"op": "removed", "rid": rid, "removed": await ops.remove_breaker(ident, require(msg, "type", str))}
        if op in ("open_breaker", "close_breaker"):
            call = ops.open_breaker if op == "open_breaker" else ops.close_breaker
            br = await call(ident, require(msg, "type", str), optional(msg, "reason", str, ""))
            return {"op": "breaker", "rid": rid, "breaker": br}
        if op == "breakers":
            return {"op": "breakers", "rid": rid, "breakers": ops.breakers(ident)}
        if op == "why":
            return {"op": "why", "rid": rid, "why": ops.why(ident, require(msg, "id", int))}
        # server_events
        events = await ops.server_events(ident, EventsQuery(optional(msg, "since", int),
                                                            optional(msg, "limit", int, 100)))
        return {"op": "server_events", "rid": rid, "events": events}

    async def _answer_wait(self, sess: Session, rid: Any, req: WaitRequest) -> None:
        try:
            task = await self.ops.wait(sess.identity, req)
        except RunqError as exc:
            sess.send({"op": "error", "rid": rid, "code": exc.code, "message": str(exc)})
            return
        except Exception as exc:  # noqa: BLE001 - a bug: this runs in the server's nursery, it must not escape
            self._internal_error(sess, "wait", exc, rid)
            return
        sess.send({"op": "task", "rid": rid, "task": task})

    def _internal_error(self, sess: Session, op: str, exc: Exception, rid: Any = None) -> None:
        """A bug met while handling ``op`` (the request ``rid``, when one is to blame): log and count it, tell
        the peer, close that connection only."""
        self.server.stats.internal_errors += 1
        log.error("internal error handling %r from %s (closing that connection)", op, sess.peer, exc_info=exc)
        error = {"op": "error", "code": "internal",
                 "message": f"internal error handling {op!r}: {type(exc).__name__}: {exc}"}
        if rid is not None:
            error["rid"] = rid  # (like every error that closes a connection, it names the request to blame)
        sess.close(error)


def _tell_enqueued(res: list[tuple[int, bool]], err: BaseException | None, ctx: tuple[Session, Any]) -> None:
    """Answer an enqueue once its commit is over (``Server.enqueue_nowait``'s ``tell``)."""
    sess, rid = ctx
    if err is None:
        if len(res) == 1:
            tid, created = res[0]
            sess.send({"op": "enqueued", "rid": rid, "ids": [tid], "created": [created]})
        else:
            sess.send({"op": "enqueued", "rid": rid, "ids": [r[0] for r in res], "created": [r[1] for r in res]})
    elif isinstance(err, ProtocolError):  # (refused: a token reused for other tasks)
        sess.send({"op": "error", "rid": rid, "code": err.code, "message": str(err)})
    else:
        sess.send({"op": "error", "rid": rid, "code": "store_error",
                   "message": f"not committed, nothing was enqueued: {err}"})


def _tell_paused(sess: Session, rid: Any, err: BaseException | None) -> None:
    sess.send({"op": "ok", "rid": rid} if err is None else
              {"op": "error", "rid": rid, "code": "store_error", "message": str(err)})


def _token(msg: dict[str, Any], specs: list[TaskSpec]) -> Token | None:
    """An enqueue's idempotency token (client_id, seq), done_below, decoded and checked (``check_token``), and
    the digest of its tasks."""
    client_id = msg.get("client_id")
    seq = msg.get("seq")
    done_below = msg.get("done_below")
    if (type(client_id) is str and 0 < len(client_id) <= 100 and type(seq) is int and 0 <= seq <= _INT64_MAX
            and (done_below is None or (type(done_below) is int and 0 <= done_below <= _INT64_MAX))):
        return client_id, seq, done_below, digest(specs)  # (the usual case: what check_token accepts, seen at once)
    return check_token(optional(msg, "client_id", str), optional(msg, "seq", int), optional(msg, "done_below", int),
                       specs)


def _scope(msg: dict[str, Any]) -> LimitScope:
    return LimitScope(require(msg, "scope", str), require(msg, "name", str), optional(msg, "key", str, ""))


def _wait(msg: dict[str, Any]) -> WaitRequest:
    return WaitRequest(require(msg, "id", int), float(optional(msg, "timeout", (int, float), 60.0)))


def _set(msg: dict[str, Any], field: str, kind: type) -> frozenset[Any] | None:
    """A subscribe filter: nil (any) or an array of ``kind``."""
    v = optional(msg, field, list)
    if v is None:
        return None
    if not all(is_int(x) if kind is int else isinstance(x, kind) for x in v):
        raise ProtocolError(f"subscribe: {field!r} must be an array of {kind.__name__}")
    return frozenset(v)
