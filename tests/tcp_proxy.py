"""A TCP proxy on 127.0.0.1 that the tests can cut: a network partition between a runq server and PostgreSQL.

``TcpProxy(upstream_port)`` listens on a free port of 127.0.0.1 and forwards every connection to
``127.0.0.1:upstream_port``, byte for byte, one thread per direction. ``cut()`` stops forwarding in both directions
and connects new connections nowhere, WITHOUT closing anything: the peers' sockets stay open and their bytes go
unanswered, as behind a dead switch (the worst case: nothing tells the server its database is gone; its calls
hang until a timeout of its own). ``close()`` ends it all.
"""

from __future__ import annotations

import select
import socket
import threading


class TcpProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.cut_off = threading.Event()
        self.closed = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._socks: list[socket.socket] = [self._listener]
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        """Stop forwarding anything, and hang new connections (nothing is closed)."""
        self.cut_off.set()

    def close(self) -> None:
        self.closed.set()
        with self._lock:
            for s in self._socks:
                try:
                    s.close()
                except OSError:
                    pass

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._socks.append(client)
            if self.cut_off.is_set():
                continue  # (accepted, never answered)
            try:
                up = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._socks.append(up)
            threading.Thread(target=self._pump, args=(client, up), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, client), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not self.closed.is_set():
                if self.cut_off.is_set():
                    self.closed.wait(0.05)
                    continue
                readable, _, _ = select.select([src], [], [], 0.05)
                if not readable or self.cut_off.is_set():
                    continue
                data = src.recv(65536)
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
        except OSError:
            return
