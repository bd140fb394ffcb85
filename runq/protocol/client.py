"""The client SDK: ``Client`` (async, anyio: trio or asyncio) and ``SyncClient`` (blocking).

Theory of operation
-------------------
A ``Client`` owns one TCP connection. Requests carry a correlation id
(``rid``); one reader task routes each reply to the request waiting for it, so
any number of requests may be in flight at once (pipelining). Outgoing frames
are appended to a buffer that one sender task writes with a single
``send_all`` per wake-up: many concurrent ``enqueue`` calls become one write.

Payloads, results and progress values are encoded with msgpack by this SDK;
the server never decodes them.
"""

from __future__ import annotations

import itertools
import math
import os
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, Self, TypeVar, overload

import anyio
import anyio.abc
import anyio.from_thread
from anyio.from_thread import BlockingPortal
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .address import DEFAULT_ADDRESS, parse_address
from .errors import ConnectionClosed, ProtocolError, TaskFailed, error_for_code
from .frames import DEFAULT_MAX_FRAME, Connection
from .messages import PROTOCOL_VERSION
from .tasks import Call, SyncTaskHandle, TaskHandle, client_closed, client_opened
from .values import decode_task, encode_value

__all__ = ["FINAL_STATES", "Client", "EventStream", "SyncClient"]

FINAL_STATES = frozenset({"succeeded", "dead", "cancelled"})
T = TypeVar("T")
R = TypeVar("R")


def _task_entry(type: str, payload: Any = None, *, queue: str | None = None, priority: int | None = None,
                delay: float | None = None, run_at: float | datetime | None = None, timeout: float | None = None,
                retries: int | None = None, key: str | None = None) -> dict[str, Any]:
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
    return entry


class _Pending:
    __slots__ = ("event", "reply")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.reply: dict[str, Any] | None = None


