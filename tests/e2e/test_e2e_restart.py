"""A real server killed (kill -9) after an enqueue's commit, before its acknowledgement reached the client.

Between the client and the server sits a byte-for-byte TCP proxy (threads, plain sockets). On the first
connection it forwards everything except the ``enqueued`` acknowledgement: when that frame arrives from
the server, the commit holding the task is done (the server answers only after it), so the proxy kills
the server with SIGKILL, restarts it on the same database and port, and closes the client's connection.
The client never saw the acknowledgement; it reconnects (through the proxy, now forwarding everything)
and sends the enqueue again with its idempotency token.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

from e2e_cluster import Cluster

from runq import SyncClient
from runq.protocol.frames import Connection


class AckEater:
    """The proxy (see the module docstring). ``eaten`` is the acknowledgement it withheld."""

    def __init__(self, cluster: Cluster, server_port: int) -> None:
        self.cluster = cluster
        self.server_port = server_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.eaten: dict[str, Any] | None = None
        self.errors: list[BaseException] = []
        self._threads: list[threading.Thread] = []
        self._spawn(self._accept)

    def _spawn(self, fn: Any, *args: Any) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True)
        self._threads.append(t)
        t.start()

    def _accept(self) -> None:
        first = True
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.server_port), timeout=5)
            except OSError:  # the server is restarting: the client tries again
                client.close()
                continue
            self._spawn(self._pump, client, upstream)
            self._spawn(self._pump_back, upstream, client, first)
            first = False

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _pump_back(self, upstream: socket.socket, client: socket.socket, eat: bool) -> None:
        conn = Connection()
        try:
            while data := upstream.recv(65536):
                if eat:
                    conn.receive_data(data)
                    acks = [m for m in conn.messages() if m["op"] == "enqueued"]
                    if acks:
                        self.eaten = acks[0]
                        assert self.cluster.server is not None
                        self.cluster.server.kill9()  # committed, not acknowledged
                        self.cluster.start_server("--port", str(self.server_port))
                        break
                client.sendall(data)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(exc)
        finally:
            for s in (upstream, client):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self) -> None:
        self.listener.close()


def test_kill9_after_the_commit_before_the_ack_the_resent_enqueue_gets_the_first_id(cluster: Cluster) -> None:
    cluster.start_server()
    proxy = AckEater(cluster, cluster.port)
    try:
        with SyncClient(f"127.0.0.1:{proxy.port}", retry_for=20) as c:
            tid = c.enqueue("t", "exactly once")
            assert proxy.eaten is not None and not proxy.errors, proxy.errors
            assert cluster.server is not None and cluster.server.alive()  # (the second life)
            assert proxy.eaten["ids"] == [tid] and c.connections >= 2
            tasks, _ = c.list_tasks()
            assert [(t["id"], t["payload"]) for t in tasks] == [(tid, "exactly once")]
            assert c.enqueue("t", "next") == tid + 1  # and the client goes on as before
    finally:
        proxy.close()
