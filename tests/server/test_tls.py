"""TLS on the TCP port and the HTTP API (docs/tls.md): real servers on 127.0.0.1 with trustme certificates,
the SDK's three connections (Client, SyncClient, Worker), raw sockets for the peers that misbehave.

The end-to-end tests with real processes are tests/e2e/test_e2e_tls.py.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from server_helpers import VirtualClock
from tls_certs import Certs, make_certs

from runq import Client, RemoteError, SyncClient, TLSError, Worker
from runq.app.errors import ConfigError
from runq.app.server import Server, ServerConfig
from runq.protocol import encode_frame
from runq.protocol.frames import Connection
from runq.protocol.tls import client_context
from runq.protocol.worker import HelloRefused

HELLO = encode_frame({"op": "hello", "version": 1, "role": "client"})


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return make_certs(tmp_path / "certs")


@asynccontextmanager
async def running(tmp_path: Path, cert: str | None, **cfg: Any) -> AsyncIterator[Server]:
    """A server with TLS from ``cert`` (certificate, chain and key in one file; None: plain), stopped on exit."""
    srv = Server(ServerConfig(db=str(tmp_path / "tls.db"), port=0, tls_cert=cert, tls_key=cert, **cfg))
    async with trio.open_nursery() as nursery:
        await nursery.start(srv.serve)
        try:
            yield srv
        finally:
            srv.stopping.set()
            nursery.cancel_scope.deadline = trio.current_time() + 2


def address(srv: Server) -> str:
    return f"127.0.0.1:{srv.port}"


async def until_closed(stream: trio.SocketStream) -> None:
    """Read until the server closes the connection (a reset counts)."""
    try:
        while await stream.receive_some(65536):
            pass
    except trio.BrokenResourceError:
        pass


# ---------------------------------------------------------------------- the three connections, each way
async def with_client(addr: str, tls: Any) -> None:
    async with Client(addr, tls=tls, retry_for=0):
        pass


async def with_sync_client(addr: str, tls: Any) -> None:
    def connect() -> None:
        with SyncClient(addr, tls=tls, retry_for=0):
            pass

    await trio.to_thread.run_sync(connect)


async def with_worker(addr: str, tls: Any) -> None:
    await Worker().run(addr, tls=tls)  # (returns only by raising: a refusal before any session is fatal)


CONNECTS = [with_client, with_sync_client, with_worker]
IDS = ["Client", "SyncClient", "Worker"]


@pytest.mark.trio
async def test_client_sync_client_and_worker_over_tls(tmp_path: Path, certs: Certs) -> None:
    """The task's whole way over TLS: enqueued by a Client, run by a Worker, its result read by a SyncClient;
    the CA given as a file (str or Path) or as an SSLContext."""
    worker = Worker()

    @worker.task("double")
    async def double(n: int) -> int:
        return n * 2

    with trio.fail_after(30):
        async with running(tmp_path, certs.server) as srv, trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(worker.run, address(srv), tls=Path(certs.ca)))
            async with Client(address(srv), tls=certs.ca) as client:
                tid = await client.enqueue("double", 21)
                task = await client.wait(tid, timeout=20)
                assert (task["state"], task["result"]) == ("succeeded", 42)

                def read() -> dict[str, Any]:
                    with SyncClient(address(srv), tls=certs.context()) as sync:
                        return sync.get(tid)

                assert (await trio.to_thread.run_sync(read))["result"] == 42
                assert worker.completed == 1
                for i in range(3):  # one call at a time: a caller writes its frame itself (client.py), in TLS too
                    await client.get(tid)
                assert client.connections == 1 and worker.sessions == 1  # (no connection was lost on the way)
            worker.stop()


@pytest.mark.trio
async def test_client_under_asyncio_over_tls(tmp_path: Path, certs: Certs) -> None:
    """The asyncio side of Client (its own write and read paths on plain TCP) over TLS, sequential and
    pipelined, on one connection."""
    async def calls(addr: str) -> tuple[list[int], int]:
        async with Client(addr, tls=certs.ca) as client:
            one = [await client.enqueue("t", i) for i in range(3)]
            many = await asyncio.gather(*(client.enqueue("t", i) for i in range(50)))
            await asyncio.gather(*(client.get(t) for t in many))
            return [*one, *many], client.connections

    async with running(tmp_path, certs.server) as srv:
        with trio.fail_after(30):
            ids, connections = await trio.to_thread.run_sync(asyncio.run, calls(address(srv)))
    assert len(set(ids)) == 53 and connections == 1


@pytest.mark.trio
async def test_a_client_reconnects_over_tls(tmp_path: Path, certs: Certs, nursery: trio.Nursery) -> None:
    """The server restarts on the same port: the client's next call connects again, with a new handshake."""
    cfg: dict[str, Any] = {"db": str(tmp_path / "tls.db"), "tls_cert": certs.server, "tls_key": certs.server}
    first = Server(ServerConfig(port=0, **cfg))
    stopped = trio.Event()

    async def serve_first(*, task_status: trio.TaskStatus[int]) -> None:
        try:
            await first.serve(task_status=task_status)
        finally:
            stopped.set()

    with trio.fail_after(30):
        port = await nursery.start(serve_first)
        async with Client(f"127.0.0.1:{port}", tls=certs.ca, retry_for=20) as client:
            tid = await client.enqueue("t", 1)
            first.stopping.set()
            await stopped.wait()
            second = Server(ServerConfig(port=port, **cfg))  # (the same database and port)
            await nursery.start(second.serve)
            assert (await client.get(tid))["id"] == tid
            assert client.connections == 2
        second.stopping.set()


