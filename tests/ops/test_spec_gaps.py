"""Gaps between docs/protocol.md and the server, closed in the operations layer's one validation (issue 10).

Each test talks to a real server over a raw TCP connection (``Peer``), so that it sees the frames the spec
describes, and checks that the connection stays usable after a refused request where the spec says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from runq.app.core import CoreConfig
from runq.app.server import Server, ServerConfig
from runq.app.server.config import ConfigError
from runq.protocol.frames import Connection


class Peer:
    """A hand-driven protocol peer."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = Connection()

    @classmethod
    async def connect(cls, port: int, **hello: Any) -> tuple[Peer, dict[str, Any]]:
        peer = cls(await trio.open_tcp_stream("127.0.0.1", port))
        await peer.send({"op": "hello", "version": 1, "role": "client", **hello})
        return peer, await peer.recv()

    async def send(self, msg: dict[str, Any]) -> None:
        await self.stream.send_all(self.conn.send(msg))

    async def recv(self) -> dict[str, Any]:
        while True:
            msg = self.conn.next_message()
            if msg is not None:
                return msg
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError
            self.conn.receive_data(data)

    async def call(self, msg: dict[str, Any]) -> dict[str, Any]:
        await self.send(msg)
        return await self.recv()

    async def still_open(self) -> bool:
        return (await self.call({"op": "ping", "rid": "p"}))["op"] == "pong"


async def start(nursery: trio.Nursery, tmp_path: Path, **cfg: Any) -> Server:
    srv = Server(ServerConfig(db=str(tmp_path / "runq.db"), port=0, core=CoreConfig(lease_timeout=10.0), **cfg))
    await nursery.start(srv.serve)
    return srv


@pytest.mark.trio
async def test_a_nil_payload_is_the_default_payload(nursery: trio.Nursery, tmp_path: Path) -> None:
    """Section 0: nil and absent are the same. A nil payload closed the connection (bad_message)."""
    srv = await start(nursery, tmp_path)
    with trio.fail_after(10):
        peer, _ = await Peer.connect(srv.port)
        async with peer.stream:
            got = await peer.call({"op": "enqueue", "rid": 1, "tasks": [{"type": "t", "payload": None},
                                                                      {"type": "t", "payload": None, "priority": 1}]})
            assert got["op"] == "enqueued" and got["created"] == [True, True]
            for tid in got["ids"]:
                task = (await peer.call({"op": "get", "rid": 2, "id": tid}))["task"]
                assert task["payload"] == b"\xc0"
            assert await peer.still_open()


@pytest.mark.trio
async def test_run_at_is_refused_exactly_where_the_spec_says(nursery: trio.Nursery, tmp_path: Path) -> None:
    """docs/protocol.md said 'not range-checked' while NaN, infinities and abs(run_at) >= 1e11 were refused."""
    srv = await start(nursery, tmp_path)
    with trio.fail_after(10):
        peer, _ = await Peer.connect(srv.port)
        async with peer.stream:
            for bad in (1e11, -1e11, float("inf"), float("-inf"), float("nan")):
                got = await peer.call({"op": "enqueue", "rid": 1, "tasks": [{"type": "t", "run_at": bad}]})
                assert got["op"] == "error" and got["code"] == "bad_request", (bad, got)
                assert "strictly between -1e11 and 1e11" in got["message"]
            for ok in (99_999_999_999.0, -99_999_999_999, 0):
                got = await peer.call({"op": "enqueue", "rid": 2, "tasks": [{"type": "t", "run_at": ok}]})
                assert got["op"] == "enqueued", (ok, got)
    doc = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    assert "not range-checked" not in doc and "abs(`run_at`) >= 10^11 are `bad_request`" in doc


