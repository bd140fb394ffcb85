"""The trio server: the wiring of core and store, timers, and the operations every frontend uses.

Theory of operation
-------------------
One trio process. Frontends (the TCP protocol in ``tcp.py``, the HTTP API in
``runq.app.http``) turn requests into calls of the operations layer
(``runq.app.ops.Operations``, ``self.ops``: authorisation and validation), which
calls this class's public operations (``enqueue``, ``get_task``, ``wait_task``,
``cancel``, ...), which call the ``Core``. This module starts both frontends
(``tcp`` here, ``runq.app.http`` only inside ``serve``); neither imports it. After the inputs of one read (TCP) or one request (HTTP), ``flush()``
collects the core's effects once: task rows and events go to the store's writer
thread as one ``Batch``, messages go to the worker sessions, live events to
subscribers. Enqueue acknowledgements and pause/resume answers are given from
the batch's commit callback, so nobody hears "enqueued" before the task is on
disk.

Where a batch commits: in the writer thread, or, when that thread is idle and the
batch is small, in the trio thread itself (synchronous=NORMAL only). A lone
request then costs no thread hand-off and no wake-up back (two thread wake-ups
were most of a sequential enqueue's latency: bench/README.md). In the trio
thread, the batches of one scheduling round share a commit: a connection's read
commits at once (``flush_read``) only when no other connection has input waiting
(a ``poll`` of their sockets, none of which would join that commit); else the
committer, a task woken by ``flush``, commits once every session that had input
in the round has read it and flushed. Under load, while the writer commits,
batches queue for it as before (group commit). Either way a batch commits after
every batch handed over before it, and its acknowledgements follow its commit.
A database locked by another program never blocks the loop: the committer tries
without waiting and leaves it to the writer thread, which waits.

A timer task sleeps until the core's next deadline (delayed task, lease expiry,
task timeout) and ticks it; it is woken early when a flush moves that deadline.

Leadership (runq/app/store/base.py; docs/operations.md, "Failover"): a store
that does not lead when the server starts (PostgreSQL, another server holds the
lease) makes this server a standby: it listens (TCP hellos are refused with
``standby``, HTTP answers 503 ``standby`` but for health, readiness and metrics),
asks the store to take the lease whenever it may have expired, and once it leads
recovers exactly as at a restart and serves. While serving, a watcher asks the
store whether it still leads as often as the store says; once it does not (its
lease lapsed by this server's clock, or another server's term was found) the
server steps down: it closes every connection with ``shutting_down``, writes
nothing more, and ``serve`` raises ``NotLeader``.
"""

from __future__ import annotations

import functools
import gc
import logging
import math
import os
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from ... import __version__
from ...protocol.address import format_address
from ...protocol.errors import ProtocolError
from ...protocol.messages import TaskSpec
from ..auth import AccessKeys, LoginLimiter, Principals
from ..core import FINAL_STATES, Core, IllegalTransition, Requests, State, Task, TaskMissing, Transition, WorkerInfo
from ..core.breakers import LimitError
from ..core.records import DeadFilter
from ..core.requests import Entry
from ..errors import ConfigError
from ..ops import Authenticator, Operations
from ..store import (
    Batch,
    EventRecord,
    Leadership,
    Notify,
    NotLeader,
    QueueRecord,
    Store,
    StoreError,
    TaskRecord,
    describe_db,
    open_store,
)
from ..store.principals import PrincipalStore
from .config import Clock, ServerConfig
from .session import Outbox, Session, Subscription
from .tcp import TcpFrontend

__all__ = ["VERSION", "Server", "ServerStats", "Subscriber"]

log = logging.getLogger("runq.server")
VERSION = __version__
FINAL = frozenset(s.value for s in FINAL_STATES)

Answer = list[tuple[int, bool]]
#: an enqueue's idempotency token (client id, seq), the client's ``done_below`` (docs/protocol.md 5.2) and the
#: ``digest`` of the request's tasks (runq.app.core.requests)
Token = tuple[str, int, "int | None", bytes]
#: how an enqueue request is answered: ``tell(answer, error, ctx)`` once its commit is over (error None:
#: committed); ``ctx`` is the caller's (TCP: the session and the request's rid)
Tell = Callable[[Answer, "BaseException | None", Any], None]


class Ack:
    """A request answered once the batch that carries it has committed.

    Attributes:
        created: ids of the tasks it created (forgotten if that commit fails and none has started).
        tell: called as ``tell(res, error, ctx)``.
        res, specs: for an enqueue, its answer ``[(id, created), ...]`` (the list the caller holds) and its
            specs: a unique-key hit on a task whose own creation then fails to commit is enqueued again
            (``core.commits``, which reads and changes these three).
        request: for an enqueue with an idempotency token, its entry (its row is rewritten if ``res`` changes).
        ctx: the caller's, passed to ``tell``.
    """

    __slots__ = ("created", "ctx", "request", "res", "specs", "tell")

    def __init__(self, created: list[int], tell: Tell, res: Answer | None = None, specs: list[TaskSpec] | None = None,
                 request: Entry | None = None, ctx: Any = None) -> None:
        self.created = created
        self.tell = tell
        self.res: Answer = res if res is not None else []
        self.specs: list[TaskSpec] = specs if specs is not None else []
        self.request = request
        self.ctx = ctx

def _tell_with(tell: Tell, ctx: Any, res: Answer, error: BaseException | None) -> None:
    tell(res, error, ctx)


def _token_reused(client_id: str, seq: int) -> ProtocolError:
    """The error of an enqueue whose token a request with other tasks had (docs/protocol.md section 5.2)."""
    return ProtocolError(f"enqueue: the idempotency token (client_id {client_id!r}, seq {seq}) was used by a request "
                         "with other tasks: a token names one request (two processes sharing one client object after "
                         "fork()?); nothing was enqueued", "bad_request")


