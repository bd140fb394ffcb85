"""``runq`` errors as one line: a peer that is not a runq server (the HTTP API's port of a real server, a TCP
server that answers junk), a port already in use at ``runq serve``, and the exit statuses."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import Served, run_cli

WHERE = ("the runq TCP port is the one `runq serve --port` listens on (7700 by default), the HTTP API has its own "
         "(--http-port, 7701 by default)")


@pytest.fixture
def junk_port() -> Iterator[int]:
    """A plain TCP server on 127.0.0.1 that answers anything with a line of text."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                try:
                    conn.recv(65536)
                    conn.sendall(b"220 mail.example.com ESMTP ready\r\n")
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    stop.set()
    thread.join(5)
    listener.close()


def one_line(text: str) -> str:
    assert text.count("\n") == 1 and "Traceback" not in text, text
    return text.rstrip("\n")


def test_the_http_port_instead_of_the_tcp_port(served: Served) -> None:
    http = f"127.0.0.1:{served.http_port}"
    r = run_cli("status", "1", "--server", http)
    assert r.returncode == 1 and r.stdout == ""
    assert one_line(r.stderr) == (f"runq status: {http} is not a runq server: it answered like an HTTP server "
                                  f"('HTTP/1.1 400'); {WHERE}")
    # the worker stops at once (exit 3: starting again would not help) instead of retrying for ever
    r = run_cli("worker", "cli_tasks:worker", "--server", http, timeout=30)
    assert r.returncode == 3
    assert one_line(r.stderr) == (f"runq worker: {http} is not a runq server: it answered like an HTTP server "
                                  f"('HTTP/1.1 400'); {WHERE}")


def test_a_peer_that_answers_junk(junk_port: int) -> None:
    r = run_cli("queues", "--server", f"127.0.0.1:{junk_port}")
    assert r.returncode == 1
    assert one_line(r.stderr) == (f"runq queues: 127.0.0.1:{junk_port} is not a runq server: it answered with "
                                  f"bytes that are not a runq frame: b'220 mail.example'; {WHERE}")


def test_the_tcp_port_in_use_by_another_runq_server(served: Served, tmp_path: Path) -> None:
    r = run_cli("serve", "--db", str(tmp_path / "other.db"), "--port", str(served.port), "--http-port", "0",
                cwd=tmp_path)
    assert r.returncode == 1
    assert one_line(r.stderr) == (f"runq serve: port {served.port} on 127.0.0.1 is in use: another runq server "
                                  "runs there; stop it, or choose another port with --port")


def test_the_tcp_port_in_use_by_another_program(junk_port: int, tmp_path: Path) -> None:
    r = run_cli("serve", "--db", str(tmp_path / "other.db"), "--port", str(junk_port), "--http-port", "0",
                cwd=tmp_path)
    assert r.returncode == 1
    assert one_line(r.stderr) == (f"runq serve: port {junk_port} on 127.0.0.1 is in use: another program listens "
                                  "there; stop it, or choose another port with --port")


def test_the_http_port_in_use(served: Served, tmp_path: Path) -> None:
    r = run_cli("serve", "--db", str(tmp_path / "other.db"), "--port", "0", "--http-port", str(served.http_port),
                cwd=tmp_path)
    assert r.returncode == 1
    assert one_line(r.stderr) == (f"runq serve: HTTP port {served.http_port} on 127.0.0.1 is in use: an HTTP server "
                                  "listens there (the HTTP API of another runq server?); choose another with "
                                  "--http-port (0 turns the HTTP API off)")


@pytest.mark.parametrize(("args", "status", "text"), [
    (["status", "999999"], 1, "runq status: not_found: "),
    (["status", "x"], 2, "Error: Invalid value for 'ID': 'x' is not a valid integer."),
    (["nosuch"], 2, "Error: No such command 'nosuch'."),
    (["tasks", "--colour", "red"], 2, "Error: No such option '--colour'."),
    (["tasks", "--limit", "0"], 2, "Error: Invalid value for '--limit': 0 is not in the range 1<=x<=1000."),
    (["enqueue", "echo", "--payload", "{not json"], 2, "Error: Invalid value for '--payload': is not JSON: "),
    (["enqueue", "echo", "--at", "soon"], 2, "Error: Invalid value for '--at': is not an ISO time: "),
    (["enqueue", "echo", "--delay", "1", "--at", "2030-01-01"], 2, "Error: --delay and --at cannot be given together"),
    (["enqueue", "nosuchtype", "--strict"], 3, "runq enqueue: no connected worker handles task type 'nosuchtype'"),
])
def test_exit_statuses(served: Served, args: list[str], status: int, text: str) -> None:
    r = run_cli(*args, "--server", served.address)
    assert r.returncode == status and text in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert r.stdout == ""


@pytest.mark.parametrize(("args", "status", "text"), [
    (["--lease", "0.5"], 1, "runq serve: the lease must be between 1 and 3600 seconds, not 0.5"),
    (["--reclaim", "-1"], 2, "Invalid value for --reclaim: must be between 0 and 86400 seconds, not -1"),
    (["--advertise", "http://a:7700"], 1, "runq serve: advertise: bad server address 'http://a:7700': give HOST:PORT"),
])
def test_bad_failover_settings_of_runq_serve(tmp_path: Path, args: list[str], status: int, text: str) -> None:
    r = run_cli("serve", "--db", str(tmp_path / "x.db"), "--port", "0", "--http-port", "0", *args, cwd=tmp_path)
    assert r.returncode == status and text in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "x.db").exists()  # (refused before anything was opened)
