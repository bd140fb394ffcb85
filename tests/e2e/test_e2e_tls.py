"""End to end with TLS: a real ``runq serve --tls-cert --tls-key``, a real ``runq worker --tls-ca``, the SDK,
the CLI and the HTTP API over HTTPS; and ``runq serve`` refusing to listen beyond loopback without a token.

Nothing here binds beyond 127.0.0.1: the refusal is checked before anything is opened (no database file).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from e2e_cluster import Cluster, wait_until
from tls_certs import make_certs

from runq import SyncClient

pytestmark = pytest.mark.e2e


def free_port() -> int:
    """A port free on 127.0.0.1 a moment ago (the Cluster's servers have no HTTP API unless given a port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_tls_end_to_end(cluster: Cluster) -> None:
    certs = make_certs(cluster.tmp / "certs")
    port = free_port()
    serve = cluster.start_server("--tls-cert", certs.server, "--tls-key", certs.server, "--http-port", str(port))
    wait_until(lambda: f"with TLS, HTTP API on https://127.0.0.1:{port}" in serve.output())
    worker = cluster.start_worker("--tls-ca", certs.ca)
    with SyncClient(cluster.address, tls=certs.ca) as client:
        cluster.wait_joined(client, worker)
        tid = client.enqueue("compute", 20)
        task = client.wait(tid, timeout=20)
        assert (task["state"], task["result"]) == ("succeeded", 41)
        # a supervisor hands the CA to its children (runq worker --processes)
        cluster.start_worker("--processes", "2", "--tls-ca", certs.ca)
        wait_until(lambda: len(client.workers()) == 3)
    # the HTTP API over HTTPS, verified with the same CA
    r = httpx.get(f"https://127.0.0.1:{port}/api/tasks/{tid}", verify=certs.context(), timeout=10)
    assert r.status_code == 200 and r.json()["state"] == "succeeded"
    # the CLI: with the CA (option or environment); without: one line saying how
    r2 = cluster.cli("status", str(tid), "--json", "--tls-ca", certs.ca)
    assert r2.returncode == 0 and '"succeeded"' in r2.stdout, r2.stderr
    cluster.env["RUNQ_TLS_CA"] = certs.ca
    r2 = cluster.cli("status", str(tid), "--json")
    assert r2.returncode == 0 and '"succeeded"' in r2.stdout, r2.stderr
    del cluster.env["RUNQ_TLS_CA"]
    r2 = cluster.cli("status", str(tid))
    assert r2.returncode == 1 and r2.stdout == ""
    assert r2.stderr.count("\n") == 1 and r2.stderr.startswith("runq status: tls_required: this server speaks TLS only")
    r2 = cluster.cli("status", str(tid), "--tls")  # TLS against the system's CAs: trustme's is not one of them
    assert r2.returncode == 1 and "the server's TLS certificate is not trusted" in r2.stderr
    r2 = cluster.cli("status", str(tid), "--tls-ca", certs.other_ca)
    assert r2.returncode == 1 and r2.stderr.count("\n") == 1
    assert r2.stderr.startswith(f"runq status: {cluster.address}: the server's TLS certificate is not trusted")


def test_a_worker_that_does_not_trust_the_server_cannot_start(cluster: Cluster) -> None:
    """Exit 3 (starting again would not help: a supervisor stops), one line saying why."""
    certs = make_certs(cluster.tmp / "certs")
    serve = cluster.start_server("--tls-cert", certs.server, "--tls-key", certs.server)
    for args, why in ((["--tls-ca", certs.other_ca], "the server's TLS certificate is not trusted"),
                      ([], "tls_required: this server speaks TLS only")):
        w = cluster.start_worker(*args)
        assert w.wait(30) == 3
        assert why in w.output(), w.output()
    serve.signal(signal.SIGTERM)
    assert serve.wait(20) == 0
    cluster.start_server()  # the same database, now plain: a TLS worker is told the server speaks no TLS
    w = cluster.start_worker("--tls-ca", certs.ca)
    assert w.wait(30) == 3
    assert "is it a runq server without TLS?" in w.output(), w.output()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7"])
def test_serve_beyond_loopback_without_a_token_refuses_to_start(tmp_path: Path, runq_env: dict[str, str],
                                                                 host: str) -> None:
    db = tmp_path / "runq.db"
    env = {k: v for k, v in runq_env.items() if k != "RUNQ_TOKEN"}
    r = subprocess.run([sys.executable, "-m", "runq.cli", "serve", "--host", host, "--port", "0", "--db", str(db)],
                       env=env, capture_output=True, text=True, timeout=60, check=False, stdin=subprocess.DEVNULL)
    assert r.returncode == 1 and r.stdout == "", r
    assert r.stderr == (f"runq serve: listening on {host} (beyond loopback) requires authentication: set a shared "
                        "token with --token SECRET or RUNQ_TOKEN (clients and workers then send the same one), or "
                        "listen on 127.0.0.1 (docs/security.md)\n")
    assert not db.exists()  # refused before the database was opened, let alone a port bound
