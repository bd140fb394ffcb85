"""The trio server: TCP listener, sessions, timers, and the wiring of core and store.

Theory of operation
-------------------
One trio process. Every connection runs ``_serve_connection``: it reads bytes,
lets the session's sans-IO ``Connection`` cut them into messages, hands each
message to a handler that calls the ``Core``, and after each read calls
``flush()``. ``flush`` collects the core's effects once for everything that
arrived: task rows and events go to the store's writer thread as one ``Batch``,
messages go to the worker sessions, live events to subscribers. Enqueue replies
and ``wait`` answers are sent from the batch's commit callback, so a client
never hears "enqueued" before the task is on disk.

A timer task sleeps until the core's next deadline (delayed task, lease expiry,
task timeout) and ticks it; it is woken early when a flush moves that deadline.
"""

from __future__ import annotations

import functools
import gc
import hmac
import ipaddress
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from ...protocol.errors import ProtocolError, RunqError
from ...protocol.frames import DEFAULT_MAX_FRAME
from ...protocol.messages import (
    CLIENT_OPS, WATCHER_OPS, WORKER_OPS, optional, parse_hello, parse_task_spec, require,
)
from ..core import FINAL_STATES, Core, CoreConfig, IllegalTransition, State, Task, TaskMissing, Transition
from ..core.model import EVENT_COLUMNS
from ..store import Batch, Store, StoreError
from .session import Session, Subscription

__all__ = ["Server", "ServerConfig", "Clock", "ConfigError", "VERSION"]

log = logging.getLogger("runq.server")
VERSION = "0.1.0"
_FINAL = frozenset(s.value for s in FINAL_STATES)


class ConfigError(RunqError):
    """The server was asked to start with settings that are not allowed."""

    code = "bad_request"


class Clock:
    """Wall-clock time that advances with trio's clock (so MockClock drives it in tests).

    Args:
        wall: the wall time at the moment the clock is created (default ``time.time()``).
    """

    def __init__(self, wall: float | None = None) -> None:
        self._wall0 = time.time() if wall is None else wall
        self._trio0 = trio.current_time()

    def __call__(self) -> float:
        return self._wall0 + (trio.current_time() - self._trio0)


@dataclass
class ServerConfig:
    """Settings of ``runq serve``.

    Attributes:
        db: SQLite file path.
        host: address to listen on; anything but loopback requires ``token``.
        port: TCP port (0 picks a free one).
        token: shared secret every client and worker must present.
        synchronous: ``NORMAL`` or ``FULL``.
        max_frame: largest accepted frame body, bytes.
        hello_timeout: seconds a new connection has to send hello.
        retention: seconds finished tasks are kept before pruning.
        prune_interval: seconds between prune passes.
        subscriber_backlog: bytes queued for a live-event subscriber before its events are dropped.
        core: rules of the queue (leases, retries, backoff).
    """

    db: str = "runq.db"
    host: str = "127.0.0.1"
    port: int = 7700
    token: str | None = None
    synchronous: str = "NORMAL"
    max_frame: int = DEFAULT_MAX_FRAME
    hello_timeout: float = 5.0
    retention: float = 7 * 86400.0
    prune_interval: float = 3600.0
    subscriber_backlog: int = 4 << 20
    core: CoreConfig = field(default_factory=CoreConfig)

    def check(self) -> None:
        """Raise ``ConfigError`` for settings that must not be served."""
        if not _is_loopback(self.host) and not self.token:
            raise ConfigError(f"listening on {self.host} (not loopback) requires a token (--token or RUNQ_TOKEN)")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class ServerStats:
    """Counters of the I/O layer."""

    connections: int = 0
    protocol_errors: int = 0
    store_errors: int = 0
    handler_errors: int = 0
    flushes: int = 0
    started_at: float = 0.0