class Client:
    """An async connection to a runq server.

    Use as ``async with Client("127.0.0.1:7700") as client: ...``.

    Args:
        address: ``HOST:PORT`` of the server.
        token: shared secret, when the server requires one (default: ``RUNQ_TOKEN``).
        role: ``client`` (default) or ``watcher`` (read-only).
        connect_timeout: seconds to connect and be welcomed.
    """

    def __init__(self, address: str = DEFAULT_ADDRESS, *, token: str | None = None, role: str = "client",
                 connect_timeout: float = 10.0) -> None:
        self.address = address
        self.host, self.port = parse_address(address)
        self.token = token if token is not None else os.environ.get("RUNQ_TOKEN")
        self.role = role
        self.connect_timeout = connect_timeout
        self.welcome: dict[str, Any] = {}
        self._conn = Connection(DEFAULT_MAX_FRAME)
        self._stream: anyio.abc.ByteStream | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._rids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._buf: list[bytes] = []
        self._wake = anyio.Event()
        self._closed: BaseException | None = None
        self._events_send: MemoryObjectSendStream[dict[str, Any]] | None = None
        self._events_receive: MemoryObjectReceiveStream[dict[str, Any]] | None = None
        self._replaced: list[MemoryObjectReceiveStream[dict[str, Any]]] = []  # of earlier subscribes

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def connect(self) -> None:
        """Connect, say hello and start the reader and sender tasks."""
        try:
            with anyio.fail_after(self.connect_timeout):
                stream = await anyio.connect_tcp(self.host, self.port)
        except TimeoutError as exc:
            raise TimeoutError(f"cannot connect to {self.address}: no answer within {self.connect_timeout:g}s") from exc
        except OSError as exc:  # say where to, and why (anyio says "All connection attempts failed" with the why as cause)
            why = exc.__cause__ if exc.errno is None and isinstance(exc.__cause__, OSError) else exc
            if why.errno is not None:
                raise type(why)(why.errno, f"cannot connect to {self.address}: {why.strerror}") from exc
            raise OSError(f"cannot connect to {self.address}: {why}") from exc
        try:
            hello: dict[str, Any] = {"op": "hello", "version": PROTOCOL_VERSION, "role": self.role,
                                     "host": socket.gethostname(), "pid": os.getpid()}
            if self.token:
                hello["token"] = self.token
            await stream.send(self._conn.send(hello))
            with anyio.fail_after(self.connect_timeout):
                self.welcome = await self._read_one(stream)
        except BaseException:
            await stream.aclose()
            raise
        self._stream = stream
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._reader)
        self._tg.start_soon(self._sender)
        client_opened(self)

    async def _read_one(self, stream: anyio.abc.ByteStream) -> dict[str, Any]:
        while True:
            msg = self._conn.next_message()
            if msg is not None:
                if msg["op"] == "error":
                    raise error_for_code(str(msg.get("code")), str(msg.get("message")))
                return msg
            try:
                data = await stream.receive(65536)
            except (anyio.EndOfStream, anyio.BrokenResourceError) as exc:
                raise ConnectionClosed("server closed the connection during hello") from exc
            self._conn.receive_data(data)

    async def aclose(self) -> None:
        """Close the connection; outstanding requests fail with ``ConnectionClosed``."""
        client_closed(self)
        if self._tg is not None:
            tg, self._tg = self._tg, None
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)
        if self._stream is not None:
            with anyio.CancelScope(shield=True):
                await self._stream.aclose()
            self._stream = None
        self._fail_all(ConnectionClosed("client closed"))
        for receive in (*self._replaced, self._events_receive):
            if receive is not None:
                receive.close()
        self._replaced.clear()

    def _fail_all(self, exc: BaseException) -> None:
        if self._closed is None:
            self._closed = exc
        for p in self._pending.values():
            p.reply = None
            p.event.set()
        self._pending.clear()
        if self._events_send is not None:
            self._events_send.close()

    async def _reader(self) -> None:
        assert self._stream is not None
        conn = self._conn
        try:
            while True:
                for msg in conn.messages():
                    self._route(msg)
                data = await self._stream.receive(65536)
                conn.receive_data(data)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, ProtocolError) as exc:
            self._fail_all(ConnectionClosed(f"connection to {self.address} lost: {exc!r}"))

    def _route(self, msg: dict[str, Any]) -> None:
        op = msg["op"]
        if op == "event":
            if self._events_send is not None:
                try:
                    self._events_send.send_nowait(msg)
                except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    pass
            return
        rid = msg.get("rid")
        p = self._pending.pop(rid, None) if isinstance(rid, int) else None
        if p is not None:
            p.reply = msg
            p.event.set()
        elif op == "error":
            self._fail_all(error_for_code(str(msg.get("code")), str(msg.get("message"))))

    async def _sender(self) -> None:
        assert self._stream is not None
        try:
            while True:
                await self._wake.wait()
                self._wake = anyio.Event()
                if self._buf:
                    data = b"".join(self._buf)
                    self._buf.clear()
                    await self._stream.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            self._fail_all(ConnectionClosed(f"connection to {self.address} lost: {exc!r}"))

    def _send(self, msg: dict[str, Any]) -> None:
        self._buf.append(self._conn.send(msg))
        self._wake.set()

    async def request(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Send one request and return its reply.

        Raises:
            RemoteError: the server answered with an error frame (subclass by code).
            ConnectionClosed: the connection ended first.
        """
        if self._closed is not None:
            raise ConnectionClosed(f"not connected: {self._closed}")
        if self._tg is None:
            raise ConnectionClosed("not connected: use 'async with Client(...)' or await connect()")
        rid = next(self._rids)
        msg["rid"] = rid
        p = _Pending()
        self._pending[rid] = p
        self._send(msg)
        try:
            await p.event.wait()
        finally:
            self._pending.pop(rid, None)
        reply = p.reply
        if reply is None:
            raise ConnectionClosed(f"connection closed with a request outstanding: {self._closed}")
        if reply["op"] == "error":
            raise error_for_code(str(reply.get("code")), str(reply.get("message")))
        return reply

    # ------------------------------------------------------------------ tasks
    @overload
    async def enqueue(self, type: Call[R], /, *, queue: str | None = None, priority: int | None = None,
                      delay: float | None = None, run_at: float | datetime | None = None,
                      timeout: float | None = None, retries: int | None = None,
                      key: str | None = None) -> TaskHandle[R]: ...
    @overload
    async def enqueue(self, type: str, payload: Any = None, *, queue: str | None = None,
                      priority: int | None = None, delay: float | None = None,
                      run_at: float | datetime | None = None, timeout: float | None = None,
                      retries: int | None = None, key: str | None = None) -> int: ...

    async def enqueue(self, type: str | Call[Any], payload: Any = None, *, queue: str | None = None,
                      priority: int | None = None, delay: float | None = None,
                      run_at: float | datetime | None = None, timeout: float | None = None,
                      retries: int | None = None, key: str | None = None) -> int | TaskHandle[Any]:
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
        """
        if isinstance(type, Call):
            if payload is not None:
                raise TypeError("enqueue(call): the arguments are bound in the call, there is no payload")
            entry = type.entry(queue=queue, priority=priority, delay=delay, run_at=run_at, timeout=timeout,
                               retries=retries, key=key)
            reply = await self.request({"op": "enqueue", "tasks": [entry]})
            return TaskHandle(self, int(reply["ids"][0]), type.task)
        entry = _task_entry(type, payload, queue=queue, priority=priority, delay=delay, run_at=run_at,
                            timeout=timeout, retries=retries, key=key)
        reply = await self.request({"op": "enqueue", "tasks": [entry]})
        return int(reply["ids"][0])

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
        items: list[Mapping[str, Any] | Call[Any]] = list(tasks)
        entries = [t.entry() if isinstance(t, Call) else _task_entry(**dict(t)) for t in items]
        reply = await self.request({"op": "enqueue", "tasks": entries})
        ids = [int(i) for i in reply["ids"]]
        calls = [t for t in items if isinstance(t, Call)]
        if items and len(calls) == len(items):
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
            TimeoutError: ``timeout`` passed and the task is not final.
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
                raise TimeoutError(f"task {task_id} is still {task['state']} after {timeout}s")

    async def result(self, task_id: int, timeout: float | None = None) -> Any:
        """Wait for the task and return its result; raise ``TaskFailed`` if it did not succeed."""
        return (await self.wait(task_id, timeout, raise_on_failure=True))["result"]

    async def cancel(self, task_id: int) -> dict[str, Any]:
        """Cancel a queued or running task; return it."""
        return decode_task((await self.request({"op": "cancel", "id": task_id}))["task"])

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

    async def stats(self) -> dict[str, Any]:
        return dict((await self.request({"op": "stats"}))["stats"])

    async def ping(self) -> None:
        await self.request({"op": "ping"})

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
        if old_send is not None and old_receive is not None:
            old_send.close()  # the earlier stream ends once its buffered events are read
            self._replaced.append(old_receive)
        return EventStream(receive)


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


def _portal_thread() -> tuple[BlockingPortal, threading.Thread]:
    """A blocking portal whose asyncio loop runs in a daemon thread of its own.

    Not anyio's ``start_blocking_portal``: its loop runs in a thread pool's worker, which the interpreter
    joins at exit, so a script that never closed its ``SyncClient`` hung at exit for ever.
    """
    from concurrent.futures import Future

    ready: Future[BlockingPortal] = Future()

    async def serve() -> None:
        async with BlockingPortal() as portal:
            ready.set_result(portal)
            await portal.sleep_until_stopped()

    def main() -> None:
        try:
            anyio.run(serve, backend="asyncio")
        except BaseException as exc:  # noqa: BLE001 - handed to the thread that waits for the portal
            if not ready.done():
                ready.set_exception(exc)

    thread = threading.Thread(target=main, name="runq-sync-client", daemon=True)
    thread.start()
    return ready.result(), thread


class SyncClient:
    """A blocking client for scripts and WSGI apps: the ``Client`` API without ``await``.

    It runs a ``Client`` on an event loop in a background (daemon) thread. Close it (or use ``with``)
    to end the connection; a script that does not still exits.

    Args:
        address: ``HOST:PORT`` of the server.
        token: shared secret (default ``RUNQ_TOKEN``).
    """

    def __init__(self, address: str = DEFAULT_ADDRESS, *, token: str | None = None, role: str = "client",
                 connect_timeout: float = 10.0) -> None:
        self._portal, self._thread = _portal_thread()
        self._open = True
        self._client = Client(address, token=token, role=role, connect_timeout=connect_timeout)
        # enter and exit the client's task group in one task of the portal's loop
        self._client_cm = self._portal.wrap_async_context_manager(self._client)
        try:
            self._client_cm.__enter__()
        except BaseException:
            self._stop_loop()
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection and stop the background loop."""
        if self._open:
            self._open = False
            try:
                self._client_cm.__exit__(None, None, None)
            finally:
                self._stop_loop()

    def _stop_loop(self) -> None:
        self._portal.call(self._portal.stop, True)
        self._thread.join()

    def _call(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        return self._portal.call(lambda: fn(*args, **kw))

    @overload
    def enqueue(self, type: Call[R], payload: None = None, **options: Any) -> SyncTaskHandle[R]: ...
    @overload
    def enqueue(self, type: str, payload: Any = None, **options: Any) -> int: ...

    def enqueue(self, type: str | Call[Any], payload: Any = None, **options: Any) -> int | SyncTaskHandle[Any]:
        """``Client.enqueue``, blocking: a typed ``Call`` gives a ``SyncTaskHandle``, a type name an id."""
        if isinstance(type, Call):
            handle = self._call(self._client.enqueue, type, payload, **options)
            return SyncTaskHandle(self, handle.id, type.task)
        return int(self._call(self._client.enqueue, type, payload, **options))

    @overload
    def enqueue_many(self, tasks: Iterable[Call[R]]) -> list[SyncTaskHandle[R]]: ...
    @overload
    def enqueue_many(self, tasks: Iterable[Mapping[str, Any]]) -> list[int]: ...

    def enqueue_many(self, tasks: Iterable[Mapping[str, Any]] | Iterable[Call[Any]]
                     ) -> list[int] | list[SyncTaskHandle[Any]]:
        """``Client.enqueue_many``, blocking."""
        out = list(self._call(self._client.enqueue_many, list(tasks)))
        if out and isinstance(out[0], TaskHandle):
            return [SyncTaskHandle(self, h.id, h.task) for h in out]
        return [int(i) for i in out]

    def get(self, task_id: int) -> dict[str, Any]:
        return dict(self._call(self._client.get, task_id))

    status = get

    def wait(self, task_id: int, timeout: float | None = None, *, raise_on_failure: bool = False) -> dict[str, Any]:
        return dict(self._call(self._client.wait, task_id, timeout, raise_on_failure=raise_on_failure))

    def result(self, task_id: int, timeout: float | None = None) -> Any:
        return self._call(self._client.result, task_id, timeout)

    def cancel(self, task_id: int) -> dict[str, Any]:
        return dict(self._call(self._client.cancel, task_id))

    def retry(self, task_id: int) -> dict[str, Any]:
        return dict(self._call(self._client.retry, task_id))

    def events(self, task_id: int) -> list[dict[str, Any]]:
        return list(self._call(self._client.events, task_id))

    def list_tasks(self, **kw: Any) -> tuple[list[dict[str, Any]], int | None]:
        tasks, cursor = self._call(self._client.list_tasks, **kw)
        return list(tasks), cursor

    def pause(self, queue: str) -> None:
        self._call(self._client.pause, queue)

    def resume(self, queue: str) -> None:
        self._call(self._client.resume, queue)

    def queues(self) -> list[dict[str, Any]]:
        return list(self._call(self._client.queues))

    def workers(self) -> list[dict[str, Any]]:
        return list(self._call(self._client.workers))

    def task_types(self) -> list[dict[str, Any]]:
        return list(self._call(self._client.task_types))

    def drain(self, worker_id: str) -> dict[str, Any]:
        return dict(self._call(self._client.drain, worker_id))

    def stats(self) -> dict[str, Any]:
        return dict(self._call(self._client.stats))

    def ping(self) -> None:
        self._call(self._client.ping)

