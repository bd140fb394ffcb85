"""One TCP connection on the server side: its framing state and its outgoing bytes.

The reader side lives in ``TcpFrontend.serve_connection``; this module only owns
what is per connection: the sans-IO ``Connection``, the outbox that coalesces
many frames into one ``send_all``, and the subscription filter of a watcher.

The first frame queued while nothing else is queued or being written is written
at once, with one non-blocking ``os.write`` on the socket, instead of waking the
sender task: that saves a trio scheduling round per lone reply (bench.throughput
--only sequential). The frames after it, until the sender task has run, wait for
the sender, which writes them all with one ``send_all`` (many replies of one
commit: one write). Whatever the socket does not take at once goes to the sender
task too, which also meets the errors (a broken connection), so the order of
frames and the way a connection ends are the same either way.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import trio

from ...protocol.frames import Connection

__all__ = ["Session", "Subscription"]

log = logging.getLogger("runq.server")


@dataclass
class Subscription:
    """Which live events a session wants (``None`` means any)."""

    queues: frozenset[str] | None = None
    types: frozenset[str] | None = None
    ids: frozenset[int] | None = None

    def wants(self, queue: str, type_: str, task_id: int) -> bool:
        return (
            (self.queues is None or queue in self.queues)
            and (self.types is None or type_ in self.types)
            and (self.ids is None or task_id in self.ids)
        )


class Session:
    """A connected peer.

    Args:
        stream: the trio stream.
        peer: printable peer address.
        max_frame: largest frame body accepted from the peer.
        max_pending: bytes queued for a slow subscriber before events are dropped.
    """

    def __init__(self, stream: trio.abc.Stream, peer: str, max_frame: int, max_pending: int = 4 << 20) -> None:
        self.stream = stream
        self.peer = peer
        self.conn = Connection(max_frame)
        self.role = "unknown"
        self.id = ""
        self.subscription: Subscription | None = None
        self.dropped = 0
        self.max_pending = max_pending
        self._buf: list[bytes] = []
        self._pending = 0
        self._wake = trio.Event()
        self._closing = False
        self._sender_done = trio.Event()
        self._writing = False  # the sender task is in send_all
        self._wrote_now = False  # a frame was written at once since the sender task last ran
        sock = getattr(stream, "socket", None)
        self._fd = sock.fileno() if sock is not None else -1
        self.closed = False

    # ------------------------------------------------------------------ out
    def send(self, message: dict[str, Any]) -> None:
        """Queue one message (never blocks; the sender task writes it)."""
        if self.closed or self._closing:
            return
        data = self.conn.send(message)
        if not self._buf and not self._writing and not self._wrote_now and self._fd >= 0:
            data = self._write_now(data)
            if not data:
                return
        self._buf.append(data)
        self._pending += len(data)
        if not self._wake.is_set():
            self._wake.set()

    def send_many(self, messages: list[dict[str, Any]]) -> None:
        if self.closed or self._closing or not messages:
            return
        data = self.conn.send_many(messages)
        if not self._buf and not self._writing and not self._wrote_now and self._fd >= 0:
            data = self._write_now(data)
            if not data:
                return
        self._buf.append(data)
        self._pending += len(data)
        if not self._wake.is_set():
            self._wake.set()

    def _write_now(self, data: bytes) -> bytes:
        """Write what the socket takes now; return the rest (for the sender task)."""
        self._wrote_now = True
        if not self._wake.is_set():
            self._wake.set()  # (the sender runs once, and lets the next frame be written at once again)
        try:
            n = os.write(self._fd, data)
        except OSError:  # full (BlockingIOError) or broken: the sender task writes it, or meets the error
            return data
        return data[n:]

    def send_event(self, message: dict[str, Any]) -> None:
        """Queue a live event, or drop it when the peer is not keeping up."""
        if self._pending > self.max_pending:
            self.dropped += 1
            return
        if self.dropped:
            self.send({"op": "event", "kind": "dropped", "count": self.dropped})
            self.dropped = 0
        self.send(message)

    def close(self, error: dict[str, Any] | None = None) -> None:
        """Send ``error`` (if any) after what is queued, then close."""
        if error is not None and not self._closing:
            self.send(error)
        self._closing = True
        self._wake.set()

    async def sender(self) -> None:
        """Write queued frames, many per ``send_all``, until closed."""
        try:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                self._wrote_now = False
                if self._buf:
                    data = self._buf[0] if len(self._buf) == 1 else b"".join(self._buf)
                    self._buf.clear()
                    self._pending = 0
                    self._writing = True
                    try:
                        await self.stream.send_all(data)
                    finally:
                        self._writing = False
                if self._closing and not self._buf:
                    break
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.closed = True
            with trio.move_on_after(1) as cs:
                cs.shield = True
                try:
                    await self.stream.aclose()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            self._sender_done.set()

    async def wait_closed(self) -> None:
        """Return once the sender wrote what was queued (after ``close``: the error frame too) and closed."""
        await self._sender_done.wait()
