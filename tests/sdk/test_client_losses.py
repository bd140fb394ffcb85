"""What a ``Client`` does with its calls when a connection ends or stalls (docs/clients.md): every call is
written once per connection, answered once, and a caller's own timeout works whatever the peer does."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import anyio.abc
import pytest
import trio
from threaded_server import ThreadedServer

from runq import Client
from runq.app.server import Server


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
