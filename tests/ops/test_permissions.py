"""The role x operation matrix (issue 13, docs/security.md): every TCP op and every HTTP route, asked by an API
token of every role, is refused (``forbidden``, 403) exactly where the table below says so.

The table is written out here by hand (the docs' table, not ``PERMISSIONS`` read back), and the test checks
that it names every op of the protocol and every route the HTTP app serves: a new op or route without a line
here fails the test.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from runq.app.auth import new_token, token_hash
from runq.app.core import CoreConfig
from runq.app.ops import NOT_MESSAGES, PERMISSIONS
from runq.app.server import Server, ServerConfig
from runq.app.store.principals import TokenRecord, UserRecord, open_principals
from runq.protocol.frames import Connection, encode_frame
from runq.protocol.messages import CLIENT_OPS, WORKER_OPS

A, U, V, W = "admin", "user", "viewer", "worker"
ROLES = (A, U, V, W)

#: docs/security.md's table, written out: op -> the roles that may ask for it.
TABLE: dict[str, set[str]] = {
    "enqueue": {A, U}, "cancel": {A, U}, "retry": {A, U},
    "get": {A, U, V}, "wait": {A, U, V}, "events": {A, U, V}, "list": {A, U, V}, "subscribe": {A, U, V},
    "why": {A, U, V}, "types": {A, U, V},
    "queues": {A, V}, "workers": {A, V}, "stats": {A, V}, "limits": {A, V}, "breakers": {A, V},
    "server_events": {A, V}, "schedules": {A, V},
    "pause": {A}, "resume": {A}, "drain": {A}, "set_limit": {A}, "remove_limit": {A}, "set_breaker": {A},
    "remove_breaker": {A}, "open_breaker": {A}, "close_breaker": {A}, "schedule_add": {A}, "schedule_remove": {A},
    "schedule_pause": {A}, "schedule_resume": {A}, "schedule_run": {A},
    "dead_list": {A, V}, "dead_retry": {A}, "dead_delete": {A},
    "credit": {W}, "heartbeat": {W}, "progress": {W}, "done": {W}, "fail": {W}, "release": {W},
    "schedule_declare": {W},
    "ping": {A, U, V, W}, "whoami": {A, U, V, W},
}

_SCHEDULE = {"name": "s", "type": "t", "every": 60.0}
#: one message per TCP op (what it carries does not matter: only whether it is refused as forbidden)
TCP_MESSAGES: dict[str, dict[str, Any]] = {
    "enqueue": {"tasks": [{"type": "t", "queue": "q"}]}, "get": {"id": 1}, "wait": {"id": 1, "timeout": 0},
    "cancel": {"id": 999}, "retry": {"id": 1}, "events": {"id": 1}, "list": {}, "pause": {"queue": "q"},
    "resume": {"queue": "q"}, "queues": {}, "workers": {}, "subscribe": {}, "ping": {}, "stats": {},
    "drain": {"worker": "nope"}, "types": {}, "schedules": {}, "schedule_add": {"schedule": _SCHEDULE},
    "schedule_remove": {"name": "nope"}, "schedule_pause": {"name": "nope"}, "schedule_resume": {"name": "nope"},
    "schedule_run": {"name": "nope"}, "limits": {}, "breakers": {}, "why": {"id": 1}, "server_events": {},
    "set_limit": {"scope": "queue", "name": "z", "concurrency": 1}, "remove_limit": {"scope": "queue", "name": "z"},
    "set_breaker": {"type": "z"}, "remove_breaker": {"type": "z"}, "open_breaker": {"type": "z"},
    "close_breaker": {"type": "nope"},
    "dead_list": {}, "dead_retry": {"type": "nope"}, "dead_delete": {"type": "nope"},
    "credit": {"n": 1}, "heartbeat": {}, "progress": {"id": 999, "lease": 1, "value": b"\xc0"},
    "done": {"results": []}, "fail": {"id": 999, "lease": 1, "error": "x"}, "release": {"ids": []},
}

#: every HTTP route the app serves -> its operation (None: open, no credential asked)
HTTP_ROUTES: dict[tuple[str, str], str | None] = {
    ("GET", "/healthz"): None, ("GET", "/readyz"): None, ("GET", "/openapi.json"): None, ("GET", "/docs"): None,
    ("POST", "/api/auth/login"): None, ("POST", "/api/auth/refresh"): None, ("POST", "/api/auth/logout"): None,
    ("GET", "/api/auth/me"): "whoami",
    ("GET", "/metrics"): "stats",
    ("POST", "/api/tasks"): "enqueue", ("POST", "/api/tasks/batch"): "enqueue", ("GET", "/api/tasks"): "list",
    ("GET", "/api/tasks/1"): "get", ("DELETE", "/api/tasks/999"): "cancel", ("POST", "/api/tasks/1/retry"): "retry",
    ("GET", "/api/tasks/1/events"): "events", ("GET", "/api/tasks/1/why"): "why",
    ("GET", "/api/queues"): "queues", ("POST", "/api/queues/q/pause"): "pause",
    ("POST", "/api/queues/q/resume"): "resume", ("GET", "/api/workers"): "workers", ("GET", "/api/types"): "types",
    ("DELETE", "/api/workers/nope"): "drain", ("GET", "/api/stats"): "stats",
    ("GET", "/api/limits"): "limits", ("PUT", "/api/limits/queue/z"): "set_limit",
    ("DELETE", "/api/limits/queue/z"): "remove_limit", ("GET", "/api/breakers"): "breakers",
    ("PUT", "/api/breakers/z"): "set_breaker", ("DELETE", "/api/breakers/z"): "remove_breaker",
    ("POST", "/api/breakers/z/open"): "open_breaker", ("POST", "/api/breakers/nope/close"): "close_breaker",
    ("GET", "/api/server-events"): "server_events",
    ("GET", "/api/schedules"): "schedules", ("PUT", "/api/schedules/s"): "schedule_add",
    ("DELETE", "/api/schedules/nope"): "schedule_remove", ("POST", "/api/schedules/nope/pause"): "schedule_pause",
    ("POST", "/api/schedules/nope/resume"): "schedule_resume", ("POST", "/api/schedules/nope/run"): "schedule_run",
    ("GET", "/api/events"): "subscribe", ("GET", "/api/ws"): "subscribe",
    ("GET", "/api/dead"): "dead_list", ("POST", "/api/dead/retry"): "dead_retry",
    ("POST", "/api/dead/delete"): "dead_delete",
}
HTTP_BODIES: dict[tuple[str, str], Any] = {
    ("POST", "/api/tasks"): {"type": "t", "queue": "q"}, ("POST", "/api/tasks/batch"): {"tasks": [{"type": "t"}]},
    ("PUT", "/api/limits/queue/z"): {"concurrency": 1}, ("PUT", "/api/breakers/z"): {},
    ("PUT", "/api/schedules/s"): {"type": "t", "every": 60},
    ("POST", "/api/dead/retry"): {"type": "nope"}, ("POST", "/api/dead/delete"): {"type": "nope"},
}


def test_the_table_here_is_the_permission_table_and_names_every_op() -> None:
    assert {op: set(roles) for op, roles in PERMISSIONS.items()} == TABLE
    assert set(TCP_MESSAGES) == (CLIENT_OPS | WORKER_OPS) == set(TABLE) - NOT_MESSAGES


def _tokens(db: str) -> dict[str, str]:
    ps = open_principals(db)
    out = {}
    for role in ROLES:
        secret, tid = new_token()
        ps.add_token(TokenRecord(tid, token_hash(secret), role, role, None, None, None, None, 0.0))
        out[role] = secret
    ps.add_user(UserRecord("alice", "user", "x", False, 0.0, 0.0))
    ps.close()
    return out


async def _tcp(port: int, token: str, kind: str, msg: dict[str, Any]) -> str:
    """Send ``msg`` on a new connection of ``kind``, then a ping; return the code of the error frame that
    answers ``msg`` (or closes the connection), else "ok"."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    conn = Connection(max_frame=1 << 24)
    async with stream:
        await stream.send_all(encode_frame({"op": "hello", "versions": [1], "role": kind, "token": token}))
        await stream.send_all(encode_frame({**msg, "rid": "m"}) + encode_frame({"op": "ping", "rid": "p"}))
        while True:
            m = conn.next_message()
            if m is None:
                data = await stream.receive_some(65536)
                if not data:
                    return "closed"
                conn.receive_data(data)
                continue
            if m.get("op") == "error" and m.get("rid") in ("m", None):
                return str(m["code"])
            if m.get("op") == "pong" and m.get("rid") == "p":
                return "ok"


