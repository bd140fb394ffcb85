"""Task ownership (issue 13, docs/security.md): a task's owner is the identity that enqueued it, never a field of
the request; a user sees, waits on, cancels, retries and streams only its own tasks (another's is not_found,
like no task at all), over TCP and HTTP; admins and viewers see all; a worker takes tasks only from the queues
its token allows."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from runq.app.auth import new_token, token_hash
from runq.app.core import CoreConfig
from runq.app.server import Server, ServerConfig
from runq.app.store.principals import TokenRecord, UserRecord, open_principals
from runq.protocol.frames import Connection, encode_frame

pytestmark = [pytest.mark.trio, pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <async_generator object (?!create_app|EventStream):"
    "pytest.PytestUnraisableExceptionWarning")]


def _principals(db: str) -> dict[str, str]:
    ps = open_principals(db)
    out = {}
    for user in ("alice", "bob"):
        ps.add_user(UserRecord(user, "user", "x", False, 0.0, 0.0))
    for name, role, user, queues in (("alice", "user", "alice", None), ("bob", "user", "bob", None),
                                     ("viewer", "viewer", None, None), ("admin", "admin", None, None),
                                     ("w1", "worker", None, "q1"), ("q2only", "user", None, "q2")):
        secret, tid = new_token()
        ps.add_token(TokenRecord(tid, token_hash(secret), name, role, user, queues, None, None, 0.0))
        out[name] = secret
    ps.close()
    return out


class Tcp:
    """A raw protocol connection (hello, then requests with rids; events gathered as they come)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = Connection(max_frame=1 << 24)
        self.events: list[dict[str, Any]] = []
        self.rid = 0

    @classmethod
    async def open(cls, port: int, token: str, role: str = "client", **hello: Any) -> Tcp:
        self = cls(await trio.open_tcp_stream("127.0.0.1", port))
        await self.stream.send_all(encode_frame({"op": "hello", "versions": [1], "role": role, "token": token,
                                                 **hello}))
        welcome = await self.next()
        if welcome["op"] == "error":
            await self.close()
            raise RuntimeError(welcome["code"])
        return self

    async def next(self) -> dict[str, Any]:
        while True:
            m = self.conn.next_message()
            if m is not None:
                return m
            data = await self.stream.receive_some(65536)
            assert data, "closed"
            self.conn.receive_data(data)

    async def ask(self, op: str, **fields: Any) -> dict[str, Any]:
        self.rid += 1
        rid = self.rid
        await self.stream.send_all(encode_frame({"op": op, "rid": rid, **fields}))
        while True:
            m = await self.next()
            if m.get("op") == "event":
                self.events.append(m)
            elif m.get("rid") == rid:
                return m

    async def close(self) -> None:
        await self.stream.aclose()


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "runq.db")


@pytest.fixture
def tokens(db: str) -> Iterator[dict[str, str]]:
    yield _principals(db)


async def _server(nursery: trio.Nursery, db: str) -> Server:
    srv = Server(ServerConfig(db=db, port=0, http_port=0, core=CoreConfig(lease_timeout=30.0)))
    await nursery.start(srv.serve)
    return srv


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_user_sees_and_acts_on_its_own_tasks_only_over_tcp_and_http(
        nursery: trio.Nursery, db: str, tokens: dict[str, str]) -> None:
    srv = await _server(nursery, db)
    with trio.fail_after(60):
        alice = await Tcp.open(srv.port, tokens["alice"])
        # the owner is who enqueues: an 'owner' field in a spec is no field of a task spec (ignored, as any
        # unknown field of a TCP map: docs/protocol.md section 0)
        mine = (await alice.ask("enqueue", tasks=[{"type": "t", "owner": "bob"}]))["ids"][0]
        assert srv.core.tasks[mine].owner == "alice"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{srv.http_port}", timeout=20) as http:
            r = await http.post("/api/tasks", json={"type": "t", "owner": "alice"}, headers=_bearer(tokens["bob"]))
            assert r.status_code == 400  # (unknown field)
            r = await http.post("/api/tasks", json={"type": "t"}, headers=_bearer(tokens["bob"]))
            theirs = r.json()["task_id"]
            assert r.json()["owner"] == "bob"
            missing = 10_000
            # TCP: bob's task is alice's not_found, with the answer a task that does not exist gets
            for op, fields in (("get", {}), ("wait", {"timeout": 0}), ("cancel", {}), ("retry", {}), ("events", {}),
                               ("why", {})):
                other = await alice.ask(op, id=theirs, **fields)
                nothing = await alice.ask(op, id=missing, **fields)
                assert other["code"] == nothing["code"] == "not_found", (op, other, nothing)
                assert other["message"].replace(str(theirs), "N") == nothing["message"].replace(str(missing), "N"), op
            got = await alice.ask("get", id=mine)
            assert got["task"]["owner"] == "alice"
            listed = await alice.ask("list")
            assert [t["id"] for t in listed["tasks"]] == [mine]
            # HTTP: the same for bob
            for method, path in (("GET", "/api/tasks/{}"), ("GET", "/api/tasks/{}?wait=0.1"),
                                 ("DELETE", "/api/tasks/{}"), ("POST", "/api/tasks/{}/retry"),
                                 ("GET", "/api/tasks/{}/events"), ("GET", "/api/tasks/{}/why")):
                other = await http.request(method, path.format(mine), headers=_bearer(tokens["bob"]))
                nothing = await http.request(method, path.format(missing), headers=_bearer(tokens["bob"]))
                assert other.status_code == nothing.status_code == 404, (method, path, other.text)
            r = await http.get("/api/tasks", headers=_bearer(tokens["bob"]))
            assert [t["id"] for t in r.json()["tasks"]] == [theirs]
            # admins and viewers see all
            for who in ("viewer", "admin"):
                r = await http.get("/api/tasks", headers=_bearer(tokens[who]))
                assert [(t["id"], t["owner"]) for t in r.json()["tasks"]] == [(theirs, "bob"), (mine, "alice")]
            # alice cancels her own; an admin may cancel bob's, and the timeline names who did
            assert (await alice.ask("cancel", id=mine))["task"]["state"] == "cancelled"
            r = await http.delete(f"/api/tasks/{theirs}", headers=_bearer(tokens["admin"]))
            assert r.status_code == 200
            r = await http.get(f"/api/tasks/{theirs}/events", headers=_bearer(tokens["bob"]))
            assert r.json()["events"][-1]["detail"].startswith("by token:")
            ev = (await alice.ask("events", id=mine))["events"]
            assert ev[-1]["kind"] == "cancelled" and ev[-1]["detail"] == "by alice"
            # a retry of bob's task by alice is not_found (above); by bob it works
            r = await http.post(f"/api/tasks/{theirs}/retry", headers=_bearer(tokens["bob"]))
            assert r.status_code == 200 and r.json()["task"]["state"] == "ready"
        await alice.close()


