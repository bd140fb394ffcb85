"""What a ``Client`` does with its calls when a connection ends or stalls (docs/clients.md): every call is
written once per connection, answered once, and a caller's own timeout works whatever the peer does."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
import trio
from threaded_server import ThreadedServer

from runq import Client, RemoteError, SyncClient
from runq.app.server import Server
from runq.protocol.calls import Calls, Request
from runq.protocol.errors import FrameTooLarge


def _on_server(server: ThreadedServer, fn: Callable[[], Any]) -> Any:
    assert server._token is not None
    return trio.from_thread.run_sync(fn, trio_token=server._token)


@contextmanager
def frozen(server: ThreadedServer, longest: float = 10.0) -> Iterator[threading.Event]:
    """The server's event loop blocked (it reads nothing, answers nothing, as a SIGSTOPped process) until the
    block ends or the event it yields is set; at most ``longest`` seconds (then it goes on by itself)."""
    release = threading.Event()
    blocked = threading.Event()

    def block() -> None:
        blocked.set()
        release.wait(longest)

    thread = threading.Thread(target=_on_server, args=(server, block), daemon=True)
    thread.start()
    assert blocked.wait(5)
    try:
        yield release
    finally:
        release.set()
        thread.join(longest + 5)


async def until(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not pred():
            await anyio.sleep(0.005)


@pytest.mark.trio
async def test_a_call_made_while_the_client_closes_a_lost_connection_is_answered(server: Server) -> None:
    with trio.fail_after(15):
        async with Client(f"127.0.0.1:{server.port}") as c:
            await c.ping()
            stream = c._stream
            assert stream is not None
            close = stream.aclose
            closing = trio.Event()

            async def slow_close() -> None:  # (a real close may take several scheduling rounds)
                closing.set()
                for _ in range(5):
                    await trio.lowlevel.checkpoint()
                await close()

            stream.aclose = slow_close  # type: ignore[method-assign]
            answers: list[int] = []

            async def caller() -> None:  # a request that comes in while the lost connection is being closed
                await closing.wait()
                answers.append(await c.enqueue("t", "made in the gap"))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(caller)
                for sess in list(server.sessions):
                    sess.close()  # the server drops the connection
            assert c.connections == 2
            assert (await c.get(answers[0]))["payload"] == "made in the gap"


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_calls_queued_when_the_connection_is_lost_are_written_once_on_the_next(threaded_server: ThreadedServer,
                                                                               backend: str) -> None:
    """A large enqueue holds the sender in its write (the server reads nothing), five more wait in the queue
    behind it, and the connection is cut: on the next one, each of the six is written once."""
    answers: list[int] = []

    async def main() -> list[int]:
        async with Client(threaded_server.address) as c:
            await c.ping()
            with frozen(threaded_server) as release, anyio.fail_after(20):
                async with anyio.create_task_group() as tg:
                    async def enqueue(payload: Any) -> None:
                        answers.append(await c.enqueue("t", payload))

                    tg.start_soon(enqueue, b"x" * 8_000_000)  # (more than the socket buffers hold)
                    await until(lambda: c._sending)
                    for i in range(5):
                        tg.start_soon(enqueue, i)
                    await until(lambda: len(c._queue) == 5)
                    stream = c._stream
                    assert stream is not None
                    stream.extra(anyio.abc.SocketAttribute.raw_socket).shutdown(socket.SHUT_RDWR)  # a network cut
                    await until(lambda: c._stream is None)
                    release.set()
            assert c.connections == 2
            return await anyio.to_thread.run_sync(_on_server, threaded_server, frames_read)

    def frames_read() -> list[int]:
        return [s.conn.frames_in for s in threaded_server.server.sessions]

    assert anyio.run(main, backend=backend) == [1 + 6]  # the hello and the six requests, once each
    assert len(set(answers)) == 6
    assert threaded_server.server.core.stats.enqueued == 6


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_a_callers_timeout_works_while_the_server_reads_nothing(threaded_server: ThreadedServer,
                                                                backend: str) -> None:
    """With the server stalled, the socket buffers fill up; each call still returns at its caller's deadline
    (none waits for the write), and no frame is cut: once the server reads again, it reads whole frames."""
    blob = b"x" * 60_000  # (a frame a lone call writes itself)
    worst = [0.0]

    async def main() -> dict[str, Any]:
        async with Client(threaded_server.address) as c:
            await c.ping()
            with frozen(threaded_server, longest=10.0):
                for _ in range(150):  # 9 MB: more than the socket buffers of both sides hold
                    t0 = time.monotonic()
                    with anyio.move_on_after(0.01):
                        await c.enqueue("t", blob)
                    worst[0] = max(worst[0], time.monotonic() - t0)
            with anyio.fail_after(20):
                await c.ping()
                tid = await c.enqueue("t", "after")
                assert (await c.get(tid))["payload"] == "after"
                assert c.connections == 1
                return await c.stats()

    stats = anyio.run(main, backend=backend)
    assert worst[0] < 1.0
    assert stats["protocol_errors"] == 0


# ---------------------------------------------------------------------- errors that close the connection
@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_a_request_that_closes_the_connection_fails_alone(threaded_server: ThreadedServer, backend: str) -> None:
    """One bad request among 400 enqueues in flight: the server closes the connection with an error that names
    it; that call fails with it, every other is answered (sent again on the next connection if need be), and
    each task exists once."""
    failed: list[BaseException] = []
    ids: list[int] = []

    async def main() -> int:
        async with Client(threaded_server.address) as c:
            async def good(i: int) -> None:
                ids.append(await c.enqueue("t", i))

            async def bad() -> None:
                try:
                    await c.request({"op": "launch_missiles"})  # (an op the server does not know: unknown_op)
                except RemoteError as exc:
                    failed.append(exc)

            with anyio.fail_after(20):
                async with anyio.create_task_group() as tg:
                    for i in range(200):
                        tg.start_soon(good, i)
                    tg.start_soon(bad)
                    for i in range(200, 400):
                        tg.start_soon(good, i)
                payloads = sorted([(await c.get(tid))["payload"] for tid in ids])
            assert payloads == list(range(400))
            return c.connections

    assert anyio.run(main, backend=backend) == 2
    assert [getattr(e, "code", None) for e in failed] == ["unknown_op"]
    assert len(set(ids)) == 400
    assert threaded_server.server.core.stats.enqueued == 400


def test_the_sync_client_connects_again_after_an_error_that_closes_the_connection(
        threaded_server: ThreadedServer) -> None:
    with SyncClient(threaded_server.address) as c:
        tid = c.enqueue("t")
        c.cancel(tid)
        with pytest.raises(RemoteError) as exc_info:
            c.request({"op": "launch_missiles"})
        assert exc_info.value.code == "unknown_op"
        # (a retry is never sent twice: written on the closed connection it would fail "may or may not")
        assert c.retry(tid)["state"] == "ready"
        assert c.connections == 2


@pytest.mark.parametrize("call", [
    lambda c: c.enqueue("t", priority="5"),
    lambda c: c.enqueue("t", key=5),
    lambda c: c.enqueue_many([{"type": "t", "retries": 1.5}]),
    lambda c: c.get("5"),
    lambda c: c.cancel(True),
    lambda c: c.list_tasks(limit="10"),
    lambda c: c.pause(None),
    lambda c: c.get(2**64 - 1),
], ids=["priority-str", "key-int", "retries-float", "get-str", "cancel-bool", "limit-str", "pause-nil",
        "id-beyond-64-bits"])
def test_the_sdk_refuses_a_field_of_a_wrong_type_before_sending_it(threaded_server: ThreadedServer,
                                                                  call: Callable[[Any], Any]) -> None:
    """A value the server would answer with bad_message (closing the connection under every call in flight)
    is the caller's TypeError, and nothing is sent."""
    with SyncClient(threaded_server.address) as c:
        with pytest.raises(TypeError):
            call(c)
        c.ping()
        assert c.connections == 1

    async def main() -> int:
        async with Client(threaded_server.address) as ac:
            with pytest.raises(TypeError):
                await call(ac)
            await ac.ping()
            return ac.connections

    assert anyio.run(main, backend="asyncio") == 1
    assert threaded_server.server.stats.protocol_errors == 0