@pytest.mark.trio
async def test_every_tcp_op_and_http_route_for_every_role_is_refused_exactly_where_the_table_says(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    db = str(tmp_path / "runq.db")
    tokens = await trio.to_thread.run_sync(_tokens, db)
    srv = Server(ServerConfig(db=db, port=0, http_port=0, core=CoreConfig(lease_timeout=30.0)))
    await nursery.start(srv.serve)
    with trio.fail_after(120):
        # TCP: the client ops on client connections, the worker ops on a worker's connection
        refused: dict[str, set[str]] = {}
        for role in ROLES:
            for op, fields in TCP_MESSAGES.items():
                kind = "worker" if op in WORKER_OPS - {"ping"} else "client"
                if kind == "worker" and role != W:
                    # a worker connection needs a worker's credential: refused at hello
                    assert await _tcp(srv.port, tokens[role], "worker", {"op": "ping"}) == "forbidden"
                    refused.setdefault(op, set()).add(role)
                    continue
                code = await _tcp(srv.port, tokens[role], kind, {"op": op, **fields})
                assert code in ("ok", "forbidden", "not_found", "invalid_state", "bad_request"), (role, op, code)
                if code == "forbidden":
                    refused.setdefault(op, set()).add(role)
        assert {op: set(ROLES) - refused.get(op, set()) for op in TCP_MESSAGES} == {
            op: TABLE[op] for op in TCP_MESSAGES}
        # a worker token also declares schedules in its hello (schedule_declare)
        assert await _tcp(srv.port, tokens[W], "worker", {"op": "ping"}) == "ok"

        # HTTP: every route the app serves, for every role
        app_routes = {(m, r.rule) for r in srv_app_rules(srv) for m in r.methods - {"HEAD", "OPTIONS"}}
        assert app_routes == {(m, _rule_of(p)) for m, p in HTTP_ROUTES}
        allowed: dict[str, set[str]] = {}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{srv.http_port}", timeout=20) as http:
            for (method, path), op in HTTP_ROUTES.items():
                if op is None or path in ("/api/events", "/api/ws"):
                    continue
                for role in ROLES:
                    r = await http.request(method, path, headers={"Authorization": f"Bearer {tokens[role]}"},
                                           json=HTTP_BODIES.get((method, path)))
                    assert r.status_code not in (401, 405, 500), (role, method, path, r.text)
                    if r.status_code != 403:
                        allowed.setdefault(f"{method} {path}", set()).add(role)
                    else:
                        assert r.json()["error"]["code"] == "forbidden"
            # the live streams (their body never ends: only the refusal is read here; TCP's subscribe above,
            # and tests/ops/test_ownership.py read what the allowed ones stream)
            r = await http.get("/api/events", headers={"Authorization": f"Bearer {tokens[W]}"})
            assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        expected = {f"{m} {p}": TABLE[op] for (m, p), op in HTTP_ROUTES.items()
                    if op is not None and p not in ("/api/events", "/api/ws")}
        assert allowed == expected
    srv.stopping.set()


def srv_app_rules(srv: Server) -> list[Any]:
    from runq.app.http import create_app
    from runq.app.http.events import StreamHub
    from runq.app.http.metrics import Meter

    app = create_app(srv, Meter(srv), StreamHub(srv))
    return [r for r in app.url_map.iter_rules() if r.endpoint != "static"]


def _rule_of(path: str) -> str:
    """The Werkzeug rule a path of ``HTTP_ROUTES`` is served by."""
    rules = [
        (r"/api/tasks/\d+", "/api/tasks/<int(signed=True):task_id>"),
        (r"/api/tasks/\d+/(\w+)", "/api/tasks/<int(signed=True):task_id>/\\1"),
        (r"/api/queues/q/(\w+)", "/api/queues/<queue:name>/\\1"),
        (r"/api/workers/nope", "/api/workers/<worker_id>"),
        (r"/api/limits/queue/z", "/api/limits/<scope>/<queue:name>"),
        (r"/api/breakers/z", "/api/breakers/<breaker_type:name>"),
        (r"/api/breakers/\w+/(open|close)", "/api/breakers/<queue:name>/\\1"),
        (r"/api/schedules/(s|nope)", "/api/schedules/<name>"),
        (r"/api/schedules/nope/(\w+)", "/api/schedules/<name>/\\1"),
    ]
    for pattern, rule in rules:
        if re.fullmatch(pattern, path):
            return re.sub(pattern, rule, path)
    return path



def test_docs_security_md_shows_the_same_table() -> None:
    """docs/security.md's permission table (its role columns: "yes" or "own") is this one."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()
    table = text.split("<!-- permissions -->")[1].split("<!-- /permissions -->")[0]
    documented: dict[str, set[str]] = {}
    for line in table.strip().splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        documented[cells[0]] = {role for role, cell in zip(ROLES, cells[3:7], strict=True) if cell in ("yes", "own")}
    assert documented == TABLE
