"""Live events over HTTP: SSE and WebSocket streams receiving real task updates while a real worker runs."""

from __future__ import annotations

import base64
import gc
import json
import logging
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import msgpack
import pytest
import trio
from http_helpers import IGNORE_HTTPX_STREAM_GENERATORS, TOKEN, Api, make_worker
from httpx_ws import WebSocketUpgradeError, aconnect_ws
from test_tasks import error_of

from runq import TaskContext

pytestmark = [pytest.mark.http, pytest.mark.trio, IGNORE_HTTPX_STREAM_GENERATORS]


class Sse:
    """Reads ``data:`` events of an open SSE response."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.aiter_lines()

    async def next(self, timeout: float = 10.0) -> dict[str, Any]:
        with trio.fail_after(timeout):
            async for line in self.lines:
                if line.startswith("data: "):
                    return dict(json.loads(line[6:]))
        raise AssertionError("the stream ended")

    async def until(self, pred: Any, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Every event up to and including the first one for which ``pred`` is true."""
        got = []
        with trio.fail_after(timeout):
            while True:
                ev = await self.next(timeout)
                got.append(ev)
                if pred(ev):
                    return got


@asynccontextmanager
async def sse(api: Api, **params: Any) -> AsyncIterator[Sse]:
    async with api.client.stream("GET", "/api/events", params=params) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        s = Sse(r)
        first = await s.next()
        assert first["op"] == "subscribed"
        yield s


async def double(payload: int) -> int:
    await trio.sleep(0.01)
    return payload * 2


async def test_sse_streams_task_updates_while_a_worker_runs(api: Api) -> None:
    await api.start_worker(make_worker(double=double))
    async with sse(api) as s:
        ids = (await api.client.post("/api/tasks/batch", json={"tasks": [{"type": "double", "data": i}
                                                                           for i in range(3)]})).json()["task_ids"]
        finals: dict[int, dict[str, Any]] = {}
        kinds: dict[int, list[str]] = {i: [] for i in ids}

        def all_final(ev: dict[str, Any]) -> bool:
            if ev.get("op") == "event" and ev.get("id") in kinds:
                kinds[ev["id"]].append(ev["kind"])
                if ev["status"] == "succeeded":
                    finals[ev["id"]] = ev
            return len(finals) == 3

        await s.until(all_final)
    for n, tid in enumerate(ids):
        assert kinds[tid] == ["enqueued", "started", "succeeded"], kinds
        ev = finals[tid]
        assert ev["result"] == 2 * n and ev["type"] == "double" and ev["queue"] == "default"
        assert ev["worker"] and ev["attempt"] == 1 and ev["at"] > 0


async def test_sse_filters_by_queue_type_and_id(api: Api) -> None:
    async with sse(api, queue="b") as by_queue, sse(api, type="t2") as by_type, sse(api, id="3,9") as by_id:
        specs = [{"type": "t1", "queue": "a"}, {"type": "t2", "queue": "b"}, {"type": "t1", "queue": "b"},
                 {"type": "t2", "queue": "a"}]
        await api.client.post("/api/tasks/batch", json={"tasks": specs})
        await api.client.post("/api/tasks", json={"type": "end", "queue": "b"})  # 5
        await api.client.delete("/api/tasks/3")
        await api.client.post("/api/tasks", json={"type": "t2", "queue": "z"})  # 6
        got_q = [e["id"] for e in await by_queue.until(lambda e: e.get("id") == 5)]
        assert got_q == [2, 3, 5]
        got_t = [e["id"] for e in await by_type.until(lambda e: e.get("id") == 6)]
        assert got_t == [2, 4, 6]
        got_i = [(e["id"], e["kind"]) for e in await by_id.until(lambda e: e.get("kind") == "cancelled")]
        assert got_i == [(3, "enqueued"), (3, "cancelled")]


