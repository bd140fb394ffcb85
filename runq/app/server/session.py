"""One TCP connection on the server side: its framing state and its outgoing bytes.

The reader side lives in ``TcpFrontend.serve_connection``; this module only owns
what is per connection: the sans-IO ``Connection``, the outbox that coalesces
many frames into one write, and the subscription filter of a watcher.

Writes. A frame queued while no round is open is written at once, with one
non-blocking ``os.write`` on the socket (no task switch). A *round* is a stretch
of synchronous work that may answer many requests: the messages of one read
and the flush after them, one commit's acknowledgements, one timer tick. While
an ``Outbox`` round is open, frames are only queued; when it closes, every
session that queued some writes them with one ``os.write`` (many replies of one
commit: one write). Whatever the socket does not take at once goes to the
session's sender task, which writes it with ``send_all`` and also meets the
errors (a broken connection): the order of frames and the way a connection
ends are the same either way. A round never spans an ``await`` (other tasks'
frames would wait for it).

Size. No frame written is longer than ``max_reply`` (docs/protocol.md section 1): a worker's ``tasks``
dispatch that would be longer is cut into several frames (``split_tasks``); a reply that would still be
longer (a ``list`` page or an ``events`` timeline is cut by the TCP frontend before) is answered with the
error ``reply_too_large`` instead, and such a live event is dropped (counted as a slow subscriber's are).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Self

import trio

from ...protocol import frames
from ...protocol.frames import HEADER, Connection
from ..ops.auth import Identity, authenticate
from ..ops.inputs import Subscription

__all__ = ["Outbox", "Session", "Subscription", "split_tasks"]

log = logging.getLogger("runq.server")
#: the identity of a peer before its hello: it may ask for nothing
_NOBODY = authenticate(None, None, "nobody")


class Outbox:
    """The write round shared by every session of a server (see the module docstring).

    ``with outbox:`` opens a round (rounds nest; the outermost one writes); sessions that queued frames
    meanwhile each write them with one ``os.write`` when it closes.
    """

    __slots__ = ("depth", "sessions")

    def __init__(self) -> None:
        self.depth = 0
        self.sessions: list[Session] = []

    def __enter__(self) -> Self:
        self.depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self.depth -= 1
        if not self.depth:
            self.write()

    def write(self) -> None:
        """Write what the sessions queued so far in this round (the round stays open)."""
        if self.sessions:
            sessions, self.sessions = self.sessions, []
            for sess in sessions:
                sess.write_queued()


#: An upper bound of a dispatched task entry's bytes besides its payload: keys, type and queue (200 chars of
#: at most 4 bytes each), five ints and a float, the headers.
ENTRY_SLACK = 2048


def _size(entries: list[dict[str, Any]]) -> int:
    """An upper bound of the body of a ``tasks`` frame holding ``entries`` (docs/protocol.md section 6.2)."""
    return 16 + sum(len(e["payload"]) for e in entries) + ENTRY_SLACK * len(entries)


def split_tasks(entries: list[dict[str, Any]], limit: int) -> list[list[dict[str, Any]]]:
    """``entries`` cut, in order, into runs whose ``tasks`` frame bodies are at most ``limit`` bytes each (an
    entry alone always fits: its payload came in a frame of at most ``max_frame`` bytes)."""
    parts: list[list[dict[str, Any]]] = []
    part: list[dict[str, Any]] = []
    size = 16
    for e in entries:
        n = len(e["payload"]) + ENTRY_SLACK
        if part and size + n > limit:
            parts.append(part)
            part, size = [], 16
        part.append(e)
        size += n
    if part:
        parts.append(part)
    return parts


class Session:
    """A connected peer.

    Args:
        stream: the trio stream.
        peer: printable peer address.
        max_frame: largest frame body accepted from the peer.
        outbox: the server's write rounds (shared by its sessions).
        max_pending: bytes queued for a slow subscriber before events are dropped.
        max_reply: the largest frame body written to the peer (default: ``max_reply(max_frame)``).
    """

    def __init__(self, stream: trio.abc.Stream, peer: str, max_frame: int, outbox: Outbox,
                 max_pending: int = 4 << 20, max_reply: int | None = None) -> None:
        self.stream = stream
        self.max_reply = max_reply if max_reply is not None else frames.max_reply(max_frame)
        self.peer = peer
        self.conn = Connection(max_frame, strict_keys=True)  # (a map with a non-str key: bad_request)
        self.role = "unknown"
        #: who the peer is, once its hello is accepted (no operation until then)
        self.identity: Identity = _NOBODY
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
        self._outbox = outbox
        #: writes made on the socket (``os.write`` and the sender task's ``send_all``), for tests and stats
        self.writes = 0
        #: trio time at which the reader last passed a scheduling point (``TcpFrontend._receive``)
        self.turn_at = 0.0
        self._in_round = False  # listed in the open round's sessions
        sock = getattr(stream, "socket", None)
        #: the socket's descriptor (non-blocking: trio's), or -1 for another kind of stream
        self.fd = sock.fileno() if sock is not None else -1
        self.closed = False

    # ------------------------------------------------------------------ out
    def send(self, message: dict[str, Any]) -> None:
        """Queue one message (never blocks); it is written at once, or when the open round closes."""
        if self.closed or self._closing:
            return
        data = self.conn.send(message)
        if len(data) - HEADER.size > self.max_reply:
            data = self._too_large(message, len(data) - HEADER.size)
            if not data:
                return
        self.send_bytes(data)

    def send_many(self, messages: list[dict[str, Any]]) -> None:
        """Queue several messages (a worker's dispatch: ``tasks`` frames are cut to ``max_reply``)."""
        if self.closed or self._closing or not messages:
            return
        limit = self.max_reply
        for m in messages:
            if m.get("op") == "tasks" and "rid" not in m and _size(m["tasks"]) > limit:
                out: list[dict[str, Any]] = []
                for msg in messages:
                    if msg.get("op") == "tasks" and "rid" not in msg:
                        out.extend({"op": "tasks", "tasks": part} for part in split_tasks(msg["tasks"], limit))
                    else:
                        out.append(msg)
                messages = out
                break
        self.send_bytes(self.conn.send_many(messages))

    def _too_large(self, message: dict[str, Any], size: int) -> bytes:
        """What is sent instead of ``message``, whose frame would be over ``max_reply`` (b"": nothing)."""
        if message.get("op") == "event":
            self.dropped += 1  # (told by the next event that fits, as for a slow subscriber)
            return b""
        log.warning("a %r frame of %d bytes for %s is over max_reply %d: answered reply_too_large",
                    message.get("op"), size, self.peer, self.max_reply)
        return self.conn.send({"op": "error", "rid": message.get("rid"), "code": "reply_too_large",
                               "message": f"{message.get('op')}: the answer would be a frame of {size} bytes, "
                                          f"over max_reply {self.max_reply}: ask for less"})

    def send_bytes(self, data: bytes) -> None:
        """Queue whole frames already encoded (``Connection.send``)."""
        if self.closed or self._closing:
            return
        self._buf.append(data)
        self._pending += len(data)
        if self._outbox.depth:
            if not self._in_round:
                self._in_round = True
                self._outbox.sessions.append(self)
        else:
            self.write_queued()

    def write_queued(self) -> None:
        """Write what is queued with one non-blocking ``os.write``; what the socket does not take (or all of
        it, while the sender task is writing) is left to the sender task."""
        self._in_round = False
        buf = self._buf
        if self.closed:  # (the sender task is gone, and so may the descriptor be)
            buf.clear()
            return
        if not buf or self._writing or self.fd < 0:
            if buf and not self._wake.is_set():
                self._wake.set()
            return
        data = buf[0] if len(buf) == 1 else b"".join(buf)
        self.writes += 1
        try:
            n = os.write(self.fd, data)
        except OSError:  # full (BlockingIOError) or broken: the sender task writes it, or meets the error
            n = 0
        if n == len(data):
            buf.clear()
            self._pending = 0
            return
        buf[:] = [data[n:]]
        self._pending = len(data) - n
        if not self._wake.is_set():
            self._wake.set()

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
                if self._buf:
                    data = self._buf[0] if len(self._buf) == 1 else b"".join(self._buf)
                    self._buf.clear()
                    self._pending = 0
                    self._writing = True
                    self.writes += 1
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
