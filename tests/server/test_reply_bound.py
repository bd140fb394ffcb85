"""Every frame the server sends respects the ``max_reply`` its welcome announces (docs/protocol.md section 1).

A server with a small ``max_frame`` makes tasks at the payload limit cheap. Each test reads the server's frames
through a ``Connection`` whose limit is the announced ``max_reply``: a longer frame fails the test
(``FrameTooLarge``), and the frames' sizes are checked again from their headers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import trio

from runq.app.core import CoreConfig
from runq.app.server import Server, ServerConfig
from runq.protocol.client import Client
from runq.protocol.frames import HEADER, Connection
from runq.protocol.sync_client import SyncClient

MAX_FRAME = 4096
#: written out, not computed by the code under test: 4 x max_frame + 64 KiB
MAX_REPLY = 4 * 4096 + 65536
#: a payload as large as an enqueue frame of one task can carry
BIG = MAX_FRAME - 100


class Peer:
    """A hand-driven protocol peer that records the body size of every frame it reads (closed by ``peers``)."""

    opened: ClassVar[list[Peer]] = []

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = Connection(MAX_REPLY)
        self.sizes: list[int] = []
        self._raw = bytearray()

    @classmethod
    async def connect(cls, port: int, **hello: Any) -> tuple[Peer, dict[str, Any]]:
        peer = cls(await trio.open_tcp_stream("127.0.0.1", port))
        cls.opened.append(peer)
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
            self._raw += data
            while len(self._raw) >= 4 and len(self._raw) >= 4 + HEADER.unpack_from(self._raw)[0]:
                (n,) = HEADER.unpack_from(self._raw)
                self.sizes.append(n)
                del self._raw[:4 + n]
            self.conn.receive_data(data)

    async def call(self, msg: dict[str, Any]) -> dict[str, Any]:
        await self.send(msg)
        return await self.recv()


@pytest.fixture
async def peers() -> AsyncIterator[None]:
    """Closes the peers a test opened."""
    yield
    while Peer.opened:
        await Peer.opened.pop().stream.aclose()


async def start(nursery: trio.Nursery, tmp_path: Path) -> Server:
    srv = Server(ServerConfig(db=str(tmp_path / "runq.db"), port=0, max_frame=MAX_FRAME,
                              core=CoreConfig(lease_timeout=10.0)))
    await nursery.start(srv.serve)
    return srv


async def enqueue_big(peer: Peer, n: int) -> list[int]:
    """Enqueue ``n`` tasks whose payloads are at the limit, one per frame; return their ids."""
    for i in range(n):
        await peer.send({"op": "enqueue", "rid": i, "tasks": [{"type": "t", "payload": bytes([i % 256]) * BIG}]})
    ids = []
    for _ in range(n):
        got = await peer.recv()
        assert got["op"] == "enqueued", got
        ids += got["ids"]
    return sorted(ids)


@pytest.mark.trio
async def test_welcome_announces_max_reply(nursery: trio.Nursery, tmp_path: Path, peers: None) -> None:
    srv = await start(nursery, tmp_path)
    _, welcome = await Peer.connect(srv.port)
    assert (welcome["max_frame"], welcome["max_reply"]) == (MAX_FRAME, MAX_REPLY)


@pytest.mark.trio
async def test_a_dispatch_of_big_tasks_is_cut_into_frames_within_max_reply(nursery: trio.Nursery,
                                                                           tmp_path: Path, peers: None) -> None:
    srv = await start(nursery, tmp_path)
    with trio.fail_after(20):
        client, _ = await Peer.connect(srv.port)
        ids = await enqueue_big(client, 60)  # 60 x 4 KiB: one frame would be ~240 KiB
        worker, _ = await Peer.connect(srv.port, role="worker")
        await worker.send({"op": "credit", "n": 1000})
        got: list[int] = []
        frames = 0
        while len(got) < 60:
            msg = await worker.recv()
            assert msg["op"] == "tasks", msg
            frames += 1
            got += [e["id"] for e in msg["tasks"]]
            assert all(len(e["payload"]) == BIG for e in msg["tasks"])
    assert sorted(got) == ids and len(set(got)) == 60  # every task once, in order of dispatch
    assert frames >= 3 and max(worker.sizes[1:]) <= MAX_REPLY  # (sizes[0]: the welcome)


@pytest.mark.trio
async def test_a_list_page_of_big_tasks_is_cut_short_with_a_cursor_to_the_rest(nursery: trio.Nursery,
                                                                               tmp_path: Path, peers: None) -> None:
    srv = await start(nursery, tmp_path)
    with trio.fail_after(20):
        client, _ = await Peer.connect(srv.port)
        ids = await enqueue_big(client, 60)
        seen: list[int] = []
        cursor = None
        pages = 0
        while True:
            page = await client.call({"op": "list", "rid": "l", "limit": 1000, "cursor": cursor})
            assert page["op"] == "tasks", page
            pages += 1
            seen += [t["id"] for t in page["tasks"]]
            cursor = page["cursor"]
            if cursor is None:
                break
            assert cursor == page["tasks"][-1]["id"]
    assert seen == sorted(ids, reverse=True)  # newest first, none lost, none twice
    assert pages >= 3 and max(client.sizes[1:]) <= MAX_REPLY


@pytest.mark.trio
async def test_a_task_with_payload_result_error_and_progress_at_the_limit_fits(nursery: trio.Nursery,
                                                                               tmp_path: Path, peers: None) -> None:
    """Each of the four application values came in a frame of at most max_frame (a task holds a result or an
    error, not both): get, list and the SDKs read the task whole."""
    srv = await start(nursery, tmp_path)
    with trio.fail_after(20):
        client, _ = await Peer.connect(srv.port)
        dead, ok = await enqueue_big(client, 2)
        worker, _ = await Peer.connect(srv.port, role="worker")
        await worker.send({"op": "credit", "n": 2})
        entries: list[dict[str, Any]] = []
        while len(entries) < 2:
            entries += (await worker.recv())["tasks"]
        lease = {e["id"]: e["lease"] for e in entries}
        for tid in (dead, ok):
            await worker.send({"op": "progress", "id": tid, "lease": lease[tid], "value": b"p" * BIG})
        await worker.send({"op": "fail", "id": dead, "lease": lease[dead], "error": "e" * BIG, "retries": 0})
        await worker.send({"op": "done", "results": [[ok, lease[ok], b"r" * BIG]]})
        tasks = {}
        for tid in (dead, ok):
            tasks[tid] = (await client.call({"op": "wait", "rid": "w", "id": tid}))["task"]
            got = await client.call({"op": "get", "rid": "g", "id": tid})
            assert got["task"] == tasks[tid]
        assert (tasks[dead]["state"], tasks[ok]["state"]) == ("dead", "succeeded")
        assert [len(tasks[dead][f]) for f in ("payload", "error", "progress")] == [BIG] * 3
        assert [len(tasks[ok][f]) for f in ("payload", "result", "progress")] == [BIG] * 3
        assert max(client.sizes[1:]) <= MAX_REPLY
        tid = dead

        async with Client(f"127.0.0.1:{srv.port}") as sdk:  # the SDKs read the server's bound from welcome
            assert sdk.max_frame == MAX_REPLY
            assert len((await sdk.get(tid))["error"]) == BIG
            tasks, _ = await sdk.list_tasks(limit=1000)
            assert tid in [t["id"] for t in tasks]

        def sync_reads() -> int:
            with SyncClient(f"127.0.0.1:{srv.port}") as sync:
                assert sync.max_frame == MAX_REPLY
                return len(sync.get(tid)["error"])

        assert await trio.to_thread.run_sync(sync_reads) == BIG


@pytest.mark.trio
async def test_a_timeline_over_max_reply_keeps_its_latest_events(nursery: trio.Nursery, tmp_path: Path, peers: None) -> None:
    srv = await start(nursery, tmp_path)
    with trio.fail_after(60):
        client, _ = await Peer.connect(srv.port)
        got = await client.call({"op": "enqueue", "rid": 1, "tasks": [{"type": "t", "retries": 1000}]})
        tid = got["ids"][0]
        worker, _ = await Peer.connect(srv.port, role="worker")
        await worker.send({"op": "credit", "n": 1})
        for _ in range(250):  # ~4 events of ~100-300 bytes per attempt: ~150 KiB of timeline
            entry = (await worker.recv())["tasks"][0]
            await worker.send({"op": "fail", "id": tid, "lease": entry["lease"], "error": "x" * 200, "retry_in": 0,
                               "credit": 1})
        await client.call({"op": "cancel", "rid": "c", "id": tid})
        reply = await client.call({"op": "events", "rid": "e", "id": tid})
    assert reply["op"] == "events" and reply["omitted"] > 0
    assert reply["events"][-1]["kind"] == "cancelled"  # the latest are kept, oldest first
    assert reply["events"][0]["kind"] != "enqueued"
    assert max(client.sizes[1:]) <= MAX_REPLY


@pytest.mark.trio
async def test_a_reply_no_request_can_cut_is_refused_with_reply_too_large(nursery: trio.Nursery,
                                                                          tmp_path: Path, peers: None) -> None:
    srv = await start(nursery, tmp_path)
    with trio.fail_after(20):
        client, _ = await Peer.connect(srv.port)
        for i in range(400):  # 400 queues of 200-char names: ~150 KiB of queue maps
            await client.send({"op": "pause", "rid": i, "queue": f"{i:03d}" + "q" * 197})
        for _ in range(400):
            assert (await client.recv())["op"] == "ok"
        got = await client.call({"op": "queues", "rid": "q"})
        assert (got["op"], got["code"], got["rid"]) == ("error", "reply_too_large", "q")
        assert (await client.call({"op": "ping", "rid": "p"}))["op"] == "pong"  # the connection stays open
    assert max(client.sizes[1:]) <= MAX_REPLY

