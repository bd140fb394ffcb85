"""Bad input on the wire: an error frame, that connection closed, every other connection unharmed."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio

from runq import Client, RemoteError
from runq.app.server import Server, ServerConfig
from runq.protocol.frames import Connection, encode_frame


async def raw(port: int) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", port)


async def read_until_closed(stream: trio.SocketStream) -> list[dict[str, Any]]:
    """Every message the server sends until it closes the connection."""
    conn = Connection()
    out = []
    while True:
        data = await stream.receive_some(65536)
        conn.receive_data(data)
        out.extend(conn.messages())
        if not data:
            return out


HELLO = encode_frame({"op": "hello", "version": 1, "role": "client"})


@pytest.mark.parametrize(("frames", "code"), [
    (HELLO + struct.pack(">I", 2) + b"\xc1\xc1", "bad_frame"),
    (HELLO + encode_frame({"op": "launch_missiles", "rid": 1}), "unknown_op"),
    (HELLO + encode_frame({"op": "credit", "n": 1}), "unknown_op"),  # a worker op from a client
    (HELLO + encode_frame({"op": "enqueue", "rid": 1, "tasks": "nope"}), "bad_message"),
    (HELLO + encode_frame({"op": "get", "rid": 1}), "bad_message"),
    (encode_frame({"op": "enqueue", "tasks": []}), "hello_required"),
    (encode_frame({"op": "hello", "version": 99, "role": "client"}), "version"),
    (encode_frame({"op": "hello", "version": 1, "role": "root"}), "bad_message"),
    (HELLO + struct.pack(">I", 64 << 20), "frame_too_large"),  # header only: no body was sent
])
@pytest.mark.trio
async def test_bad_input_closes_only_that_connection(server: Server, frames: bytes, code: str) -> None:
    with trio.fail_after(10):
        async with Client(f"127.0.0.1:{server.port}") as bystander:
            before = await bystander.enqueue("t", "before")
            async with await raw(server.port) as s:
                await s.send_all(frames)
                msgs = await read_until_closed(s)
            assert msgs[-1]["op"] == "error" and msgs[-1]["code"] == code, msgs
            assert server.stats.protocol_errors == 1
            # the other connection never noticed
            after = await bystander.enqueue("t", "after")
            assert (await bystander.get(before))["payload"] == "before" and after == before + 1


@pytest.mark.trio
async def test_a_small_frame_limit_is_enforced(tmp_path: Path, nursery: trio.Nursery) -> None:
    srv = Server(ServerConfig(db=str(tmp_path / "x.db"), port=0, max_frame=1024))
    port = await nursery.start(srv.serve)
    with trio.fail_after(10):
        async with await raw(port) as s:
            await s.send_all(HELLO)
            big = msgpack.packb({"op": "enqueue", "tasks": [{"type": "t", "payload": b"x" * 2000}]})
            await s.send_all(struct.pack(">I", len(big)) + big)
            msgs = await read_until_closed(s)
        assert msgs[0]["op"] == "welcome" and msgs[0]["max_frame"] == 1024
        assert msgs[-1]["code"] == "frame_too_large"


@pytest.mark.trio
async def test_hello_deadline(tmp_path: Path, nursery: trio.Nursery) -> None:
    srv = Server(ServerConfig(db=str(tmp_path / "x.db"), port=0, hello_timeout=0.2))
    port = await nursery.start(srv.serve)
    with trio.fail_after(5):
        async with await raw(port) as s:
            msgs = await read_until_closed(s)  # say nothing
        assert msgs[-1]["code"] == "hello_timeout"


@pytest.mark.trio
async def test_token(tmp_path: Path, nursery: trio.Nursery) -> None:
    srv = Server(ServerConfig(db=str(tmp_path / "x.db"), port=0, token="s3cret"))
    port = await nursery.start(srv.serve)
    with trio.fail_after(10):
        for token in (None, "wrong"):
            hello: dict[str, Any] = {"op": "hello", "version": 1, "role": "client"}
            if token:
                hello["token"] = token
            async with await raw(port) as s:
                await s.send_all(encode_frame(hello))
                assert (await read_until_closed(s))[-1]["code"] == "unauthorized"
        from runq import Unauthorized

        with pytest.raises(Unauthorized):
            async with Client(f"127.0.0.1:{port}", token="wrong"):
                pass
        async with Client(f"127.0.0.1:{port}", token="s3cret") as c:
            assert await c.enqueue("t") == 1


@pytest.mark.trio
async def test_request_errors_keep_the_connection(server: Server) -> None:
    with trio.fail_after(10):
        async with Client(f"127.0.0.1:{server.port}") as c:
            with pytest.raises(RemoteError) as exc_info:
                await c.request({"op": "enqueue", "tasks": [{"type": "t", "priority": 2**40}]})
            assert exc_info.value.code == "bad_request"
            with pytest.raises(RemoteError) as exc_info:
                await c.cancel(12345)
            assert exc_info.value.code == "not_found"
            tid = await c.enqueue("t")
            await c.cancel(tid)
            with pytest.raises(RemoteError) as exc_info:
                await c.cancel(tid)
            assert exc_info.value.code == "invalid_state" and "cancelled" in exc_info.value.message
            with pytest.raises(RemoteError) as exc_info:
                await c.list_tasks(limit=0)
            assert exc_info.value.code == "bad_request"
            assert await c.enqueue("t") == tid + 1  # still usable
            assert server.stats.protocol_errors == 0