async def test_live_events_reach_only_the_owner_and_those_who_see_all(nursery: trio.Nursery, db: str,
                                                                      tokens: dict[str, str]) -> None:
    srv = await _server(nursery, db)
    with trio.fail_after(60):
        alice = await Tcp.open(srv.port, tokens["alice"])
        viewer = await Tcp.open(srv.port, tokens["viewer"], "watcher")
        bob = await Tcp.open(srv.port, tokens["bob"])
        assert (await alice.ask("subscribe"))["op"] == "ok"
        assert (await viewer.ask("subscribe"))["op"] == "ok"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{srv.http_port}", timeout=20) as http, \
                http.stream("GET", "/api/events", headers=_bearer(tokens["bob"])) as sse:
            lines = sse.aiter_lines()

            async def next_event() -> dict[str, Any]:
                async for line in lines:
                    if line.startswith("data: "):
                        return dict(json.loads(line[6:]))
                raise AssertionError("the stream ended")

            assert (await next_event())["op"] == "subscribed"
            b1 = (await bob.ask("enqueue", tasks=[{"type": "t"}]))["ids"][0]
            a1 = (await alice.ask("enqueue", tasks=[{"type": "t"}]))["ids"][0]
            b2 = (await bob.ask("enqueue", tasks=[{"type": "t"}]))["ids"][0]
            # alice's stream: her task only (bob's first one was published before hers, and did not come)
            while not any(e["id"] == a1 for e in alice.events):
                alice.events.append(await alice.next())
            assert {e["id"] for e in alice.events} == {a1}
            # bob's SSE stream: his two, not alice's
            seen = []
            while b2 not in seen:
                seen.append((await next_event())["id"])
            assert seen == [b1, b2]
            # the viewer sees them all
            while len({e["id"] for e in viewer.events}) < 3:
                viewer.events.append(await viewer.next())
            assert [e["id"] for e in viewer.events][:3] == [b1, a1, b2]
        for c in (alice, viewer, bob):
            await c.close()


async def test_a_token_held_to_queues_works_and_enqueues_only_there(nursery: trio.Nursery, db: str,
                                                                    tokens: dict[str, str]) -> None:
    srv = await _server(nursery, db)
    with trio.fail_after(60):
        with pytest.raises(RuntimeError, match="forbidden"):
            await Tcp.open(srv.port, tokens["w1"], "worker", queues=["q1", "q2"])
        with pytest.raises(RuntimeError, match="forbidden"):
            await Tcp.open(srv.port, tokens["w1"], "worker")  # (the default queue is not q1)
        w = await Tcp.open(srv.port, tokens["w1"], "worker", queues=["q1"])
        producer = await Tcp.open(srv.port, tokens["q2only"])
        r = await producer.ask("enqueue", tasks=[{"type": "t", "queue": "q1"}])
        assert r["op"] == "error" and r["code"] == "forbidden"
        r = await producer.ask("enqueue", tasks=[{"type": "t"}])
        assert r["op"] == "error" and r["code"] == "forbidden"  # (no queue: 'default')
        ok = await producer.ask("enqueue", tasks=[{"type": "t", "queue": "q2"}])
        assert ok["op"] == "enqueued"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{srv.http_port}", timeout=20) as http:
            r = await http.post("/api/tasks", json={"type": "t", "queue": "q1"}, headers=_bearer(tokens["q2only"]))
            assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        admin = await Tcp.open(srv.port, tokens["admin"])
        t1 = (await admin.ask("enqueue", tasks=[{"type": "t", "queue": "q1"}]))["ids"][0]
        await w.stream.send_all(encode_frame({"op": "credit", "n": 10}))
        given = await w.next()
        assert given["op"] == "tasks" and [t["id"] for t in given["tasks"]] == [t1]  # (q2's is not its to take)
        for c in (w, producer, admin):
            await c.close()