@pytest.mark.trio
async def test_credit_has_an_upper_bound_and_held_credit_is_capped(nursery: trio.Nursery, tmp_path: Path) -> None:
    """Two grants of 2^63-1 made a worker's credit overflow 64-bit readers (the ``workers`` answer)."""
    srv = await start(nursery, tmp_path)
    with trio.fail_after(10):
        worker, welcome = await Peer.connect(srv.port, role="worker", queues=["empty"])
        client, _ = await Peer.connect(srv.port)
        async with worker.stream, client.stream:
            for msg in ({"op": "credit", "n": 2**63 - 1}, {"op": "done", "results": [], "credit": 1_000_000_001},
                        {"op": "fail", "id": 1, "lease": 1, "error": "x", "credit": 2**63 - 1}):
                got = await worker.call(msg)
                assert got["op"] == "error" and got["code"] == "bad_request", got
                assert "must be at most 1000000000" in got["message"]
            assert await worker.still_open()
            for _ in range(3):
                await worker.send({"op": "credit", "n": 1_000_000_000})
            assert await worker.still_open()
            [w] = (await client.call({"op": "workers", "rid": 1}))["workers"]
            assert w["id"] == welcome["worker_id"] and w["credit"] == 1_000_000_000


@pytest.mark.trio
async def test_queue_names_follow_one_rule_everywhere(nursery: trio.Nursery, tmp_path: Path) -> None:
    """A task's queue has 1 to 200 chars; pause, resume, a worker's hello queues and the list and subscribe
    filters took any str (a queue no task could ever be on)."""
    srv = await start(nursery, tmp_path)
    long = "q" * 201
    with trio.fail_after(10):
        peer, _ = await Peer.connect(srv.port)
        async with peer.stream:
            for msg in ({"op": "pause", "queue": ""}, {"op": "resume", "queue": long},
                        {"op": "list", "queue": ""}, {"op": "list", "queue": long}, {"op": "list", "type": long},
                        {"op": "subscribe", "queues": ["ok", ""]}, {"op": "subscribe", "types": [long]}):
                got = await peer.call({**msg, "rid": 7})
                assert (got["op"], got["code"], got["rid"]) == ("error", "bad_request", 7), (msg, got)
            assert not srv.subscribers  # (the refused subscribe did not subscribe)
            for msg in ({"op": "pause", "queue": "q" * 200}, {"op": "list", "queue": "q" * 200},
                        {"op": "subscribe", "queues": ["q" * 200]}):
                assert (await peer.call(msg))["op"] in ("ok", "tasks"), msg
        worker, refused = await Peer.connect(srv.port, role="worker", queues=["ok", long])
        async with worker.stream:
            assert refused["op"] == "error" and refused["code"] == "bad_message"
            assert "1 to 200 chars" in refused["message"]


@pytest.mark.trio
async def test_a_map_with_a_key_that_is_not_a_str_is_a_bad_request(nursery: trio.Nursery, tmp_path: Path) -> None:
    """Section 0: a non-str key anywhere in a frame is refused with bad_request and the request's rid; the
    connection stays open and nothing is enqueued."""
    srv = await start(nursery, tmp_path)
    with trio.fail_after(10):
        peer, _ = await Peer.connect(srv.port)
        async with peer.stream:
            for msg in ({"op": "enqueue", "rid": 3, "tasks": [{"type": "t", 1: b"x"}]},
                        {"op": "get", "rid": 3, "id": 1, None: 2},
                        {"op": "list", "rid": 3, "limit": 5, 2.5: "x"}):
                got = await peer.call(msg)
                assert (got["op"], got["code"], got["rid"]) == ("error", "bad_request", 3), got
                assert "every map key must be a str" in got["message"]
            assert srv.core.stats.enqueued == 0 and await peer.still_open()
        worker, refused = await Peer.connect(srv.port, role="worker", type_options={7: {}})
        async with worker.stream:
            assert refused["op"] == "error" and refused["code"] == "bad_request"