@pytest.mark.trio
@pytest.mark.parametrize("connect", CONNECTS, ids=IDS)
async def test_a_certificate_from_another_ca_is_refused(tmp_path: Path, certs: Certs,
                                                        connect: Callable[[str, Any], Awaitable[None]]) -> None:
    async with running(tmp_path, certs.server) as srv:
        with trio.fail_after(10), pytest.raises(TLSError) as info:
            await connect(address(srv), certs.other_ca)
        message = str(info.value)
        assert "\n" not in message and message.startswith(f"{address(srv)}: the server's TLS certificate is not trusted")
        assert "--tls-ca FILE" in message
        await with_client(address(srv), certs.ca)  # the server is unharmed


@pytest.mark.trio
@pytest.mark.parametrize("connect", CONNECTS, ids=IDS)
async def test_the_host_name_is_verified(tmp_path: Path, certs: Certs,
                                         connect: Callable[[str, Any], Awaitable[None]]) -> None:
    """A certificate of the trusted CA, for another host: refused, unless the caller's own SSLContext says
    not to check host names."""
    async with running(tmp_path, certs.wrong_host) as srv:
        with trio.fail_after(10), pytest.raises(TLSError) as info:
            await connect(address(srv), certs.ca)
        assert str(info.value) == (
            f"{address(srv)}: the server's TLS certificate is not valid for the host connected to (IP address "
            "mismatch, certificate is not valid for '127.0.0.1'.): connect by a name or address the certificate "
            "names, or give the server a certificate for this one")
        lax = certs.context()
        lax.check_hostname = False
        await with_client(address(srv), lax)


@pytest.mark.trio
@pytest.mark.parametrize("connect", CONNECTS, ids=IDS)
async def test_a_plain_client_on_a_tls_server_is_told_in_one_line(
        tmp_path: Path, certs: Certs, connect: Callable[[str, Any], Awaitable[None]]) -> None:
    async with running(tmp_path, certs.server) as srv:
        with trio.fail_after(10), pytest.raises(RemoteError) as info:
            await connect(address(srv), False)
        assert info.value.code == "tls_required"
        assert "\n" not in str(info.value) and "--tls-ca FILE" in str(info.value)
        if connect is with_worker:
            assert isinstance(info.value, HelloRefused)  # (not retried for ever)


@pytest.mark.trio
async def test_the_tls_required_answer_is_a_plain_frame(tmp_path: Path, certs: Certs) -> None:
    """docs/protocol.md section 1.1: one error frame in plain text, then the end of the connection."""
    async with running(tmp_path, certs.server) as srv:
        with trio.fail_after(10):
            async with await trio.open_tcp_stream("127.0.0.1", srv.port) as stream:
                await stream.send_all(HELLO)
                conn = Connection()
                while not conn.eof:
                    conn.receive_data(await stream.receive_some(65536))
                msgs = conn.messages()
        assert [(m["op"], m["code"]) for m in msgs] == [("error", "tls_required")]


@pytest.mark.trio
@pytest.mark.parametrize("connect", CONNECTS, ids=IDS)
async def test_a_tls_client_on_a_plain_server_is_told_in_one_line(
        tmp_path: Path, certs: Certs, connect: Callable[[str, Any], Awaitable[None]],
        caplog: pytest.LogCaptureFixture) -> None:
    async with running(tmp_path, None) as srv:
        with trio.fail_after(10), pytest.raises(TLSError) as info:
            await connect(address(srv), certs.ca)
        message = str(info.value)
        assert "\n" not in message and "frame" not in message
        assert message.startswith(f"{address(srv)}: ") and "a runq server without TLS?" in message
    # the server's log says what happened, not a frame size
    assert any("the peer began a TLS handshake: this server speaks no TLS" in r.getMessage() for r in caplog.records
               if r.levelno == logging.WARNING)