async def test_sse_tells_of_workers_and_queues(api: Api) -> None:
    async with sse(api) as s, sse(api, queue="other") as elsewhere:
        w = await api.start_worker(make_worker(double=double))
        ev = (await s.until(lambda e: e["op"] == "worker"))[-1]
        assert ev["kind"] == "joined" and ev["worker"]["id"] == w.worker_id and ev["worker"]["queues"] == ["default"]
        await api.client.post("/api/queues/default/pause")
        ev = (await s.until(lambda e: e["op"] == "queue"))[-1]
        assert ev == {"op": "queue", "kind": "paused", "queue": "default"}
        await api.client.post("/api/queues/default/resume")
        assert (await s.until(lambda e: e["op"] == "queue"))[-1]["kind"] == "resumed"
        await api.client.delete(f"/api/workers/{w.worker_id}")
        assert (await s.until(lambda e: e["op"] == "worker"))[-1]["kind"] == "draining"
        ev = (await s.until(lambda e: e["op"] == "worker"))[-1]
        assert ev["kind"] == "left" and ev["worker"]["id"] == w.worker_id
        # a stream filtered to another queue heard none of it
        await api.client.post("/api/queues/other/pause")
        assert (await elsewhere.next()) == {"op": "queue", "kind": "paused", "queue": "other"}


@pytest.mark.parametrize("server_config", [{"subscriber_backlog": 5}])
async def test_a_slow_consumer_is_skipped_ahead_with_a_marker(api: Api) -> None:
    async with sse(api) as s:
        # 100 events in one flush: the stream holds 5, the rest are skipped, the queue does not wait
        with trio.fail_after(5):
            r = await api.client.post("/api/tasks/batch", json={"tasks": [{"type": "x"}] * 100})
        assert r.status_code == 201 and api.server.core.stats.enqueued == 100
        await api.client.post("/api/tasks", json={"type": "x"})  # 101
        got = await s.until(lambda e: e["kind"] == "dropped")
        # 5 buffered (plus one handed straight to the stream's task if it was already waiting)
        kept = [e["id"] for e in got[:-1]]
        assert kept == list(range(1, len(kept) + 1)) and 5 <= len(kept) <= 6
        assert got[-1] == {"op": "event", "kind": "dropped", "count": 100 - len(kept)}
        assert (await s.next())["id"] == 101  # then it goes on with what happens next



@pytest.mark.parametrize("server_config", [{"max_subscribers": 2}])
async def test_streams_beyond_the_limit_are_refused_busy(api: Api) -> None:
    """Each stream may hold a backlog: max_subscribers bounds them (TCP subscriptions counted too). One more
    SSE or WebSocket is a 503 'busy' with Retry-After; the open ones go on; a freed place is taken again."""
    upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    async with sse(api) as first:
        async with aconnect_ws(f"{api.url}/api/ws", api.client) as ws:
            with trio.fail_after(5):
                assert json.loads(await ws.receive_text())["op"] == "subscribed"
            r = await api.client.get("/api/events")
            assert "max_subscribers" in error_of(r, 503, "busy") and r.headers["retry-after"] == "5"
            with pytest.raises(WebSocketUpgradeError) as info:
                async with aconnect_ws(f"{api.url}/api/ws", api.client):
                    pass
            assert info.value.response.status_code == 503
            error_of(await api.client.get("/api/ws", headers=upgrade), 503, "busy")
            assert len(api.server.subscribers) == 2
            tid = (await api.client.post("/api/tasks", json={"type": "x"})).json()["task_id"]
            got = await first.until(lambda e: e.get("id") == tid)  # the open streams are not affected
            assert got[-1]["kind"] == "enqueued"
            with trio.fail_after(5):
                while True:
                    ev = json.loads(await ws.receive_text())
                    if ev.get("id") == tid:
                        break
        with trio.fail_after(5):
            while len(api.server.subscribers) > 1:  # the WebSocket has left
                await trio.sleep(0.01)
        async with sse(api):
            assert len(api.server.subscribers) == 2



