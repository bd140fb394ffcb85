"""The task routes of the HTTP API, against a real server: success paths, long poll, and every kind of bad input."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from http_helpers import Api, make_worker

from runq import TaskContext
from runq.app.http.encoding import MAX_DEPTH

pytestmark = [pytest.mark.http, pytest.mark.trio]


def error_of(r: Any, status: int, code: str) -> str:
    """Assert ``r`` is the JSON error ``code`` with ``status``; return its message."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    return str(body["error"]["message"])


async def test_enqueue_then_read_the_task(api: Api) -> None:
    r = await api.client.post("/api/tasks", json={
        "type": "resize", "data": {"w": 100, "tags": ["a", "b"]}, "queue": "images", "priority": 5,
        "timeout": 30, "retries": 1, "key": "img-1"})
    assert r.status_code == 201, r.text
    body = r.json()
    tid = body["task_id"]
    assert body["created"] is True and body["id"] == tid
    assert body["status"] == "ready" and body["queue"] == "images" and body["priority"] == 5
    assert body["data"] == {"w": 100, "tags": ["a", "b"]}
    assert body["max_retries"] == 1 and body["timeout"] == 30 and body["key"] == "img-1"
    # committed before the answer: the database has it
    row = api.server.store.get_task(tid)  # type: ignore[union-attr]
    assert row is not None and row.queue == "images"

    r = await api.client.get(f"/api/tasks/{tid}")
    assert r.status_code == 200
    t = r.json()
    for field in ("id", "type", "queue", "status", "result", "error", "attempts", "progress", "created_at",
                  "started_at", "finished_at", "run_at"):
        assert field in t
    assert t["attempts"] == 0 and t["result"] is None and t["started_at"] is None

    # the same unique key while the first is live: that task, 200, created false
    r = await api.client.post("/api/tasks", json={"type": "resize", "key": "img-1"})
    assert r.status_code == 200 and r.json()["task_id"] == tid and r.json()["created"] is False


async def test_integers_beyond_64_bits_in_data_become_floats(api: Api) -> None:
    r = await api.client.post("/api/tasks", content=b'{"type": "x", "data": {"n": ' + b"9" * 30 + b', "m": 5}}')
    assert r.status_code == 201 and r.json()["data"] == {"n": 1e30, "m": 5}


def nested(depth: int) -> Any:
    """A list nested ``depth`` levels deep (``[]`` is one level)."""
    v: list[Any] = []
    for _ in range(depth - 1):
        v = [v]
    return v


async def test_data_nested_up_to_the_limit_is_kept_as_json(api: Api) -> None:
    deepest = nested(MAX_DEPTH - 1)  # inside the body's object
    r = await api.client.post("/api/tasks", json={"type": "x", "data": deepest})
    assert r.status_code == 201, r.text
    assert r.json()["data"] == deepest
    r = await api.client.post("/api/tasks/batch", json={"tasks": [{"type": "x", "data": nested(MAX_DEPTH - 3)}]})
    assert r.status_code == 201, r.text
    r = await api.client.get("/api/tasks")
    assert r.status_code == 200 and [t["data"] for t in r.json()["tasks"]] == [nested(MAX_DEPTH - 3), deepest]
    error_of(await api.client.post("/api/tasks/batch", json={"tasks": [{"type": "x", "data": deepest}]}),
             400, "bad_request")


async def test_delay_and_run_at(api: Api) -> None:
    r = await api.client.post("/api/tasks", json={"type": "later", "delay": 3600})
    assert r.status_code == 201 and r.json()["status"] == "scheduled" and r.json()["run_at"] is not None
    r = await api.client.post("/api/tasks", json={"type": "later", "run_at": api.server.clock() + 3600.5})
    assert r.status_code == 201 and r.json()["status"] == "scheduled"


async def test_batch_enqueue(api: Api) -> None:
    tasks = [{"type": "t", "data": i} for i in range(50)] + [{"type": "t", "key": "k"}, {"type": "t", "key": "k"}]
    r = await api.client.post("/api/tasks/batch", json={"tasks": tasks})
    assert r.status_code == 201, r.text
    body = r.json()
    assert len(body["task_ids"]) == 52 and body["created"] == [True] * 51 + [False]
    assert body["task_ids"][51] == body["task_ids"][50]
    assert body["task_ids"][:50] == sorted(body["task_ids"][:50])
    r = await api.client.get(f"/api/tasks/{body['task_ids'][7]}")
    assert r.json()["data"] == 7


