"""An enqueue sent again with the same idempotency token is answered with the first ids (protocol.md 5.2)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio
from test_server import RawPeer, start

from runq.app.server import Server


def _enqueue(seq: int, *, client_id: str = "c-1", done_below: int | None = None, **more: Any) -> dict[str, Any]:
    msg: dict[str, Any] = {"op": "enqueue", "rid": seq, "tasks": [{"type": "t"}], "client_id": client_id, "seq": seq}
    if done_below is not None:
        msg["done_below"] = done_below
    msg.update(more)
    return msg


def _count(db: str) -> int:
    conn = sqlite3.connect(db)
    try:
        (n,) = conn.execute("SELECT count(*) FROM tasks").fetchone()
        return int(n)
    finally:
        conn.close()


@pytest.mark.trio
async def test_the_same_token_twice_is_one_task(server: Server) -> None:
    with trio.fail_after(10):
        peer, _ = await RawPeer.connect(server.port, role="client")
        async with peer.stream:
            # both in one write: the second arrives while the first's commit is pending
            await peer.stream.send_all(peer.conn.send_many([_enqueue(0), _enqueue(0, rid=99)]))
            first, second = await peer.recv(), await peer.recv()
            assert {first["rid"], second["rid"]} == {0, 99}
            assert first["ids"] == second["ids"] and first["created"] == [True]
            await peer.send(_enqueue(0, rid=100))  # and once it is committed
            third = await peer.recv()
            assert third["ids"] == first["ids"] and third["rid"] == 100
            await peer.send(_enqueue(0, client_id="c-2"))  # another client's seq 0 is another request
            assert (await peer.recv())["ids"] != first["ids"]
            await server.wait_committed()
            assert server.core.stats.enqueued == 2
            assert _count(server.config.db) == 2


@pytest.mark.trio
async def test_a_token_is_known_again_after_a_restart(tmp_path: Path) -> None:
    with trio.fail_after(15):
        async with trio.open_nursery() as n:
            srv = await start(n, tmp_path)
            peer, _ = await RawPeer.connect(srv.port, role="client")
            await peer.send(_enqueue(5, tasks=[{"type": "t"}, {"type": "t", "key": "k"}]))
            first = await peer.recv()
            await peer.stream.aclose()
            srv.stopping.set()
        async with trio.open_nursery() as n:
            srv = await start(n, tmp_path)
            peer, _ = await RawPeer.connect(srv.port, role="client")
            await peer.send(_enqueue(5, tasks=[{"type": "t"}, {"type": "t", "key": "k"}]))
            again = await peer.recv()
            assert again["ids"] == first["ids"] and again["created"] == [True, True]
            await peer.stream.aclose()
            srv.stopping.set()
    assert _count(str(tmp_path / "runq.db")) == 2


@pytest.mark.trio
async def test_done_below_lets_the_server_forget_answered_tokens(server: Server) -> None:
    with trio.fail_after(10):
        peer, _ = await RawPeer.connect(server.port, role="client")
        async with peer.stream:
            await peer.send(_enqueue(0))
            first = await peer.recv()
            await peer.send(_enqueue(1, done_below=1))  # "I have the answer to 0"
            await peer.recv()
            assert server.requests.get("c-1", 0) is None and server.requests.get("c-1", 1) is not None
            await peer.send(_enqueue(0, done_below=2))  # a client breaking its word gets a new task
            assert (await peer.recv())["ids"] != first["ids"]


@pytest.mark.trio
@pytest.mark.parametrize(("fields", "why"), [
    ({"client_id": "c", "seq": None}, "together"),
    ({"client_id": "", "seq": 1}, "client_id"),
    ({"client_id": "x" * 101, "seq": 1}, "client_id"),
    ({"client_id": "c", "seq": -1}, ">= 0"),
    ({"client_id": "c", "seq": 1, "done_below": -1}, ">= 0"),
])
async def test_a_bad_token_is_refused_and_the_connection_stays_open(server: Server, fields: dict[str, Any],
                                                                   why: str) -> None:
    with trio.fail_after(10):
        peer, _ = await RawPeer.connect(server.port, role="client")
        async with peer.stream:
            msg = {"op": "enqueue", "rid": 1, "tasks": [{"type": "t"}], **fields}
            await peer.send({k: v for k, v in msg.items() if v is not None})
            reply = await peer.recv()
            assert reply["op"] == "error" and reply["code"] == "bad_request" and why in reply["message"]
            await peer.send({"op": "ping", "rid": 2})
            assert (await peer.recv())["op"] == "pong"
            assert server.core.stats.enqueued == 0


@pytest.mark.trio
async def test_a_token_of_a_wrong_type_closes_the_connection_like_any_bad_field(server: Server) -> None:
    with trio.fail_after(10):
        peer, _ = await RawPeer.connect(server.port, role="client")
        async with peer.stream:
            await peer.send({"op": "enqueue", "rid": 1, "tasks": [{"type": "t"}], "client_id": 5, "seq": 1})
            reply = await peer.recv()
            assert reply["code"] == "bad_message" and "client_id" in reply["message"]
