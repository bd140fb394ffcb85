"""The blocking client SDK: ``SyncClient``, for scripts and WSGI apps.

Theory of operation
-------------------
``SyncClient`` drives the same sans-IO pieces as ``Client``, the frame ``Connection`` and the request
rules of ``calls.Calls``, over a plain blocking socket: a call writes its request and reads until its
reply has come, in the calling thread. No background thread, no event loop, no thread hop: a sequential
call costs one round trip plus the framing.

When the connection is lost (the server restarted, a network cut), the call reconnects by itself, with
the same backoff and the same rules as ``Client`` (docs/clients.md): an ``enqueue`` carries an
idempotency token, so sending it again never creates a task twice.

Thread safety: one call at a time per ``SyncClient``. A lock serialises the calls of several threads
(each waits for the one before to finish); for calls in parallel, use one ``SyncClient`` per thread or
``Client`` on an event loop.
"""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Self, TypeVar, overload

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
from .client import (
    _NIL,
    FINAL_STATES,
    _enqueue_entry,
    _many_entries,
    _send_limit,
    _too_large_to_read,
    _too_large_to_send,
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
from .frames import DEFAULT_MAX_FRAME, DEFAULT_MAX_REPLY, Connection, reply_limit
from .limits import breaker_message, limit_message
from .retry_policy import RetryPolicy
from .tasks import Call, SyncTaskHandle, no_worker_hint, schedule_spec, schedule_specs_of, wait_timeout_message
from .tls import TLSOption, client_context, wrap_socket
from .values import decode_task

__all__ = ["SyncClient"]

R = TypeVar("R")


class _Lost(Exception):
    """The connection ended under a call (internal: the call reconnects)."""

    def __init__(self, error: BaseException | None = None) -> None:
        super().__init__(str(error))
        self.error = error  # the server's error frame that closed it, caused by the requests


def _answer(call: Request) -> dict[str, Any]:
    """``call``'s reply; an error frame is raised (``RemoteError``, subclass by code)."""
    reply = call.reply
    assert reply is not None
    if reply["op"] == "error":
        raise error_for_code(str(reply.get("code")), str(reply.get("message")))
    return reply


class SyncClient:
    """A blocking client: the ``Client`` API without ``await``. It survives the server's restarts.

    Use as ``with SyncClient() as client: ...`` (or call ``close()``; a script that does not still exits).

    Args:
        address: ``HOST:PORT``, several of them (comma-separated or a sequence) to try in order, or ``None``
            for ``RUNQ_SERVER`` (default ``127.0.0.1:7700``).
        token: shared secret (default ``RUNQ_TOKEN``).
        role: ``client`` (default) or ``watcher`` (read-only).
        connect_timeout: seconds to connect to one address and be welcomed.
        retry_for: seconds a call keeps reconnecting after the connection was lost before it fails with
            ``ConnectionClosed``.
        backoff: the delays between reconnection attempts (default: 50 ms doubling up to 2 s, jittered).
        max_frame: the largest frame body this client reads (default: the server's ``max_reply``, from its
            ``welcome``, which every frame it sends respects; 64 MiB + 64 KiB until then): an answer larger than that
            fails its call with ``FrameTooLarge`` (docs/clients.md).
        sleep, clock: how to wait and what time it is (injected by tests; ``time.sleep``, ``time.monotonic``).
        tls: TLS to the server, as ``Client``'s (docs/tls.md): ``True``, a CA file, an ``ssl.SSLContext``,
            ``False``, or ``None`` for ``RUNQ_TLS_CA`` / ``RUNQ_TLS`` (default: plain TCP).

    Raises:
        TLSError: the TLS handshake failed, or ``tls`` names a CA file that cannot be read.
    """

    def __init__(self, address: str | Sequence[str] | None = None, *, token: str | None = None,
                 role: str = "client", connect_timeout: float = 10.0, retry_for: float = 30.0,
                 backoff: Backoff | None = None, max_frame: int | None = None,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
                 tls: TLSOption = None) -> None:
        #: the largest frame body this client reads: the caller's ``max_frame``, else the server's ``max_reply``
        self.max_frame = max_frame if max_frame is not None else DEFAULT_MAX_REPLY
        self._max_frame_cap = max_frame
        self.addresses = server_addresses(address)
        self.address = format_address(*self.addresses[0])
        self.token = server_token(token)
        #: the TLS settings of the connections (None: plain TCP)
        self.tls = client_context(tls)
        self.role = role
        self.connect_timeout = connect_timeout
        self.retry_for = retry_for
        self.backoff = backoff or Backoff()
        self.welcome: dict[str, Any] = {}
        self._send_limit = DEFAULT_MAX_FRAME + 4  # the largest frame the server reads (its welcome's max_frame)
        #: connections made so far (1 after the constructor; one more per reconnection)
        self.connections = 0
        self._sleep = sleep
        self._clock = clock
        self._calls = Calls(on_fork=self._forked)
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._conn = Connection(self.max_frame)
        self._preferred = 0
        self._closed = False
        self._reopen = False  # the socket was closed by this client, not lost: connect again without waiting
        self._sock, self._conn = self._open()  # the first connection fails at once (wrong address, token)

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (a call in another thread fails with ``ConnectionClosed``)."""
        self._closed = True
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a call blocked in recv in another thread
            except OSError:
                pass
            sock.close()

    def _forked(self) -> None:
        """In the child of a ``fork()`` (``Calls.forked`` gave it another client id): the parent's connection is
        left to the parent, not shared (its descriptor is closed here, with no shutdown, which would end the
        connection for the parent too); the next call connects anew. The lock is made anew: a thread of the
        parent may have held it, and that thread is not in the child."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        self._conn = Connection(self.max_frame)
        self._lock = threading.Lock()
        self._reopen = True

    def _open(self) -> tuple[socket.socket, Connection]:
        """One pass over the addresses, the one that answered last first."""
        n = len(self.addresses)
        errors: list[BaseException] = []
        for i in range(n):
            index = (self._preferred + i) % n
            host, port = self.addresses[index]
            address = format_address(host, port)
            try:
                sock, conn = self._open_one(host, port)
            except RemoteError as exc:
                if exc.code not in TRANSIENT_HELLO_ERRORS:
                    raise
                errors.append(ConnectionClosed(f"{address} refused the connection: {exc}"))
                continue
            except (OSError, ConnectionClosed) as exc:  # (socket.timeout is a TimeoutError, an OSError)
                errors.append(connect_error(address, exc))
                continue
            self._preferred = index
            self.address = address
            self.connections += 1
            return sock, conn
        if len(errors) == 1:
            raise errors[0]
        raise ConnectionClosed("no server answered: " + "; ".join(str(e) for e in errors)) from errors[-1]

    def _open_one(self, host: str, port: int) -> tuple[socket.socket, Connection]:
        sock = socket.create_connection((host, port), timeout=self.connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small requests go out at once
            if self.tls is not None:  # (the handshake within the connect timeout, as the hello)
                sock = wrap_socket(sock, self.tls, host, format_address(host, port))
            conn = Connection(self.max_frame)
            sock.sendall(conn.send(hello_message(self.role, self.token)))
            answer = b""  # the peer's first bytes: what it is, when it is not a runq server
            while True:
                try:
                    msg = conn.next_message()
                except ProtocolError as exc:  # (an HTTP answer reads as a frame of 1213486160 bytes)
                    raise NotRunqServer(format_address(host, port), answer) from exc
                if msg is not None:
                    break
                data = sock.recv(65536)
                if not data:
                    if looks_like(answer):
                        raise NotRunqServer(format_address(host, port), answer)
                    raise ConnectionClosed("the server closed the connection during hello")
                answer += data[:max(0, 64 - len(answer))]
                conn.receive_data(data)
            if msg["op"] not in ("welcome", "error"):
                raise NotRunqServer(format_address(host, port), answer)
            if msg["op"] == "error":
                raise error_for_code(str(msg.get("code")), str(msg.get("message")))
            sock.settimeout(None)
        except BaseException:
            sock.close()
            raise
        self.welcome = msg
        self._send_limit = _send_limit(msg)
        self.max_frame = conn.max_frame = reply_limit(msg, self._max_frame_cap)
        return sock, conn

    # ------------------------------------------------------------------ calls
    def request(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Send one request and return its reply, reconnecting and resending as ``Client`` does.

        Raises:
            RemoteError: the server answered with an error frame (subclass by code).
            ConnectionClosed: closed, or no server answered for ``retry_for`` seconds after the connection
                was lost, or it was lost after a request that is not sent twice (``retry``) was sent.
        """
        return _answer(self._call(msg))

    def _call(self, msg: dict[str, Any], checked: bool = False) -> Request:
        """Make the call of ``msg`` and carry it out; return it with its reply (maybe an error frame).

        All under the lock: one call at a time, and an enqueue's ``seq`` handed out in the order the calls
        are made (two threads must never get the same one: the second would be answered with the first's
        task id, and its own task never created).
        """
        with self._lock:
            call = self._calls.new(msg, checked)
            try:
                self._exchange(call)
            finally:
                if call.reply is None:  # (a reply has marked it done already)
                    self._calls.done(call)
        return call

    def _exchange(self, call: Request) -> None:
        give_up: float | None = None
        while True:
            if self._closed:
                raise ConnectionClosed("not connected: client closed")
            sock = self._sock
            if sock is not None:  # (None: an earlier call lost the connection and gave up)
                try:
                    self._send_and_read(sock, call)
                    if self.backoff.failures:
                        self.backoff.reset()  # a session that worked: the next loss starts the delays over
                    return
                except _Lost as lost:
                    self._drop()
                    again, failed = self._calls.lost(lost.error)
                    if failed:
                        raise failed[0].error or ConnectionClosed("connection lost") from None
                    assert again == [call]
            if give_up is None:
                give_up = self._clock() + self.retry_for
            self._reconnect(give_up)

    def _send_and_read(self, sock: socket.socket, call: Request) -> None:
        conn = self._conn
        calls = self._calls
        data = conn.send(calls.message(call))
        if len(data) > self._send_limit:
            raise _too_large_to_send(call, len(data), self._send_limit)
        call.sent = True  # (before the write: the server may read part of it)
        call.tries += 1
        try:
            try:
                sock.sendall(data)
            except BaseException as exc:
                if not isinstance(exc, OSError):
                    # interrupted mid-write (KeyboardInterrupt, a green thread's timeout): part of the frame may
                    # be on the socket, and the server would read the next call's frame as the rest of it. The
                    # socket is dropped, not shared with the next call, which connects again.
                    self._drop(reopen=True)
                raise
            while True:  # (the reply comes after the request: read first; what was buffered before is read too)
                chunk = sock.recv(65536)
                if not chunk:
                    raise _Lost()
                conn.receive_data(chunk)
                while (msg := conn.next_message()) is not None:
                    mine = calls.reply(msg) is call
                    if mine:
                        call.reply = msg
                    if msg["op"] == "error":
                        if msg.get("rid") is None:  # (closes the connection, names no request: calls.py rule 4)
                            raise _Lost(closing_error(msg))
                        if str(msg.get("code")) not in REQUEST_ERROR_CODES:  # the server closes the connection after it
                            if mine:
                                self._drop(reopen=True)  # (this call has its answer; the next connects again)
                                return
                            raise _Lost()
                    if mine:
                        return
                    # anything else (a late reply to a call given up on) is not for anyone now
        except (OSError, ProtocolError) as exc:
            if self._closed:
                raise ConnectionClosed("not connected: client closed") from exc
            if not isinstance(exc, ProtocolError):
                raise _Lost() from exc
            if isinstance(exc, FrameTooLarge) and exc.rid == call.rid:  # (its answer: it would come again, for ever)
                self._drop(reopen=True)
                raise _too_large_to_read(call, exc, self.max_frame) from None
            raise _Lost(exc) from exc  # (what this client cannot read, naming no call: calls.py rule 4)

    def _drop(self, reopen: bool = False) -> None:
        """Close the socket. ``reopen``: closed by this client, not lost: the next call connects at once."""
        sock, self._sock = self._sock, None
        self._reopen = reopen
        if sock is not None:
            sock.close()

    def _reconnect(self, give_up: float) -> None:
        """Try the addresses, ``backoff`` apart (the first time at once after ``_drop(reopen=True)``), until
        one answers; raise once ``give_up`` passed."""
        at_once, self._reopen = self._reopen, False
        while True:
            if not at_once:
                self._sleep(self.backoff.next())
            at_once = False
            if self._closed:
                raise ConnectionClosed("not connected: client closed")
            try:
                self._sock, self._conn = self._open()
                return
            except RemoteError as exc:  # refused for good (token, version): no use waiting
                raise ConnectionClosed(f"connection to {self.address} lost; reconnecting was refused: {exc}") from exc
            except (OSError, RunqError) as exc:
                if self._clock() >= give_up:
                    raise ConnectionClosed(f"connection to {self.address} lost and no server answered for "
                                           f"{self.retry_for:g}s: {exc}") from exc

    # ------------------------------------------------------------------ tasks
    @overload
    def enqueue(self, type: Call[R], /, *, queue: str | None = None, priority: int | None = None,
                delay: float | None = None, run_at: float | datetime | None = None, timeout: float | None = None,
                retries: int | None = None, key: str | None = None,
                requires: dict[str, str] | None = None, retry_policy: RetryPolicy | None = None,
                coalesce_key: str | None = None, coalesce: str | None = None, limit_key: str | None = None) -> SyncTaskHandle[R]: ...
    @overload
    def enqueue(self, type: str, payload: Any = None, *, queue: str | None = None, priority: int | None = None,
                delay: float | None = None, run_at: float | datetime | None = None, timeout: float | None = None,
                retries: int | None = None, key: str | None = None,
                requires: dict[str, str] | None = None, retry_policy: RetryPolicy | None = None,
                coalesce_key: str | None = None, coalesce: str | None = None, limit_key: str | None = None) -> int: ...

    def enqueue(self, type: str | Call[Any], payload: Any = None, *, queue: str | None = None,
                priority: int | None = None, delay: float | None = None, run_at: float | datetime | None = None,
                timeout: float | None = None, retries: int | None = None,
                key: str | None = None,
                requires: dict[str, str] | None = None, retry_policy: RetryPolicy | None = None,
                coalesce_key: str | None = None, coalesce: str | None = None, limit_key: str | None = None) -> int | SyncTaskHandle[Any]:
        """Enqueue one task once it is committed: a typed task's bound ``Call`` gives its ``SyncTaskHandle``,
        a type name its id (``Client.enqueue`` says more)."""
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
        task_id = int(_answer(self._call({"op": "enqueue", "tasks": [entry]}, checked))["ids"][0])
        return SyncTaskHandle(self, task_id, type.task) if isinstance(type, Call) else task_id

    @overload
    def enqueue_many(self, tasks: Iterable[Call[R]]) -> list[SyncTaskHandle[R]]: ...
    @overload
    def enqueue_many(self, tasks: Iterable[Mapping[str, Any]]) -> list[int]: ...

    def enqueue_many(self, tasks: Iterable[Mapping[str, Any]] | Iterable[Call[Any]]
                     ) -> list[int] | list[SyncTaskHandle[Any]]:
        """Enqueue many tasks in one request (one commit); return their ids (typed: handles) in order."""
        entries, calls = _many_entries(tasks)
        ids = [int(i) for i in self.request({"op": "enqueue", "tasks": entries})["ids"]]
        if calls is not None:
            return [SyncTaskHandle(self, i, c.task) for i, c in zip(ids, calls, strict=True)]
        return ids

    def get(self, task_id: int) -> dict[str, Any]:
        """Return the task as a map (payload, result, progress decoded)."""
        return decode_task(self.request({"op": "get", "id": task_id})["task"])

    status = get

    def wait(self, task_id: int, timeout: float | None = None, *, raise_on_failure: bool = False) -> dict[str, Any]:
        """Wait until the task is final (or ``timeout`` seconds passed); return it.

        Raises:
            TaskFailed: ``raise_on_failure`` and the task ended dead or cancelled.
            TimeoutError: ``timeout`` passed and the task is not final (``Client.wait``: the message says
                when no connected worker serves its queue or handles its type).
        """
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            step = 60.0 if math.isinf(left) else max(0.0, min(left, 60.0))
            task = decode_task(self.request({"op": "wait", "id": task_id, "timeout": step})["task"])
            if task["state"] in FINAL_STATES:
                if raise_on_failure and task["state"] != "succeeded":
                    raise TaskFailed(task)
                return task
            if time.monotonic() >= deadline:
                hint = ""
                if task["state"] == "ready":
                    try:
                        hint = no_worker_hint(task, self.workers())
                    except (RunqError, OSError):  # the hint is a courtesy: the timeout stands
                        pass
                raise TimeoutError(wait_timeout_message(task, timeout, hint))

    def result(self, task_id: int, timeout: float | None = None) -> Any:
        """Wait for the task and return its result; raise ``TaskFailed`` if it did not succeed."""
        return self.wait(task_id, timeout, raise_on_failure=True)["result"]

    def cancel(self, task_id: int) -> dict[str, Any]:
        """Cancel a queued or running task; return it (a resent cancel that finds it cancelled returns it)."""
        call = self._call({"op": "cancel", "id": task_id})
        try:
            reply = _answer(call)
        except InvalidState:
            if call.tries < 2:
                raise
            task = self.get(task_id)
            if task["state"] != "cancelled":
                raise
            return task
        return decode_task(reply["task"])

    def retry(self, task_id: int) -> dict[str, Any]:
        """Bring a dead, cancelled or retry-waiting task back to ready now; return it (never sent twice)."""
        return decode_task(self.request({"op": "retry", "id": task_id})["task"])

    def events(self, task_id: int) -> list[dict[str, Any]]:
        """Return the task's timeline: every event, oldest first."""
        return list(self.request({"op": "events", "id": task_id})["events"])

    def list_tasks(self, *, state: str | None = None, queue: str | None = None, type: str | None = None,
                   limit: int = 100, cursor: int | None = None) -> tuple[list[dict[str, Any]], int | None]:
        """Return a page of tasks, newest first, and the cursor of the next page (or ``None``)."""
        msg: dict[str, Any] = {"op": "list", "limit": limit}
        for k, v in (("state", state), ("queue", queue), ("type", type), ("cursor", cursor)):
            if v is not None:
                msg[k] = v
        reply = self.request(msg)
        return [decode_task(t) for t in reply["tasks"]], reply.get("cursor")

    def pause(self, queue: str) -> None:
        """Stop dispatching from ``queue`` (enqueue still accepted)."""
        self.request({"op": "pause", "queue": queue})

    def resume(self, queue: str) -> None:
        """Dispatch from ``queue`` again."""
        self.request({"op": "resume", "queue": queue})

    def queues(self) -> list[dict[str, Any]]:
        """Every queue with its counts (docs/protocol.md 8.3)."""
        return list(self.request({"op": "queues"})["queues"])

    def workers(self) -> list[dict[str, Any]]:
        """Every connected worker (docs/protocol.md 8.4)."""
        return list(self.request({"op": "workers"})["workers"])

    def task_types(self) -> list[dict[str, Any]]:
        """The task types the connected workers handle (``Client.task_types``)."""
        return list(self.request({"op": "types"})["types"])

    def drain(self, worker_id: str) -> dict[str, Any]:
        """Ask a connected worker to stop gracefully; return its worker map (now ``draining``)."""
        return dict(self.request({"op": "drain", "worker": worker_id})["worker"])

    # ------------------------------------------------------------------ periodic tasks (docs/schedules.md)
    @overload
    def add_schedule(self, name: str, type: str, payload: Any = None, *, cron: str | None = None,
                     tz: str = "UTC", every: float | None = None, missed: str = "skip", max_missed: int = 10,
                     queue: str | None = None, priority: int | None = None, timeout: float | None = None,
                     retries: int | None = None, paused: bool = False) -> dict[str, Any]: ...
    @overload
    def add_schedule(self, name: Any, /) -> list[dict[str, Any]]: ...

    def add_schedule(self, name: Any, type: str | None = None, payload: Any = None, *, cron: str | None = None,
                     tz: str = "UTC", every: float | None = None, missed: str = "skip", max_missed: int = 10,
                     queue: str | None = None, priority: int | None = None, timeout: float | None = None,
                     retries: int | None = None, paused: bool = False) -> dict[str, Any] | list[dict[str, Any]]:
        """``Client.add_schedule``: a schedule by hand, or those a task definition (or module) declares."""
        if type is None:
            specs = schedule_specs_of(name)
        else:
            specs = [schedule_spec(name, type, payload, cron=cron, tz=tz, every=every, missed=missed,
                                   max_missed=max_missed, queue=queue, priority=priority, timeout=timeout,
                                   retries=retries, paused=paused)]
        kept = [decode_task(dict(self.request({"op": "schedule_add", "schedule": s.entry()})["schedule"]))
                for s in specs]
        return kept if type is None else kept[0]

    def schedules(self) -> list[dict[str, Any]]:
        """Every schedule by name, with its ``next_fire`` and ``last_fire`` (``Client.schedules``)."""
        return [decode_task(dict(s)) for s in self.request({"op": "schedules"})["schedules"]]

    def pause_schedule(self, name: str) -> dict[str, Any]:
        """Stop a schedule firing; return it."""
        return decode_task(dict(self.request({"op": "schedule_pause", "name": name})["schedule"]))

    def resume_schedule(self, name: str) -> dict[str, Any]:
        """Fire again from the first fire time after now; return it."""
        return decode_task(dict(self.request({"op": "schedule_resume", "name": name})["schedule"]))

    def remove_schedule(self, name: str) -> None:
        """Remove a schedule (its tasks enqueued so far stay)."""
        self.request({"op": "schedule_remove", "name": name})

    def run_schedule_now(self, name: str) -> int:
        """Enqueue the schedule's task now, once; return the task's id."""
        return int(self.request({"op": "schedule_run", "name": name})["ids"][0])

    def stats(self) -> dict[str, Any]:
        """The server's counters (docs/protocol.md 8.5)."""
        return dict(self.request({"op": "stats"})["stats"])

    def ping(self) -> None:
        """One round trip to the server."""
        self.request({"op": "ping"})

    # ------------------------------------------------------------------ limits and breakers (docs/limits.md)
    def set_limit(self, scope: str, name: str, *, rate: float | str | None = None, period: float | None = None,
                        burst: int | None = None, concurrency: int | None = None, key: str = "") -> dict[str, Any]:
        """Set (or replace) the rate limit and/or concurrency cap of a queue or task type (``scope``: ``"queue"``
        or ``"type"``); with ``key``, one limit per value of that payload field. ``rate`` is tasks per ``period``
        seconds, or a string such as ``"10/s"``. Returns the limit map once the server committed it.

        Raises:
            ValueError: a rate string that is not of the form ``"10/s"``.
            RemoteError: ``bad_request`` for a setting out of range (docs/protocol.md 5.4).
        """
        msg = limit_message(scope, name, rate=rate, period=period, burst=burst, concurrency=concurrency, key=key)
        return dict(self.request(msg)["limit"])

    def remove_limit(self, scope: str, name: str, *, key: str = "") -> bool:
        """Remove a limit; False when that scope had none."""
        return bool(self.request({"op": "remove_limit", "scope": scope, "name": name, "key": key})["removed"])

    def limits(self) -> list[dict[str, Any]]:
        """Every limit with its live status (docs/protocol.md 8.8)."""
        return list(self.request({"op": "limits"})["limits"])

    def set_breaker(self, type: str, *, threshold: float | None = None, window: float | None = None,
                          min_calls: int | None = None, cooldown: float | None = None,
                          probes: int | None = None) -> dict[str, Any]:
        """Set (or replace) the circuit breaker of a task type; returns the breaker map (docs/protocol.md 8.9)."""
        msg = breaker_message(type, threshold=threshold, window=window, min_calls=min_calls, cooldown=cooldown,
                              probes=probes)
        return dict(self.request(msg)["breaker"])

    def remove_breaker(self, type: str) -> bool:
        """Remove a task type's breaker; False when it had none."""
        return bool(self.request({"op": "remove_breaker", "type": type})["removed"])

    def open_breaker(self, type: str, reason: str = "") -> dict[str, Any]:
        """Open a task type's breaker by hand: its tasks wait until ``close_breaker``."""
        return dict(self.request({"op": "open_breaker", "type": type, "reason": reason})["breaker"])

    def close_breaker(self, type: str, reason: str = "") -> dict[str, Any]:
        """Close a task type's breaker by hand: its tasks go again at once."""
        return dict(self.request({"op": "close_breaker", "type": type, "reason": reason})["breaker"])

    def breakers(self) -> list[dict[str, Any]]:
        """Every breaker with its state and counters (docs/protocol.md 8.9)."""
        return list(self.request({"op": "breakers"})["breakers"])

    def why(self, task_id: int) -> dict[str, Any] | None:
        """Why a ready task does not run yet (``reason``: ``rate_limit``, ``concurrency_cap``, ``breaker_open``,
        ``paused``, ``no_worker``, ``scheduled``), or None when nothing holds it."""
        why = self.request({"op": "why", "id": task_id})["why"]
        return None if why is None else dict(why)

    # ------------------------------------------------------------------ dead letters (docs/dead-letters.md)
    def dead_list(self, *, queue: str | None = None, type: str | None = None, error: str | None = None,
                  since: float | None = None, until: float | None = None, limit: int = 100,
                  cursor: int | None = None) -> tuple[list[dict[str, Any]], int | None]:
        """A page of dead tasks, newest first, and the cursor of the next page (``Client.dead_list``)."""
        reply = self.request(dead_message("dead_list", queue, type, error, since, until, limit, cursor))
        return [decode_task(t) for t in reply["tasks"]], reply.get("cursor")

    def dead_retry(self, *, queue: str | None = None, type: str | None = None, error: str | None = None,
                   since: float | None = None, until: float | None = None, limit: int = 100) -> dict[str, Any]:
        """Retry at most ``limit`` of the matching dead tasks, the oldest first (``Client.dead_retry``)."""
        reply = self.request(dead_message("dead_retry", queue, type, error, since, until, limit))
        return {"ids": list(reply["ids"]), "skipped": list(reply["skipped"]), "more": bool(reply["more"])}

    def dead_delete(self, *, queue: str | None = None, type: str | None = None, error: str | None = None,
                    since: float | None = None, until: float | None = None, limit: int = 100) -> dict[str, Any]:
        """Delete at most ``limit`` of the matching dead tasks, the oldest first (``Client.dead_delete``)."""
        reply = self.request(dead_message("dead_delete", queue, type, error, since, until, limit))
        return {"ids": list(reply["ids"]), "skipped": list(reply["skipped"]), "more": bool(reply["more"])}

    def server_events(self, *, since: int | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The server's stored events of no task (limits and breakers changed), oldest first."""
        msg: dict[str, Any] = {"op": "server_events", "limit": limit}
        if since is not None:
            msg["since"] = since
        return list(self.request(msg)["events"])