@pytest.mark.parametrize("server_config", [{"max_subscribers": 4}])
async def test_an_sse_client_that_leaves_before_its_body_starts_leaves_no_stream(api: Api) -> None:
    """The stream used to be registered in the handler and released when its body ended: a client gone before
    the body started left a registered stream that nothing closed, and max_subscribers of those shut every
    live subscriber out (503 busy) until a restart."""
    for _ in range(12):
        sock = await trio.open_tcp_stream("127.0.0.1", api.server.http_port)  # type: ignore[arg-type]
        await sock.send_all(b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n")
        await sock.aclose()  # gone before the answer starts
        await trio.sleep(0.05)
    with trio.fail_after(5):
        while api.server.subscribers:
            await trio.sleep(0.02)
    async with sse(api):  # a real client is served
        assert len(api.server.subscribers) == 1


async def test_a_result_nested_too_deep_for_json_is_given_as_base64(api: Api) -> None:
    """A worker may return any msgpack value: one nested 900 deep is answered as base64, never a 500."""
    from test_tasks import nested

    async def deep(payload: Any, ctx: TaskContext) -> Any:
        ctx.progress(nested(900))
        return nested(900)

    await api.start_worker(make_worker(deep=deep))
    async with sse(api, type="deep") as s:
        tid = (await api.client.post("/api/tasks", json={"type": "deep"})).json()["task_id"]
        got = await s.until(lambda e: e["status"] == "succeeded")
        assert [e["kind"] for e in got] == ["enqueued", "started", "progress", "succeeded"]
        assert set(got[2]["progress"]) == {"base64"} and set(got[-1]["result"]) == {"base64"}
    r = await api.client.get(f"/api/tasks/{tid}")
    assert r.status_code == 200, r.text
    assert msgpack.unpackb(base64.b64decode(r.json()["result"]["base64"])) == nested(900)
    assert set(r.json()["progress"]) == {"base64"}
    r = await api.client.get("/api/tasks")
    assert r.status_code == 200 and r.json()["tasks"][0]["result"] == (await api.client.get(f"/api/tasks/{tid}")).json()["result"]


async def test_sse_ends_when_the_server_stops(api: Api) -> None:
    async with sse(api) as s:
        api.server.stopping.set()
        with trio.fail_after(5):
            async for line in s.lines:
                assert not line.startswith("data: ")
    assert not api.server.subscribers


async def test_sse_clients_leaving_while_events_flow_are_unsubscribed(api: Api) -> None:
    """Clients that hang up while the server is writing to them are unsubscribed, and their event generators
    (create_app's SSE body, EventStream.messages) are closed with them, not left to the garbage collector
    (which trio tells with a ResourceWarning)."""
    stop = trio.Event()

    async def traffic() -> None:
        while not stop.is_set():
            await api.client.post("/api/tasks/batch", json={"tasks": [{"type": "x", "data": "y" * 1000}] * 50})

    left_mid_stream = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with trio.fail_after(30):
            async with trio.open_nursery() as n:
                n.start_soon(traffic)
                for _ in range(20):
                    async with httpx.AsyncClient(base_url=api.url) as c, c.stream("GET", "/api/events") as r:
                        async for line in r.aiter_lines():
                            if '"kind":"enqueued"' in line:
                                left_mid_stream += 1
                                break
                stop.set()
            while api.server.subscribers:
                await trio.sleep(0.01)
        gc.collect()  # (a generator left open is finalised here at the latest)
    assert left_mid_stream == 20
    unclosed = [str(w.message) for w in caught if "EventStream" in str(w.message) or "create_app" in str(w.message)]
    assert unclosed == []


async def test_a_closed_sse_client_is_unsubscribed(api: Api) -> None:
    async with sse(api):
        assert len(api.server.subscribers) == 1
    with trio.fail_after(5):
        while api.server.subscribers:
            await trio.sleep(0.01)


# ---------------------------------------------------------------------- WebSocket
async def test_websocket_streams_task_updates_while_a_worker_runs(api: Api) -> None:
    await api.start_worker(make_worker(double=double))
    async with aconnect_ws(f"{api.url}/api/ws?type=double", api.client) as ws:
        with trio.fail_after(10):
            assert json.loads(await ws.receive_text())["op"] == "subscribed"
            tid = (await api.client.post("/api/tasks", json={"type": "double", "data": 5})).json()["task_id"]
            await api.client.post("/api/tasks", json={"type": "other"})
            seen = []
            while True:
                ev = json.loads(await ws.receive_text())
                seen.append((ev["id"], ev["kind"]))
                if ev["status"] == "succeeded":
                    break
            assert seen == [(tid, "enqueued"), (tid, "started"), (tid, "succeeded")]
            assert ev["result"] == 10
            await ws.send_text("ping")
            assert json.loads(await ws.receive_text()) == {"op": "pong"}
    with trio.fail_after(5):
        while api.server.subscribers:
            await trio.sleep(0.01)


async def test_websocket_bad_filter_is_refused(api: Api) -> None:
    with pytest.raises(WebSocketUpgradeError) as info:
        async with aconnect_ws(f"{api.url}/api/ws?id=nope", api.client):
            pass
    assert info.value.response.status_code == 400
    # the refusal is the usual JSON error (read with a plain upgrade request)
    upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    r = await api.client.get("/api/ws?id=nope", headers=upgrade)
    error_of(r, 400, "bad_request")
    assert r.headers["connection"] == "close"  # Hypercorn takes no other request on that connection


UPGRADE_HEADERS = (b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                   b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")


@pytest.mark.parametrize("server_config", [{}, {"token": TOKEN}], ids=["open", "token"])
@pytest.mark.parametrize("target", ["/api/ws?id=nope", "/api/ws?colour=red", "/api/ws", "/api/tasks", "/nothing"])
async def test_a_refused_websocket_followed_by_more_bytes_does_not_stop_the_server(
        api: Api, target: str, caplog: pytest.LogCaptureFixture) -> None:
    """A WebSocket refused with an HTTP answer, then more bytes on that connection: Hypercorn 0.18 raised
    h11's LocalProtocolError out of the connection, which ended the whole server (TCP port included).

    That is a client breaking HTTP: runq logs no bug of its own for it (Hypercorn may log its own error).
    """
    caplog.set_level(logging.WARNING, logger="runq.http")
    for _ in range(3):
        sock = await trio.open_tcp_stream("127.0.0.1", api.server.http_port)  # type: ignore[arg-type]
        await sock.send_all(b"GET " + target.encode() + b" HTTP/1.1\r\nHost: x\r\n" + UPGRADE_HEADERS + b"\r\n"
                            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        with trio.move_on_after(0.3):
            while await sock.receive_some(65536):
                pass
        await sock.aclose()
    await trio.sleep(0.1)
    assert api.server.ready and not api.server.stopping.is_set()
    assert (await api.client.get("/healthz")).json() == {"status": "ok"}
    assert not [r for r in caplog.records if r.getMessage().startswith("bug")], caplog.text


async def test_a_websocket_client_breaking_the_protocol_is_no_server_error(
        api: Api, caplog: pytest.LogCaptureFixture) -> None:
    """A client that sends a bad frame while events flow: Hypercorn closes the socket while the handler sends.

    That is the client going away, not a bug of the server: nothing is logged as an error and the
    subscription is removed.
    """
    caplog.set_level(logging.ERROR, logger="runq.http")
    stop = trio.Event()

    async def traffic() -> None:
        while not stop.is_set():
            await api.client.post("/api/tasks/batch", json={"tasks": [{"type": "x", "data": "y" * 100}] * 50})

    async def bad_client(delay: float) -> None:
        sock = await trio.open_tcp_stream("127.0.0.1", api.server.http_port)  # type: ignore[arg-type]
        await sock.send_all(b"GET /api/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        assert (await sock.receive_some(4096)).startswith(b"HTTP/1.1 101")
        await trio.sleep(delay)
        await sock.send_all(b"\x8f\x80\x00\x00\x00\x00")  # opcode 0xF: reserved, a protocol error
        with trio.move_on_after(0.05):
            while await sock.receive_some(65536):
                pass
        await sock.aclose()

    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            n.start_soon(traffic)
            for i in range(60):
                await bad_client(0.002 * (i % 5))
            stop.set()
        while api.server.subscribers:
            await trio.sleep(0.01)
    assert not [r for r in caplog.records if r.name == "runq.http" and r.levelno >= logging.ERROR], caplog.text


@pytest.mark.parametrize("server_config", [{"token": TOKEN}])
async def test_websocket_requires_the_token(api: Api) -> None:
    async with httpx.AsyncClient() as anon:
        with pytest.raises(WebSocketUpgradeError) as info:
            async with aconnect_ws(f"{api.url}/api/ws", anon):
                pass
    assert info.value.response.status_code == 401
    async with aconnect_ws(f"{api.url}/api/ws", api.client) as ws:  # the fixture's client sends the token
        with trio.fail_after(5):
            assert json.loads(await ws.receive_text())["op"] == "subscribed"