def _close_clients(server: Server) -> None:
    """The server closes its client connections with an error that names no request (as after a bug met
    outside any one request)."""
    for sess in list(server.sessions):
        if sess.role == "client":
            sess.close({"op": "error", "code": "internal", "message": "injected"})


@pytest.mark.trio
async def test_an_error_that_names_no_request_sends_the_calls_again_once(server: Server) -> None:
    def waits(tid: int) -> int:  # (the server keeps a wait of a closed connection until its timeout)
        return len(server._waiters.get(tid, ()))

    with trio.fail_after(15):
        async with Client(f"127.0.0.1:{server.port}") as c:
            tid = await c.enqueue("t")
            answers: list[dict[str, Any]] = []

            async def waiter() -> None:
                answers.append(await c.wait(tid, timeout=30))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(waiter)
                await until(lambda: waits(tid) == 1)
                _close_clients(server)
                await until(lambda: waits(tid) == 2)  # the wait, sent again on the next connection
                await server.cancel(tid)
            assert answers[0]["state"] == "cancelled" and c.connections == 2

            tid = await c.enqueue("t")
            async with trio.open_nursery() as nursery:
                async def close_twice() -> None:
                    for n in (1, 2):
                        await until(lambda n=n: waits(tid) == n)
                        _close_clients(server)

                nursery.start_soon(close_twice)
                with pytest.raises(RemoteError) as exc_info:  # in flight on two such connections: it fails
                    await c.wait(tid, timeout=30)
            assert exc_info.value.code == "internal" and c.connections >= 3
            assert (await c.stats())["enqueued"] == 2  # (and the client works)