class Server:
    """The runq server. Run it with ``await nursery.start(server.serve)``.

    Args:
        config: settings.
        clock: wall clock for stored timestamps (default: follows trio's clock).
    """

    def __init__(self, config: ServerConfig, clock: Callable[[], float] | None = None) -> None:
        config.check()
        self.config = config
        self._clock_arg = clock
        self.clock: Callable[[], float] = clock or time.time
        self.core = Core(config.core)
        self.store: Store | None = None
        self.stats = ServerStats()
        self.port: int | None = None
        self.sessions: set[Session] = set()
        self.workers: dict[str, Session] = {}
        self.subscribers: set[Session] = set()
        self.recovered = 0
        self._acks: list[tuple[Session, dict[str, Any]]] = []
        self._waiters: dict[int, list[tuple[Session, Any, trio.Event]]] = {}
        self._rearm = trio.Event()
        self._armed = float("inf")
        self._worker_seq = 0
        self._retry_scheduled = False
        self._pending_commits = 0
        self._idle = trio.Event()
        self._reader_lock = trio.CapacityLimiter(1)
        self.stopping = trio.Event()
        self.commit_listeners: list[Callable[[Batch, BaseException | None], None]] = []
        self.ready = False

    # ------------------------------------------------------------------ run
    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the store, rebuild state, listen; report the bound port; run until cancelled.

        Stopping: set ``self.stopping`` (or cancel). Queued writes are committed
        before the store closes.
        """
        cfg = self.config
        if self._clock_arg is None:
            self.clock = Clock()
        token = trio.lowlevel.current_trio_token()
        store = await trio.to_thread.run_sync(functools.partial(Store, cfg.db, cfg.synchronous, token.run_sync_soon))
        self.store = store
        try:
            rows, paused, next_id = await trio.to_thread.run_sync(store.load)
            now = self.clock()
            # a million long-lived objects: no cyclic GC passes while building them, and
            # frozen afterwards so later collections do not walk them again
            gc.disable()
            try:
                self.recovered = await trio.to_thread.run_sync(self.core.recover, rows, paused, next_id, now)
            finally:
                gc.enable()
            gc.freeze()
            del rows
            if self.recovered:
                log.warning("%d task(s) were running when the server stopped: back to ready", self.recovered)
            fx = self.core.take_effects(now)
            if fx.rows or fx.new_rows or fx.events:
                await trio.to_thread.run_sync(store.write_now, Batch(rows=fx.rows, new_rows=fx.new_rows,
                                                                     events=fx.events))
            store.start()
            listeners = await trio.open_tcp_listeners(cfg.port, host=cfg.host)
            self.port = listeners[0].socket.getsockname()[1]
            self.stats.started_at = self.clock()
            async with trio.open_nursery() as nursery:
                self._spawn_nursery = nursery
                nursery.start_soon(functools.partial(trio.serve_listeners, self._serve_connection, listeners,
                                                     handler_nursery=nursery))
                nursery.start_soon(self._timer)
                nursery.start_soon(self._pruner)
                self.ready = True
                log.info("runq %s listening on %s:%d, database %s", VERSION, cfg.host, self.port, cfg.db)
                task_status.started(self.port)
                await self.stopping.wait()
                self.ready = False
                for s in list(self.sessions):
                    s.close({"op": "error", "code": "shutting_down", "message": "server is stopping"})
                await self.wait_committed()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                self.flush()
                await trio.to_thread.run_sync(store.close)

    async def wait_committed(self) -> None:
        """Wait until every batch handed to the store so far has committed."""
        while self._pending_commits:
            await self._idle.wait()

    # ------------------------------------------------------------------ effects
    def flush(self) -> None:
        """Carry out the core's effects (see the module docstring)."""
        now = self.clock()
        fx = self.core.take_effects(now)
        self.stats.flushes += 1
        for wid, msgs in fx.outbox.items():
            sess = self.workers.get(wid)
            if sess is not None:
                sess.send_many(msgs)
                if wid not in self.core.workers:  # its lease expired: that connection is over
                    del self.workers[wid]
                    sess.close()
        for level, text in fx.logs:
            log.log(logging.WARNING if level == "warning" else logging.INFO, "%s", text)
        if fx.notices and self.subscribers:
            self._publish(fx.notices)
        acks = self._acks
        waiters = None
        if self._waiters:
            waiters = [r[0] for r in fx.events if r[3] in _FINAL and r[0] in self._waiters]
        if fx.rows or fx.new_rows or fx.events or fx.queue_ops or acks:
            self._acks = []
            batch = Batch(rows=fx.rows, new_rows=fx.new_rows, events=fx.events, queue_ops=fx.queue_ops)
            batch.on_done = functools.partial(self._committed, batch, acks, waiters)
            self._pending_commits += 1
            assert self.store is not None
            self.store.submit(batch)
        elif waiters:
            self._wake_waiters(waiters)
        nd = self.core.next_deadline()
        if nd is not None and nd < self._armed:
            self._rearm.set()

    def _committed(self, batch: Batch, acks: list[tuple[Session, dict[str, Any]]], waiters: list[int] | None,
                   error: BaseException | None) -> None:
        self._pending_commits -= 1
        if error is not None:
            # Nothing is dropped: enqueues that did not commit are refused (and their
            # tasks forgotten when none has started); every other write is put back
            # and retried with the next commit.
            self.stats.store_errors += 1
            forgotten: set[int] = set()
            for sess, reply in acks:
                if reply["op"] == "enqueued":
                    forgotten |= self.core.forget([i for i, c in zip(reply["ids"], reply["created"]) if c])
                sess.send({"op": "error", "rid": reply.get("rid"), "code": "store_error",
                           "message": f"not committed, nothing was enqueued: {error}"})
            self.core.restore_effects([r[0] for r in batch.rows + batch.new_rows if r[0] not in forgotten],
                                      [e for e in batch.events if e[0] not in forgotten], batch.queue_ops)
            if not self._retry_scheduled:
                self._retry_scheduled = True
                self._spawn_nursery.start_soon(self._retry_writes)
        else:
            for sess, reply in acks:
                sess.send(reply)
        if waiters:
            self._wake_waiters(waiters)
        for listener in self.commit_listeners:
            listener(batch, error)
        if not self._pending_commits:
            self._idle.set()
            self._idle = trio.Event()

    async def _retry_writes(self) -> None:
        await trio.sleep(0.5)
        self._retry_scheduled = False
        self.flush()

    def _wake_waiters(self, ids: list[int]) -> None:
        for tid in ids:
            for _, _, ev in self._waiters.pop(tid, ()):
                ev.set()

    def _publish(self, notices: list[tuple[tuple[Any, ...], Task]]) -> None:
        for row, task in notices:
            msg = None
            for sess in self.subscribers:
                sub = sess.subscription
                if sub is not None and sub.wants(task.queue, task.type, task.id):
                    if msg is None:
                        msg = dict(zip(EVENT_COLUMNS, row))
                        msg["op"] = "event"
                        msg["id"] = task.id
                        msg["queue"] = task.queue
                        msg["type"] = task.type
                        msg["status"] = row[3]
                        if row[2] == "progress":
                            msg["progress"] = task.progress
                        if row[3] in _FINAL:
                            msg["result"] = task.result
                            msg["error"] = task.error
                    sess.send_event(msg)

    # ------------------------------------------------------------------ timers
    async def _timer(self) -> None:
        while True:
            nd = self.core.next_deadline()
            self._armed = nd if nd is not None else float("inf")
            wait = max(0.0, self._armed - self.clock()) if nd is not None else 60.0
            with trio.move_on_after(min(wait, 60.0)):
                await self._rearm.wait()
            self._rearm = trio.Event()
            self.core.tick(self.clock())
            self.flush()

    async def _pruner(self) -> None:
        while True:
            self.prune()
            await trio.sleep(self.config.prune_interval)

    def prune(self, before: float | None = None) -> None:
        """Ask the writer to delete tasks finished before ``before`` (default: now - retention)."""
        assert self.store is not None
        cutoff = before if before is not None else self.clock() - self.config.retention
        batch = Batch(prune_before=cutoff)
        self._pending_commits += 1
        batch.on_done = functools.partial(self._committed, batch, [], None)
        self.store.submit(batch)
        for tid in [t for t, task in self.core.finished.items() if (task.finished_at or 0) < cutoff]:
            del self.core.finished[tid]

    # ------------------------------------------------------------------ connections
    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        try:
            peer = "%s:%s" % stream.socket.getpeername()[:2]
        except OSError:
            peer = "?"
        sess = Session(stream, peer, self.config.max_frame, self.config.subscriber_backlog)
        self.sessions.add(sess)
        self.stats.connections += 1
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sess.sender)
                try:
                    await self._read_loop(sess)
                except ProtocolError as exc:
                    self.stats.protocol_errors += 1
                    log.warning("protocol error from %s (%s): %s", peer, exc.code, exc)
                    sess.close({"op": "error", "code": exc.code, "message": str(exc)})
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    sess.close()
                else:
                    sess.close()
        finally:
            self.sessions.discard(sess)
            self.subscribers.discard(sess)
            if sess.role == "worker" and self.workers.get(sess.id) is sess:
                del self.workers[sess.id]
                if not self.stopping.is_set():
                    # (when the server stops, running tasks stay running on disk and
                    # come back as 'recovered' at the next start, no attempt lost)
                    self.core.worker_left(sess.id, self.clock(), reason="connection closed")
                    self.flush()

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
                except ProtocolError as exc:
                    if exc.code in ("bad_request", "not_found", "invalid_state"):
                        sess.send({"op": "error", "rid": msg.get("rid"), "code": exc.code, "message": str(exc)})
                    else:
                        raise
                except (TaskMissing, IllegalTransition) as exc:
                    sess.send({"op": "error", "rid": msg.get("rid"), "code": exc.code, "message": str(exc)})
                except (StoreError, RunqError) as exc:
                    sess.send({"op": "error", "rid": msg.get("rid"), "code": exc.code, "message": str(exc)})
                except KeyError as exc:
                    sess.send({"op": "error", "rid": msg.get("rid"), "code": "not_found", "message": f"not found: {exc}"})
            self.flush()
            if conn.eof:
                return
            data = await stream.receive_some(65536)
            conn.receive_data(data)

    def _hello(self, sess: Session, msg: dict[str, Any]) -> None:
        hello = parse_hello(msg)
        if self.config.token is not None and not hmac.compare_digest(
            (hello.token or "").encode(), self.config.token.encode()
        ):
            raise ProtocolError("missing or wrong token", "unauthorized")
        if self.stopping.is_set():
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
            self.workers[sess.id] = sess
            self.core.worker_joined(sess.id, self.clock(), hello.queues, hello.concurrency,
                                    hello.name, hello.host or sess.peer.rsplit(":", 1)[0], hello.pid)
            welcome["worker_id"] = sess.id
        sess.send(welcome)

    # ------------------------------------------------------------------ workers
    def _worker_message(self, sess: Session, op: str, msg: dict[str, Any]) -> None:
        core = self.core
        now = self.clock()
        wid = sess.id
        if op == "done":
            results = require(msg, "results", list)
            for r in results:
                if not isinstance(r, list) or len(r) != 3:
                    raise ProtocolError("done: each result must be [id, attempt, result]")
            core.done(wid, results, now)
            n = optional(msg, "credit", int, 0)
            if n:
                core.credit(wid, n, now)
        elif op == "credit":
            core.credit(wid, require(msg, "n", int), now)
        elif op == "heartbeat":
            core.heartbeat(wid, now)
        elif op == "fail":
            retry_in = optional(msg, "retry_in", (int, float))
            core.fail(wid, require(msg, "id", int), require(msg, "attempt", int), require(msg, "error", str), now,
                      retry_in=float(retry_in) if retry_in is not None else None,
                      timed_out=bool(msg.get("timeout")), max_retries=optional(msg, "retries", int))
            n = optional(msg, "credit", int, 0)
            if n:
                core.credit(wid, n, now)
        elif op == "progress":
            core.progress(wid, require(msg, "id", int), require(msg, "attempt", int),
                          require(msg, "value", bytes), now)
        elif op == "release":
            core.release(wid, require(msg, "ids", list), now)
        elif op == "ping":
            core.heartbeat(wid, now)
            sess.send({"op": "pong", "rid": msg.get("rid")})

    # ------------------------------------------------------------------ clients
    async def _client_message(self, sess: Session, op: str, msg: dict[str, Any]) -> None:
        core = self.core
        rid = msg.get("rid")
        if op == "enqueue":
            tasks = require(msg, "tasks", list)
            specs = [parse_task_spec(d) for d in tasks]
            res = core.enqueue(specs, self.clock())
            self._acks.append((sess, {"op": "enqueued", "rid": rid, "ids": [r[0] for r in res],
                                      "created": [r[1] for r in res]}))
        elif op == "get":
            task = await self.get_task(require(msg, "id", int))
            sess.send({"op": "task", "rid": rid, "task": task})
        elif op == "wait":
            tid = require(msg, "id", int)
            timeout = float(optional(msg, "timeout", (int, float), 60.0))
            task = await self.get_task(tid)
            if task["state"] not in _FINAL and timeout > 0:
                # answered later, so that this session keeps reading meanwhile
                ev = trio.Event()
                self._waiters.setdefault(tid, []).append((sess, rid, ev))
                self._spawn_nursery.start_soon(self._answer_wait, sess, rid, tid, ev, timeout)
                return
            sess.send({"op": "task", "rid": rid, "task": task})
        elif op == "cancel":
            tid = require(msg, "id", int)
            try:
                cancelled = core.cancel(tid, self.clock())
            except TaskMissing:
                known = await self.get_task(tid)
                raise IllegalTransition(State(known["state"]), Transition.CANCEL) from None
            sess.send({"op": "task", "rid": rid, "task": cancelled.as_dict()})
        elif op == "retry":
            tid = require(msg, "id", int)
            stored: Task | None = None
            if tid not in core.tasks and tid not in core.finished:
                row = await self._read(self._store.get_task, tid)
                if row is None:
                    raise TaskMissing(f"no task {tid}")
                stored = Task.from_row(row)
            retried = core.retry(tid, self.clock(), stored)
            sess.send({"op": "task", "rid": rid, "task": retried.as_dict()})
        elif op == "events":
            tid = require(msg, "id", int)
            await self.get_task(tid)
            self.flush()
            await self.wait_committed()
            rows = await self._read(self._store.events, tid)
            sess.send({"op": "events", "rid": rid, "events": [dict(zip(EVENT_COLUMNS, r)) for r in rows]})
        elif op == "list":
            limit = optional(msg, "limit", int, 100)
            if not 1 <= limit <= 1000:
                raise ProtocolError("list: limit must be between 1 and 1000", "bad_request")
            self.flush()
            await self.wait_committed()
            rows = await self._read(functools.partial(
                self._store.list_tasks, state=optional(msg, "state", str), queue=optional(msg, "queue", str),
                type=optional(msg, "type", str), limit=limit, cursor=optional(msg, "cursor", int)))
            tasks = [self._fresh(r) for r in rows]
            sess.send({"op": "tasks", "rid": rid, "tasks": tasks,
                       "cursor": tasks[-1]["id"] if len(tasks) == limit else None})
        elif op in ("pause", "resume"):
            name = require(msg, "queue", str)
            (core.pause if op == "pause" else core.resume)(name, self.clock())
            self._acks.append((sess, {"op": "ok", "rid": rid}))
        elif op == "queues":
            sess.send({"op": "queues", "rid": rid, "queues": self.queue_stats()})
        elif op == "workers":
            sess.send({"op": "workers", "rid": rid, "workers": [w.as_dict() for w in core.workers.values()]})
        elif op == "stats":
            sess.send({"op": "stats", "rid": rid, "stats": self.statistics()})
        elif op == "subscribe":
            sub = Subscription(
                queues=_set(optional(msg, "queues", list)), types=_set(optional(msg, "types", list)),
                ids=_set(optional(msg, "ids", list)),
            )
            sess.subscription = sub
            self.subscribers.add(sess)
            core.observed = True
            sess.send({"op": "ok", "rid": rid})
        elif op == "ping":
            sess.send({"op": "pong", "rid": rid})

    async def _answer_wait(self, sess: Session, rid: Any, tid: int, ev: trio.Event, timeout: float) -> None:
        with trio.move_on_after(timeout):
            await ev.wait()
        lst = self._waiters.get(tid)
        if lst is not None:
            lst[:] = [w for w in lst if w[2] is not ev]
            if not lst:
                del self._waiters[tid]
        try:
            task = await self.get_task(tid)
        except RunqError as exc:
            sess.send({"op": "error", "rid": rid, "code": exc.code, "message": str(exc)})
            return
        sess.send({"op": "task", "rid": rid, "task": task})

    @property
    def _store(self) -> Store:
        assert self.store is not None
        return self.store

    async def _read(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._reader_lock)

    def _fresh(self, row: tuple[Any, ...]) -> dict[str, Any]:
        """A stored row, replaced by the in-memory task when that is newer."""
        t = self.core.tasks.get(row[0]) or self.core.finished.get(row[0])
        return t.as_dict() if t is not None else Task.from_row(row).as_dict()

    async def get_task(self, task_id: int) -> dict[str, Any]:
        """Return a task as a map, from memory or the store.

        Raises:
            TaskMissing: no such task.
        """
        t = self.core.tasks.get(task_id) or self.core.finished.get(task_id)
        if t is not None:
            return t.as_dict()
        row = await self._read(self._store.get_task, task_id)
        if row is None:
            raise TaskMissing(f"no task {task_id}")
        return Task.from_row(row).as_dict()

    # ------------------------------------------------------------------ reading
    def queue_stats(self) -> list[dict[str, Any]]:
        return self.core.queue_stats()

    def statistics(self) -> dict[str, Any]:
        c = self.core.stats
        st = self._store.stats
        return {
            "uptime": self.clock() - self.stats.started_at, "version": VERSION, "pid": os.getpid(),
            "tasks_live": len(self.core.tasks), "workers": len(self.core.workers),
            "enqueued": c.enqueued, "succeeded": c.succeeded, "failed": c.failed, "dead": c.dead,
            "cancelled": c.cancelled, "lease_expiries": c.lease_expiries, "late_results": c.late_results,
            "connections": len(self.sessions), "protocol_errors": self.stats.protocol_errors,
            "store_errors": self.stats.store_errors, "commits": st.commits, "commit_batches": st.batches,
            "commit_seconds_total": st.commit_seconds_total, "recovered": self.recovered,
            "queues": self.queue_stats(),
        }


def _set(v: list[Any] | None) -> frozenset[Any] | None:
    return frozenset(v) if v is not None else None