def _tell_error(res: Answer, error: BaseException | None, ctx: Callable[[BaseException | None], None]) -> None:
    ctx(error)


class Subscriber(Protocol):
    """Anything that receives live events: a TCP session, an HTTP event stream."""

    subscription: Subscription | None

    def send_event(self, message: dict[str, Any]) -> None: ...


@dataclass
class ServerStats:
    """Counters of the I/O layer."""

    connections: int = 0
    protocol_errors: int = 0
    internal_errors: int = 0
    store_errors: int = 0
    flushes: int = 0
    started_at: float = 0.0


class Server:
    """The runq server. Run it with ``await nursery.start(server.serve)``.

    Args:
        config: settings.
        clock: wall clock for stored timestamps (default: follows trio's clock).
        store_factory: opens the store, called as ``runq.app.store.open_store(db, synchronous, notify)`` (the
            default, with ``lease=config.lease``) is.
    """

    def __init__(self, config: ServerConfig, clock: Callable[[], float] | None = None,
                 store_factory: Callable[[str, str, Notify], Store] | None = None) -> None:
        config.check()
        self.config = config
        #: the TLS settings of the TCP port (None: plain TCP); the HTTP API loads the same files itself
        self.tls = config.tls_context()
        self._open_store = store_factory or functools.partial(open_store, lease=config.lease)
        self._clock_arg = clock
        self.clock: Callable[[], float] = clock or time.time
        self.core = Core(config.core)
        #: enqueue answers by idempotency token (docs/protocol.md section 5.2)
        self.requests = Requests(config.idempotency_window)
        self.store: Store | None = None
        #: the store's answer when asked before serving (base.py: the server serves only as the leader)
        self.leadership: Leadership | None = None
        self.stats = ServerStats()
        self.port: int | None = None
        self.http_port: int | None = None
        self.sessions: set[Session] = set()
        #: the write rounds of every session (frames queued in a round go out in one write per session)
        self.outbox = Outbox()
        self.workers: dict[str, Session] = {}
        self.subscribers: set[Subscriber] = set()
        self.recovered = 0
        self.stopping = trio.Event()
        self.ready = False
        #: waiting for the lease another server holds (PostgreSQL): nothing is served but health and readiness
        self.standby = False
        #: why this server stepped down (it lost the lease while serving), or None
        self.stepped_down: str | None = None
        self.commit_listeners: list[Callable[[Batch, BaseException | None], None]] = []
        #: called with (rows + events written, seconds from hand-off to durable) per committed batch (/metrics)
        self.commit_observers: list[Callable[[int, float], None]] = []
        #: while non-empty, called with each worker or queue change (joined, left, draining, paused,
        #: resumed) as a message; the HTTP event streams use it
        self.change_listeners: list[Callable[[dict[str, Any]], None]] = []
        self._seen_workers: dict[str, tuple[str, WorkerInfo]] = {}
        #: set by the HTTP frontend once its requests are done after ``stopping`` (awaited, bounded, at stop)
        self.http_idle = trio.Event()
        self._acks: list[Ack] = []
        self._waiters: dict[int, list[trio.Event]] = {}
        self._rearm = trio.Event()
        self._armed = float("inf")
        self._retry_scheduled = False
        self._submitted = 0  # batches handed to the store so far
        self._committed_count = 0  # of those, how many it has answered (it answers in order)
        self._commit_seen: trio.Event | None = None  # made by a waiter, set by the next commit reported
        self._inline = False  # small batches may commit in the trio thread (set by serve)
        self._pending: list[Batch] = []  # batches for the committer task
        self._commit_soon = trio.Event()
        self._reading = False  # in flush_read: it decides itself whether to wake the committer
        self._reader_lock = trio.CapacityLimiter(1)
        self._nursery: trio.Nursery | None = None
        #: the users and API tokens as last loaded from the database, and the checker of every credential
        self.principals = Principals()
        self.authenticator = Authenticator(config.token, self.principals, None, lambda: self.clock())
        #: the principal tables (a connection of their own: runq/app/store/principals.py); set by ``serve``
        self.principal_store: PrincipalStore | None = None
        #: failed HTTP logins, by user and address (runq/app/auth/limiter.py)
        self.login_limiter = LoginLimiter()
        #: every operation a caller can ask for, authorised and validated (what TCP and HTTP call)
        self.ops = Operations(self)

    # ------------------------------------------------------------------ run
    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the store, rebuild state, listen; report the bound TCP port; run until stopped.

        Stopping: set ``self.stopping`` (or cancel). Queued writes are committed
        before the store closes.
        """
        cfg = self.config
        if self._clock_arg is None:
            self.clock = Clock()
        token = trio.lowlevel.current_trio_token()
        outbox = self.outbox

        def in_round(fn: Callable[[], None]) -> None:
            with outbox:  # (the acknowledgements of one commit: one write per session)
                fn()

        def notify(fn: Callable[[], None]) -> None:
            token.run_sync_soon(in_round, fn)

        store = await trio.to_thread.run_sync(self._open_store, cfg.db, cfg.synchronous, notify)
        self.store = store
        reported = False
        try:
            # Before anything is read back: a server that does not lead must not take the leader's running
            # tasks for crashed ones (runq/app/store/base.py). It waits as a standby instead (below).
            lead = self.leadership = await trio.to_thread.run_sync(store.leadership)
            self.authenticator.shared = self.config.token  # (as configured when serving starts; a standby checks it too)
            if lead.is_leader:
                await self._recover(store)
                await self._load_principals(store)
                store.start()
            tcp = TcpFrontend(self)
            listeners = await trio.open_tcp_listeners(cfg.port, host=cfg.host)
            self.port = listeners[0].socket.getsockname()[1]
            store.advertise(self.advertised_address())
            self.stats.started_at = self.clock()
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self.standby = not lead.is_leader
                nursery.start_soon(functools.partial(trio.serve_listeners, tcp.serve_connection, listeners,
                                                     handler_nursery=nursery))
                if cfg.http_port is not None:
                    from ..http import serve_http

                    self.http_port = await nursery.start(serve_http, self)
                if not lead.is_leader:
                    log.warning("runq %s: standby on %s:%d (HTTP %s), database %s: the active server is %s; "
                                "taking over when its lease expires", VERSION, cfg.host, self.port,
                                self.http_port if self.http_port is not None else "off", describe_db(cfg.db),
                                self.active_server())
                    task_status.started(self.port)
                    reported = True
                    if not await self._wait_for_lease(store):
                        nursery.cancel_scope.cancel()
                        return
                    await self._recover(store)
                    await self._load_principals(store)
                    store.start()
                    self.stats.started_at = self.clock()
                    self.standby = False
                    log.warning("took over the database %s (term %d): serving", describe_db(cfg.db),
                                self.leadership.term if self.leadership else 0)
                if cfg.inline_commit and store.can_commit_inline:  # (not with FULL: a commit waits for fsync)
                    nursery.start_soon(self._committer)
                    self._inline = True
                nursery.start_soon(self._timer)
                nursery.start_soon(self._pruner)
                nursery.start_soon(self._principals_loop)
                nursery.start_soon(self._watch_leadership, store)
                self.ready = True
                log.info("runq %s listening on %s:%d (HTTP %s), database %s", VERSION, cfg.host, self.port,
                         self.http_port if self.http_port is not None else "off", describe_db(cfg.db))
                if not reported:
                    task_status.started(self.port)
                await self.stopping.wait()
                self.ready = False
                for s in list(self.sessions):
                    s.close({"op": "error", "code": "shutting_down",
                             "message": "server is stopping" if self.stepped_down is None
                             else f"server lost its lease and steps down: {self.stepped_down}"})
                # (a server that lost its lease: its commits fail at once, but one stuck on a database that does
                # not answer is not waited for)
                with trio.move_on_after(math.inf if self.stepped_down is None else 1.0):
                    await self.wait_committed()
                with trio.move_on_after(1):  # let each connection write what it has queued, that frame included
                    for s in list(self.sessions):
                        await s.wait_closed()
                if self.http_port is not None:
                    with trio.move_on_after(5):  # HTTP requests finish (Hypercorn's graceful timeout is shorter)
                        await self.http_idle.wait()
                nursery.cancel_scope.cancel()
        finally:
            self._nursery = None  # (closed: a commit reported from now on starts nothing in it)
            with trio.CancelScope(shield=True):
                self._inline = False  # (the committer is gone: what it had goes to the writer)
                pending, self._pending = self._pending, []
                for batch in pending:
                    store.submit(batch)
                self.flush()
                if self.principal_store is not None:  # (not waited for long: a read left behind by a database
                    with trio.move_on_after(2):        # that stopped answering may hold its connection)
                        await trio.to_thread.run_sync(self.principal_store.close, abandon_on_cancel=True)
                await trio.to_thread.run_sync(store.close)
        if self.stepped_down is not None:
            raise NotLeader(f"this server lost the lease of database {describe_db(cfg.db)} and stepped down without "
                            f"writing: {self.stepped_down}. Another runq server serves it now (or will, once the "
                            "lease expired); started again, this one waits as a standby")

    def advertised_address(self) -> str:
        """Where clients and workers reach this server: ``ServerConfig.advertise``, else the host and the port
        bound (the machine's name for a wildcard host)."""
        if self.config.advertise:
            return self.config.advertise
        host = self.config.host
        if host in ("0.0.0.0", "::", ""):
            host = socket.gethostname()
        return format_address(host, self.port or self.config.port)

    def active_server(self) -> str:
        """The active server as this one knows it (a standby names the lease's holder)."""
        lead = self.leadership
        if lead is None:
            return "unknown"
        if lead.address:
            return f"{lead.address} ({lead.holder})"
        return lead.holder

    async def _wait_for_lease(self, store: Store) -> bool:
        """As a standby: try to take the lease whenever the store says it may have expired; return True once
        this server leads, False if it was stopped first."""
        while not self.stopping.is_set():
            lead = self.leadership
            wait = lead.check_in if lead is not None and lead.check_in is not None else 1.0
            with trio.move_on_after(wait):
                await self.stopping.wait()
            if self.stopping.is_set():
                return False
            lead = self.leadership = await trio.to_thread.run_sync(store.take_leadership)
            if lead.is_leader:
                return True
        return False

    async def _watch_leadership(self, store: Store) -> None:
        """While serving: ask the store whether it still leads, as often as it says; step down once it does
        not (its lease expired by this server's clock, or another server's term was found): stop accepting
        anything at once, then stop (``serve`` raises ``NotLeader``)."""
        while True:
            lead = store.leadership()
            if not lead.is_leader:
                self.leadership = lead
                self.stepped_down = lead.holder
                self.ready = False
                log.critical("lost the lease of database %s: stepping down without writing (%s)",
                             describe_db(self.config.db), lead.holder)
                self.stopping.set()
                return
            if lead.check_in is None:
                return  # (a store whose leadership never ends by itself: SQLite)
            await trio.sleep(lead.check_in)

    async def _recover(self, store: Store) -> None:
        rows, paused, next_id = await trio.to_thread.run_sync(store.load)
        next_event_id = await trio.to_thread.run_sync(store.next_event_id)
        now = self.clock()
        # a million long-lived objects: no cyclic GC passes while building them, and
        # frozen afterwards so later collections do not walk them again
        gc.disable()
        try:
            self.recovered = await trio.to_thread.run_sync(self.core.recover, rows, paused, next_id, now,
                                                           next_event_id)
        finally:
            gc.enable()
        gc.freeze()
        if self.recovered:
            log.warning("%d task(s) were running when the server stopped: back to ready", self.recovered)
        request_rows, next_request = await trio.to_thread.run_sync(store.load_requests)
        self.requests.recover(request_rows, next_request, now)
        # limits and breakers after the tasks (docs/limits.md, Restarts): a stored row the core refuses stops
        # the start with its reason rather than serve without a limit someone set
        limit_rows, breaker_rows = await trio.to_thread.run_sync(store.load_limits)
        try:
            self.core.recover_limits(limit_rows, breaker_rows, now)
        except LimitError as exc:
            raise StoreError(f"database {describe_db(self.config.db)}: a stored limit or breaker is not valid: {exc}") from exc
        fx = self.core.take_effects(now)
        if fx.rows or fx.new_rows or fx.events or fx.limit_rows or fx.breaker_rows or fx.limit_events:
            await trio.to_thread.run_sync(store.write_now, Batch(
                rows=fx.rows, new_rows=fx.new_rows, events=fx.events, limits=fx.limit_rows, breakers=fx.breaker_rows,
                server_events=[e.record() for e in fx.limit_events]))
        # schedules (their timers come up at once when fire times passed while the server was down: the missed
        # policy)
        self.core.recover_schedules(await trio.to_thread.run_sync(store.load_schedules))
        fx = self.core.take_effects(now)
        if fx.rows or fx.new_rows or fx.events or fx.schedule_rows:
            await trio.to_thread.run_sync(store.write_now, Batch(rows=fx.rows, new_rows=fx.new_rows,
                                                                 events=fx.events, schedule_rows=fx.schedule_rows))

    async def _load_principals(self, store: Store) -> None:
        """Open the principal tables, load the users and API tokens, and the access-token keys (the file's, or
        the one kept in the database, made on first start)."""
        ps = self.principal_store = await trio.to_thread.run_sync(store.principals)
        await self.reload_principals()
        if self.config.keys_file is not None:
            try:
                keys = AccessKeys.from_file(self.config.keys_file)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"--keys-file: {exc}") from None
        else:
            text = await trio.to_thread.run_sync(ps.set_meta_once, "access_key", AccessKeys.generate())
            keys = AccessKeys.from_text(text)
        self.authenticator.keys = keys

    async def reload_principals(self) -> bool:
        """Load the users and API tokens again if they changed in the database; True if they had."""
        ps = self.principal_store
        assert ps is not None
        # (abandon_on_cancel: a database that stopped answering must not hold a server that steps down or stops; the
        # thread left behind ends with its connection)
        version = await trio.to_thread.run_sync(ps.version, abandon_on_cancel=True)
        if version == self.principals.version and self.principals.version is not None:
            return False
        users = await trio.to_thread.run_sync(ps.users, abandon_on_cancel=True)
        tokens = await trio.to_thread.run_sync(ps.tokens, abandon_on_cancel=True)
        self.principals.load(users, tokens, version)
        return True

    async def _principals_loop(self) -> None:
        """Every ``principals_poll`` seconds, take the changes of users and tokens made in the database."""
        while not self.stopping.is_set():
            with trio.move_on_after(self.config.principals_poll):
                await self.stopping.wait()
            if self.stopping.is_set():
                return
            try:
                await self.reload_principals()
            except StoreError as exc:  # (the database is busy or gone for a moment: the last copy holds)
                log.warning("could not read users and tokens: %s", exc)

    async def wait_committed(self) -> None:
        """Wait until every batch handed to the store so far has committed (not for later ones: under a
        steady load some commit is always pending, and a reader must not wait for the load to stop)."""
        target = self._submitted
        while self._committed_count < target:
            if self._commit_seen is None:
                self._commit_seen = trio.Event()
            await self._commit_seen.wait()

    @property
    def nursery(self) -> trio.Nursery:
        """The server's nursery, for work that outlives one request (long polls)."""
        assert self._nursery is not None, "server not started"
        return self._nursery

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
        if self.change_listeners:
            self._publish_changes(fx.queue_ops)
        if fx.notices and self.subscribers:
            self._publish(fx.notices)
        acks = self._acks
        waiters = None
        if self._waiters:
            waiters = [r.task_id for r in fx.events if r.state in FINAL and r.task_id in self._waiters]
        requests = self.requests
        requests.expire(now)
        request_rows = requests.take_rows()
        requests_below = requests.take_delete()
        if (fx.rows or fx.new_rows or fx.events or fx.queue_ops or acks or request_rows or requests_below
                or fx.limit_rows or fx.breaker_rows or fx.limit_events or fx.schedule_rows):
            self._acks = []
            # (a schedule's row with the tasks its firing enqueued: one commit, the dedup of its fire times)
            batch = Batch(rows=fx.rows, new_rows=fx.new_rows, events=fx.events, queue_ops=fx.queue_ops,
                          requests=request_rows, requests_below=requests_below, limits=fx.limit_rows,
                          breakers=fx.breaker_rows,
                          server_events=[e.record() for e in fx.limit_events] if fx.limit_events else [],
                          schedule_rows=fx.schedule_rows)
            batch.on_done = functools.partial(self._committed, batch, acks, waiters, submitted=trio.current_time())
            self._hand_off(batch)
        elif waiters:
            self._wake_waiters(waiters)
        nd = self.core.next_deadline()
        if nd is not None and nd < self._armed:
            self._rearm.set()

    #: the most rows (tasks, events, tokens) of the batches the committer commits in the trio thread; larger
    #: ones go to the writer thread, where SQLite's work runs beside the loop's (bench.throughput enqueue_batch)
    INLINE_ROWS = 64

    def _hand_off(self, batch: Batch) -> None:
        """Give ``batch`` to the committer (the writer is idle, or the committer holds batches already) or
        to the writer thread (see the module docstring)."""
        self._submitted += 1
        if self._inline and (self._pending or self._committed_count == self._submitted - 1):
            self._pending.append(batch)
            if len(self._pending) == 1 and not self._reading:
                self._commit_soon.set()
        else:
            self._store.submit(batch)

    #: at most this many connections are looked at by ``flush_read`` before it commits at once
    ALONE_MAX = 64

    def flush_read(self, fd: int) -> None:
        """``flush()`` after a connection's read (TCP, in its write round), then commit what is pending at
        once if no other connection has input waiting: nobody else would join that commit in this
        scheduling round, so the committer's round is saved. Else the committer commits it once every
        connection of the round has read and flushed (group commit)."""
        self._reading = True
        try:
            self.flush()
        finally:
            self._reading = False
        if not self._pending:
            return
        if self._others_waiting(fd):
            self._commit_soon.set()
            return
        self.outbox.write()  # (what the read dispatched to workers or answered at once does not wait for the commit)
        self._commit_pending()

    def _others_waiting(self, fd: int) -> bool:
        """Whether a connection other than ``fd`` has bytes to read (or may have: too many to look at)."""
        sessions = self.sessions
        if len(sessions) > self.ALONE_MAX:
            return True
        if len(sessions) > 1:
            poller = select.poll()
            for sess in sessions:
                if sess.fd != fd and sess.fd >= 0:
                    poller.register(sess.fd, select.POLLIN)
            if poller.poll(0):
                return True
        return False

    async def _committer(self) -> None:
        """Commit what ``flush`` handed over, once the sessions of this scheduling round have read theirs."""
        while True:
            await self._commit_soon.wait()
            self._commit_soon = trio.Event()
            self._commit_pending()

    def _commit_pending(self) -> None:
        pending, self._pending = self._pending, []
        if not pending:
            return
        size = sum(len(b.rows) + len(b.new_rows) + len(b.events) + len(b.requests)
                   + (self.INLINE_ROWS if b.prune_before is not None else 0) for b in pending)
        # (in order: only when every batch handed over before these has been reported)
        with self.outbox:
            if (size > self.INLINE_ROWS or self._committed_count != self._submitted - len(pending)
                    or not self._store.commit_here(pending)):
                for batch in pending:
                    self._store.submit(batch)

    def _committed(self, batch: Batch, acks: list[Ack], waiters: list[int] | None,
                   error: BaseException | None, *, submitted: float | None = None) -> None:
        self._committed_count += 1
        if error is None and submitted is not None and self.commit_observers:
            written = len(batch.rows) + len(batch.new_rows) + len(batch.events)
            latency = trio.current_time() - submitted
            for observe in self.commit_observers:
                observe(written, latency)
        if error is not None:
            self.stats.store_errors += 1
        # Which answers are told, kept for a later commit or enqueued again, which tasks are forgotten and
        # which writes put back: the core decides (core/commits.py); this only carries it out, in its order.
        plan = self.core.settle_commit(batch, acks, self._acks, error, self._committed_count, self._submitted,
                                       self.clock())
        for ack in plan.changed:
            if ack.request is not None:
                self.requests.rewrite(ack.request)
        self._acks.extend(plan.keep)
        for ack in plan.tell:
            ack.tell(ack.res, error, ack.ctx)
            entry = ack.request
            if entry is not None and (entry.waiters or error is not None):
                for resend in self.requests.committed(entry, error):
                    resend(entry.res, error)
            elif entry is not None:
                entry.committed = True
        if plan.restore_requests:
            self.requests.restore(batch.requests)  # (after the refused ones above forgot theirs)
        if plan.retry and not self._retry_scheduled and self._nursery is not None:
            self._retry_scheduled = True
            self._nursery.start_soon(self._retry_writes)
        if plan.flush:
            self.flush()
        if waiters:
            self._wake_waiters(waiters)
        for listener in self.commit_listeners:
            listener(batch, error)
        if self._commit_seen is not None:
            self._commit_seen.set()
            self._commit_seen = None

    async def _retry_writes(self) -> None:
        await trio.sleep(0.5)
        self._retry_scheduled = False
        self.flush()

    def _wake_waiters(self, ids: list[int]) -> None:
        for tid in ids:
            for ev in self._waiters.pop(tid, ()):
                ev.set()

    def _publish_changes(self, queue_ops: list[QueueRecord]) -> None:
        """Tell ``change_listeners`` which workers joined, left or began draining, and which queues paused."""
        changes: list[dict[str, Any]] = []
        workers = self.core.workers
        seen = self._seen_workers
        if len(workers) != len(seen) or any(seen[wid][0] != w.state if wid in seen else True
                                            for wid, w in workers.items()):
            for wid, w in workers.items():
                before = seen.get(wid)
                if before is None or before[0] != w.state:
                    kind = "joined" if before is None else w.state
                    changes.append({"op": "worker", "kind": kind, "worker": w.as_dict()})
            for wid, (_, info) in seen.items():
                if wid not in workers:
                    changes.append({"op": "worker", "kind": "left", "worker": info.as_dict()})
            self._seen_workers = {wid: (w.state, w) for wid, w in workers.items()}
        for name, paused in queue_ops:
            changes.append({"op": "queue", "kind": "paused" if paused else "resumed", "queue": name})
        for message in changes:
            for listener in self.change_listeners:
                listener(message)

    def _publish(self, notices: list[tuple[EventRecord, Task]]) -> None:
        for row, task in notices:
            msg = None
            for sub in self.subscribers:
                flt = sub.subscription
                if flt is not None and flt.wants(task.queue, task.type, task.id, task.owner):
                    if msg is None:
                        msg = row.as_dict()  # (the event's id is not sent)
                        msg["op"] = "event"
                        msg["id"] = task.id
                        msg["queue"] = task.queue
                        msg["type"] = task.type
                        msg["status"] = row.state
                        if row.kind == "progress":
                            msg["progress"] = task.progress
                        if row.state in FINAL:
                            msg["result"] = task.result
                            msg["error"] = task.error
                    sub.send_event(msg)

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
            ps = self.principal_store
            if ps is not None:  # (refresh tokens past their expiry: no use to anyone)
                try:
                    await trio.to_thread.run_sync(ps.forget_refresh, self.clock(), abandon_on_cancel=True)
                except StoreError as exc:
                    log.warning("could not delete expired refresh tokens: %s", exc)
            await trio.sleep(self.config.prune_interval)

    def prune(self, before: float | None = None) -> None:
        """Ask the writer to delete tasks finished before ``before`` (default: now - retention)."""
        cutoff = before if before is not None else self.clock() - self.config.retention
        self.requests.expire(self.clock())
        batch = Batch(prune_before=cutoff, requests_below=self.requests.take_delete(force=True))
        batch.on_done = functools.partial(self._committed, batch, [], None)
        self._hand_off(batch)  # (the committer leaves it to the writer: deleting may take long)
        for tid in [t for t, task in self.core.finished.items() if (task.finished_at or 0) < cutoff]:
            del self.core.finished[tid]

    # ------------------------------------------------------------------ operations (all frontends)
    def enqueue_nowait(self, requests: list[tuple[list[TaskSpec], Token | None, Any]], tell: Tell,
                       owner: str | None = None) -> list[Answer]:
        """Enqueue the requests of one read, in order, with one call of the core; return each one's answer
        (``(id, created)`` per spec). ``tell(answer, error, ctx)`` runs for each request, with its ``ctx``, once
        its tasks are committed (or could not be).

        The caller flushes (TCP: after the whole read, so one commit serves many requests).

        Args:
            requests: per request, its specs, its idempotency token (client id, seq), the client's
                ``done_below`` (or None) and the digest of the specs (``requests.digest``), and the caller's
                ``ctx``. A token already answered is answered the same way (``tell`` at once, or when the first
                request's commit is over) and enqueues nothing, unless the digests differ: that request is
                refused (``bad_request``; its answer ``[]``); a new token is stored in the same commit as the
                tasks (docs/protocol.md section 5.2).
        """
        now = self.clock()
        known = self.requests
        answers: list[Answer] = []
        new: list[tuple[list[TaskSpec], Answer, Entry | None, Any]] = []
        flat: list[TaskSpec] = []
        for specs, token, ctx in requests:
            res: Answer = []
            entry = None
            if token is not None:
                client_id, seq, done_below, tasks = token
                if done_below is not None:
                    known.forget_below(client_id, done_below)
                first = known.get(client_id, seq)
                if first is not None:
                    if first.digest and first.digest != tasks:  # (b"": stored by a runq that kept none)
                        tell(res, _token_reused(client_id, seq), ctx)
                        answers.append(res)
                        continue
                    if first.committed:
                        tell(first.res, None, ctx)
                    else:
                        first.waiters.append(functools.partial(_tell_with, tell, ctx))
                    answers.append(first.res)
                    continue
                entry = known.add(client_id, seq, res, now, tasks)  # (its row is made at the flush: res is filled by then)
            answers.append(res)
            new.append((specs, res, entry, ctx))
            flat += specs
        if not new:
            return answers
        out = self.core.enqueue(flat, now, owner)
        acks = self._acks
        i = 0
        for specs, res, entry, ctx in new:
            n = len(specs)
            if n == 1:
                first_res = out[i]
                res.append(first_res)
                created = [first_res[0]] if first_res[1] else []
            else:
                res += out[i:i + n]
                created = [tid for tid, was_created in res if was_created]
            i += n
            acks.append(Ack(created, tell, res, specs, entry, ctx))
        return answers

    async def enqueue(self, specs: list[TaskSpec], owner: str | None = None) -> list[tuple[int, bool]]:
        """Enqueue (for ``owner``: docs/security.md) and return ``(id, created)`` per spec once committed.

        Raises:
            StoreError: the commit failed; nothing was enqueued.
        """
        done = trio.Event()
        outcome: list[BaseException | None] = []

        def tell(_: Answer, err: BaseException | None, ctx: Any) -> None:
            outcome.append(err)
            done.set()

        (res,) = self.enqueue_nowait([(specs, None, None)], tell, owner)
        self.flush()
        await done.wait()
        if outcome[0] is not None:
            raise StoreError(f"not committed, nothing was enqueued: {outcome[0]}")
        return res

    def task_now(self, task_id: int) -> dict[str, Any] | None:
        """The task as a map if it is in memory (live or recently finished), else None (``get_task`` reads
        the store)."""
        t = self.core.tasks.get(task_id) or self.core.finished.get(task_id)
        return None if t is None else t.as_dict()

    async def get_task(self, task_id: int) -> dict[str, Any]:
        """Return a task as a map, from memory or the store.

        Raises:
            TaskMissing: no such task.
        """
        t = self.core.tasks.get(task_id) or self.core.finished.get(task_id)
        if t is not None:
            return t.as_dict()
        # Not in memory: it may have just left the finished-task cache with its last change not yet written.
        self.flush()
        await self.wait_committed()
        row = await self._read(self._store.get_task, task_id)
        if row is None:
            raise TaskMissing(f"no task {task_id}")
        return Task.from_row(row).as_dict()

    async def wait_task(self, task_id: int, timeout: float) -> dict[str, Any]:
        """Return the task once it is final or ``timeout`` seconds passed (then as it is)."""
        task = await self.get_task(task_id)
        if task["state"] in FINAL:
            # answered once that state is durable, as a waiter woken by its event is (after the commit): the
            # change may still be on its way to the store
            self.flush()
            await self.wait_committed()
            return task
        if timeout <= 0:
            return task
        ev = trio.Event()
        self._waiters.setdefault(task_id, []).append(ev)
        try:
            with trio.move_on_after(timeout):
                await ev.wait()
        finally:
            lst = self._waiters.get(task_id)
            if lst is not None and ev in lst:
                lst.remove(ev)
                if not lst:
                    del self._waiters[task_id]
        return await self.get_task(task_id)

    async def cancel(self, task_id: int, actor: str | None = None) -> dict[str, Any]:
        """Cancel a queued or running task (at the request of ``actor``, whom its event names); return it.

        Raises:
            TaskMissing: no such task.
            IllegalTransition: it is already final.
        """
        try:
            task = self.core.cancel(task_id, self.clock(), "by request" if actor is None else f"by {actor}")
        except TaskMissing:
            known = await self.get_task(task_id)
            raise IllegalTransition(State(known["state"]), Transition.CANCEL) from None
        answer = task.as_dict()
        self.flush()
        return answer

    async def retry(self, task_id: int, actor: str | None = None) -> dict[str, Any]:
        """Bring a dead, cancelled or retry-waiting task back to ready now (at the request of ``actor``, whom its
        event names); return it."""
        stored: Task | None = None
        if task_id not in self.core.tasks and task_id not in self.core.finished:
            row = await self._read(self._store.get_task, task_id)
            if row is None:
                raise TaskMissing(f"no task {task_id}")
            stored = Task.from_row(row)
        answer = self.core.retry(task_id, self.clock(), stored,
                                 "manual retry" if actor is None else f"manual retry by {actor}").as_dict()  # as retried, before any dispatch
        self.flush()
        return answer

    async def task_events(self, task_id: int) -> list[dict[str, Any]]:
        """Return the task's timeline, oldest first (every event committed so far)."""
        await self.get_task(task_id)
        self.flush()
        await self.wait_committed()
        rows = await self._read(self._store.events, task_id)
        return [r.as_dict() for r in rows]

    async def list_tasks(self, *, state: str | None = None, queue: str | None = None, type: str | None = None,
                         limit: int = 100, cursor: int | None = None,
                         owner: str | None = None) -> tuple[list[dict[str, Any]], int | None]:
        """Return a page of tasks, newest first, and the cursor of the next page.

        The arguments are checked by the caller (``Operations.list``, ``inputs.check_list``).
        """
        self.flush()
        await self.wait_committed()
        rows = await self._read(functools.partial(self._store.list_tasks, state=state, queue=queue, type=type,
                                                  limit=limit, cursor=cursor, owner=owner))
        tasks = [self._fresh(r) for r in rows]
        return tasks, (tasks[-1]["id"] if len(tasks) == limit else None)

    # ------------------------------------------------------------------ dead letters (docs/dead-letters.md)
    async def dead_tasks(self, f: DeadFilter, limit: int, cursor: int | None) -> tuple[list[dict[str, Any]], int | None]:
        """A page of the dead tasks ``f`` lets through, newest first, and the cursor of the next page (None: the
        last). The arguments are checked by the caller (``Operations.dead_list``)."""
        self.flush()
        await self.wait_committed()
        rows = await self._read(functools.partial(self._store.dead_tasks, f, limit, cursor))
        tasks = [self._fresh(r) for r in rows]
        return [t for t in tasks if t["state"] == "dead"], (rows[-1].id if len(rows) == limit else None)

    async def dead_action(self, action: str, f: DeadFilter, limit: int, actor: str) -> dict[str, Any]:
        """Retry (``action`` ``"retry"``) or delete (``"delete"``) at most ``limit`` of the dead tasks ``f`` lets
        through, the oldest first, in one commit with their events and one server event naming ``actor``;
        return once committed: ``{"ids": done, "skipped": [...], "more": bool}`` (``more``: more dead tasks
        matched than ``limit``; a task skipped, retried meanwhile or its unique key held by a live task, stays).

        Raises:
            StoreError: the commit failed (the changes hold in memory and are written with the next commit).
        """
        self.flush()
        await self.wait_committed()
        rows = await self._read(functools.partial(self._store.dead_tasks, f, limit + 1, None, True))
        more = len(rows) > limit
        core, now = self.core, self.clock()
        done: list[int] = []
        skipped: list[int] = []
        verb = "retried" if action == "retry" else "deleted"
        detail = f"{verb} from the dead-letter queue by {actor}"
        for r in rows[:limit]:
            stored = None if r.id in core.tasks or r.id in core.finished else Task.from_row(r)
            try:
                if action == "retry":
                    core.retry(r.id, now, stored, detail)
                else:
                    core.delete_dead(r.id, now, stored, detail)
            except (IllegalTransition, TaskMissing):
                skipped.append(r.id)
                continue
            done.append(r.id)
        if done or skipped:
            core.audit(now, "dead" + _filter_text(f), f"dead_{verb}",
                       f"{len(done)} dead task(s) {verb}" + (f", {len(skipped)} skipped" if skipped else "")
                       + (" (more remain)" if more else "") + f": ids {_ids_text(done)}", actor)
            await self.committed_change()
        return {"ids": done, "skipped": skipped, "more": more}

    def set_paused_nowait(self, queue: str, paused: bool, tell: Callable[[BaseException | None], None]) -> None:
        """Pause or resume ``queue``; ``tell(error)`` once that is committed."""
        (self.core.pause if paused else self.core.resume)(queue, self.clock())
        self._acks.append(Ack([], _tell_error, ctx=tell))

    async def set_paused(self, queue: str, paused: bool) -> None:
        """Pause or resume ``queue`` and return once it is committed."""
        done = trio.Event()
        outcome: list[BaseException | None] = []

        def tell(err: BaseException | None) -> None:
            outcome.append(err)
            done.set()

        self.set_paused_nowait(queue, paused, tell)
        self.flush()
        await done.wait()
        if outcome[0] is not None:
            raise StoreError(str(outcome[0]))

    async def committed_change(self) -> None:
        """Flush what the core changed (a limit, a breaker, a schedule) and return once that is committed (as ``set_paused``).

        Raises:
            StoreError: the commit failed (the change holds in memory and is written again with the next commit).
        """
        done = trio.Event()
        outcome: list[BaseException | None] = []

        def tell(err: BaseException | None) -> None:
            outcome.append(err)
            done.set()

        self._acks.append(Ack([], _tell_error, ctx=tell))
        self.flush()
        await done.wait()
        if outcome[0] is not None:
            raise StoreError(str(outcome[0]))

    async def server_events(self, since: int | None, limit: int) -> list[Any]:
        """The stored events of no task (``Store.server_events``), every change committed so far included."""
        self.flush()
        await self.wait_committed()
        return list(await self._read(functools.partial(self._store.server_events, since=since, limit=limit)))

    def drain_worker(self, worker_id: str) -> dict[str, Any]:
        """Ask a worker to finish its running tasks, hand back the rest and leave.

        Raises:
            KeyError: no such worker.
        """
        self.core.drain_worker(worker_id, self.clock())
        self.flush()
        return self.core.workers[worker_id].as_dict()

    def subscribe(self, subscriber: Subscriber) -> None:
        """Start sending live events to ``subscriber`` (filtered by its ``subscription``).

        Raises:
            ProtocolError: ``busy``, when ``max_subscribers`` others are subscribed already.
        """
        if subscriber not in self.subscribers:
            self.check_subscriber_room()
        self.subscribers.add(subscriber)
        self.core.observed = True

    def check_subscriber_room(self) -> None:
        """Raise ``ProtocolError`` ``busy`` when ``max_subscribers`` are subscribed already."""
        if len(self.subscribers) >= self.config.max_subscribers:
            raise ProtocolError(f"{len(self.subscribers)} live event subscribers already (the server's"
                                " max_subscribers); try again later", "busy")

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)
        self.core.observed = bool(self.subscribers)

    @property
    def _store(self) -> Store:
        assert self.store is not None
        return self.store

    async def _read(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._reader_lock)

    def _fresh(self, row: TaskRecord) -> dict[str, Any]:
        """A stored task, replaced by the in-memory task when that is newer."""
        t = self.core.tasks.get(row.id) or self.core.finished.get(row.id)
        return t.as_dict() if t is not None else Task.from_row(row).as_dict()

    # ------------------------------------------------------------------ reading
    def queue_stats(self) -> list[dict[str, Any]]:
        return self.core.queue_stats()

    def task_types(self) -> list[dict[str, Any]]:
        """The task types the connected workers announced (``Core.task_types``)."""
        return self.core.task_types()

    def worker_list(self) -> list[dict[str, Any]]:
        return [w.as_dict() for w in self.core.workers.values()]

    def statistics(self) -> dict[str, Any]:
        c = self.core.stats
        st = self._store.stats
        return {
            "uptime": self.clock() - self.stats.started_at, "version": VERSION, "pid": os.getpid(),
            "tasks_live": len(self.core.tasks), "workers": len(self.core.workers),
            "enqueued": c.enqueued, "succeeded": c.succeeded, "failed": c.failed, "dead": c.dead,
            "cancelled": c.cancelled, "lease_expiries": c.lease_expiries, "late_results": c.late_results,
            "coalesced": c.coalesced, "connections": len(self.sessions), "protocol_errors": self.stats.protocol_errors,
            "internal_errors": self.stats.internal_errors,
            "store_errors": self.stats.store_errors, "commits": st.commits, "commit_batches": st.batches,
            "commit_seconds_total": st.commit_seconds_total, "recovered": self.recovered,
            "queues": self.queue_stats(),
        }


def _filter_text(f: DeadFilter) -> str:
    """A dead-letter filter for a server event's scope: ``[queue=mail,type=send]`` (empty: every dead task)."""
    parts = [f"{k}={v!r}" if k == "error" else f"{k}={v}" for k, v in f._asdict().items() if v is not None]
    return f"[{','.join(parts)}]" if parts else ""


def _ids_text(ids: list[int]) -> str:
    """Ids for a server event's detail: all of them up to 20, else the first and last 10 around a count."""
    if len(ids) <= 20:
        return ",".join(map(str, ids)) or "none"
    return f"{','.join(map(str, ids[:10]))},...({len(ids) - 20} more)...,{','.join(map(str, ids[-10:]))}"
