"""``runq login`` / ``runq logout`` (issue 13, docs/security.md): the CLI logs in with a user name and password,
keeps the tokens in a 0600 file, sends the access token, refreshes it when it expires, and logs out."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from cli_helpers import HERE, cli_env

from runq.app.auth import hash_password
from runq.app.core import CoreConfig
from runq.app.server import Server, ServerConfig
from runq.app.store.principals import UserRecord, open_principals


def _cli(creds: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runq.cli", *args], env=cli_env(RUNQ_CREDENTIALS=str(creds)),
                          cwd=HERE, input=stdin, capture_output=True, text=True, timeout=60, check=False)


def _setup(db: str) -> None:
    ps = open_principals(db)
    ps.add_user(UserRecord("alice", "user", hash_password("pw"), False, 0.0, 0.0))
    ps.close()


@pytest.mark.trio
async def test_login_then_commands_use_and_refresh_the_token_then_logout(nursery: trio.Nursery,
                                                                          tmp_path: Path) -> None:
    db = str(tmp_path / "runq.db")
    await trio.to_thread.run_sync(_setup, db)
    srv = Server(ServerConfig(db=db, port=0, http_port=0, core=CoreConfig(lease_timeout=30.0)))
    await nursery.start(srv.serve)
    creds = tmp_path / "creds" / "credentials.json"
    server = ["--server", f"127.0.0.1:{srv.port}"]

    async def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return await trio.to_thread.run_sync(lambda: _cli(creds, *args, stdin=stdin))

    with trio.fail_after(120):
        r = await cli("enqueue", "t", *server)
        assert r.returncode == 1 and "unauthorized" in r.stderr  # (no credential: this server has users)
        r = await cli("login", "--user", "alice", "--password-stdin", *server,
                      "--http", f"http://127.0.0.1:{srv.http_port}", stdin="wrong\n")
        assert r.returncode == 1 and "wrong user name or password" in r.stderr and not creds.exists()
        r = await cli("login", "--user", "alice", "--password-stdin", *server,
                      "--http", f"http://127.0.0.1:{srv.http_port}", stdin="pw\n")
        assert r.returncode == 0 and r.stdout == f"logged in to 127.0.0.1:{srv.port} as alice (user)\n", r.stderr
        assert stat.S_IMODE(os.stat(creds).st_mode) == 0o600
        r = await cli("enqueue", "t", *server)
        assert r.returncode == 0, r.stderr
        assert [t.owner for t in srv.core.tasks.values()] == ["alice"]
        r = await cli("pause", "q", *server)
        assert r.returncode == 1 and "forbidden" in r.stderr  # (a user may not pause)
        # the access token is about to expire: the next command refreshes it first
        data = json.loads(creds.read_text())
        entry = data[f"127.0.0.1:{srv.port}"]
        old_access, old_refresh = entry["access_token"], entry["refresh_token"]
        entry["expires_at"] = 0
        creds.write_text(json.dumps(data))
        r = await cli("tasks", "--json", *server)
        assert r.returncode == 0 and len(json.loads(r.stdout)["tasks"]) == 1, r.stderr
        entry = json.loads(creds.read_text())[f"127.0.0.1:{srv.port}"]
        assert entry["access_token"] != old_access and entry["refresh_token"] != old_refresh
        r = await cli("logout", *server)
        assert r.returncode == 0 and r.stdout == f"logged out of 127.0.0.1:{srv.port}\n"
        assert json.loads(creds.read_text()) == {}
        r = await cli("enqueue", "t", *server)
        assert r.returncode == 1 and "unauthorized" in r.stderr
        r = await cli("logout", *server)
        assert r.returncode == 1 and "not logged in" in r.stderr


@pytest.mark.trio
async def test_login_and_refresh_over_https_verify_the_server_with_the_ca(nursery: trio.Nursery,
                                                                         tmp_path: Path) -> None:
    from tls_certs import make_certs

    certs = make_certs(tmp_path / "certs")
    db = str(tmp_path / "runq.db")
    await trio.to_thread.run_sync(_setup, db)
    srv = Server(ServerConfig(db=db, port=0, http_port=0, tls_cert=certs.server, tls_key=certs.server,
                              core=CoreConfig(lease_timeout=30.0)))
    await nursery.start(srv.serve)
    creds = tmp_path / "credentials.json"
    server = ["--server", f"127.0.0.1:{srv.port}"]
    https = ["--http", f"https://127.0.0.1:{srv.http_port}"]

    async def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return await trio.to_thread.run_sync(lambda: _cli(creds, *args, stdin=stdin))

    with trio.fail_after(120):
        r = await cli("login", "--user", "alice", "--password-stdin", *server, *https, stdin="pw\n")
        assert r.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in r.stderr and not creds.exists()  # (no CA)
        r = await cli("login", "--user", "alice", "--password-stdin", *server, *https, "--tls-ca", certs.other_ca,
                      stdin="pw\n")
        assert r.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in r.stderr and not creds.exists()
        r = await cli("login", "--user", "alice", "--password-stdin", *server, *https, "--tls-ca", certs.ca,
                      stdin="pw\n")
        assert r.returncode == 0, r.stderr
        assert json.loads(creds.read_text())[f"127.0.0.1:{srv.port}"]["http"] == https[1]
        data = json.loads(creds.read_text())
        data[f"127.0.0.1:{srv.port}"]["expires_at"] = 0  # the next command refreshes over HTTPS first
        creds.write_text(json.dumps(data))
        r = await cli("enqueue", "t", *server, "--tls-ca", certs.ca)
        assert r.returncode == 0, r.stderr
        assert [t.owner for t in srv.core.tasks.values()] == ["alice"]
        r = await cli("logout", *server, "--tls-ca", certs.ca)
        assert r.returncode == 0, r.stderr
