"""The worker SDK: register handlers, join a server, run tasks by credit.

Theory of operation
-------------------
A ``Worker`` keeps one connection to the server (reconnecting with backoff when
it drops). It grants the server credit for ``concurrency + prefetch`` tasks;
``concurrency`` runner tasks take leased tasks from a local channel and run
their handler inside a cancel scope with the task's timeout. Results are
batched: every finished task is appended to one list that the sender writes as
a single ``done`` frame, carrying the credit freed by those tasks.

Handlers are async functions (run on the worker's event loop: asyncio by
default, trio with ``backend="trio"``, through anyio) or plain functions (run in
a thread). A typed task (``runq.task``) is called with the arguments its
payload maps; a handler registered by type name takes the whole payload. Either
gets the ``TaskContext`` through a parameter annotated ``TaskContext`` or named
``ctx``, by keyword (``TaskDef.arguments`` builds every call). Raising ``Retry(delay)`` asks for a retry after ``delay`` seconds; any other
exception fails the attempt with its traceback, cut to start at the user's code
(``tracebacks.format_failure``). Every finished task is logged on
``runq.worker.task`` (see ``logs``).

Timeouts: an attempt runs in a cancel scope with its deadline. An async handler
that blocks its event loop cannot be cancelled, so a run that *returns* past its
deadline is a timeout too; a watcher task notes how long the loop went without
running (``_watch_loop``), and the timeout's error says so when the loop was
blocked.

Leases: the server takes a worker's leases back after ``lease_timeout`` seconds
without a message from it. A worker that went half that long without sending (its
process paused, its loop blocked) may hold prefetched tasks whose leases are
gone and already given to others: before it starts one it sends a ``ping`` and
waits for the ``pong``; whatever the server sent before (a ``cancel``, the
``lease_expired`` error and the close) is read first (``_confirm_leases``).

Reconnecting: the servers given (several, comma-separated) are tried in order,
the one that welcomed the worker last first; an address that refuses the
connection or answers the hello with a transient error (``standby``: the
standby of a failover pair, docs/operations.md) moves on to the next one at
once. After a failed round the worker waits with an exponential backoff
(``Backoff``), which starts again from its first step after a session that worked.

Stopping (SIGINT/SIGTERM, ``stop()`` or a ``drain`` from the server): take no
more tasks, hand back the ones not started (a ``release``, sent even when there
is nothing to hand back: it tells the server to lease this worker nothing more),
let running ones finish within ``grace`` seconds, then cancel and hand back the
rest.

Every result names the task's ``lease`` (the number of that dispatch), not its
attempt: the server accepts a result only for the lease it holds now.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import signal
import socket
import ssl
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import anyio
import anyio.abc
import anyio.from_thread
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .address import format_address, server_addresses, server_token
from .calls import TRANSIENT_HELLO_ERRORS, Backoff, hello_message
from .errors import (
    ConnectionClosed,
    NotRunqServer,
    ProtocolError,
    RemoteError,
    RunqError,
    TLSError,
    Unauthorized,
    error_for_code,
    looks_like,
)
from .frames import DEFAULT_MAX_FRAME, DEFAULT_MAX_REPLY, Connection, reply_limit
from .limits import parse_rate
from .messages import check_labels
from .retry_policy import RetryPolicy, error_type_names
from .tasks import BadArguments, BatchItem, TaskDef, TaskOptions, tasks_in
from .tls import TLSOption, client_context, wrap_stream
from .tracebacks import format_failure, loop_hint
from .values import decode_value, encode_value

__all__ = ["BACKENDS", "Backoff", "HelloRefused", "Retry", "TaskContext", "Worker"]

#: Event loops a worker runs its async handlers on; the first is the default (most async libraries a
#: handler calls, HTTP clients and database drivers, are written for asyncio).
BACKENDS = ("asyncio", "trio")

#: Answers to a worker's hello that trying again cannot change (its hello itself is wrong).
_REFUSED_FOR_GOOD = frozenset({"bad_message", "bad_frame", "version", "unknown_op", "hello_required",
                               "tls_required"})


class HelloRefused(RemoteError):
    """The server refused this worker's hello for a reason that reconnecting cannot change (e.g. no
    queue, a concurrency below 1, no protocol version in common): ``Worker.run`` raises it."""

log = logging.getLogger("runq.worker")
#: One line per finished task (see ``logs``): its own logger, so that it can be turned down alone.
task_log = logging.getLogger("runq.worker.task")

#: Room kept in a frame for everything around the results (op, ids, lease numbers, msgpack headers).
_FRAME_SLACK = 4096


#: The longest ``Retry`` delay the protocol carries (``retry_in``, docs/protocol.md: under ten years).
MAX_RETRY_DELAY = 10 * 365 * 86400
#: The largest handler retry limit the protocol carries (a ``fail``'s ``retries``).
MAX_RETRIES = 1000
#: Threads of sync handlers that timed out but have not returned yet, beyond one thread per runner.
ABANDONED_THREADS = 40
#: How often the event-loop watcher runs, and the stall (seconds without it running) logged as a blocked loop.
LOOP_TICK = 0.1
LOOP_BLOCKED = 0.5


class Retry(Exception):
    """Raise in a handler to ask for a retry after ``delay`` seconds (counts as an attempt)."""

    def __init__(self, delay: float = 0.0, reason: str = "") -> None:
        delay = float(delay)
        if not 0 <= delay < MAX_RETRY_DELAY:  # (NaN fails both): the server would refuse the report
            raise ValueError(f"Retry: delay must be >= 0 seconds and under ten years, got {delay}")
        super().__init__(reason)
        self.delay = delay


class TaskContext:
    """What a handler may know and do about the task it runs."""

    __slots__ = (
        "_thread",
        "_worker",
        "attempt",
        "id",
        "lease",
        "max_retries",
        "priority",
        "queue",
        "timeout",
        "type",
    )

    def __init__(self, worker: Worker, task: dict[str, Any]) -> None:
        self.id: int = task["id"]
        self.type: str = task["type"]
        self.queue: str = task.get("queue", "default")
        self.attempt: int = task["attempt"]
        self.lease: int = task["lease"]
        self.max_retries: int = task.get("max_retries", 0)
        self.timeout: float = task.get("timeout") or math.inf
        self.priority: int = task.get("priority", 0)
        self._worker = worker
        self._thread = threading.get_ident()

    def progress(self, value: Any) -> None:
        """Report progress (any msgpack value: a fraction, a dict...). Safe from a thread."""
        self._worker._queue_msg({"op": "progress", "id": self.id, "lease": self.lease,
                                 "value": encode_value(value)}, self._thread)


class Worker:
    """A runq worker.

    Args:
        queues: queue names to take tasks from (default: the queues of ``tasks``, else ``default``).
        concurrency: tasks run at once.
        prefetch: extra tasks leased ahead to keep runners busy (default: ``concurrency``, or the largest
            ``max_size`` of its batched task types when that is more: a batch needs that much credit).
        name: shown in the dashboard (default: host-pid).
        grace: seconds running tasks get to finish when stopping.
        tasks: task definitions (``runq.task``) to run; more with ``register`` or ``include``.
        labels: what it offers for routing (``{"region": "eu"}``): a task that ``requires`` labels is given
            only to a worker that has them all (docs/routing.md).
    """

    def __init__(self, queues: list[str] | tuple[str, ...] | None = None, concurrency: int = 4,
                 prefetch: int | None = None, name: str | None = None, grace: float = 30.0,
                 tasks: Iterable[TaskDef[Any, Any]] = (), labels: dict[str, str] | None = None) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        try:
            self.labels = check_labels(labels or {}, "Worker: labels")
        except ProtocolError as exc:
            raise ValueError(str(exc)) from None
        self.handlers: dict[str, TaskDef[Any, Any]] = {}
        for t in tasks:
            self.register(t)
        if queues is None:
            queues = list(dict.fromkeys(t.options.queue or "default" for t in self.handlers.values())) or ["default"]
        if not queues or not all(isinstance(q, str) and q for q in queues):
            raise ValueError("queues must be a non-empty list of non-empty names")
        self.queues = list(queues)
        self.concurrency = concurrency
        self.prefetch = concurrency if prefetch is None else prefetch
        self._prefetch_given = prefetch is not None
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.grace = grace
        self.worker_id: str | None = None
        self.completed = 0
        self.failed = 0
        self._stop = threading.Event()
        self._stop_ev: anyio.Event | None = None
        self._out: list[dict[str, Any]] = []
        self._results: list[list[Any]] = []
        self._max_frame = DEFAULT_MAX_FRAME  # the server's, from its welcome
        self._credit = 0
        self._wake: anyio.Event | None = None
        self._scopes: dict[int, tuple[int, anyio.CancelScope]] = {}
        #: the tasks of the batches running now: task id -> (lease, the batch's cancel scope) (docs/batching.md)
        self._batch_members: dict[int, tuple[int, anyio.CancelScope]] = {}
        self._threads: anyio.CapacityLimiter | None = None
        self._buffered: dict[int, dict[str, Any]] = {}
        self._running: set[int] = set()
        self._loop_thread = 0
        self._token: anyio.lowlevel.EventLoopToken | None = None
        self.connected = False
        self.sessions = 0  # sessions that got as far as the server's welcome
        self._preferred = 0  # index of the address that welcomed this worker last (tried first)
        # runs that may outlive their session (welcome ``reclaim``): task id -> (attempt, lease, worker id of
        # the session that started it), while running or while its report is not written; reports not written
        self._reclaim = 0.0
        self._info: dict[int, tuple[int, int, str | None]] = {}
        self._unsent: set[int] = set()
        self._carry_epoch = 0
        self._fatal: RunqError | None = None
        self._run_tg: anyio.abc.TaskGroup | None = None
        self._runner_scope: anyio.CancelScope | None = None
        self._send: MemoryObjectSendStream[Any]
        self._receive: MemoryObjectReceiveStream[Any]
        #: an operator drained it (``runq drain``): it left for good (a supervisor does not start it again)
        self.drained = False
        self._backend = "asyncio"
        # leases (see the module doc): when a frame last went out, and whether a gap since may have cost them
        self._lease_timeout = 10.0
        self._last_sent = 0.0
        self._leases_doubtful = False
        self._pong: anyio.Event | None = None
        self._ping_rid = 0
        # the event-loop watcher's last run, and the recent stalls it saw: (start, end) in anyio time
        self._now: Callable[[], float] = anyio.current_time  # the loop's clock (anyio's deadlines), set by run()
        self._loop_seen = 0.0
        self._loop_stalls: deque[tuple[float, float]] = deque(maxlen=32)
        self._tls: ssl.SSLContext | None = None  # (set by run: its tls argument)

    # ------------------------------------------------------------------ registration
    def task(self, type: str | None = None, *, timeout: float | None = None, retries: int | None = None,
             retry_policy: RetryPolicy | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register the decorated function as the handler of ``type`` (default: its name), taking the
        task's whole payload as its first argument (for typed tasks whose payload is a map of arguments,
        use ``runq.task`` and ``register``).

        Args:
            timeout: seconds an attempt may run on this worker (the smaller of this
                and the task's own timeout applies).
            retries: retries after a failure, overriding the task's own setting.
            retry_policy: the type's retry policy (``runq.RetryPolicy``, docs/tasks.md), sent in the hello.
        """

        def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.register(type or fn.__name__, fn, timeout=timeout, retries=retries, retry_policy=retry_policy)
            return fn

        return deco

    def register(self, type: str | TaskDef[Any, Any], fn: Callable[..., Any] | None = None, *,
                 timeout: float | None = None, retries: int | None = None,
                 retry_policy: RetryPolicy | None = None) -> None:
        """Register a task definition (``register(send_email)``), or ``fn`` as the handler of the type name
        ``type``, taking the whole payload (``register("resize", resize)``).

        The handler gets the ``TaskContext`` through a parameter annotated ``TaskContext`` or named ``ctx``.

        Raises:
            ValueError: ``retries`` outside 0..1000 (the server would refuse the handler's reports), or
                another handler already has this type.
        """
        if isinstance(type, TaskDef):
            if fn is not None or timeout is not None or retries is not None or retry_policy is not None:
                raise TypeError("register(task): its options are in its definition (task.with_options(...))")
            definition = type
        else:
            if fn is None:
                raise TypeError("register(type, fn): the handler function is missing")
            if retries is not None and not 0 <= retries <= MAX_RETRIES:
                raise ValueError(f"retries must be between 0 and {MAX_RETRIES}, got {retries}")
            definition = TaskDef(fn, type, TaskOptions(timeout=timeout, retries=retries, retry_policy=retry_policy),
                                 takes_payload=True)
        known = self.handlers.get(definition.type)
        if known is not None and known.fn is not definition.fn:
            raise ValueError(f"task type {definition.type!r} has a handler already ({known.fn!r})")
        self.handlers[definition.type] = definition

    def include(self, *sources: Any) -> None:
        """Register task definitions: each source is a ``TaskDef``, an iterable of them, or a module (all the
        definitions it holds)."""
        for source in sources:
            if isinstance(source, TaskDef):
                self.register(source)
            elif isinstance(source, Iterable) and not isinstance(source, (str, bytes)):
                self.include(*source)
            else:
                for t in tasks_in(source):
                    self.register(t)

    # ------------------------------------------------------------------ running
    def stop(self) -> None:
        """Begin a graceful stop (safe from any thread or a signal handler)."""
        self._stop.set()
        ev = self._stop_ev
        if ev is not None:
            if threading.get_ident() == self._loop_thread:
                ev.set()
            else:
                try:
                    anyio.from_thread.run_sync(ev.set, token=self._token)
                except Exception:  # noqa: BLE001, S110 - the loop is gone: run() sees _stop when it starts again
                    pass

    def run_sync(self, address: str | Sequence[str] | None = None, *, token: str | None = None,
                 backend: str = "asyncio", handle_signals: bool = True, tls: TLSOption = None) -> None:
        """Run until stopped (blocking): ``run`` under ``anyio.run`` with ``backend``.

        Args:
            address: see ``run``.
            token: see ``run``.
            backend: the event loop async handlers run on: ``"asyncio"`` (the default: asyncio libraries
                work in handlers) or ``"trio"`` (for handlers written with trio).
            handle_signals: stop gracefully on SIGINT and SIGTERM.
            tls: see ``run``.
        """
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
        anyio.run(functools.partial(self.run, address, token=token, handle_signals=handle_signals, tls=tls),
                  backend=backend)

    async def run(self, address: str | Sequence[str] | None = None, *, token: str | None = None,
                  handle_signals: bool = False, max_backoff: float = 5.0,
                  backoff: Backoff | None = None, tls: TLSOption = None) -> None:
        """Join a server and work until stopped; reconnect with backoff.

        Args:
            address: ``HOST:PORT``, several comma-separated (or a sequence): tried in order at every
                (re)connection; ``None`` reads ``RUNQ_SERVER`` (default ``127.0.0.1:7700``).
            token: the server's token; ``None`` reads ``RUNQ_TOKEN``.
            handle_signals: stop gracefully on SIGINT and SIGTERM.
            max_backoff: the longest wait between two rounds of connection attempts.
            backoff: the reconnection delays (default: ``Backoff(0.05, max_backoff)``).
            tls: TLS to the server, as ``Client``'s (docs/tls.md): ``True``, a CA file, an ``ssl.SSLContext``,
                ``False``, or ``None`` for ``RUNQ_TLS_CA`` / ``RUNQ_TLS`` (default: plain TCP).

        Raises:
            Unauthorized: the server refused the token (not retried).
            HelloRefused: the server refused the hello itself (not retried).
            NotRunqServer: before any session worked, the address answered like another program (an HTTP
                server...); after one, this is logged and retried like a lost connection.
            TLSError: as ``NotRunqServer``: the TLS handshake failed (a certificate not trusted, a server
                without TLS), or ``tls`` names a CA file that cannot be read.
            ValueError: a malformed address.
        """
        addresses = server_addresses(address)
        token = server_token(token)
        self._tls = client_context(tls)
        delays = backoff if backoff is not None else Backoff(min(0.05, max_backoff), max_backoff)
        self._stop_ev = anyio.Event()
        # a thread for every runner (anyio's default limiter, shared, holds 40: with a higher concurrency, sync
        # handlers waited for a thread while their timeout ran), plus 40 for abandoned threads (a sync handler
        # past its timeout keeps running, and keeps its token, until it returns)
        self._threads = anyio.CapacityLimiter(self.concurrency + ABANDONED_THREADS)
        self._loop_thread = threading.get_ident()
        self._token = anyio.lowlevel.current_token()
        self._backend = _current_backend()
        self._now = _loop_clock(self._backend)
        if self._stop.is_set():
            self._stop_ev.set()
        where = ",".join(format_address(h, p) for h, p in addresses)
        # the runners and their channel outlive a session: a run may go on across a lost connection (reclaim)
        self._send, self._receive = anyio.create_memory_object_stream[Any](math.inf)  # (a task's map, or a batch's list)
        with self._send, self._receive:
            await self._run(addresses, token, delays, where, handle_signals)
        if self._fatal is not None:
            fatal, self._fatal = self._fatal, None
            raise fatal

    async def _run(self, addresses: list[tuple[str, int]], token: str | None, delays: Backoff, where: str,
                   handle_signals: bool) -> None:
        fatal: RunqError | None = None  # raised by ``run`` once the task group is closed (not inside a group)
        assert self._stop_ev is not None
        async with anyio.create_task_group() as tg:
            self._run_tg = tg
            if handle_signals:
                tg.start_soon(self._signals)
            tg.start_soon(self._watch_loop)
            await tg.start(self._runners)
            try:
                while not self._stop.is_set():
                    sessions = self.sessions
                    try:
                        await self._session(addresses, token)
                    except (Unauthorized, HelloRefused) as exc:
                        fatal = exc
                        break
                    except (OSError, ConnectionClosed, ProtocolError, RunqError, anyio.EndOfStream,
                            anyio.BrokenResourceError) as exc:
                        if isinstance(exc, (NotRunqServer, TLSError)) and self.sessions == 0:
                            fatal = exc  # pointed at another program (the HTTP port?) from the start
                            break
                        if self._stop.is_set():
                            break
                        if self.sessions != sessions:
                            delays.reset()  # that session worked: this is a new outage, not a longer one
                        delay = delays.next()
                        log.warning("connection to %s failed (%s); retrying in %.2fs", where, exc, delay)
                    else:
                        delays.reset()
                        delay = delays.next()
                    with anyio.move_on_after(delay):
                        await self._stop_ev.wait()
            finally:
                tg.cancel_scope.cancel()
        self._fatal = fatal

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as sigs:
            async for sig in sigs:
                log.info("signal %s: stopping gracefully (grace %.0fs)", sig, self.grace)
                self.stop()

    async def _watch_loop(self) -> None:
        """Note when the event loop went ``LOOP_BLOCKED`` seconds or more without running this task: a handler
        blocked it (a blocking call in async code). Logged, and named in the error of a timeout it caused."""
        now = self._loop_seen = self._now()
        while True:
            await anyio.sleep(LOOP_TICK)
            before, now = now, self._now()
            self._loop_seen = now
            stall = now - before - LOOP_TICK
            if stall >= LOOP_BLOCKED:
                self._loop_stalls.append((before + LOOP_TICK, now))
                log.warning("the event loop was blocked for at least %.2fs: a handler made a blocking call in async code "
                            "(time.sleep, blocking I/O, CPU-bound work)? No other task, heartbeat or timeout "
                            "could run meanwhile", stall)

    def _loop_blocked(self, start: float, now: float) -> float:
        """Seconds the event loop was stalled between ``start`` and ``now`` (a stall still going on counts)."""
        blocked = sum(min(end, now) - max(begin, start) for begin, end in self._loop_stalls
                      if end > start and begin < now)
        current = now - self._loop_seen - LOOP_TICK  # the watcher has not run since: stalled right now?
        if current >= LOOP_BLOCKED:
            blocked += current
        return blocked

    async def _connect(self, addresses: list[tuple[str, int]]) -> tuple[anyio.abc.SocketStream, str, int]:
        """Connect to the first of ``addresses`` that accepts, in order."""
        errors: list[str] = []
        for host, port in addresses:
            try:
                return await anyio.connect_tcp(host, port), host, port
            except OSError as exc:
                errors.append(f"{format_address(host, port)}: {exc}")
        raise OSError("; ".join(errors))

    async def _session(self, addresses: list[tuple[str, int]], token: str | None) -> None:
        """One session with the first of ``addresses`` that welcomes this worker, the one that did last tried
        first: an address that refuses the connection, or a server that answers the hello with a transient
        error (a standby of a failover pair, a server stopping) moves on to the next (docs/operations.md)."""
        n = len(addresses)
        errors: list[BaseException] = []
        for i in range(n):
            index = (self._preferred + i) % n
            begun = self.sessions
            try:
                await self._session_at([addresses[index]], token)
            except (OSError, RemoteError) as exc:
                transient = isinstance(exc, OSError) or (exc.code in TRANSIENT_HELLO_ERRORS
                                                         and not isinstance(exc, (Unauthorized, HelloRefused)))
                if self.sessions != begun or not transient or i == n - 1 and not errors:
                    raise
                errors.append(exc)
                log.info("%s: %s; trying the next address", format_address(*addresses[index]), exc)
                continue
            finally:
                if self.sessions != begun:
                    self._preferred = index
            return
        raise ConnectionClosed("no server welcomed this worker: " + "; ".join(str(e) for e in errors))

    async def _session_at(self, addresses: list[tuple[str, int]], token: str | None) -> None:
        conn = Connection(DEFAULT_MAX_REPLY)  # (the server's own bound, from its welcome, once it is read)
        stream: anyio.abc.ByteStream
        stream, host, port = await self._connect(addresses)
        if self._tls is not None:
            with anyio.fail_after(10):  # (as the hello)
                stream = await wrap_stream(stream, self._tls, host, format_address(host, port))
        async with stream:
            hello = hello_message("worker", token) | {
                "queues": self.queues, "concurrency": self.concurrency, "name": self.name,
                "types": sorted(self.handlers), "type_options": self._type_options(),
            }
            if self.labels:
                hello["labels"] = self.labels
            if self._info:  # (runs of a lost session, for the server to take back: docs/operations.md)
                hello["held"] = [[tid, a, lease, wid] for tid, (a, lease, wid) in self._info.items() if wid]
            schedules = [spec.entry() for d in self.handlers.values() for spec in d.schedule_specs()]
            if schedules:  # (the schedules its tasks declare: the server adds them as the worker joins)
                hello["schedules"] = schedules
            await stream.send(conn.send(hello))
            welcome = None
            answer = b""  # the peer's first bytes: what it is, when it is not a runq server
            with anyio.fail_after(10):
                while welcome is None:
                    try:
                        welcome = conn.next_message()
                    except ProtocolError as exc:  # (an HTTP answer reads as a frame of 1213486160 bytes)
                        raise NotRunqServer(format_address(host, port), answer) from exc
                    if welcome is None:
                        try:
                            data = await stream.receive(65536)
                        except anyio.EndOfStream:
                            if looks_like(answer):
                                raise NotRunqServer(format_address(host, port), answer) from None
                            raise
                        answer += data[:max(0, 64 - len(answer))]
                        conn.receive_data(data)
            if welcome["op"] not in ("welcome", "error"):
                raise NotRunqServer(format_address(host, port), answer)
            if welcome["op"] == "error":
                code, message = str(welcome.get("code")), str(welcome.get("message"))
                if code in _REFUSED_FOR_GOOD:
                    raise HelloRefused(code, message)
                raise error_for_code(code, message)
            self.worker_id = welcome.get("worker_id")
            self._lease_timeout = float(welcome.get("lease_timeout", 10.0))
            heartbeat = float(welcome.get("heartbeat", self._lease_timeout / 3))
            self._max_frame = int(welcome.get("max_frame", DEFAULT_MAX_FRAME))
            conn.max_frame = reply_limit(welcome)  # (a `tasks` frame is at most the server's max_reply)
            self._last_sent = self._now()
            self._leases_doubtful = False
            self._pong = None
            self.connected = True
            self.sessions += 1
            log.info("worker %s joined %s:%d (queues %s, concurrency %d)", self.worker_id, host, port,
                     ",".join(self.queues), self.concurrency)
            self._reclaim = float(welcome.get("reclaim", 0) or 0)
            taken = welcome.get("reclaimed")
            self._carry_epoch += 1  # (what ran across the lost connection is settled here: taken back or stopped)
            self._settle_carried(set(taken) if isinstance(taken, list) else set())
            self._out = [m for m in self._out if m.get("op") == "fail" and m.get("id") in self._info]
            self._results = [r for r in self._results if r[0] in self._info]
            self._buffered = {}
            self._wake = anyio.Event()
            self._credit = 0
            # (runs taken back hold their runner; a batched type raises the prefetch: docs/batching.md)
            credit = self.concurrency + self._prefetch() - len(self._running)
            if credit > 0 or not self._running:
                self._queue_msg({"op": "credit", "n": credit})
            elif self._out or self._results:
                self._wake.set()
            lost = anyio.Event()
            over = anyio.Event()
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._sender, stream, conn, lost)
                    tg.start_soon(self._heartbeat, heartbeat)
                    tg.start_soon(self._reader, stream, conn, self._send, lost)
                    tg.start_soon(self._watch_stop, self._send, lost, over)
                    await over.wait()
                    # stopping (the runners are done) or lost: hand back what is left, flush, leave
                    await self._flush_now(stream, conn, lost)
                    tg.cancel_scope.cancel()
            finally:
                self.connected = False
                if self._pong is not None:
                    self._pong.set()  # (its waiters are cancelled with the runners; nothing may wait on it)
                    self._pong = None
                if not self._stop.is_set():
                    self._session_lost()
            if not self._stop.is_set():
                raise ConnectionClosed("connection to server lost")

    def _prefetch(self) -> int:
        """Credit beyond ``concurrency``: ``prefetch``, raised to the largest batch when it was not given."""
        sizes = [d.options.batch.max_size for d in self.handlers.values() if d.options.batch is not None]
        if self._prefetch_given or not sizes:
            return self.prefetch
        return max(self.prefetch, *sizes)
    async def _runners(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The ``concurrency`` runners, for the whole of ``run`` (a graceful stop cancels them: ``_watch_stop``)."""
        async with anyio.create_task_group() as runners:
            self._runner_scope = runners.cancel_scope
            for _ in range(self.concurrency):
                runners.start_soon(self._runner, self._receive)
            task_status.started()

    def _session_lost(self) -> None:
        """The connection is lost (not a stop): what was leased but not started is dropped; what runs is
        stopped, unless the server said it takes runs back after a restart (welcome ``reclaim``): then they go
        on for that long, for the next session to report (docs/operations.md, "Failover")."""
        self._buffered.clear()
        while True:
            try:
                self._receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                break
        if self._reclaim > 0 and self._info and self._run_tg is not None:
            self._carry_epoch += 1
            log.info("connection lost: %d task(s) go on for up to %gs, for the server to take them back", len(self._info),
                     self._reclaim)
            self._run_tg.start_soon(self._carry_expires, self._carry_epoch, self._reclaim)
            return
        self._info.clear()
        self._settle_carried(set())
        self._results = []

    def _settle_carried(self, taken: set[Any]) -> None:
        """Runs of an earlier session: those the server took back (``taken``) are this session's now; the
        others are stopped, and their reports dropped (the server runs them again: at-least-once)."""
        for tid, (attempt, lease, wid) in list(self._info.items()):
            if tid in taken:
                self._info[tid] = (attempt, lease, self.worker_id)
                continue
            del self._info[tid]
            self._unsent.discard(tid)
            sc = self._scopes.pop(tid, None)
            if sc is not None:
                sc[1].cancel()
        for tid, (_, scope) in list(self._scopes.items()):  # (a run that kept nothing to be taken back by)
            if tid not in self._info:
                del self._scopes[tid]
                scope.cancel()
        for tid, (_, scope) in list(self._batch_members.items()):  # (a batch's call: stopped with any of its
            if tid not in self._info:                               # tasks not taken back, docs/batching.md)
                del self._batch_members[tid]
                scope.cancel()

    async def _carry_expires(self, epoch: int, after: float) -> None:
        await anyio.sleep(after)
        if self._carry_epoch == epoch and not self.connected:
            log.warning("no server took back %d task(s) within %gs: stopping them (they run again elsewhere)",
                        len(self._info), after)
            self._settle_carried(set())
            self._results = [r for r in self._results if r[0] in self._info]
            self._out = [m for m in self._out if m.get("op") == "fail" and m.get("id") in self._info]

    def _type_options(self) -> dict[str, dict[str, Any]]:
        """What each handler's definition sets (hello ``type_options``): the server gives it to a task enqueued
        by that type's name without it (docs/tasks.md)."""
        out: dict[str, dict[str, Any]] = {}
        for type_, d in self.handlers.items():
            o = d.options
            sets: dict[str, Any] = {k: v for k, v in (("queue", o.queue), ("priority", o.priority), ("timeout", o.timeout),
                                      ("retries", o.retries), ("concurrency", o.concurrency)) if v is not None}
            if o.rate_limit is not None:  # (the type's limit: docs/limits.md, "From task definitions")
                sets["rate"], sets["period"] = parse_rate(o.rate_limit)
            if o.retry_policy is not None:  # (the type's layer of its tasks' retry policy: docs/tasks.md)
                sets["retry_policy"] = o.retry_policy.wire()
            if o.requires:  # (for tasks enqueued by name without requires: docs/routing.md)
                sets["requires"] = dict(o.requires)
            if o.batch is not None:  # (docs/batching.md)
                sets["batch"] = {"max_size": o.batch.max_size, "max_wait": o.batch.max_wait}
            if sets:
                out[type_] = sets
        return out

    async def _watch_stop(self, send: MemoryObjectSendStream[Any], lost: anyio.Event,
                          over: anyio.Event) -> None:
        assert self._stop_ev is not None
        async with anyio.create_task_group() as tg:
            async def on_lost() -> None:
                await lost.wait()
                tg.cancel_scope.cancel()
            tg.start_soon(on_lost)
            await self._stop_ev.wait()
            tg.cancel_scope.cancel()
        if lost.is_set():
            over.set()  # (what runs is stopped or carried on by _session_lost)
            return
        send.close()
        # graceful: hand back what has not started (an empty release still tells the server to
        # send nothing more), give running tasks `grace` seconds
        self._release(list(self._buffered), always=True)
        with anyio.move_on_after(self.grace):
            while self._running:
                await anyio.sleep(0.01)
        if self._running:
            log.warning("grace period of %.0fs over: cancelling %d running task(s) and handing them back",
                        self.grace, len(self._running))
            self._release(list(self._running), cancel=True)
        if self._runner_scope is not None:
            self._runner_scope.cancel()
        over.set()

    def _release(self, ids: list[int], cancel: bool = False, always: bool = False) -> None:
        if not ids and not always:
            return
        for tid in ids:
            self._buffered.pop(tid, None)
            self._running.discard(tid)
            sc = self._scopes.pop(tid, None) or self._batch_members.pop(tid, None)
            if cancel and sc is not None:
                sc[1].cancel()
        self._queue_msg({"op": "release", "ids": ids})

    def _queue_msg(self, msg: dict[str, Any], thread: int | None = None) -> None:
        if thread is not None and thread != threading.get_ident():
            anyio.from_thread.run_sync(self._queue_msg, msg, token=self._token)
            return
        self._out.append(msg)
        if self._wake is not None:
            self._wake.set()

    async def _sender(self, stream: anyio.abc.ByteStream, conn: Connection, lost: anyio.Event) -> None:
        try:
            while True:
                assert self._wake is not None
                await self._wake.wait()
                self._wake = anyio.Event()
                await self._flush(stream, conn)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            lost.set()

    async def _flush(self, stream: anyio.abc.ByteStream, conn: Connection) -> None:
        msgs = self._out
        credit = 0 if self._stop.is_set() else self._credit
        self._credit = 0
        if self._results:
            # one `done` per frame's worth of results: several large results must not make one frame too large
            batch: list[list[Any]] = []
            size = 0
            for item in self._results:
                n = len(item[2]) + 64
                if batch and size + n > self._max_frame - _FRAME_SLACK:
                    msgs.append({"op": "done", "results": batch})
                    batch, size = [], 0
                batch.append(item)
                size += n
            msgs.append({"op": "done", "results": batch, "credit": credit})
            self._results = []
        elif credit:
            msgs.append({"op": "credit", "n": credit})
        if self._unsent:  # (written now: no longer this worker's to hand to another server)
            for m in msgs:
                if m["op"] == "done":
                    for item in m["results"]:
                        self._unsent.discard(item[0])
                        self._info.pop(item[0], None)
                elif m["op"] == "fail":
                    self._unsent.discard(m["id"])
                    self._info.pop(m["id"], None)
        if msgs:
            self._out = []
            now = self._now()
            if now - self._last_sent > self._lease_timeout / 2:
                # silent this long (paused, or the loop blocked): the server may have taken our leases back
                # before this frame reaches it; what was received before cannot start unconfirmed
                self._leases_doubtful = True
            await stream.send(conn.send_many(msgs))
            self._last_sent = now

    async def _flush_now(self, stream: anyio.abc.ByteStream, conn: Connection, lost: anyio.Event) -> None:
        if lost.is_set():
            return
        self._credit = 0  # leaving: grant nothing more
        with anyio.move_on_after(5):
            try:
                await self._flush(stream, conn)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass

    async def _heartbeat(self, interval: float) -> None:
        while True:
            await anyio.sleep(interval)
            self._queue_msg({"op": "heartbeat"})

    async def _reader(self, stream: anyio.abc.ByteStream, conn: Connection,
                      send: MemoryObjectSendStream[Any], lost: anyio.Event) -> None:
        try:
            while True:
                conn.receive_data(await stream.receive(262144))
                for msg in conn.messages():
                    op = msg["op"]
                    if op == "tasks":
                        batches: dict[Any, list[dict[str, Any]]] = {}
                        for t in msg["tasks"]:
                            if self._stop.is_set():
                                self._release([t["id"]])
                                continue
                            self._buffered[t["id"]] = t
                            d = self.handlers.get(t["type"])
                            if d is not None and d.options.batch is not None:  # one call per batch of a frame
                                batches.setdefault((t["type"], t.get("batch")), []).append(t)
                            else:
                                send.send_nowait(t)
                        for group in batches.values():
                            send.send_nowait(group)
                    elif op == "cancel":
                        tid = msg.get("id")
                        member = self._batch_members.get(tid) if isinstance(tid, int) else None
                        if member is not None and member[0] == msg.get("lease", member[0]):
                            # one task of a running batch: the call goes on for the others, this one's result is
                            # not reported
                            log.info("task %s cancelled by the server (its batch goes on)", tid)
                            del self._batch_members[tid]  # type: ignore[arg-type]
                        sc = self._scopes.get(tid) if isinstance(tid, int) else None
                        if sc is not None and sc[0] == msg.get("lease", sc[0]):
                            log.info("task %s cancelled by the server", tid)
                            self._scopes.pop(tid)  # type: ignore[arg-type]  # (tells _run_one the cancel was asked for)
                            sc[1].cancel()
                        buffered = self._buffered.get(tid)  # type: ignore[arg-type]
                        if buffered is not None and buffered["lease"] == msg.get("lease", buffered["lease"]):
                            del self._buffered[tid]  # type: ignore[arg-type]
                    elif op == "pong":
                        pong = self._pong
                        if pong is not None and msg.get("rid") == self._ping_rid:
                            # the server read our ping, renewing our leases, and everything it sent before
                            # (a cancel, lease_expired) has been read above
                            self._leases_doubtful = False
                            self._pong = None
                            pong.set()
                    elif op == "drain":
                        log.info("server asked this worker to drain")
                        self.drained = True
                        self.stop()
                    elif op == "error":
                        # a server that stops says so: routine (the worker reconnects), not an error of ours
                        level = logging.INFO if msg.get("code") == "shutting_down" else logging.ERROR
                        log.log(level, "server error %s: %s", msg.get("code"), msg.get("message"))
                        lost.set()
                        return
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, ProtocolError, OSError):
            lost.set()

    async def _runner(self, receive: MemoryObjectReceiveStream[Any]) -> None:
        with receive.clone() as mine:
            async for task in mine:
                if type(task) is list:
                    await self._take_batch(task)
                else:
                    await self._take(task)

    async def _take_batch(self, tasks: list[dict[str, Any]]) -> None:
        """Run the tasks of one batch that are still ours (not cancelled nor handed back while buffered)."""
        if self._leases_doubtful or self._now() - self._last_sent > self._lease_timeout / 2:
            await self._confirm_leases()
        ours = []
        for t in tasks:
            if self._buffered.get(t["id"]) is t:
                del self._buffered[t["id"]]
                ours.append(t)
            else:
                self._give_credit()
        if not ours:
            return
        ids = [t["id"] for t in ours]
        self._running.update(ids)
        try:
            await self._run_batch(ours)
        finally:
            self._running.difference_update(ids)

    async def _take(self, task: dict[str, Any]) -> None:
        tid = task["id"]
        if self._leases_doubtful or self._now() - self._last_sent > self._lease_timeout / 2:
            await self._confirm_leases()
        if self._buffered.get(tid) is not task:  # (another lease of the same task may be buffered now)
            self._give_credit()  # cancelled or handed back while buffered
            return
        del self._buffered[tid]
        self._running.add(tid)
        if self._reclaim:  # (what the server needs to take this run back after a restart: hello ``held``)
            self._info[tid] = (task["attempt"], task["lease"], self.worker_id)
        try:
            await self._run_one(task)
        finally:
            self._running.discard(tid)
            if self._info and tid not in self._unsent:
                self._info.pop(tid, None)

    async def _confirm_leases(self) -> None:
        """Ping the server and wait for its pong (one ping for every runner that waits).

        Called before starting a task when this worker sent nothing for half the lease timeout: its leases
        may have expired meanwhile and the tasks gone to other workers. The pong comes after whatever the
        server sent before it: the ``cancel`` of a task, or ``lease_expired`` and the close of the
        connection (then the runners are cancelled and nothing starts).
        """
        self._leases_doubtful = True  # (until a pong to a ping sent from now on says otherwise)
        if self._pong is None:
            self._pong = anyio.Event()
            self._ping_rid += 1
            log.info("no exchange with the server for a while: confirming the leases (ping) before starting "
                     "a prefetched task")
            self._queue_msg({"op": "ping", "rid": self._ping_rid})
        await self._pong.wait()

    async def _run_one(self, task: dict[str, Any]) -> None:
        tid, lease = task["id"], task["lease"]
        t0 = self._now()
        handler = self.handlers.get(task["type"])
        if handler is None:
            self._report_fail(task, t0, f"no handler for task type {task['type']!r} on worker {self.name}")
            return
        timeout = task.get("timeout") or math.inf
        if handler.options.timeout is not None:
            timeout = min(timeout, handler.options.timeout)
        # One cancel scope per run, for both ways a run is stopped: its deadline (the timeout) and an explicit
        # cancel() (the server cancelled it, or it is handed back). One scope instead of a scope plus
        # fail_after: this is per task, and trio's scope machinery was the worker's largest cost per no-op task.
        try:
            payload = decode_value(task["payload"])
            ctx = TaskContext(self, task) if handler.context_param is not None else None
            args, kwargs = handler.arguments(payload, ctx)
        except BadArguments as exc:  # the same payload would fail again: no retry
            self._report_fail(task, t0, f"bad arguments: {exc}", retries=0)
            return
        except ValueError as exc:  # (msgpack's errors are ValueErrors) a client wrote something else
            self._report_fail(task, t0, f"bad arguments: the payload is not msgpack: {exc}", retries=0)
            return
        deadline = t0 + timeout
        scope = anyio.CancelScope(deadline=deadline)
        entry = self._scopes[tid] = (lease, scope)  # removed by whoever cancels it explicitly
        try:
            with scope:
                if handler.is_async:
                    result = await handler.fn(*args, **kwargs)
                else:
                    result = await anyio.to_thread.run_sync(functools.partial(handler.fn, *args, **kwargs),
                                                            abandon_on_cancel=True, limiter=self._threads)
            now = self._now()
            if scope.cancelled_caught or now >= deadline:
                # a timeout unless someone cancelled it (the server, a hand-back), even if that cancel only took
                # effect past the deadline: that task is not ours to report any more. An async handler that
                # blocked its loop past the deadline could not be cancelled: it returned late, a timeout too.
                if self._scopes.get(tid) is entry and now >= deadline:
                    self._report_fail(task, t0, self._timeout_error(handler, timeout, t0, now,
                                                                    returned=not scope.cancelled_caught),
                                      timed_out=True, handler=handler)
                else:
                    self._give_credit()  # cancelled by the server (already final there) or handed back
                    self._log_task(task, "released" if self._stop.is_set() else "cancelled", now - t0)
                return
            data = encode_value(result)
            if len(data) > self._max_frame - _FRAME_SLACK:  # the server would close the connection on it
                self._report_fail(task, t0, f"result too large: {len(data)} bytes encoded, the server takes "
                                            f"at most {self._max_frame - _FRAME_SLACK} per result", handler=handler)
                return
        except Retry as r:
            self._report_fail(task, t0, f"Retry requested in {r.delay:g}s" + (f": {r}" if str(r) else ""),
                              retry_in=r.delay, handler=handler)
            return
        except Exception as exc:  # noqa: BLE001 - whatever a handler raises fails that attempt, with its traceback
            error = format_failure(exc)
            hint = loop_hint(exc, self._backend) if handler.is_async else ""
            # the server decides whether it is retried, by the task's retry policy (docs/tasks.md): it needs the
            # exception's type names, its base classes included (a policy may name a base class)
            self._report_fail(task, t0, error + hint + ("\n" if hint else ""), handler=handler,
                              error_types=error_type_names(exc))
            return
        finally:
            if self._scopes.get(tid) is entry:  # (not cancelled, nor a newer lease of the same task)
                del self._scopes[tid]
        self.completed += 1
        self._results.append([tid, lease, data])
        if self._reclaim:
            self._unsent.add(tid)
        self._credit += 1
        assert self._wake is not None
        self._wake.set()
        if task_log.isEnabledFor(logging.INFO):
            self._log_task(task, "succeeded", now - t0)

    async def _run_batch(self, tasks: list[dict[str, Any]]) -> None:
        """Call a batched handler once with the tasks of a batch and report each task's outcome
        (docs/batching.md): it returns None (all succeeded) or one result per task, an exception instance in
        it failing that task; raising fails them all."""
        t0 = self._now()
        handler = self.handlers[tasks[0]["type"]]
        items: list[BatchItem] = []
        batch: list[dict[str, Any]] = []
        for t in tasks:
            try:
                items.append(BatchItem(t["id"], decode_value(t["payload"]), t["attempt"]))
                batch.append(t)
            except ValueError as exc:  # (msgpack's errors are ValueErrors) a client wrote something else
                self._report_fail(t, t0, f"bad arguments: the payload is not msgpack: {exc}", retries=0)
        if not batch:
            return
        timeout = min(t.get("timeout") or math.inf for t in batch)
        if handler.options.timeout is not None:
            timeout = min(timeout, handler.options.timeout)
        deadline = t0 + timeout
        scope = anyio.CancelScope(deadline=deadline)
        entries = {t["id"]: (t["lease"], scope) for t in batch}
        self._batch_members.update(entries)
        outcome: Any = None
        error: str | None = None
        retry: Retry | None = None
        try:
            with scope:
                if handler.is_async:
                    outcome = await handler.fn(items)
                else:
                    outcome = await anyio.to_thread.run_sync(functools.partial(handler.fn, items),
                                                             abandon_on_cancel=True, limiter=self._threads)
        except Retry as r:
            retry = r
        except Exception as exc:  # noqa: BLE001 - whatever a handler raises fails the attempt of every task
            error = format_failure(exc) + (loop_hint(exc, self._backend) if handler.is_async else "")
        now = self._now()
        ours = [t for t in batch if self._batch_members.get(t["id"]) is entries[t["id"]]]
        mine = {t["id"] for t in ours}
        for tid, entry in entries.items():
            if self._batch_members.get(tid) is entry:
                del self._batch_members[tid]
        for t in batch:
            if t["id"] not in mine:  # cancelled by the server, or handed back: not ours to report
                self._give_credit()
                self._log_task(t, "released" if self._stop.is_set() else "cancelled", now - t0)
        if not ours:
            return
        if scope.cancelled_caught or now >= deadline:
            if now >= deadline:
                text = self._timeout_error(handler, timeout, t0, now, returned=not scope.cancelled_caught)
                for t in ours:
                    self._report_fail(t, t0, text, timed_out=True, handler=handler)
            else:
                for t in ours:
                    self._give_credit()
            return
        why = retry if retry is not None else error
        if why is not None:
            for t in ours:
                self._fail_item(t, t0, handler, why)
            return
        if outcome is None:
            results: list[Any] = [None] * len(batch)
        elif isinstance(outcome, (list, tuple)) and len(outcome) == len(batch):
            results = list(outcome)
        else:
            shape = f"a list of {len(outcome)}" if isinstance(outcome, (list, tuple)) else type(outcome).__name__
            for t in ours:
                self._report_fail(t, t0, f"batched handler {handler.type!r} returned {shape}: it must return None "
                                         f"or a list of one result per task ({len(batch)})", handler=handler)
            return
        by_id = {t["id"]: r for t, r in zip(batch, results, strict=True)}
        for t in ours:
            value = by_id[t["id"]]
            if isinstance(value, BaseException):
                self._fail_item(t, t0, handler, value if isinstance(value, Retry) else format_failure(value))
                continue
            try:
                data = encode_value(value)
            except (TypeError, ValueError, OverflowError) as exc:
                self._report_fail(t, t0, f"result cannot be encoded: {exc}", handler=handler)
                continue
            if len(data) > self._max_frame - _FRAME_SLACK:
                self._report_fail(t, t0, f"result too large: {len(data)} bytes encoded, the server takes "
                                         f"at most {self._max_frame - _FRAME_SLACK} per result", handler=handler)
                continue
            self.completed += 1
            self._results.append([t["id"], t["lease"], data])
            self._credit += 1
            self._log_task(t, "succeeded", now - t0, detail=f" (batch of {len(batch)})")
        assert self._wake is not None
        self._wake.set()

    def _fail_item(self, task: dict[str, Any], t0: float, handler: TaskDef[Any, Any], why: Retry | str) -> None:
        """Report the failure of one task of a batch: a ``Retry`` asks for a retry, a str is the error."""
        if isinstance(why, Retry):
            self._report_fail(task, t0, f"Retry requested in {why.delay:g}s" + (f": {why}" if str(why) else ""),
                              retry_in=why.delay, handler=handler)
        else:
            self._report_fail(task, t0, why, handler=handler)

    def _timeout_error(self, handler: TaskDef[Any, Any], timeout: float, t0: float, now: float, returned: bool) -> str:
        error = f"timeout: attempt ran longer than {timeout:g}s"
        if returned:
            error += f" (it returned after {now - t0:.2f}s; its result is discarded)"
        blocked = self._loop_blocked(t0, now) if handler.is_async else 0.0
        if blocked >= LOOP_BLOCKED:
            error += (f"; the event loop was blocked for at least {blocked:.2f}s during this attempt (by this handler or "
                      f"another one running beside it), so its timeout could not stop it in time: a blocking call in "
                      f"async code (time.sleep, blocking I/O, a CPU-bound loop) is the likely cause. Await an async equivalent, move the call to a thread "
                      f"(anyio.to_thread.run_sync), or make the handler a plain function (run in a thread)")
        return error

    def _log_task(self, task: dict[str, Any], outcome: str, duration: float, level: int = logging.INFO,
                  detail: str = "") -> None:
        if not task_log.isEnabledFor(level):
            return
        # makeRecord + handle is what Logger.log does, less findCaller's walk up the stack (a quarter of the
        # cost of a line, which is per task): the caller is always this method
        record = task_log.makeRecord(
            task_log.name, level, __file__, 0, "task %s %s attempt %s %s (%s)%s",
            (task["id"], task["type"], task["attempt"], outcome, _duration(duration), detail), None, "_log_task",
            {"task_id": task["id"], "task_type": task["type"], "attempt": task["attempt"],
             "duration": round(duration, 6), "outcome": outcome})
        task_log.handle(record)

    def _give_credit(self) -> None:
        self._credit += 1
        if self._wake is not None:
            self._wake.set()

    def _report_fail(self, task: dict[str, Any], t0: float, error: str, *, retry_in: float | None = None,
                     timed_out: bool = False, handler: TaskDef[Any, Any] | None = None,
                     retries: int | None = None, error_types: list[str] | None = None) -> None:
        self.failed += 1
        msg: dict[str, Any] = {"op": "fail", "id": task["id"], "lease": task["lease"], "error": error}
        if error_types:
            msg["error_types"] = error_types
        if retry_in is not None:
            msg["retry_in"] = retry_in
        if timed_out:
            msg["timeout"] = True
        if retries is None and handler is not None:
            retries = handler.options.retries
        if retries is not None:
            msg["retries"] = retries
        self._credit += 1
        self._queue_msg(msg)
        if self._reclaim:
            self._unsent.add(task["id"])
        duration = self._now() - t0
        if retry_in is not None:
            self._log_task(task, "retry", duration, logging.INFO, f": {error}")
        else:
            text = error.rstrip().removeprefix("timeout: ")  # (the outcome already says it)
            self._log_task(task, "timeout" if timed_out else "failed", duration, logging.ERROR,
                           ("\n" if "\n" in text else ": ") + text)


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


def _loop_clock(backend: str) -> Callable[[], float]:
    """The running loop's clock, the one anyio's deadlines use, read directly: ``anyio.current_time()`` looks
    the backend up on every call, and a run reads the clock two or three times (drain profile: 4% of a
    worker's CPU under asyncio)."""
    if backend == "trio":
        import trio

        return trio.current_time
    import asyncio

    return asyncio.get_running_loop().time


def _current_backend() -> str:
    """The event loop running now: ``"trio"`` or ``"asyncio"`` (the only two anyio runs on)."""
    import sys

    trio = sys.modules.get("trio")  # (not imported: not running)
    if trio is not None:
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            pass
        else:
            return "trio"
    return "asyncio"