@pytest.mark.trio
async def test_tls_handshake_deadline(tmp_path: Path, certs: Certs, nursery: trio.Nursery,
                                      virtual_clock: VirtualClock) -> None:
    """A peer that connects and says nothing, or stops inside its ClientHello, is closed after hello_timeout:
    it holds no connection longer. A client that completed its handshake is not bound by it."""
    deadline = 5.0
    with trio.fail_after(60):
        async with running(tmp_path, certs.server, hello_timeout=deadline) as srv:
            virtual_clock.follow(nursery, srv)
            async with Client(address(srv), tls=certs.ca) as bystander:
                t0 = trio.current_time()
                closed_after: dict[str, float] = {}

                async def peer(name: str, first: bytes) -> None:
                    async with await trio.open_tcp_stream("127.0.0.1", srv.port) as stream:
                        if first:
                            await stream.send_all(first)
                        await until_closed(stream)
                        closed_after[name] = trio.current_time() - t0

                async with trio.open_nursery() as n:
                    n.start_soon(peer, "silent", b"")
                    n.start_soon(peer, "half a ClientHello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
                assert closed_after == {"silent": pytest.approx(deadline), "half a ClientHello": pytest.approx(deadline)}
                await trio.sleep(3 * deadline)
                await bystander.ping()


@pytest.mark.trio
async def test_http_api_over_tls(tmp_path: Path, certs: Certs, nursery: trio.Nursery,
                                 virtual_clock: VirtualClock) -> None:
    """The HTTP API speaks HTTPS with the same certificate: verified with the CA; another CA and plain HTTP
    fail; a silent connection is closed after hello_timeout (Hypercorn's own default is 60 s)."""
    deadline = 5.0
    with trio.fail_after(60):
        async with running(tmp_path, certs.server, http_port=0, hello_timeout=deadline) as srv:
            virtual_clock.follow(nursery, srv)
            base = f"127.0.0.1:{srv.http_port}"
            async with httpx.AsyncClient(verify=certs.context()) as http:
                r = await http.get(f"https://{base}/healthz")
                assert r.status_code == 200
            async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=certs.other_ca)) as http:
                with pytest.raises(httpx.ConnectError) as info:
                    await http.get(f"https://{base}/healthz")
                cause: BaseException | None = info.value
                while cause is not None and not isinstance(cause, ssl.SSLCertVerificationError):
                    cause = cause.__cause__ or cause.__context__
                assert cause is not None
            async with httpx.AsyncClient() as http:
                with pytest.raises(httpx.RemoteProtocolError):
                    await http.get(f"http://{base}/healthz")
            t0 = trio.current_time()
            async with await trio.open_tcp_stream("127.0.0.1", srv.http_port) as stream:
                await until_closed(stream)
            assert trio.current_time() - t0 == pytest.approx(deadline)


# ---------------------------------------------------------------------- settings
@pytest.mark.trio
async def test_tls_from_the_environment(tmp_path: Path, certs: Certs, monkeypatch: pytest.MonkeyPatch) -> None:
    """tls=None reads RUNQ_TLS_CA (a CA file), else RUNQ_TLS (the system's CAs); tls=False is plain whatever
    the environment says."""
    async with running(tmp_path, certs.server) as srv:
        monkeypatch.setenv("RUNQ_TLS_CA", certs.ca)
        await with_client(address(srv), None)
        monkeypatch.delenv("RUNQ_TLS_CA")
        monkeypatch.setenv("RUNQ_TLS", "1")
        with pytest.raises(TLSError, match="not trusted"):  # (TLS on: the trustme CA is not the system's)
            await with_client(address(srv), None)
        with pytest.raises(RemoteError, match="tls_required"):
            await with_client(address(srv), False)
        monkeypatch.setenv("RUNQ_TLS", "0")
        with pytest.raises(RemoteError, match="tls_required"):
            await with_client(address(srv), None)


def test_bad_tls_settings_are_refused_before_serving(tmp_path: Path, certs: Certs) -> None:
    db = str(tmp_path / "x.db")
    with pytest.raises(ConfigError, match="needs both a certificate and its key"):
        Server(ServerConfig(db=db, tls_cert=certs.server))
    with pytest.raises(ConfigError, match="cannot load the TLS certificate .*nowhere.pem"):
        Server(ServerConfig(db=db, tls_cert=str(tmp_path / "nowhere.pem"), tls_key=certs.server))
    with pytest.raises(ConfigError, match="cannot load the TLS certificate"):
        Server(ServerConfig(db=db, tls_cert=certs.ca, tls_key=certs.ca))  # a certificate without its key
    assert not Path(db).exists()
    with pytest.raises(TLSError, match="cannot load the CA file .*nowhere.pem"):
        client_context(str(tmp_path / "nowhere.pem"))
    with pytest.raises(TLSError, match="cannot load the CA file"):
        client_context(db + ".txt") if Path(db + ".txt").write_text("not a certificate") else None
    with pytest.raises(TypeError, match="tls must be"):
        client_context(3)  # type: ignore[arg-type]
    assert client_context(False) is None and isinstance(client_context(True), ssl.SSLContext)


def test_listening_beyond_loopback_requires_a_token(tmp_path: Path) -> None:
    """Checked when the server is made, before anything is bound or opened; loopback needs no token."""
    db = tmp_path / "x.db"
    for host in ("0.0.0.0", "::", "192.0.2.7", "", "runq.example.org"):
        with pytest.raises(ConfigError) as info:
            Server(ServerConfig(db=str(db), host=host))
        assert "requires authentication: set a shared token with --token SECRET or RUNQ_TOKEN" in str(info.value)
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        Server(ServerConfig(db=str(db), host=host))
    Server(ServerConfig(db=str(db), host="0.0.0.0", token="s3cret"))
    assert not db.exists()
