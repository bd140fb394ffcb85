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


@pytest.mark.trio
async def test_a_token_reused_with_other_tasks_is_refused_and_enqueues_nothing(server: Server) -> None:
    with trio.fail_after(10):
        peer, _ = await RawPeer.connect(server.port, role="client")
        async with peer.stream:
            # the second in the same write (the first's commit pending), the third once it is committed
            await peer.stream.send_all(peer.conn.send_many([
                _enqueue(0), _enqueue(0, rid=99, tasks=[{"type": "t", "payload": b"\x01"}])]))
            replies = {r["rid"]: r for r in [await peer.recv(), await peer.recv()]}
            assert replies[0]["op"] == "enqueued" and replies[0]["created"] == [True]
            refused = replies[99]
            assert refused["op"] == "error" and refused["code"] == "bad_request"
            assert "other tasks" in refused["message"] and "nothing was enqueued" in refused["message"]
            await peer.send(_enqueue(0, rid=100, tasks=[{"type": "t"}, {"type": "t"}]))
            again = await peer.recv()
            assert again["rid"] == 100 and again["code"] == "bad_request"
            await peer.send(_enqueue(0, rid=101))  # the same tasks: a resend, answered with the first ids
            resent = await peer.recv()
            assert resent["op"] == "enqueued" and resent["ids"] == replies[0]["ids"]
            await server.wait_committed()
            assert server.core.stats.enqueued == 1
            assert _count(server.config.db) == 1


@pytest.mark.trio
async def test_the_digest_of_a_token_is_known_again_after_a_restart(tmp_path: Path) -> None:
    other = [{"type": "t", "payload": b"\x02"}]
    with trio.fail_after(15):
        async with trio.open_nursery() as n:
            srv = await start(n, tmp_path)
            peer, _ = await RawPeer.connect(srv.port, role="client")
            # in one write, one commit: a run, one row for seqs 3 and 4 (their digests one after the other)
            await peer.stream.send_all(peer.conn.send_many([_enqueue(3), _enqueue(4)]))
            first = [(await peer.recv())["ids"], (await peer.recv())["ids"]]
            await peer.stream.aclose()
            srv.stopping.set()
        conn = sqlite3.connect(str(tmp_path / "runq.db"))
        try:
            assert [len(d) for (d,) in conn.execute("SELECT digests FROM requests")] == [8]
        finally:
            conn.close()
        async with trio.open_nursery() as n:
            srv = await start(n, tmp_path)
            peer, _ = await RawPeer.connect(srv.port, role="client")
            for seq in (3, 4):
                await peer.send(_enqueue(seq, tasks=other))
                assert (await peer.recv())["code"] == "bad_request"
                await peer.send(_enqueue(seq))
                assert (await peer.recv())["ids"] == first[seq - 3]
            await peer.stream.aclose()
            srv.stopping.set()
    assert _count(str(tmp_path / "runq.db")) == 2


@pytest.mark.trio
async def test_a_token_stored_without_digests_still_answers_its_resends(tmp_path: Path) -> None:
    with trio.fail_after(15):
        async with trio.open_nursery() as n:
            srv = await start(n, tmp_path)
            peer, _ = await RawPeer.connect(srv.port, role="client")
            await peer.send(_enqueue(0))
            first = await peer.recv()
            await peer.stream.aclose()
            srv.stopping.set()
        conn = sqlite3.connect(str(tmp_path / "runq.db"))
        try:
            with conn:
                conn.execute("UPDATE requests SET digests = NULL")  # (as a runq of schema 3 left it)
        finally:
            conn.close()
        async with trio.open_nursery() as n:
            srv = await start(n, tmp_path)
            peer, _ = await RawPeer.connect(srv.port, role="client")
            await peer.send(_enqueue(0))
            assert (await peer.recv())["ids"] == first["ids"]
            # its tasks are not known: any request under the token is taken for a resend, as before
            await peer.send(_enqueue(0, rid=1, tasks=[{"type": "t", "payload": b"\x02"}]))
            assert (await peer.recv())["ids"] == first["ids"]
            await peer.stream.aclose()
            srv.stopping.set()
    assert _count(str(tmp_path / "runq.db")) == 1
