"""The async client SDK: ``Client`` (anyio: trio or asyncio). ``SyncClient`` (blocking) is in sync_client.py.

Theory of operation
-------------------
A ``Client`` holds one TCP connection at a time. Requests carry a correlation id
(``rid``); one reader task routes each reply to the request waiting for it, so
any number of requests may be in flight at once (pipelining). Outgoing frames
are appended to a queue that one sender task writes with a single ``send`` per
wake-up: many concurrent ``enqueue`` calls become one write.

A supervisor task (``_run``) serves one connection after another: when one is
lost it reconnects with backoff and puts back what was in flight, following the
rules of ``calls.Calls`` (which is shared with ``SyncClient``): an ``enqueue``
carries an idempotency token, so sending it again never creates a task twice.

Payloads, results and progress values are encoded with msgpack by this SDK;
the server never decodes them.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Self, TypeVar, overload

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .address import format_address, server_addresses, server_token
from .calls import (
    TRANSIENT_HELLO_ERRORS,
    Backoff,
    Calls,
    Request,
    closing_error,
    connect_error,
    dead_message,
    hello_message,
)
from .errors import (
    REQUEST_ERROR_CODES,
    ConnectionClosed,
    FrameTooLarge,
    InvalidState,
    NotRunqServer,
    ProtocolError,
    RemoteError,
    RunqError,
    TaskFailed,
    error_for_code,
    looks_like,
)
from .frames import DEFAULT_MAX_FRAME, DEFAULT_MAX_REPLY, HEADER, Connection, reply_limit
from .limits import breaker_message, limit_message
from .messages import ScheduleSpec
from .retry_policy import RetryPolicy
from .tasks import (
    Call,
    TaskHandle,
    client_closed,
    client_opened,
    coalesce_entry,
    no_worker_hint,
    schedule_spec,
    schedule_specs_of,
    wait_timeout_message,
)
from .tls import TLSOption, client_context, is_tls, wrap_stream
from .values import decode_task, encode_value

if TYPE_CHECKING:
    from .sync_client import SyncClient

__all__ = ["FINAL_STATES", "Backoff", "Client", "EventStream", "SyncClient"]

FINAL_STATES = frozenset({"succeeded", "dead", "cancelled"})
R = TypeVar("R")


def __getattr__(name: str) -> Any:
    # ``from runq.protocol.client import SyncClient`` (where it used to live) without an import cycle
    if name == "SyncClient":
        from .sync_client import SyncClient

        return SyncClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _native_event() -> Callable[[], Any]:
    """The running event loop's own event class (``trio.Event`` or ``asyncio.Event``)."""
    trio = sys.modules.get("trio")  # (not running trio if it was never imported)
    if trio is not None and trio.lowlevel.in_trio_run():
        return trio.Event  # type: ignore[no-any-return]
    import asyncio

    return asyncio.Event


def _direct_writer(stream: anyio.abc.ByteStream) -> Callable[[bytes], bytes] | None:
    """A function that writes bytes on ``stream`` at once, without awaiting, and returns what it did not
    write (the caller hands that to the sender task); None where that is not known to keep the order.

    On asyncio, anyio's socket stream writes through an asyncio transport, which buffers what the socket
    does not take: writing through that same transport keeps the order of everything sent (it writes only
    while the transport holds nothing, so that a peer that stopped reading holds the callers back through
    the sender's send). On trio the socket is written by the sender task (``_sending``) or by a caller, when
    the sender is not writing and no frame is half-written (``_partial``): a non-blocking ``send`` is then
    in order.
    """
    if is_tls(stream):
        return None  # (the raw socket carries TLS records: only the TLS stream writes to it)
    transport = getattr(stream, "_transport", None)  # (anyio's asyncio SocketStream; not a public attribute)
    asyncio = sys.modules.get("asyncio")  # (imported when running asyncio; not imported here for nothing)
    if asyncio is not None and isinstance(transport, asyncio.WriteTransport):
        def write_through(data: bytes) -> bytes:
            if transport.is_closing() or transport.get_write_buffer_size():
                # (ended: the stream's own send meets the error; bytes waiting in the transport: the socket
                # is full, and the sender's send waits for it to drain, where the transport would buffer
                # without bound whatever callers write through it)
                return data
            transport.write(data)
            return b""

        return write_through
    trio = sys.modules.get("trio")
    if trio is None or not trio.lowlevel.in_trio_run():
        return None
    try:
        sock = stream.extra(anyio.abc.SocketAttribute.raw_socket)
    except anyio.TypedAttributeLookupError:
        return None

    def write_socket(data: bytes) -> bytes:
        try:
            n = sock.send(data)
        except OSError:  # full (BlockingIOError) or broken: the stream's own send waits, or meets the error
            return data
        return data[n:]

    return write_socket


_NIL = encode_value(None)


def _send_limit(welcome: dict[str, Any]) -> int:
    """The largest frame, header included, that the server of ``welcome`` reads (docs/protocol.md section 1)."""
    max_frame = welcome.get("max_frame")
    return (max_frame if type(max_frame) is int else DEFAULT_MAX_FRAME) + HEADER.size


def _too_large_to_read(call: Request, exc: FrameTooLarge, max_frame: int) -> FrameTooLarge:
    """The caller's error for an answer over the client's ``max_frame`` (the connection ends: it is not read)."""
    error = FrameTooLarge(f"{call.op}: the server's answer is a frame of {exc.size} bytes, over this client's "
                          f"max_frame of {max_frame}: ask for less (list_tasks: a smaller limit), or give the "
                          "client a larger max_frame")
    error.size = exc.size
    return error


def _too_large_to_send(call: Request, size: int, limit: int) -> FrameTooLarge:
    """The caller's error for a request the server would refuse with ``frame_too_large``, closing the
    connection under every call in flight (calls.py rule 5): it is not sent."""
    return FrameTooLarge(f"{call.op}: the request is a frame of {size - HEADER.size} bytes, over the server's "
                         f"max_frame of {limit - HEADER.size}: send fewer or smaller tasks")