@pytest.mark.trio
async def test_a_fail_timeout_must_be_a_bool(nursery: trio.Nursery, tmp_path: Path) -> None:
    """Section 6.1 says bool; a 1 or "yes" counted as true (and bool is not a number, section 0)."""
    srv = await start(nursery, tmp_path)
    with trio.fail_after(10):
        worker, _ = await Peer.connect(srv.port, role="worker")
        async with worker.stream:
            got = await worker.call({"op": "fail", "id": 1, "lease": 1, "error": "x", "timeout": 1})
            assert got["op"] == "error" and got["code"] == "bad_message" and "'timeout' must be bool" in got["message"]
        worker, _ = await Peer.connect(srv.port, role="worker")
        async with worker.stream:  # (true, false and nil are fine: a fail of an unknown lease is ignored)
            for ok in (True, False, None):
                await worker.send({"op": "fail", "id": 1, "lease": 1, "error": "x", "timeout": ok})
            assert await worker.still_open()


@pytest.mark.trio
async def test_a_pause_whose_commit_fails_is_answered_by_the_retried_commit(nursery: trio.Nursery,
                                                                            tmp_path: Path) -> None:
    """The commit holding a pause fails (here: with an enqueue too large for the 'full disk', in the same
    read). The queue stays paused in memory and the write is retried; the answer was ``store_error``, which
    said the pause did not happen. It now waits for the retried commit and is ``ok``, and the pause is on disk."""
    import sqlite3

    srv = await start(nursery, tmp_path)
    store = srv.store
    assert store is not None
    with trio.fail_after(20):
        peer, _ = await Peer.connect(srv.port)
        async with peer.stream:
            assert (await peer.call({"op": "enqueue", "rid": 0, "tasks": [{"type": "t"}]}))["op"] == "enqueued"
            await srv.wait_committed()
            (pages,) = store.conn.execute("PRAGMA page_count").fetchone()
            store.conn.execute(f"PRAGMA max_page_count = {pages}")  # the 'disk' is now full
            big = {"op": "enqueue", "rid": 1, "tasks": [{"type": "t", "payload": b"\xc4" * 300_000}]}
            await peer.stream.send_all(peer.conn.send_many([big, {"op": "pause", "rid": 2, "queue": "q"}]))
            first = await peer.recv()
            assert (first["rid"], first["op"], first["code"]) == (1, "error", "store_error")
            second = await peer.recv()
            assert second == {"op": "ok", "rid": 2}, second
            assert srv.core.queue_stats()[-1]["paused"] is True
            await srv.wait_committed()
            db = sqlite3.connect(srv.config.db)
            assert db.execute("SELECT paused FROM queues WHERE name = 'q'").fetchone() == (1,)
            db.close()
            store.conn.execute("PRAGMA max_page_count = 1073741823")


@pytest.mark.trio
async def test_a_wait_timeout_is_bounded(nursery: trio.Nursery, tmp_path: Path) -> None:
    """An infinite or huge wait held a server task for ever; it is cut to 300 s (the HTTP API's bound)."""
    from runq.app.ops import WaitRequest, authenticate
    from runq.app.ops.inputs import MAX_WAIT, check_wait

    assert MAX_WAIT == 300.0
    assert check_wait(WaitRequest(1, float("inf"))).timeout == 300.0
    assert check_wait(WaitRequest(1, 1e300)).timeout == 300.0
    assert check_wait(WaitRequest(1, 299.5)).timeout == 299.5
    srv = await start(nursery, tmp_path)
    with trio.fail_after(10):
        peer, _ = await Peer.connect(srv.port)
        async with peer.stream:
            [tid] = (await peer.call({"op": "enqueue", "rid": 1, "tasks": [{"type": "t"}]}))["ids"]
            await peer.send({"op": "wait", "rid": 2, "id": tid, "timeout": float("inf")})
            await peer.send({"op": "cancel", "rid": 3, "id": tid})
            answers = {m["rid"]: m for m in [await peer.recv(), await peer.recv()]}
            assert answers[2]["task"]["state"] == "cancelled"  # (a wait of 'for ever' is still a wait)
        with pytest.raises(Exception, match="NaN"):
            await srv.ops.wait(authenticate(None, None, "client"), WaitRequest(tid, float("nan")))