async def test_list_pages_newest_first_with_filters(api: Api) -> None:
    ids = []
    for i in range(7):
        r = await api.client.post("/api/tasks", json={"type": "a" if i % 2 else "b", "queue": "q1" if i < 4 else "q2"})
        ids.append(r.json()["task_id"])
    seen: list[int] = []
    cursor = None
    for _ in range(5):
        params: dict[str, Any] = {"limit": 3}
        if cursor is not None:
            params["cursor"] = cursor
        r = await api.client.get("/api/tasks", params=params)
        assert r.status_code == 200
        page = r.json()
        seen += [t["id"] for t in page["tasks"]]
        cursor = page["cursor"]
        if cursor is None:
            break
    assert seen == sorted(ids, reverse=True)
    r = await api.client.get("/api/tasks", params={"queue": "q2", "type": "a"})
    assert [t["id"] for t in r.json()["tasks"]] == [ids[5]]
    r = await api.client.get("/api/tasks", params={"status": "ready", "limit": 1000})
    assert len(r.json()["tasks"]) == 7 and r.json()["cursor"] is None
    r = await api.client.get("/api/tasks", params={"status": "succeeded"})
    assert r.json() == {"tasks": [], "cursor": None}


async def test_cancel_retry_and_timeline(api: Api) -> None:
    tid = (await api.client.post("/api/tasks", json={"type": "x"})).json()["task_id"]
    r = await api.client.delete(f"/api/tasks/{tid}")
    assert r.status_code == 200 and r.json()["task"]["status"] == "cancelled" and "cancelled" in r.json()["message"]
    error_of(await api.client.delete(f"/api/tasks/{tid}"), 409, "invalid_state")
    r = await api.client.post(f"/api/tasks/{tid}/retry")
    assert r.status_code == 200 and r.json()["task"]["status"] == "ready"
    error_of(await api.client.post(f"/api/tasks/{tid}/retry"), 409, "invalid_state")
    r = await api.client.get(f"/api/tasks/{tid}/events")
    assert r.status_code == 200
    kinds = [e["kind"] for e in r.json()["events"]]
    assert kinds == ["enqueued", "cancelled", "retried"], kinds
    assert r.json()["task_id"] == tid


async def test_a_worker_runs_it_and_long_poll_returns_when_final(api: Api) -> None:
    gate = trio.Event()

    async def slow(payload: int, ctx: TaskContext) -> int:
        ctx.progress(0.5)
        await gate.wait()
        return payload * 2

    await api.start_worker(make_worker(slow=slow))
    tid = (await api.client.post("/api/tasks", json={"type": "slow", "data": 21})).json()["task_id"]
    with trio.fail_after(10):
        t0 = trio.current_time()
        r = await api.client.get(f"/api/tasks/{tid}", params={"wait": 0.3})
        assert trio.current_time() - t0 >= 0.25  # not final yet: answered when the time was up
        assert r.json()["status"] == "running" and r.json()["attempts"] == 1

        async def release() -> None:
            while tid not in api.server._waiters:  # the long poll below waits for the task
                await trio.sleep(0.001)
            gate.set()

        async with trio.open_nursery() as n:
            n.start_soon(release)
            t0 = trio.current_time()
            r = await api.client.get(f"/api/tasks/{tid}", params={"wait": 30})
        assert trio.current_time() - t0 < 5
    t = r.json()
    assert t["status"] == "succeeded" and t["result"] == 42 and t["progress"] == 0.5
    assert t["finished_at"] >= t["started_at"] >= t["created_at"]
    # a final task answers a long poll at once
    with trio.fail_after(2):
        r = await api.client.get(f"/api/tasks/{tid}", params={"wait": 60})
    assert r.json()["status"] == "succeeded"
    error_of(await api.client.delete(f"/api/tasks/{tid}"), 409, "invalid_state")


async def test_cancel_a_running_task(api: Api) -> None:
    started = trio.Event()
    cancelled = trio.Event()

    async def hang(payload: Any) -> None:
        started.set()
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()

    await api.start_worker(make_worker(hang=hang))
    tid = (await api.client.post("/api/tasks", json={"type": "hang"})).json()["task_id"]
    with trio.fail_after(10):
        await started.wait()
        r = await api.client.delete(f"/api/tasks/{tid}")
        assert r.status_code == 200 and r.json()["task"]["status"] == "cancelled"
        await cancelled.wait()  # the worker was told


