"""``runq users`` and ``runq tokens`` on a database file, and a running server that takes their changes
(issue 13, docs/security.md): the first admin is made on the server's machine, tokens are shown once and work
at once, a revoked token stops working, every change is in the audit log with its actor."""

from __future__ import annotations

import functools
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from cli_helpers import HERE, cli_env, run_cli

from runq.app.core import CoreConfig
from runq.app.server import Server, ServerConfig
from runq.protocol.errors import Forbidden, Unauthorized
from runq.protocol.sync_client import SyncClient


def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runq.cli", *args], env=cli_env(), cwd=HERE, input=stdin,
                          capture_output=True, text=True, timeout=60, check=False)


def test_users_are_added_listed_given_a_password_and_disabled_on_the_database(tmp_path: Path) -> None:
    db = str(tmp_path / "runq.db")
    assert run_cli("users", "--db", db).stderr.startswith("runq users: no users")
    r = cli("users", "add", "alice", "--role", "admin", "--password-stdin", "--db", db, stdin="s3cret\n")
    assert r.returncode == 0 and r.stdout == "user alice added (admin)\n", r.stderr
    assert cli("users", "add", "alice", "--password-stdin", "--db", db, stdin="x\n").returncode == 1
    assert cli("users", "add", "no:colon", "--password-stdin", "--db", db, stdin="x\n").returncode == 2
    assert cli("users", "add", "bob", "--password-stdin", "--db", db, stdin="\n").returncode == 1  # (empty)
    assert run_cli("users", "list", "--db", db, "--json").stdout == run_cli("users", "--db", db, "--json").stdout
    listed = json.loads(run_cli("users", "--db", db, "--json").stdout)
    assert [(u["name"], u["role"], u["disabled"]) for u in listed] == [("alice", "admin", False)]
    conn = sqlite3.connect(db)
    stored = conn.execute("SELECT password FROM users WHERE name = 'alice'").fetchone()[0]
    assert stored.startswith("$argon2id$") and "s3cret" not in stored
    assert cli("users", "passwd", "alice", "--password-stdin", "--db", db, stdin="n3w\n").returncode == 0
    assert conn.execute("SELECT password FROM users WHERE name = 'alice'").fetchone()[0] != stored
    assert run_cli("users", "disable", "alice", "--db", db).returncode == 0
    assert json.loads(run_cli("users", "--db", db, "--json").stdout)[0]["disabled"] is True
    assert run_cli("users", "disable", "nobody", "--db", db).returncode == 1
    audit = conn.execute("SELECT scope, kind, detail, actor FROM server_events ORDER BY id").fetchall()
    assert [a[1] for a in audit] == ["user_added", "user_password", "user_disabled"]
    assert all(a[0] == "auth" and a[3].startswith("cli:") for a in audit)


def _tcp(address: str, token: str | None, role: str = "client") -> Any:
    return SyncClient(address, token=token, role=role, retry_for=0)


@pytest.mark.trio
async def test_a_token_made_by_the_cli_works_at_once_and_stops_when_revoked(tmp_path: Path,
                                                                             nursery: trio.Nursery) -> None:
    db = str(tmp_path / "runq.db")
    made = {}
    for name, role, extra in (("ops", "admin", ()), ("w", "worker", ("--queue", "q1"))):
        r = await trio.to_thread.run_sync(functools.partial(run_cli, "tokens", "create", name, "--role", role,
                                                            *extra, "--db", db, "--json"))
        assert r.returncode == 0, r.stderr
        made[name] = json.loads(r.stdout)
    assert made["ops"]["token"].startswith("rq_" + made["ops"]["id"] + "_")
    stored = sqlite3.connect(db).execute("SELECT hash FROM api_tokens").fetchall()
    assert all(made["ops"]["token"] not in h[0] for h in stored)
    srv = Server(ServerConfig(db=db, port=0, principals_poll=0.05, core=CoreConfig(lease_timeout=10.0)))
    await nursery.start(srv.serve)
    address = f"127.0.0.1:{srv.port}"

    def enqueue(token: str | None) -> int:
        with _tcp(address, token) as c:
            return int(c.enqueue("t", {"x": 1}))

    with trio.fail_after(30):
        assert await trio.to_thread.run_sync(enqueue, made["ops"]["token"]) == 1
        for bad in (None, "rq_nope", made["ops"]["token"][:-1]):
            with pytest.raises(Unauthorized):
                await trio.to_thread.run_sync(enqueue, bad)
        with pytest.raises(Forbidden):  # (a worker's token may not enqueue)
            await trio.to_thread.run_sync(enqueue, made["w"]["token"])
        # a token created while the server runs works once the server has polled (50 ms here)
        r = await trio.to_thread.run_sync(lambda: run_cli("tokens", "create", "late", "--role", "user", "--db", db))
        late = r.stdout.strip()
        while True:
            try:
                await trio.to_thread.run_sync(enqueue, late)
                break
            except Unauthorized:
                await trio.sleep(0.05)
        r = await trio.to_thread.run_sync(lambda: run_cli("tokens", "revoke", made["ops"]["id"], "--db", db))
        assert r.returncode == 0 and r.stdout == f"token {made['ops']['id']} revoked\n"
        while True:
            try:
                await trio.to_thread.run_sync(enqueue, made["ops"]["token"])
            except Unauthorized:
                break
            await trio.sleep(0.05)
        listed = json.loads((await trio.to_thread.run_sync(lambda: run_cli("tokens", "list", "--db", db,
                                                                           "--json"))).stdout)
        assert {t["name"]: (t["role"], t["queues"], t["revoked_at"] is not None) for t in listed} == {
            "ops": ("admin", None, True), "w": ("worker", ["q1"], False), "late": ("user", None, False)}
        r = await trio.to_thread.run_sync(lambda: run_cli("tokens", "revoke", made["ops"]["id"], "--db", db))
        assert r.returncode == 1 and "no live API token" in r.stderr


def test_tokens_create_refuses_bad_options(tmp_path: Path) -> None:
    db = str(tmp_path / "runq.db")
    assert run_cli("tokens", "create", "x", "--expires", "soon", "--db", db).returncode == 2
    assert run_cli("tokens", "create", "x", "--queue", "", "--db", db).returncode == 2
    r = run_cli("tokens", "create", "x", "--user", "nobody", "--db", db)
    assert r.returncode == 1 and "no user 'nobody'" in r.stderr