@pytest.mark.trio
async def test_listing_failed_tasks_is_refused_with_the_states_that_can_be_listed(nursery: trio.Nursery,
                                                                                tmp_path: Path) -> None:
    """No stored task is ever 'failed' (a failed attempt moves on at once), so list state=failed was always
    empty: it is refused, saying which states can be listed."""
    srv = await start(nursery, tmp_path, http_port=0)
    import httpx

    with trio.fail_after(10):
        peer, _ = await Peer.connect(srv.port)
        async with peer.stream:
            got = await peer.call({"op": "list", "rid": 1, "state": "failed"})
            assert got["op"] == "error" and got["code"] == "bad_request"
            assert "['cancelled', 'dead', 'ready', 'running', 'scheduled', 'succeeded']" in got["message"]
            for state in ("scheduled", "ready", "running", "succeeded", "dead", "cancelled"):
                assert (await peer.call({"op": "list", "rid": 2, "state": state}))["op"] == "tasks"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{srv.http_port}") as h:
            r = await h.get("/api/tasks", params={"status": "failed"})
            assert r.status_code == 400 and r.json()["error"]["message"] == got["message"]
            spec = (await h.get("/openapi.json")).json()
        [status] = [p for p in spec["paths"]["/api/tasks"]["get"]["parameters"] if p["name"] == "status"]
        assert "failed" not in status["schema"]["enum"]


@pytest.mark.trio
async def test_retrying_a_task_whose_key_another_live_task_holds_says_so(nursery: trio.Nursery,
                                                                         tmp_path: Path) -> None:
    srv = await start(nursery, tmp_path)
    with trio.fail_after(10):
        peer, _ = await Peer.connect(srv.port)
        async with peer.stream:
            [first] = (await peer.call({"op": "enqueue", "rid": 1, "tasks": [{"type": "t", "key": "k"}]}))["ids"]
            assert (await peer.call({"op": "cancel", "rid": 2, "id": first}))["task"]["state"] == "cancelled"
            [second] = (await peer.call({"op": "enqueue", "rid": 3, "tasks": [{"type": "t", "key": "k"}]}))["ids"]
            got = await peer.call({"op": "retry", "rid": 4, "id": first})
            assert got["op"] == "error" and got["code"] == "invalid_state"
            assert got["message"] == (f"cannot retry task {first}: its unique key 'k' is held by task {second} "
                                      "(ready); it can be retried once that task is final")