async def test_tasks_of_the_previous_life_are_read_from_the_database(api: Api) -> None:
    """A task no longer in memory (finished-cache evicted) is read from the store."""
    tid = (await api.client.post("/api/tasks", json={"type": "x", "data": "kept"})).json()["task_id"]
    await api.client.delete(f"/api/tasks/{tid}")
    await api.server.wait_committed()
    api.server.core.finished.clear()
    r = await api.client.get(f"/api/tasks/{tid}")
    assert r.status_code == 200 and r.json()["status"] == "cancelled" and r.json()["data"] == "kept"
    r = await api.client.post(f"/api/tasks/{tid}/retry")
    assert r.status_code == 200 and r.json()["task"]["status"] == "ready"


# ---------------------------------------------------------------------- bad input: 4xx with a JSON error, never 5xx
BAD_BODIES: list[tuple[str, bytes | str, str]] = [
    ("not json", b"{nope", "bad_request"),
    ("empty body", b"", "bad_request"),
    ("not utf-8", b"\xff\xfe{", "bad_request"),
    ("NaN", b'{"type": "x", "delay": NaN}', "bad_request"),
    ("Infinity", b'{"type": "x", "run_at": Infinity}', "bad_request"),
    ("a list", b"[1, 2]", "bad_request"),
    ("a string", b'"x"', "bad_request"),
    ("no type", b'{"data": 1}', "bad_request"),
    ("payload and data differ", b'{"type": "x", "payload": "raw", "data": "other"}', "bad_request"),
    ("payload and data differ in type", b'{"type": "x", "payload": 1, "data": true}', "bad_request"),
    ("unknown field 2", b'{"type": "x", "colour": "red"}', "bad_request"),
    ("type not a string", b'{"type": 5}', "bad_request"),
    ("empty type", b'{"type": ""}', "bad_request"),
    ("long type", json.dumps({"type": "x" * 201}), "bad_request"),
    ("priority a string", b'{"type": "x", "priority": "high"}', "bad_request"),
    ("priority a bool", b'{"type": "x", "priority": true}', "bad_request"),
    ("priority a float", b'{"type": "x", "priority": 1.5}', "bad_request"),
    ("priority beyond 32 bits", b'{"type": "x", "priority": 4294967296}', "bad_request"),
    ("huge int", b'{"type": "x", "priority": ' + b"9" * 400 + b"}", "bad_request"),
    ("too large a number in data", b'{"type": "x", "data": [' + b"9" * 400 + b"]}", "bad_request"),
    ("huge float", b'{"type": "x", "delay": 1e400}', "bad_request"),
    ("negative delay", b'{"type": "x", "delay": -1}', "bad_request"),
    ("delay and run_at", b'{"type": "x", "delay": 1, "run_at": 2}', "bad_request"),
    ("zero timeout", b'{"type": "x", "timeout": 0}', "bad_request"),
    ("retries negative", b'{"type": "x", "retries": -1}', "bad_request"),
    ("retries a string", b'{"type": "x", "retries": "3"}', "bad_request"),
    ("key empty", b'{"type": "x", "key": ""}', "bad_request"),
    ("key null", b'{"type": "x", "key": null}', "bad_request"),
    ("priority null", b'{"type": "x", "priority": null}', "bad_request"),
    ("queue not a string", b'{"type": "x", "queue": ["a"]}', "bad_request"),
    ("lone surrogate", b'{"type": "\\ud800"}', "bad_request"),
    ("lone surrogate in data", b'{"type": "x", "data": {"\\udfff": 1}}', "bad_request"),
    ("deep nesting", b'{"type": "x", "data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "bad_request"),
    # deep enough to parse and pack, too deep to answer with: refused before anything is enqueued
    ("nesting beyond the limit", b'{"type": "x", "data": ' + b"[" * 300 + b"]" * 300 + b"}", "bad_request"),
    ("objects nested beyond the limit", b'{"type": "x", "data": ' + b'{"a": ' * 600 + b"1" + b"}" * 600 + b"}",
     "bad_request"),
]


@pytest.mark.parametrize(("why", "body", "code"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
async def test_bad_task_bodies_are_400(api: Api, why: str, body: bytes | str, code: str) -> None:
    error_of(await api.client.post("/api/tasks", content=body), 400, code)
    if body and body[:1] in (b"{", "{"):
        # the same task inside a batch is refused too, naming its index
        inner = body if isinstance(body, bytes) else body.encode()
        msg = error_of(await api.client.post("/api/tasks/batch", content=b'{"tasks": [{"type": "ok"}, ' + inner + b"]}"),
                       400, code)
        assert any(word in msg for word in ("tasks[1]", "JSON", "64 bits", "finite", "Unicode", "nested")), msg
    assert api.server.core.stats.enqueued == 0  # nothing was enqueued by a refused request


@pytest.mark.parametrize("body", [b'{"tasks": []}', b'{"tasks": {}}', b'{"tasks": [], "x": 1}', b"[]", b"{}",
                                  b'{"tasks": [1]}', b'{"tasks": ' + json.dumps([{"type": "t"}] * 10_001).encode() + b"}"])
async def test_bad_batches_are_400(api: Api, body: bytes) -> None:
    error_of(await api.client.post("/api/tasks/batch", content=body), 400, "bad_request")
    assert api.server.core.stats.enqueued == 0


async def test_a_body_over_the_limit_is_413(nursery: trio.Nursery, tmp_path: Any) -> None:
    import httpx
    from http_helpers import start_api

    srv = await start_api(nursery, tmp_path, max_frame=1000)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{srv.http_port}") as c:
        r = await c.post("/api/tasks", json={"type": "x", "data": "y" * 2000})
        error_of(r, 413, "frame_too_large")
        r = await c.post("/api/tasks", json={"type": "x", "data": "y" * 100})
        assert r.status_code == 201
    srv.stopping.set()


async def test_a_payload_over_max_frame_is_refused_even_from_a_smaller_body(nursery: trio.Nursery,
                                                                           tmp_path: Any) -> None:
    """JSON numbers become 9-byte msgpack floats: a body under max_frame can make a payload over it, which no
    TCP frame could have carried (the server's max_reply counts on it: docs/protocol.md section 1)."""
    import httpx
    from http_helpers import start_api

    srv = await start_api(nursery, tmp_path, max_frame=1000)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{srv.http_port}") as c:
        body = json.dumps({"type": "x", "data": [1.5] * 200}, separators=(",", ":")).encode()  # payload: 1,803 bytes
        assert len(body) < 1000
        r = await c.post("/api/tasks", content=body, headers={"content-type": "application/json"})
        assert "max_frame" in error_of(r, 400, "bad_request")
        r = await c.post("/api/tasks", json={"type": "x", "data": [1.5] * 50})
        assert r.status_code == 201
    assert srv.core.stats.enqueued == 1
    srv.stopping.set()


async def test_a_413_before_the_body_was_read_closes_the_connection(nursery: trio.Nursery, tmp_path: Any) -> None:
    """A body announced over the limit is answered 413 at once, its bytes unread: the keep-alive connection
    cannot serve another request (its next request was never answered), so the answer says
    `Connection: close` and the server closes it."""
    from http_helpers import start_api

    srv = await start_api(nursery, tmp_path, max_frame=1000)
    with trio.fail_after(20):
        stream = await trio.open_tcp_stream("127.0.0.1", srv.http_port)
        async with stream:
            await stream.send_all(b"POST /api/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                  b"Content-Length: 10000000\r\n\r\n" + b"a" * 65536)
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += await stream.receive_some(65536)
            head = answer.split(b"\r\n\r\n")[0].lower()
            assert head.startswith(b"http/1.1 413") and b"connection: close" in head, head
            while await stream.receive_some(65536):  # then the server closes it (no hang)
                pass
    srv.stopping.set()


BAD_URLS: list[tuple[str, str, int, str]] = [
    ("GET", "/api/tasks/abc", 404, "not_found"),
    ("GET", "/api/tasks/1.5", 404, "not_found"),
    ("GET", "/api/tasks/0", 404, "not_found"),
    ("GET", "/api/tasks/-3", 404, "not_found"),
    ("GET", "/api/tasks/999", 404, "not_found"),
    ("GET", "/api/tasks/" + "9" * 25, 404, "not_found"),
    ("GET", "/api/tasks/" + "9" * 400, 404, "not_found"),
    ("GET", "/api/tasks/999?wait=5", 404, "not_found"),
    ("GET", "/api/tasks/1?wait=abc", 400, "bad_request"),
    ("GET", "/api/tasks/1?wait=-1", 400, "bad_request"),
    ("GET", "/api/tasks/1?wait=301", 400, "bad_request"),
    ("GET", "/api/tasks/1?wait=nan", 400, "bad_request"),
    ("GET", "/api/tasks/1?wait=inf", 400, "bad_request"),
    ("DELETE", "/api/tasks/999", 404, "not_found"),
    ("DELETE", "/api/tasks/x", 404, "not_found"),
    ("POST", "/api/tasks/999/retry", 404, "not_found"),
    ("GET", "/api/tasks/999/events", 404, "not_found"),
    ("GET", "/api/tasks?limit=0", 400, "bad_request"),
    ("GET", "/api/tasks?limit=1001", 400, "bad_request"),
    ("GET", "/api/tasks?limit=ten", 400, "bad_request"),
    ("GET", "/api/tasks?limit=" + "9" * 100, 400, "bad_request"),
    ("GET", "/api/tasks?cursor=-1", 400, "bad_request"),
    ("GET", "/api/tasks?cursor=" + "9" * 25, 400, "bad_request"),
    ("GET", "/api/tasks?status=sleeping", 400, "bad_request"),
    ("GET", "/api/tasks?queue=" + "q" * 201, 400, "bad_request"),
    ("DELETE", "/api/workers/w-nobody", 404, "not_found"),
    ("GET", "/api/nothing", 404, "not_found"),
    ("PUT", "/api/tasks", 405, "unknown_op"),
    ("PATCH", "/api/tasks/1", 405, "unknown_op"),
    ("GET", "/api/tasks/batch", 405, "unknown_op"),
    ("POST", "/api/queues/" + "q" * 201 + "/pause", 400, "bad_request"),
    ("GET", "/api/events?id=abc", 400, "bad_request"),
    ("GET", "/api/events?queue=a&queue=b", 400, "bad_request"),
    ("GET", "/api/tasks?limit=5&limit=6", 400, "bad_request"),
    ("GET", "/api/tasks?colour=red", 400, "bad_request"),
    ("GET", "/api/tasks?status=", 400, "bad_request"),
    ("GET", "/api/tasks?limit=+5", 400, "bad_request"),
    ("GET", "/api/tasks/1?wait=1e1000", 400, "bad_request"),
    ("GET", "/api/stats?x=1", 400, "bad_request"),
    ("GET", "/api/events?id=0", 400, "bad_request"),
]


@pytest.mark.parametrize(("method", "url", "status", "code"), BAD_URLS, ids=[f"{m} {u[:40]}" for m, u, _, _ in BAD_URLS])
async def test_bad_urls_and_params_are_4xx(api: Api, method: str, url: str, status: int, code: str) -> None:
    await api.client.post("/api/tasks", json={"type": "x"})  # task 1 exists
    error_of(await api.client.request(method, url), status, code)


# ---------------------------------------------------------------------- one name per idea (issue 10)
@pytest.mark.parametrize("body", [{"payload": {"n": [1, "a"]}}, {"data": {"n": [1, "a"]}},
                                  {"payload": {"n": [1, "a"]}, "data": {"n": [1, "a"]}}])
async def test_payload_and_its_alias_data_enqueue_the_same_task(api: Api, body: dict[str, Any]) -> None:
    r = await api.client.post("/api/tasks", json={"type": "x", **body})
    assert r.status_code == 201, r.text
    task = (await api.client.get(f"/api/tasks/{r.json()['task_id']}")).json()
    assert task["payload"] == task["data"] == {"n": [1, "a"]}
    assert (task["state"], task["status"], task["attempt"], task["attempts"]) == ("ready", "ready", 0, 0)
    tcp = await api.server.ops.get(api.server.ops.authenticate(None, "client", "test"), task["id"])
    assert tcp["payload"] == b"\x81\xa1n\x92\x01\xa1a"  # what a TCP enqueue of {"n": [1, "a"]} stores


async def test_payload_and_data_differing_are_refused_naming_both(api: Api) -> None:
    r = await api.client.post("/api/tasks", json={"type": "x", "payload": 1, "data": 2})
    message = error_of(r, 400, "bad_request")
    assert "'payload'" in message and "'data'" in message
    r = await api.client.post("/api/tasks/batch", json={"tasks": [{"type": "x", "payload": 1, "data": 2}]})
    assert "tasks[0]" in error_of(r, 400, "bad_request")
    assert api.server.core.stats.enqueued == 0


async def test_the_state_filter_and_its_alias_status_filter_the_same(api: Api) -> None:
    ids = [(await api.client.post("/api/tasks", json={"type": "x", "payload": i})).json()["task_id"]
           for i in range(3)]
    r = await api.client.delete(f"/api/tasks/{ids[1]}")
    assert r.status_code == 200
    pages = {}
    for query in ("state=cancelled", "status=cancelled", "state=cancelled&status=cancelled", "state=ready",
                  "status=ready"):
        r = await api.client.get(f"/api/tasks?{query}")
        assert r.status_code == 200, r.text
        pages[query] = [t["id"] for t in r.json()["tasks"]]
        assert all(t["state"] == t["status"] for t in r.json()["tasks"])
    assert pages["state=cancelled"] == pages["status=cancelled"] == pages["state=cancelled&status=cancelled"] == [ids[1]]
    assert pages["state=ready"] == pages["status=ready"] == [ids[2], ids[0]]
    message = error_of(await api.client.get("/api/tasks?state=ready&status=cancelled"), 400, "bad_request")
    assert "'state'" in message and "'status'" in message