def test_a_request_over_the_servers_frame_limit_is_refused_before_it_is_sent(tmp_path: Path) -> None:
    srv = ThreadedServer(str(tmp_path / "runq.db"))
    srv.server.config.max_frame = 4096
    srv.start()
    try:
        with SyncClient(srv.address) as c:
            with pytest.raises(FrameTooLarge, match="max_frame of 4096"):
                c.enqueue("t", b"x" * 5000)
            assert c.enqueue("t", b"x" * 3000) > 0 and c.connections == 1

        async def main() -> int:
            async with Client(srv.address) as ac:
                with pytest.raises(FrameTooLarge, match="max_frame of 4096"):
                    await ac.enqueue_many([{"type": "t", "payload": b"x" * 3000}] * 2)
                await ac.ping()
                return ac.connections

        assert anyio.run(main, backend="asyncio") == 1
        assert srv.server.stats.protocol_errors == 0
    finally:
        srv.stop()


# ---------------------------------------------------------------------- SyncClient
class _Interrupted(BaseException):
    """Stands for KeyboardInterrupt: an exception that is not an ``Exception``, raised by a signal handler."""


def test_a_sync_call_interrupted_mid_write_leaves_no_half_frame_for_the_next(threaded_server: ThreadedServer) -> None:
    def interrupt(signum: int, frame: Any) -> None:
        raise _Interrupted()

    before = signal.signal(signal.SIGUSR1, interrupt)
    try:
        with SyncClient(threaded_server.address) as c:
            c.ping()
            me = threading.get_ident()
            with frozen(threaded_server):
                # the write of 8 MB blocks (the server reads nothing) with part of the frame in the socket
                timer = threading.Timer(0.5, signal.pthread_kill, (me, signal.SIGUSR1))
                timer.start()
                with pytest.raises(_Interrupted):
                    c.enqueue("t", b"x" * 8_000_000)
                timer.join()
            watchdog = threading.Timer(10, c.close)  # (a call that hangs fails instead)
            watchdog.start()
            try:
                tid = c.enqueue("t", "after")
                assert c.get(tid)["payload"] == "after"
            finally:
                watchdog.cancel()
            assert c.connections == 2
    finally:
        signal.signal(signal.SIGUSR1, before)


class _Preempted(Calls):
    """``Calls`` whose ``new`` is preempted between reading the next seq and counting it (a thread switch can
    come there: ``self._next_seq += 1`` is a read, an add and a write). Records the seq of every call."""

    def __init__(self) -> None:
        super().__init__()
        self.seqs: list[int] = []

    def new(self, msg: dict[str, Any], checked: bool = False) -> Request:
        seq = self._next_seq
        time.sleep(0.05)  # (another thread runs here)
        self._next_seq = seq
        call = super().new(msg, checked)
        if call.seq is not None:
            self.seqs.append(call.seq)
        return call


def test_threads_sharing_a_sync_client_never_share_a_seq(threaded_server: ThreadedServer) -> None:
    """Two enqueues with one token would be one task: the server answers the second with the first's id
    whenever it still holds that token (here ``done_below`` lets it forget it in time; an earlier call still
    waiting for its answer would not)."""
    ids: list[int] = []
    calls = _Preempted()
    with SyncClient(threaded_server.address) as c:
        c._calls = calls

        def enqueue(i: int) -> None:
            ids.append(c.enqueue("t", i))

        threads = [threading.Thread(target=enqueue, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert sorted(c.get(tid)["payload"] for tid in ids) == [0, 1, 2, 3]
    assert sorted(calls.seqs) == [0, 1, 2, 3]


# ---------------------------------------------------------------------- answers over the client's limit
def test_an_answer_over_the_clients_max_frame_fails_its_call_once(threaded_server: ThreadedServer) -> None:
    """A list of ten tasks of 1 KB each is a frame over a client limit of 4 KiB: that call fails with a clear
    FrameTooLarge (sent again, it would be answered the same way for ever); the others carry on."""
    with SyncClient(threaded_server.address) as c:
        c.enqueue_many([{"type": "t", "payload": b"x" * 1000}] * 10)
    with SyncClient(threaded_server.address, max_frame=4096) as c:
        watchdog = threading.Timer(10, c.close)  # (a call sent again for ever fails instead)
        watchdog.start()
        try:
            with pytest.raises(FrameTooLarge, match="list: the server's answer is a frame of .* max_frame of 4096"):
                c.list_tasks(limit=10)
            assert len(c.list_tasks(limit=2)[0]) == 2 and c.connections == 2
        finally:
            watchdog.cancel()

    async def main() -> int:
        async with Client(threaded_server.address, max_frame=4096) as ac:
            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(ac.ping)  # (in flight beside it: sent again, answered)
                    with pytest.raises(FrameTooLarge, match="max_frame of 4096"):
                        await ac.list_tasks(limit=10)
                await ac.ping()
            return ac.connections

    for backend in ("trio", "asyncio"):
        assert anyio.run(main, backend=backend) == 2
