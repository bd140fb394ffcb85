"""HTTP logins (issue 13, docs/security.md): login, refresh, logout, expiry on a fake clock, the rate limit of
failed logins, and the one 401 answer for every bad credential (expired, tampered, ``alg: none``, revoked,
unknown), over real sockets."""

from __future__ import annotations

import base64
import functools
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from runq.app.auth import hash_password, new_token, token_hash
from runq.app.core import CoreConfig
from runq.app.server import Server, ServerConfig
from runq.app.store.principals import TokenRecord, UserRecord, open_principals
from runq.protocol.errors import Unauthorized
from runq.protocol.sync_client import SyncClient

pytestmark = [pytest.mark.trio]

T0 = 1_800_000_000.0


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def _setup(db: str) -> str:
    ps = open_principals(db)
    ps.add_user(UserRecord("alice", "user", hash_password("pw"), False, T0, T0))
    ps.add_user(UserRecord("eve", "admin", hash_password("pw"), True, T0, T0))
    secret, tid = new_token()
    ps.add_token(TokenRecord(tid, token_hash(secret), "ops", "admin", None, None, None, None, T0))
    ps.close()
    return secret


async def _start(nursery: trio.Nursery, tmp_path: Path, clock: FakeClock) -> tuple[Server, str]:
    db = str(tmp_path / "runq.db")
    api_token = await trio.to_thread.run_sync(_setup, db)
    srv = Server(ServerConfig(db=db, port=0, http_port=0, access_ttl=60.0, refresh_ttl=600.0,
                              core=CoreConfig(lease_timeout=30.0)), clock=clock)
    await nursery.start(srv.serve)
    return srv, api_token


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _forged_none(token: str) -> str:
    """``token`` with its header changed to ``alg: none``, its role raised, and no signature."""
    head, body, _ = token.split(".")

    def dec(s: str) -> dict[str, Any]:
        return dict(json.loads(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))))

    def enc(d: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

    return f"{enc({**dec(head), 'alg': 'none'})}.{enc({**dec(body), 'role': 'admin'})}."


async def test_login_refresh_logout_and_expiry_on_the_servers_clock(nursery: trio.Nursery, tmp_path: Path) -> None:
    clock = FakeClock()
    srv, _ = await _start(nursery, tmp_path, clock)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{srv.http_port}", timeout=20) as http:
        r = await http.post("/api/auth/login", json={"username": "alice", "password": "pw"})
        assert r.status_code == 200, r.text
        tokens = r.json()
        assert (tokens["user"], tokens["role"], tokens["token_type"], tokens["expires_in"]) == (
            "alice", "user", "bearer", 60.0)
        assert tokens["refresh_token"].startswith("rqr_")
        access = tokens["access_token"]
        me = await http.get("/api/auth/me", headers=_bearer(access))
        assert me.status_code == 200 and (me.json()["name"], me.json()["role"]) == ("alice", "user")
        assert "enqueue" in me.json()["ops"] and "pause" not in me.json()["ops"]
        # an access token works over TCP too (its hello's token)
        def enqueue() -> int:
            with SyncClient(f"127.0.0.1:{srv.port}", token=access, retry_for=0) as c:
                return int(c.enqueue("t", 1))

        tid = await trio.to_thread.run_sync(enqueue)
        assert srv.core.tasks[tid].owner == "alice"
        # expired by the server's clock: refused, on this same connection too (verified once per connection,
        # then only its expiry and its user's state are checked)
        clock.now += 60
        expired = await http.get("/api/auth/me", headers=_bearer(access))
        assert expired.status_code == 401
        # the refresh token gives new tokens, once
        r = await http.post("/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
        assert r.status_code == 200 and r.json()["access_token"] != access
        fresh = r.json()
        assert (await http.get("/api/auth/me", headers=_bearer(fresh["access_token"]))).status_code == 200
        again = await http.post("/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
        assert again.status_code == 401
        # logout revokes the refresh token
        assert (await http.post("/api/auth/logout", json={"refresh_token": fresh["refresh_token"]})).status_code == 200
        r = await http.post("/api/auth/refresh", json={"refresh_token": fresh["refresh_token"]})
        assert r.status_code == 401
        # a refresh token expires too
        r = await http.post("/api/auth/login", json={"username": "alice", "password": "pw"})
        late = r.json()["refresh_token"]
        clock.now += 600
        assert (await http.post("/api/auth/refresh", json={"refresh_token": late})).status_code == 401
        assert (await http.post("/api/auth/refresh", json={"token": late})).status_code == 400


async def test_every_bad_credential_gets_the_same_401(nursery: trio.Nursery, tmp_path: Path) -> None:
    clock = FakeClock()
    srv, api_token = await _start(nursery, tmp_path, clock)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{srv.http_port}", timeout=20) as http:
        good = (await http.post("/api/auth/login", json={"username": "alice", "password": "pw"})).json()
        access = good["access_token"]
        keys = srv.authenticator.keys
        assert keys is not None
        bad = {
            "alg none": _forged_none(access),
            "tampered": access[:-3] + ("AAA" if not access.endswith("AAA") else "BBB"),
            "expired": keys.issue("alice", "user", T0 - 120, 60),
            "unknown user": keys.issue("mallory", "admin", T0, 60),
            "disabled user": keys.issue("eve", "admin", T0, 60),
            "garbage": "x.y.z",
            "unknown api token": new_token()[0],
            "refresh token as access": good["refresh_token"],
        }
        # an API token revoked while the server runs
        ps = srv.principal_store
        assert ps is not None
        assert (await http.get("/api/auth/me", headers=_bearer(api_token))).status_code == 200
        await trio.to_thread.run_sync(ps.revoke_token, "ops", clock.now)
        await srv.reload_principals()
        bad["revoked api token"] = api_token
        bodies = {}
        for what, token in bad.items():
            r = await http.get("/api/tasks", headers=_bearer(token))
            assert r.status_code == 401, what
            assert r.headers["www-authenticate"] == 'Bearer realm="runq"'
            bodies[what] = r.text
        assert len(set(bodies.values())) == 1, bodies
        # over TCP: the same refusal
        for what in ("alg none", "expired", "revoked api token"):
            with pytest.raises(Unauthorized) as err:
                await trio.to_thread.run_sync(functools.partial(SyncClient, f"127.0.0.1:{srv.port}", token=bad[what],
                                                                retry_for=0))
            assert "missing, invalid, expired or revoked credential" in str(err.value)


async def test_a_failed_login_says_nothing_of_who_exists_is_rate_limited_and_audited(nursery: trio.Nursery,
                                                                                       tmp_path: Path) -> None:
    clock = FakeClock()
    srv, api_token = await _start(nursery, tmp_path, clock)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{srv.http_port}", timeout=20) as http:
        answers = []
        for user, password in (("alice", "wrong"), ("nobody", "pw"), ("eve", "pw"), ("", "pw"), ("a" * 500, "pw")):
            r = await http.post("/api/auth/login", json={"username": user, "password": password})
            answers.append((r.status_code, r.text))
        assert len(set(answers)) == 1 and answers[0][0] == 401, answers
        assert json.loads(answers[0][1]) == {"error": {"code": "unauthorized", "message": "wrong user name or password"}}
        # alice has one failure: four more are allowed, then 429 until the window passes
        for _ in range(4):
            r = await http.post("/api/auth/login", json={"username": "alice", "password": "wrong"})
            assert r.status_code == 401
        r = await http.post("/api/auth/login", json={"username": "alice", "password": "pw"})
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(r.headers["retry-after"]) <= 300
        clock.now += 301
        r = await http.post("/api/auth/login", json={"username": "alice", "password": "pw"})
        assert r.status_code == 200  # (and her failures are forgotten)
        r = await http.get("/api/server-events", params={"limit": 1000}, headers=_bearer(api_token))
        audit = [e for e in r.json()["events"] if e["kind"] == "login_failed"]
        assert [e["actor"] for e in audit] == ["alice", "nobody", "eve", "?", "a" * 64] + ["alice"] * 4
        assert all(e["detail"] == "failed login from 127.0.0.1" and e["scope"] == "auth" for e in audit)



async def test_a_tcp_connection_of_an_access_token_ends_when_the_token_expires(nursery: trio.Nursery,
                                                                              tmp_path: Path) -> None:
    from runq.protocol.frames import Connection, encode_frame

    clock = FakeClock()
    srv, _ = await _start(nursery, tmp_path, clock)
    keys = srv.authenticator.keys
    assert keys is not None
    stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
    conn = Connection()

    async def ask(msg: dict[str, Any]) -> dict[str, Any]:
        await stream.send_all(encode_frame(msg))
        while True:
            m = conn.next_message()
            if m is not None:
                return m
            data = await stream.receive_some(65536)
            assert data, "closed"
            conn.receive_data(data)

    with trio.fail_after(20):
        async with stream:
            welcome = await ask({"op": "hello", "versions": [1], "role": "client",
                                 "token": keys.issue("alice", "user", T0, 60)})
            assert welcome["identity"]["name"] == "alice" and "enqueue" in welcome["identity"]["ops"]
            assert (await ask({"op": "ping", "rid": 1}))["op"] == "pong"
            clock.now += 60
            refused = await ask({"op": "ping", "rid": 2})
            assert (refused["op"], refused["code"]) == ("error", "unauthorized")
            assert await stream.receive_some(65536) == b""  # (closed)


@pytest.mark.trio
async def test_an_access_token_is_verified_once_per_connection(nursery: trio.Nursery, tmp_path: Path) -> None:
    """The signature of a JWT is checked at a connection's first request only (docs/security.md): after the
    server's keys change, the connection that verified it goes on, a new connection is refused."""
    from runq.app.auth import AccessKeys

    srv, _ = await _start(nursery, tmp_path, FakeClock())
    url = f"http://127.0.0.1:{srv.http_port}"
    async with httpx.AsyncClient(base_url=url, timeout=20) as http:
        r = await http.post("/api/auth/login", json={"username": "alice", "password": "pw"})
        access = r.json()["access_token"]
        assert (await http.get("/api/auth/me", headers=_bearer(access))).status_code == 200
        srv.authenticator.keys = AccessKeys.from_text(AccessKeys.generate())  # (its key is gone)
        assert (await http.get("/api/auth/me", headers=_bearer(access))).status_code == 200  # (same connection)
        async with httpx.AsyncClient(base_url=url, timeout=20) as other:
            assert (await other.get("/api/auth/me", headers=_bearer(access))).status_code == 401