def _enqueue_entry(type: str | Call[Any], payload: Any = None, **options: Any) -> dict[str, Any]:
    """The wire entry of one enqueue: of a typed task's bound ``Call``, or by type name."""
    if isinstance(type, Call):
        if payload is not None:
            raise TypeError("enqueue(call): the arguments are bound in the call, there is no payload")
        return type.entry(**options)
    return _task_entry(type, payload, **options)


def _many_entries(tasks: Iterable[Mapping[str, Any]] | Iterable[Call[Any]]
                  ) -> tuple[list[dict[str, Any]], list[Call[Any]] | None]:
    """The wire entries of ``enqueue_many``, and the bound calls when every item is one (handles are due)."""
    items: list[Mapping[str, Any] | Call[Any]] = list(tasks)
    entries = [t.entry() if isinstance(t, Call) else _task_entry(**dict(t)) for t in items]
    calls = [t for t in items if isinstance(t, Call)]
    return entries, (calls if items and len(calls) == len(items) else None)


def _task_entry(type: str, payload: Any = None, *, queue: str | None = None, priority: int | None = None,
                delay: float | None = None, run_at: float | datetime | None = None, timeout: float | None = None,
                retries: int | None = None, key: str | None = None,
                      requires: dict[str, str] | None = None, retry_policy: RetryPolicy | None = None,
                      coalesce_key: str | None = None, coalesce: str | None = None, limit_key: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": type, "payload": encode_value(payload)}
    if queue is not None:
        entry["queue"] = queue
    if priority is not None:
        entry["priority"] = priority
    if delay is not None:
        entry["delay"] = float(delay)
    if run_at is not None:
        entry["run_at"] = run_at.timestamp() if isinstance(run_at, datetime) else float(run_at)
    if timeout is not None:
        entry["timeout"] = float(timeout)
    if retries is not None:
        entry["retries"] = retries
    if key is not None:
        entry["key"] = key
    if requires is not None:
        entry["requires"] = dict(requires)
    if retry_policy is not None:
        entry["retry_policy"] = retry_policy.wire()
    coalesce_entry(entry, coalesce_key, coalesce, limit_key)
    return entry




class Client:
    """An async connection to a runq server that survives the server's restarts.

    Use as ``async with Client() as client: ...``. Runs under trio and asyncio (anyio).

    When the connection is lost, the client reconnects by itself (exponential backoff with jitter, trying
    each address in order) and sends again what was in flight (docs/clients.md says what exactly); an
    ``enqueue`` sent again is never enqueued twice. A call fails with ``ConnectionClosed`` once no server
    answered for ``retry_for`` seconds since the connection was lost; while none answers after that, calls
    fail at once, and the client keeps trying in the background.

    Args:
        address: ``HOST:PORT``, several of them (comma-separated or a sequence) to try in order, or ``None``
            for ``RUNQ_SERVER`` (default ``127.0.0.1:7700``).
        token: shared secret, when the server requires one (default: ``RUNQ_TOKEN``).
        role: ``client`` (default) or ``watcher`` (read-only).
        connect_timeout: seconds to connect to one address and be welcomed.
        retry_for: seconds a call waits for a lost connection to come back before it fails.
        backoff: the delays between reconnection attempts (default: 50 ms doubling up to 2 s, jittered).
        max_frame: the largest frame body this client reads (default: the server's ``max_reply``, from its
            ``welcome``, which every frame it sends respects; 64 MiB + 64 KiB until then): an answer larger than that
            fails its call with ``FrameTooLarge`` (docs/clients.md).
        tls: TLS to the server (docs/tls.md): ``True`` (verified against the system's CAs), a CA file, an
            ``ssl.SSLContext``, ``False`` (plain TCP), or ``None`` for ``RUNQ_TLS_CA`` / ``RUNQ_TLS`` (default:
            plain TCP). The server's certificate and host name are verified.

    Raises:
        TLSError: ``tls`` names a CA file that cannot be read.
    """

    def __init__(self, address: str | Sequence[str] | None = None, *, token: str | None = None,
                 role: str = "client", connect_timeout: float = 10.0, retry_for: float = 30.0,
                 backoff: Backoff | None = None, max_frame: int | None = None, tls: TLSOption = None) -> None:
        #: the largest frame body this client reads: the caller's ``max_frame``, else the server's ``max_reply``
        self.max_frame = max_frame if max_frame is not None else DEFAULT_MAX_REPLY
        self._max_frame_cap = max_frame
        self.addresses = server_addresses(address)
        self.address = format_address(*self.addresses[0])  # the one connected to (or tried first)
        self.host, self.port = self.addresses[0]
        self.token = server_token(token)
        #: the TLS settings of the connections (None: plain TCP)
        self.tls = client_context(tls)
        self.role = role
        self.connect_timeout = connect_timeout
        self.retry_for = retry_for
        self.backoff = backoff or Backoff()
        self.welcome: dict[str, Any] = {}
        self._send_limit = DEFAULT_MAX_FRAME + 4  # the largest frame the server reads (its welcome's max_frame)
        #: connections made so far (1 after connect; one more per reconnection)
        self.connections = 0
        self._calls = Calls(on_fork=self._forked)
        self._queue: list[Request] = []  # calls waiting to be written
        self._conn = Connection(self.max_frame)
        self._stream: anyio.abc.ByteStream | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._wake = anyio.Event()
        self._epoch = 0  # numbers the connections: a call's frame is for the one it was encoded for
        self._sending = False  # the sender task is writing
        self._partial = b""  # the rest of a frame a caller began to write itself: the sender writes it first
        self._up = anyio.Event()  # set while connected
        self._closed: BaseException | None = None  # aclose() was called
        self._down: BaseException | None = None  # no server answered for retry_for: calls fail at once
        self._preferred = 0  # index of the address that answered last
        self._events_send: MemoryObjectSendStream[dict[str, Any]] | None = None
        self._events_receive: MemoryObjectReceiveStream[dict[str, Any]] | None = None
        self._replaced: list[MemoryObjectReceiveStream[dict[str, Any]]] = []  # of earlier subscribes
        #: the running loop's own event class (trio.Event or asyncio.Event: both set, is_set, wait), for the
        #: wake-up of each call: anyio.Event looks the backend up each time it is made (set by connect)
        self._event: Callable[[], Any] = anyio.Event
        #: writes bytes on the current connection at once, without awaiting (returns what it did not write)
        self._write_now: Callable[[bytes], bytes] | None = None

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def connect(self) -> None:
        """Connect to the first address that answers, say hello, start the background tasks.

        The first connection is tried once per address: a wrong address or token fails at once.

        Raises:
            OSError, TimeoutError: no address could be reached (the error names it).
            RemoteError: a server refused the hello (``unauthorized``, ``version``, ``tls_required``, ...).
            TLSError: the TLS handshake failed (the server's certificate is not trusted, it speaks no TLS).
        """
        stream, conn = await self._open()
        self._event = _native_event()
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._run, stream, conn)
        client_opened(self)

    async def _open(self) -> tuple[anyio.abc.ByteStream, Connection]:
        """One pass over the addresses, the one that answered last first."""
        n = len(self.addresses)
        errors: list[BaseException] = []
        for i in range(n):
            index = (self._preferred + i) % n
            host, port = self.addresses[index]
            address = format_address(host, port)
            try:
                stream, conn = await self._open_one(host, port)
            except RemoteError as exc:
                if exc.code not in TRANSIENT_HELLO_ERRORS:
                    raise
                errors.append(ConnectionClosed(f"{address} refused the connection: {exc}"))
                continue
            except (OSError, TimeoutError, ConnectionClosed) as exc:
                errors.append(connect_error(address, exc))
                continue
            self._preferred = index
            self.address, self.host, self.port = address, host, port
            self.connections += 1
            return stream, conn
        if len(errors) == 1:
            raise errors[0]
        raise ConnectionClosed("no server answered: " + "; ".join(str(e) for e in errors)) from errors[-1]

    async def _open_one(self, host: str, port: int) -> tuple[anyio.abc.ByteStream, Connection]:
        with anyio.fail_after(self.connect_timeout):
            stream: anyio.abc.ByteStream = await anyio.connect_tcp(host, port)
            if self.tls is not None:
                stream = await wrap_stream(stream, self.tls, host, format_address(host, port))
        try:
            conn = Connection(self.max_frame)
            await stream.send(conn.send(hello_message(self.role, self.token)))
            answer = b""  # the peer's first bytes: what it is, when it is not a runq server
            with anyio.fail_after(self.connect_timeout):
                while True:
                    try:
                        msg = conn.next_message()
                    except ProtocolError as exc:  # (an HTTP answer reads as a frame of 1213486160 bytes)
                        raise NotRunqServer(format_address(host, port), answer) from exc
                    if msg is not None:
                        break
                    try:
                        data = await stream.receive(65536)
                    except (anyio.EndOfStream, anyio.BrokenResourceError) as exc:
                        if looks_like(answer):
                            raise NotRunqServer(format_address(host, port), answer) from exc
                        raise ConnectionClosed("the server closed the connection during hello") from exc
                    answer += data[:max(0, 64 - len(answer))]
                    conn.receive_data(data)
            if msg["op"] not in ("welcome", "error"):
                raise NotRunqServer(format_address(host, port), answer)
            if msg["op"] == "error":
                raise error_for_code(str(msg.get("code")), str(msg.get("message")))
        except BaseException:
            with anyio.CancelScope(shield=True):
                await stream.aclose()
            raise
        self.welcome = msg
        self._send_limit = _send_limit(msg)
        self.max_frame = conn.max_frame = reply_limit(msg, self._max_frame_cap)
        return stream, conn

    async def aclose(self) -> None:
        """Close the connection; outstanding requests fail with ``ConnectionClosed``."""
        client_closed(self)
        if self._closed is None:
            self._closed = ConnectionClosed("client closed")
        if self._tg is not None:
            tg, self._tg = self._tg, None
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)
        if self._stream is not None:
            with anyio.CancelScope(shield=True):
                await self._stream.aclose()
            self._stream = None
        self._fail_queued(self._closed)
        for call in list(self._calls.pending.values()):
            self._finish(call, error=self._closed)
        self._end_events()
        for receive in (*self._replaced, self._events_receive):
            if receive is not None:
                receive.close()
        self._replaced.clear()

    def _forked(self) -> None:
        """In the child of a ``fork()``: this client cannot serve it (its tasks and its connection belong to the
        parent's event loop), so its calls fail at once, saying so; its socket's descriptor is closed here (with
        no shutdown: the parent's connection goes on)."""
        self._closed = ConnectionClosed("this Client was made before fork(): its connection and its tasks belong to "
                                        "the parent process; make a new Client in the child (a SyncClient made "
                                        "before fork() works in the child: it connects anew)")
        stream, self._stream = self._stream, None
        self._write_now = None
        self._queue = []
        if stream is not None:
            try:
                stream.extra(anyio.abc.SocketAttribute.raw_socket).close()
            except (anyio.TypedAttributeLookupError, OSError):
                pass

    def _end_events(self) -> None:
        if self._events_send is not None:
            self._events_send.close()
            self._events_send = None

    def _finish(self, call: Request, reply: dict[str, Any] | None = None, error: BaseException | None = None) -> None:
        """Give ``call`` its outcome and wake its caller."""
        self._calls.done(call)
        call.reply = reply
        if error is not None:
            call.error = error
        if call.waiter is not None:
            call.waiter.set()

    def _fail_queued(self, error: BaseException) -> None:
        queued, self._queue = self._queue, []
        for call in queued:
            self._finish(call, error=error)

    # ------------------------------------------------------------------ connection
    async def _run(self, stream: anyio.abc.ByteStream, conn: Connection) -> None:
        """One session after another, reconnecting in between, until the client is closed."""
        while True:
            self._stream, self._conn = stream, conn
            self._write_now = _direct_writer(stream)
            self._up.set()
            error = await self._session(stream, conn)
            # What was in flight is sorted out before any await: a call made while the old stream closes
            # is then registered for the next connection (``Calls.lost`` forgets this one's rids: one
            # registered before it would wait for ever for a reply that matches nothing).
            self._up = anyio.Event()
            self._stream = None
            self._write_now = None
            self._partial = b""  # (the rest of a frame begun on the old stream: never written)
            self._epoch += 1
            self._end_events()  # a subscription ends with its connection (docs/clients.md)
            again, failed = self._calls.lost(error)
            for call in failed:
                self._finish(call, error=call.error)
            if self._queue:  # a call not yet written is in both (once in the queue, in order of the calls)
                resent = set(again)
                again += [call for call in self._queue if call not in resent]
            self._queue = again
            with anyio.CancelScope(shield=True):
                await stream.aclose()
            stream, conn = await self._reconnect()
            self._down = None

    async def _session(self, stream: anyio.abc.ByteStream, conn: Connection) -> BaseException | None:
        """Serve one connection until it is lost; return the error that closed it, if the server sent one
        caused by the requests (then nothing it read is sent again)."""
        outcome: list[BaseException | None] = [None]
        feed = _Feed.install(stream, self, conn, outcome)
        async with anyio.create_task_group() as tg:
            async def reader() -> None:
                try:
                    if feed is not None:  # (asyncio: the replies are routed as they arrive, see _Feed)
                        await feed.ended.wait()
                        return
                    while True:
                        for msg in conn.messages():
                            if self._route(msg, outcome):
                                return
                        conn.receive_data(await stream.receive(65536))
                except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    pass
                except ProtocolError as exc:
                    self._unreadable(exc, outcome)
                finally:
                    tg.cancel_scope.cancel()

            async def sender() -> None:
                try:
                    await self._sender(stream, conn)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    pass
                finally:
                    tg.cancel_scope.cancel()

            tg.start_soon(reader)
            tg.start_soon(sender)
        return outcome[0]

    def _unreadable(self, exc: ProtocolError, outcome: list[BaseException | None]) -> None:
        """The server sent what this client cannot read (the connection ends): a frame over ``max_frame`` that
        answers a call fails that call (sent again it would be answered the same way, for ever); else it is
        an end that names no call (calls.py rule 4)."""
        call = self._calls.pending.get(exc.rid) if type(exc.rid) is int else None
        if isinstance(exc, FrameTooLarge) and call is not None:
            self._finish(call, error=_too_large_to_read(call, exc, self.max_frame))
        else:
            outcome[0] = exc

    def _route(self, msg: dict[str, Any], outcome: list[BaseException | None]) -> bool:
        """Hand one message to its call or the event stream; True when it ends the connection."""
        op = msg["op"]
        if op == "event":
            if self._events_send is not None:
                try:
                    self._events_send.send_nowait(msg)
                except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    pass
            return False
        call = self._calls.reply(msg)
        if call is not None:
            if self.backoff.failures:
                self.backoff.reset()  # a session that worked: the next loss starts the delays over
            call.reply = msg  # (Calls.reply has marked it done)
            if call.waiter is not None:
                call.waiter.set()
        if op != "error":
            return False
        if msg.get("rid") is None:  # (every request of this client has a rid: an error that closes the connection)
            outcome[0] = closing_error(msg)  # (it names no request: calls.py rule 4)
            return True
        # an error that closes the connection names the request to blame: that one has its answer (above),
        # the others are sent again on the next connection (calls.py rule 4)
        return str(msg.get("code")) not in REQUEST_ERROR_CODES

    async def _sender(self, stream: anyio.abc.ByteStream, conn: Connection) -> None:
        """Write the queued calls' frames, all those of a wake-up in one ``send``, after the rest of a frame a
        caller began to write itself (``_partial``)."""
        calls = self._calls
        epoch = self._epoch
        while True:
            if not (self._queue or self._partial):
                await self._wake.wait()
                self._wake = self._event()
                continue
            queued, self._queue = self._queue, []
            frames = [self._partial] if self._partial else []
            self._partial = b""
            for call in queued:
                if call.epoch != epoch:  # encoded for an earlier connection: a fresh rid for this one
                    call.frame = conn.send(calls.message(call))
                    call.epoch = epoch
                call.sent = True  # (before the write: the server may read part of what it sends)
                call.tries += 1
                frames.append(call.frame)
            self._sending = True
            try:
                await stream.send(frames[0] if len(frames) == 1 else b"".join(frames))
            finally:
                self._sending = False

    async def _reconnect(self) -> tuple[anyio.abc.ByteStream, Connection]:
        """Try the addresses until one answers, waiting ``backoff`` between rounds; calls fail once that
        took ``retry_for`` seconds."""
        give_up = anyio.current_time() + self.retry_for
        while True:
            await anyio.sleep(self.backoff.next())
            try:
                return await self._open()
            except (OSError, TimeoutError, RunqError) as exc:
                fatal = isinstance(exc, RemoteError)  # refused for good (token, version): no use waiting
                if self._down is None and (fatal or anyio.current_time() >= give_up):
                    self._down = ConnectionClosed(f"connection to {self.address} lost and no server answered "
                                                  f"for {self.retry_for:g}s: {exc}")
                    self._down.__cause__ = exc
                if self._down is not None:
                    self._fail_queued(self._down)

    async def request(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Send one request and return its reply (sent again after a reconnection, docs/clients.md).

        Raises:
            RemoteError: the server answered with an error frame (subclass by code).
            ConnectionClosed: the client is closed, or no server answered for ``retry_for`` seconds, or the
                connection was lost after a request that is not sent twice (``retry``) was sent.
        """
        return (await self._request(msg)).reply  # type: ignore[return-value]

    async def _request(self, msg: dict[str, Any]) -> Request:
        return await self._submit(self._calls.new(msg))

    async def _submit(self, call: Request) -> Request:
        if self._closed is not None:
            self._calls.done(call)
            raise ConnectionClosed(f"not connected: {self._closed}")
        if self._tg is None:
            self._calls.done(call)
            raise ConnectionClosed("not connected: use 'async with Client(...)' or await connect()")
        if self._down is not None:
            self._calls.done(call)
            raise ConnectionClosed(f"not connected: {self._down}")
        try:  # encoded here, so that a value msgpack cannot carry fails this call, in its caller
            call.frame = self._conn.send(self._calls.message(call))
            if len(call.frame) > self._send_limit:
                raise _too_large_to_send(call, len(call.frame), self._send_limit)
        except BaseException:
            self._calls.done(call)
            raise
        call.epoch = self._epoch
        done = call.waiter = self._event()
        try:
            write_now = self._write_now
            if (write_now is not None and not self._queue and not self._sending and not self._partial
                    and len(self._calls.pending) == 1 and len(call.frame) <= 65536):
                # the only call in flight, nothing else to write: write it here, at once, without awaiting
                # (no task switch to the sender, no checkpoint). With others in flight (pipelining) the
                # sender writes the frames of the calls made in this scheduling round together, in one send.
                rest = write_now(call.frame)
                if len(rest) < len(call.frame):
                    call.sent = True  # (the server may read what was written)
                    call.tries += 1
                    if rest:
                        # the socket took part of the frame: the sender writes the rest before anything else.
                        # Never awaited here: this caller's cancellation (its timeout) must work while the
                        # peer reads nothing, and must not cut the frame (the stream would be broken).
                        self._partial = rest
                        self._wake.set()
                else:  # (nothing written: the socket is full, or the stream has ended)
                    self._queue.append(call)
                    self._wake.set()
            else:
                self._queue.append(call)
                self._wake.set()
            await done.wait()
        finally:
            if not done.is_set():  # cancelled: forget it (a reply that comes is ignored)
                self._calls.done(call)
                if call in self._queue:
                    self._queue.remove(call)
        if call.error is not None:
            raise call.error
        reply = call.reply
        assert reply is not None
        if reply["op"] == "error":
            raise error_for_code(str(reply.get("code")), str(reply.get("message")))
        return call

    # ------------------------------------------------------------------ tasks
    @overload
    async def enqueue(self, type: Call[R], /, *, queue: str | None = None, priority: int | None = None,
                      delay: float | None = None, run_at: float | datetime | None = None,
                      timeout: float | None = None, retries: int | None = None,
                      key: str | None = None,
                      requires: dict[str, str] | None = None, retry_policy: RetryPolicy | None = None,
                      coalesce_key: str | None = None, coalesce: str | None = None, limit_key: str | None = None) -> TaskHandle[R]: ...
    @overload
    async def enqueue(self, type: str, payload: Any = None, *, queue: str | None = None,
                      priority: int | None = None, delay: float | None = None,
                      run_at: float | datetime | None = None, timeout: float | None = None,
                      retries: int | None = None, key: str | None = None,
                      requires: dict[str, str] | None = None, retry_policy: RetryPolicy | None = None,
                      coalesce_key: str | None = None, coalesce: str | None = None, limit_key: str | None = None) -> int: ...

    async def enqueue(self, type: str | Call[Any], payload: Any = None, *, queue: str | None = None,
                      priority: int | None = None, delay: float | None = None,
                      run_at: float | datetime | None = None, timeout: float | None = None,
                      retries: int | None = None, key: str | None = None,
                      requires: dict[str, str] | None = None, retry_policy: RetryPolicy | None = None,
                      coalesce_key: str | None = None, coalesce: str | None = None, limit_key: str | None = None) -> int | TaskHandle[Any]:
        """Enqueue one task; return once it is committed to the database.

        ``await client.enqueue(send_email.call(to=...))`` enqueues a typed task (``runq.task``) and returns
        its ``TaskHandle``; ``await client.enqueue("send_email", {"to": ...})`` enqueues by type name and
        returns the task id.

        Args:
            type: a typed task's bound ``Call``, or a handler name.
            payload: (by type name) any msgpack-able value.
            queue: queue name (default ``default``, or the task definition's).
            priority: higher runs first.
            delay: seconds before it may run. run_at: unix time or datetime before which it may not run.
            timeout: seconds one attempt may take. retries: retries after a failure (default 3).
            key: unique key; while a non-final task holds it, that task's id is returned.
            requires: labels a worker must have to be given it (``{"region": "eu"}``, docs/routing.md).
            retry_policy: this task's own ``RetryPolicy``, over its type's (docs/tasks.md, "Retry policies").
            coalesce_key: while a task enqueued with this key waits (ready or scheduled), this enqueue merges
                into it and that task's id is returned (docs/tasks.md, "Coalescing").
            coalesce: how: ``"replace"`` (the default: the newest payload wins) or ``"keep"`` (the first stays).
            limit_key: the key value of the per-key limits the task is subject to, instead of the payload field
                the limit names (docs/limits.md).
        """
        if (type.__class__ is str and payload is None and queue is None and priority is None and delay is None
                and run_at is None and timeout is None and retries is None and key is None
                and requires is None and retry_policy is None and coalesce_key is None and coalesce is None
                and limit_key is None):
            entry: dict[str, Any] = {"type": type, "payload": _NIL}  # (the usual call, built at once)
            checked = True  # (of the right types: nothing to check)
        else:
            entry = _enqueue_entry(type, payload, queue=queue, priority=priority, delay=delay, run_at=run_at,
                                   timeout=timeout, retries=retries, key=key, requires=requires,
                                   retry_policy=retry_policy, coalesce_key=coalesce_key, coalesce=coalesce,
                                   limit_key=limit_key)
            checked = False
        task_id = int((await self._submit(self._calls.new({"op": "enqueue", "tasks": [entry]}, checked))).reply["ids"][0])  # type: ignore[index]
        return TaskHandle(self, task_id, type.task) if isinstance(type, Call) else task_id

    @overload
    async def enqueue_many(self, tasks: Iterable[Call[R]]) -> list[TaskHandle[R]]: ...
    @overload
    async def enqueue_many(self, tasks: Iterable[Mapping[str, Any]]) -> list[int]: ...

    async def enqueue_many(self, tasks: Iterable[Mapping[str, Any]] | Iterable[Call[Any]]
                           ) -> list[int] | list[TaskHandle[Any]]:
        """Enqueue many tasks in one request (one commit); return their ids (typed: handles) in order.

        Each item is a typed task's bound ``Call``, or a map with the keyword arguments of ``enqueue``
        (``type`` required).
        """
        entries, calls = _many_entries(tasks)
        ids = [int(i) for i in (await self.request({"op": "enqueue", "tasks": entries}))["ids"]]
        if calls is not None:
            return [TaskHandle(self, i, c.task) for i, c in zip(ids, calls, strict=True)]
        return ids

    async def get(self, task_id: int) -> dict[str, Any]:
        """Return the task as a map (payload, result, progress decoded)."""
        return decode_task((await self.request({"op": "get", "id": task_id}))["task"])

    status = get

    async def wait(self, task_id: int, timeout: float | None = None, *, raise_on_failure: bool = False) -> dict[str, Any]:
        """Wait until the task is final (or ``timeout`` seconds passed); return it.

        Raises:
            TaskFailed: ``raise_on_failure`` and the task ended dead or cancelled.
            TimeoutError: ``timeout`` passed and the task is not final. When it is still ``ready`` and no
                connected worker serves its queue or handles its type, the message says so (one ``workers``
                request, made only then).
        """
        deadline = math.inf if timeout is None else anyio.current_time() + timeout
        while True:
            left = deadline - anyio.current_time()
            step = 60.0 if math.isinf(left) else max(0.0, min(left, 60.0))
            task = decode_task((await self.request({"op": "wait", "id": task_id, "timeout": step}))["task"])
            if task["state"] in FINAL_STATES:
                if raise_on_failure and task["state"] != "succeeded":
                    raise TaskFailed(task)
                return task
            if anyio.current_time() >= deadline:
                hint = ""
                if task["state"] == "ready":
                    try:
                        hint = no_worker_hint(task, await self.workers())
                    except (RunqError, OSError, TimeoutError):  # the hint is a courtesy: the timeout stands
                        pass
                raise TimeoutError(wait_timeout_message(task, timeout, hint))

    async def result(self, task_id: int, timeout: float | None = None) -> Any:
        """Wait for the task and return its result; raise ``TaskFailed`` if it did not succeed."""
        return (await self.wait(task_id, timeout, raise_on_failure=True))["result"]

    async def cancel(self, task_id: int) -> dict[str, Any]:
        """Cancel a queued or running task; return it.

        Sent again after a lost connection: when the first one was applied, the second finds the task
        cancelled already, and that task is returned (not ``InvalidState``).
        """
        call = self._calls.new({"op": "cancel", "id": task_id})
        try:
            reply = (await self._submit(call)).reply
        except InvalidState:
            if call.tries < 2:
                raise
            task = await self.get(task_id)
            if task["state"] != "cancelled":
                raise
            return task
        assert reply is not None
        return decode_task(reply["task"])

    async def retry(self, task_id: int) -> dict[str, Any]:
        """Bring a dead, cancelled or retry-waiting task back to ready now; return it."""
        return decode_task((await self.request({"op": "retry", "id": task_id}))["task"])

    async def events(self, task_id: int) -> list[dict[str, Any]]:
        """Return the task's timeline: every event, oldest first."""
        return list((await self.request({"op": "events", "id": task_id}))["events"])

    async def list_tasks(self, *, state: str | None = None, queue: str | None = None, type: str | None = None,
                         limit: int = 100, cursor: int | None = None) -> tuple[list[dict[str, Any]], int | None]:
        """Return a page of tasks, newest first, and the cursor of the next page (or ``None``)."""
        msg: dict[str, Any] = {"op": "list", "limit": limit}
        for k, v in (("state", state), ("queue", queue), ("type", type), ("cursor", cursor)):
            if v is not None:
                msg[k] = v
        reply = await self.request(msg)
        return [decode_task(t) for t in reply["tasks"]], reply.get("cursor")

    async def pause(self, queue: str) -> None:
        """Stop dispatching from ``queue`` (enqueue still accepted)."""
        await self.request({"op": "pause", "queue": queue})

    async def resume(self, queue: str) -> None:
        """Dispatch from ``queue`` again."""
        await self.request({"op": "resume", "queue": queue})

    async def queues(self) -> list[dict[str, Any]]:
        return list((await self.request({"op": "queues"}))["queues"])

    async def workers(self) -> list[dict[str, Any]]:
        return list((await self.request({"op": "workers"}))["workers"])

    async def task_types(self) -> list[dict[str, Any]]:
        """The task types the connected workers handle: ``[{"type", "workers", "queues"}]`` by type name."""
        return list((await self.request({"op": "types"}))["types"])

    async def drain(self, worker_id: str) -> dict[str, Any]:
        """Ask a connected worker to stop gracefully; return its worker map (now ``draining``).

        The worker gets no new task; it finishes what runs, hands back the rest and leaves.

        Raises:
            TaskNotFound: no connected worker has this id (code ``not_found``).
        """
        return dict((await self.request({"op": "drain", "worker": worker_id}))["worker"])

    # ------------------------------------------------------------------ periodic tasks (docs/schedules.md)
    @overload
    async def add_schedule(self, name: str, type: str, payload: Any = None, *, cron: str | None = None,
                           tz: str = "UTC", every: float | None = None, missed: str = "skip", max_missed: int = 10,
                           queue: str | None = None, priority: int | None = None, timeout: float | None = None,
                           retries: int | None = None, paused: bool = False) -> dict[str, Any]: ...
    @overload
    async def add_schedule(self, name: Any, /) -> list[dict[str, Any]]: ...

    async def add_schedule(self, name: Any, type: str | None = None, payload: Any = None, *,
                           cron: str | None = None, tz: str = "UTC", every: float | None = None,
                           missed: str = "skip", max_missed: int = 10, queue: str | None = None,
                           priority: int | None = None, timeout: float | None = None, retries: int | None = None,
                           paused: bool = False) -> dict[str, Any] | list[dict[str, Any]]:
        """Add a schedule (or replace the one of that name); return it as kept, with its ``next_fire``, once
        committed.

        ``add_schedule("nightly", "report", {"kind": "daily"}, cron="0 2 * * *", tz="Europe/Berlin")`` adds
        one by hand (exactly one of ``cron`` and ``every`` seconds). ``add_schedule(report)`` (a task
        definition, a list of them, or a module) registers the schedules declared with ``@runq.task(schedule=
        ...)`` and returns them, as a worker running them does when it connects.

        Raises:
            RemoteError: ``bad_request`` naming the field (a bad cron expression or zone, ...).
        """
        if type is None:
            return [await self._add_schedule(spec) for spec in schedule_specs_of(name)]
        return await self._add_schedule(schedule_spec(
            name, type, payload, cron=cron, tz=tz, every=every, missed=missed, max_missed=max_missed, queue=queue,
            priority=priority, timeout=timeout, retries=retries, paused=paused))

    async def _add_schedule(self, spec: ScheduleSpec) -> dict[str, Any]:
        reply = await self.request({"op": "schedule_add", "schedule": spec.entry()})
        return decode_task(dict(reply["schedule"]))

    async def schedules(self) -> list[dict[str, Any]]:
        """Every schedule by name, with its ``next_fire`` (unix time; None while paused) and ``last_fire``."""
        return [decode_task(dict(s)) for s in (await self.request({"op": "schedules"}))["schedules"]]

    async def pause_schedule(self, name: str) -> dict[str, Any]:
        """Stop a schedule firing (``not_found``: ``TaskNotFound``); return it."""
        return decode_task(dict((await self.request({"op": "schedule_pause", "name": name}))["schedule"]))

    async def resume_schedule(self, name: str) -> dict[str, Any]:
        """Fire again from the first fire time after now (what fell due while paused does not run)."""
        return decode_task(dict((await self.request({"op": "schedule_resume", "name": name}))["schedule"]))

    async def remove_schedule(self, name: str) -> None:
        """Remove a schedule (its tasks enqueued so far stay)."""
        await self.request({"op": "schedule_remove", "name": name})

    async def run_schedule_now(self, name: str) -> int:
        """Enqueue the schedule's task now, once (its fire times do not move); return the task's id."""
        return int((await self.request({"op": "schedule_run", "name": name}))["ids"][0])

    async def stats(self) -> dict[str, Any]:
        return dict((await self.request({"op": "stats"}))["stats"])

    async def ping(self) -> None:
        await self.request({"op": "ping"})

    # ------------------------------------------------------------------ limits and breakers (docs/limits.md)
    async def set_limit(self, scope: str, name: str, *, rate: float | str | None = None, period: float | None = None,
                        burst: int | None = None, concurrency: int | None = None, key: str = "") -> dict[str, Any]:
        """Set (or replace) the rate limit and/or concurrency cap of a queue or task type (``scope``: ``"queue"``
        or ``"type"``); with ``key``, one limit per value of that payload field. ``rate`` is tasks per ``period``
        seconds, or a string such as ``"10/s"``. Returns the limit map once the server committed it.

        Raises:
            ValueError: a rate string that is not of the form ``"10/s"``.
            RemoteError: ``bad_request`` for a setting out of range (docs/protocol.md 5.4).
        """
        msg = limit_message(scope, name, rate=rate, period=period, burst=burst, concurrency=concurrency, key=key)
        return dict((await self.request(msg))["limit"])

    async def remove_limit(self, scope: str, name: str, *, key: str = "") -> bool:
        """Remove a limit; False when that scope had none."""
        return bool((await self.request({"op": "remove_limit", "scope": scope, "name": name, "key": key}))["removed"])

    async def limits(self) -> list[dict[str, Any]]:
        """Every limit with its live status (docs/protocol.md 8.8)."""
        return list((await self.request({"op": "limits"}))["limits"])

    async def set_breaker(self, type: str, *, threshold: float | None = None, window: float | None = None,
                          min_calls: int | None = None, cooldown: float | None = None,
                          probes: int | None = None) -> dict[str, Any]:
        """Set (or replace) the circuit breaker of a task type; returns the breaker map (docs/protocol.md 8.9)."""
        msg = breaker_message(type, threshold=threshold, window=window, min_calls=min_calls, cooldown=cooldown,
                              probes=probes)
        return dict((await self.request(msg))["breaker"])

    async def remove_breaker(self, type: str) -> bool:
        """Remove a task type's breaker; False when it had none."""
        return bool((await self.request({"op": "remove_breaker", "type": type}))["removed"])

    async def open_breaker(self, type: str, reason: str = "") -> dict[str, Any]:
        """Open a task type's breaker by hand: its tasks wait until ``close_breaker``."""
        return dict((await self.request({"op": "open_breaker", "type": type, "reason": reason}))["breaker"])

    async def close_breaker(self, type: str, reason: str = "") -> dict[str, Any]:
        """Close a task type's breaker by hand: its tasks go again at once."""
        return dict((await self.request({"op": "close_breaker", "type": type, "reason": reason}))["breaker"])

    async def breakers(self) -> list[dict[str, Any]]:
        """Every breaker with its state and counters (docs/protocol.md 8.9)."""
        return list((await self.request({"op": "breakers"}))["breakers"])

    async def why(self, task_id: int) -> dict[str, Any] | None:
        """Why a ready task does not run yet (``reason``: ``rate_limit``, ``concurrency_cap``, ``breaker_open``,
        ``paused``, ``no_worker``, ``scheduled``), or None when nothing holds it."""
        why = (await self.request({"op": "why", "id": task_id}))["why"]
        return None if why is None else dict(why)

    async def server_events(self, *, since: int | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The server's stored events of no task (limits and breakers changed), oldest first."""
        msg: dict[str, Any] = {"op": "server_events", "limit": limit}
        if since is not None:
            msg["since"] = since
        return list((await self.request(msg))["events"])

    # ------------------------------------------------------------------ dead letters (docs/dead-letters.md)
    async def dead_list(self, *, queue: str | None = None, type: str | None = None, error: str | None = None,
                        since: float | None = None, until: float | None = None, limit: int = 100,
                        cursor: int | None = None) -> tuple[list[dict[str, Any]], int | None]:
        """A page of dead tasks, newest first, filtered by queue, type, error text (a substring) and the time
        they died (``since`` <= it < ``until``, unix times), and the cursor of the next page (or ``None``)."""
        reply = await self.request(dead_message("dead_list", queue, type, error, since, until, limit, cursor))
        return [decode_task(t) for t in reply["tasks"]], reply.get("cursor")

    async def dead_retry(self, *, queue: str | None = None, type: str | None = None, error: str | None = None,
                         since: float | None = None, until: float | None = None, limit: int = 100) -> dict[str, Any]:
        """Retry at most ``limit`` of the dead tasks these filters let through, the oldest first; return
        ``{"ids", "skipped", "more"}`` once committed (call again while ``more``)."""
        reply = await self.request(dead_message("dead_retry", queue, type, error, since, until, limit))
        return {"ids": list(reply["ids"]), "skipped": list(reply["skipped"]), "more": bool(reply["more"])}

    async def dead_delete(self, *, queue: str | None = None, type: str | None = None, error: str | None = None,
                          since: float | None = None, until: float | None = None, limit: int = 100) -> dict[str, Any]:
        """Delete at most ``limit`` of the dead tasks these filters let through (each becomes ``cancelled``, its
        timeline kept), the oldest first; return ``{"ids", "skipped", "more"}`` once committed."""
        reply = await self.request(dead_message("dead_delete", queue, type, error, since, until, limit))
        return {"ids": list(reply["ids"]), "skipped": list(reply["skipped"]), "more": bool(reply["more"])}

    async def subscribe(self, *, queues: list[str] | None = None, types: list[str] | None = None,
                        ids: list[int] | None = None, buffer: int = 10_000) -> EventStream:
        """Start receiving live events (task updates) matching the filters.

        Returns once the server confirmed the subscription; iterate the result with
        ``async for``. When this client falls behind, events beyond ``buffer`` are
        dropped; the server also drops for slow readers and then sends an event of
        kind ``dropped`` with the count.

        Subscribing again replaces the filters; the stream returned before ends once its
        buffered events are read. A server at its ``max_subscribers`` limit refuses with
        ``RemoteError`` code ``busy`` (the connection stays usable; try again later).
        """
        msg: dict[str, Any] = {"op": "subscribe"}
        for k, v in (("queues", queues), ("types", types), ("ids", ids)):
            if v is not None:
                msg[k] = list(v)
        old_send, old_receive = self._events_send, self._events_receive
        send, receive = anyio.create_memory_object_stream[dict[str, Any]](buffer)
        # events sent after the server took the new filters come before its answer: route them here now
        self._events_send, self._events_receive = send, receive
        try:
            await self.request(msg)
        except BaseException:
            # refused (e.g. 'busy'): the server kept the old filters, so what came meanwhile is the old stream's
            self._events_send, self._events_receive = old_send, old_receive
            send.close()
            while old_send is not None:
                try:
                    old_send.send_nowait(receive.receive_nowait())
                except (anyio.WouldBlock, anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    break
            receive.close()
            raise
        if old_send is not None:
            old_send.close()  # the earlier stream ends once its buffered events are read
        if old_receive is not None:  # (its sending side may be closed already: a lost connection ended it)
            self._replaced.append(old_receive)  # closed with the client
        return EventStream(receive)


class _Feed:
    """On asyncio, the protocol of the connection's transport in place of anyio's: bytes are cut into
    messages and routed to their calls as they arrive (``data_received``), so that a reply wakes its caller
    directly, not through the reader task first; reading stays on (anyio's stream pauses and resumes it on
    the selector around every ``receive``: two ``epoll_ctl`` per reply). The session's reader task only
    waits for ``ended``. What anyio's protocol is told about writing (pause, resume, loss) it is still told,
    since writes still go through anyio's stream.

    The transport and protocol are anyio's private attributes: when they are not there (another anyio, or
    trio), ``install`` returns None and the reader task reads as usual.
    """

    def __init__(self, client: Client, conn: Connection, outcome: list[BaseException | None], inner: Any,
                 transport: Any, ended: Any) -> None:
        self.client = client
        self.conn = conn
        self.outcome = outcome
        self.inner = inner  # anyio's protocol
        self.transport = transport
        self.ended = ended

    @classmethod
    def install(cls, stream: anyio.abc.ByteStream, client: Client, conn: Connection,
                outcome: list[BaseException | None]) -> _Feed | None:
        transport = getattr(stream, "_transport", None)
        inner: Any = getattr(stream, "_protocol", None)
        asyncio = sys.modules.get("asyncio")
        if (asyncio is None or not isinstance(transport, asyncio.Transport) or transport.is_closing()
                or not hasattr(inner, "read_queue") or getattr(inner, "is_at_eof", True)):
            return None
        feed = cls(client, conn, outcome, inner, transport, asyncio.Event())
        transport.set_protocol(feed)
        while inner.read_queue:  # (what anyio had received and not handed out yet)
            conn.receive_data(inner.read_queue.popleft())
        transport.resume_reading()
        feed.data_received(b"")
        return feed

    def data_received(self, data: bytes) -> None:
        if self.ended.is_set():
            return
        try:
            if data:
                self.conn.receive_data(data)
            for msg in self.conn.messages():
                if self.client._route(msg, self.outcome):
                    self._end()
                    return
        except ProtocolError as exc:
            self.client._unreadable(exc, self.outcome)
            self._end()

    def eof_received(self) -> bool:
        self.inner.eof_received()
        self._end()
        return True  # (the stream's own close closes the transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)
        self._end()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def _end(self) -> None:
        self.ended.set()
        self.transport.pause_reading()


class EventStream:
    """Live events from ``Client.subscribe``: ``async for event in stream``."""

    def __init__(self, receive: MemoryObjectReceiveStream[dict[str, Any]]) -> None:
        self._receive = receive

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        try:
            return decode_task(await self._receive.receive())
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        await self._receive.aclose()