#: Integer fields at and past the edges of their ranges (docs/protocol.md sections 0, 5, 5.1, 5.2): the
#: request, and the code of the answer (an op, or an error code); written out here, not taken from the code.
_EDGES: list[tuple[dict[str, Any], str]] = [
    ({"op": "enqueue", "tasks": [{"type": "t", "priority": 2**31 - 1}]}, "enqueued"),
    ({"op": "enqueue", "tasks": [{"type": "t", "priority": -(2**31)}]}, "enqueued"),
    ({"op": "enqueue", "tasks": [{"type": "t", "priority": 2**31}]}, "bad_request"),
    ({"op": "enqueue", "tasks": [{"type": "t", "priority": -(2**31) - 1}]}, "bad_request"),
    ({"op": "enqueue", "tasks": [{"type": "t", "timeout": 604_800}]}, "enqueued"),
    ({"op": "enqueue", "tasks": [{"type": "t", "timeout": 604_801}]}, "bad_request"),
    ({"op": "enqueue", "tasks": [{"type": "t", "timeout": 0}]}, "bad_request"),
    ({"op": "enqueue", "tasks": [{"type": "t", "retries": 0}]}, "enqueued"),
    ({"op": "enqueue", "tasks": [{"type": "t", "retries": 1000}]}, "enqueued"),
    ({"op": "enqueue", "tasks": [{"type": "t", "retries": 1001}]}, "bad_request"),
    ({"op": "enqueue", "tasks": [{"type": "t", "retries": -1}]}, "bad_request"),
    ({"op": "enqueue", "tasks": [{"type": "t", "delay": 0}]}, "enqueued"),
    ({"op": "enqueue", "tasks": [{"type": "t", "delay": -1}]}, "bad_request"),
    ({"op": "enqueue", "tasks": [{"type": "t", "delay": 10 * 366 * 86400}]}, "bad_request"),
    ({"op": "enqueue", "tasks": [{"type": "t"}], "client_id": "c", "seq": 0, "done_below": 0}, "enqueued"),
    ({"op": "enqueue", "tasks": [{"type": "t"}], "client_id": "c", "seq": -1}, "bad_request"),
    ({"op": "enqueue", "tasks": [{"type": "t"}], "client_id": "c", "seq": 5, "done_below": -1}, "bad_request"),
    ({"op": "list", "limit": 1}, "tasks"),
    ({"op": "list", "limit": 1000}, "tasks"),
    ({"op": "list", "limit": 0}, "bad_request"),
    ({"op": "list", "limit": 1001}, "bad_request"),
    ({"op": "list", "cursor": -5}, "tasks"),
    ({"op": "list", "cursor": 2**63 - 1}, "tasks"),
    ({"op": "get", "id": -1}, "not_found"),
    ({"op": "get", "id": 0}, "not_found"),
    ({"op": "get", "id": 2**63 - 1}, "not_found"),
    ({"op": "cancel", "id": -(2**63)}, "not_found"),
    ({"op": "wait", "id": 1, "timeout": -1}, "task"),
    ({"op": "subscribe", "ids": [-(2**63), 2**63 - 1]}, "ok"),
]


@pytest.mark.trio
@pytest.mark.parametrize(("msg", "code"), _EDGES)
async def test_integer_fields_are_checked_at_the_edges_the_spec_states(nursery: trio.Nursery, tmp_path: Path,
                                                                       msg: dict[str, Any], code: str) -> None:
    srv = await start(nursery, tmp_path)
    with trio.fail_after(10):
        peer, _ = await Peer.connect(srv.port)
        await peer.call({"op": "enqueue", "rid": 0, "tasks": [{"type": "t"}]})  # (task 1 exists)
        got = await peer.call({**msg, "rid": 9})
        assert got["rid"] == 9
        assert (got["code"] if got["op"] == "error" else got["op"]) == code, got
        if got["op"] == "tasks" and msg.get("cursor") == -5:
            assert (got["tasks"], got["cursor"]) == ([], None)
        assert await peer.still_open()
    await peer.stream.aclose()


@pytest.mark.trio
@pytest.mark.parametrize("msg", [{"op": "get", "id": 2**63}, {"op": "list", "cursor": 2**64 - 1},
                                 {"op": "cancel", "id": 2**64 - 1},
                                 {"op": "enqueue", "tasks": [{"type": "t", "priority": 2**64 - 1}]},
                                 {"op": "subscribe", "ids": [2**63]}])
async def test_an_integer_beyond_64_bits_is_bad_message(nursery: trio.Nursery, tmp_path: Path,
                                                        msg: dict[str, Any]) -> None:
    srv = await start(nursery, tmp_path)
    with trio.fail_after(10):
        peer, _ = await Peer.connect(srv.port)
        got = await peer.call({**msg, "rid": 9})
        assert (got["op"], got["code"], got["rid"]) == ("error", "bad_message", 9), got
        with pytest.raises(EOFError):
            await peer.recv()
    await peer.stream.aclose()


def test_max_frame_is_bounded_so_that_max_reply_fits_a_frame_header() -> None:
    """max_reply = 4 x max_frame + 64 KiB must fit the 4-byte length of a frame (docs/operations.md)."""
    for bad in (0, 255, 2**30 - 65536 + 1, 2**30):
        with pytest.raises(ConfigError):
            ServerConfig(max_frame=bad).check()
    for good in (256, 2**30 - 65536):
        cfg = ServerConfig(max_frame=good)
        cfg.check()
        assert cfg.max_reply < 2**32
