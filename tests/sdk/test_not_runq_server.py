"""An SDK pointed at a peer that is not a runq server (the HTTP API's port, a TLS or SSH server, any other
program) fails at once with ``NotRunqServer``, whose one-line message says what the peer looked like, instead
of ``frame of 1213486160 bytes exceeds max_frame`` (the bytes ``HTTP`` read as a frame length)."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trio

from runq import Client, SyncClient, Worker
from runq.app.server import Server, ServerConfig
from runq.protocol import encode_frame
from runq.protocol.errors import NotRunqServer

pytestmark = pytest.mark.trio


@pytest.fixture
async def http_port(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[int]:
    """The HTTP port (Hypercorn) of a real runq server."""
    srv = Server(ServerConfig(db=str(tmp_path / "runq.db"), port=0, http_port=0))
    await nursery.start(srv.serve)
    assert srv.http_port is not None
    yield srv.http_port
    srv.stopping.set()


async def peer(nursery: trio.Nursery, answer: bytes, *, close: bool = True) -> int:
    """A plain TCP server that reads what comes, answers ``answer`` and (``close``) hangs up."""

    async def handler(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(answer)
        if not close:
            await trio.sleep_forever()
        await stream.aclose()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


async def refusal(connect: Callable[[str], Awaitable[object]], port: int) -> NotRunqServer:
    with trio.fail_after(10), pytest.raises(NotRunqServer) as info:
        await connect(f"127.0.0.1:{port}")
    assert info.value.address == f"127.0.0.1:{port}"
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"127.0.0.1:{port} is not a runq server: ")
    assert "`runq serve --port`" in message and "1213486160" not in message
    return info.value


async def with_client(address: str) -> None:
    async with Client(address):
        pass


async def with_sync_client(address: str) -> None:
    def connect() -> None:
        with SyncClient(address):
            pass

    await trio.to_thread.run_sync(connect)


async def with_worker(address: str) -> None:
    await Worker().run(address)


CONNECTS = [with_client, with_sync_client, with_worker]


@pytest.mark.parametrize("connect", CONNECTS, ids=["Client", "SyncClient", "Worker"])
async def test_the_http_port_of_a_runq_server(http_port: int, connect: Callable[[str], Awaitable[object]]) -> None:
    error = await refusal(connect, http_port)
    assert error.looks_like == "http" and error.answer.startswith(b"HTTP/1.1 400")
    assert "it answered like an HTTP server ('HTTP/1.1 400" in str(error)
    assert "--http-port" in str(error)


@pytest.mark.parametrize("connect", CONNECTS, ids=["Client", "SyncClient", "Worker"])
async def test_a_peer_that_sends_junk(nursery: trio.Nursery, connect: Callable[[str], Awaitable[object]]) -> None:
    port = await peer(nursery, b"junk: this is no frame\r\n", close=False)
    error = await refusal(connect, port)
    assert error.looks_like is None
    assert "it answered with bytes that are not a runq frame: b'junk: this is no'" in str(error)


@pytest.mark.parametrize(("answer", "kind", "text"), [
    (b"\x15\x03\x03\x00\x02\x02\x46", "tls", "like a TLS server"),  # a TLS alert record (protocol_version)
    (b"SSH-2.0-OpenSSH_9.2p1\r\n", "ssh", "like an SSH server"),
    (b"HTTP/1.0 400 Bad Request\r\n\r\n", "http", "like an HTTP server ('HTTP/1.0 400 Bad Request')"),
])
async def test_a_peer_recognised_by_its_first_bytes(nursery: trio.Nursery, answer: bytes, kind: str,
                                                    text: str) -> None:
    port = await peer(nursery, answer)
    for connect in CONNECTS:
        error = await refusal(connect, port)
        assert error.looks_like == kind and text in str(error), (connect, str(error))


async def test_a_short_answer_then_close_is_recognised_too(nursery: trio.Nursery) -> None:
    """Fewer bytes than a frame header, then the end: recognised by what they are (2 bytes of a TLS record header)."""
    port = await peer(nursery, b"\x16\x03")
    error = await refusal(with_sync_client, port)
    assert error.looks_like == "tls"


async def test_a_frame_that_is_not_a_welcome(nursery: trio.Nursery) -> None:
    """A msgpack frame, but not runq's answer to a hello (another msgpack protocol)."""
    port = await peer(nursery, encode_frame({"op": "greetings"}), close=False)
    for connect in CONNECTS:
        error = await refusal(connect, port)
        assert error.looks_like is None, connect


async def test_an_unknown_peer_that_closes_at_once_is_a_lost_connection(nursery: trio.Nursery) -> None:
    """Nothing (or nothing recognisable) before the end: as a runq server that is going away, not a verdict."""
    from runq import ConnectionClosed

    port = await peer(nursery, b"")
    with trio.fail_after(10), pytest.raises(ConnectionClosed, match="closed the connection during hello"):
        await with_sync_client(f"127.0.0.1:{port}")
