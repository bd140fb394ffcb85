"""Live events over HTTP: server-sent events (``GET /api/events``) and a WebSocket (``/api/ws``).

Theory of operation
-------------------
Each open stream is an ``EventStream``: a ``Subscriber`` of the server (the same
protocol a TCP watcher session implements, with the same ``Subscription`` filter by
queue, type and task id), so task updates reach it from ``Server._publish`` without
a copy of any state. Worker joins, leaves and drains and queue pauses reach it
through ``Server.change_listeners``.

A slow consumer never slows the queue: ``send_event`` never blocks. Every stream has
a bounded buffer (``ServerConfig.subscriber_backlog`` events, at most
``MAX_BACKLOG``); when it is full, events are skipped and counted, and as soon as
there is room again the stream receives ``{"op": "event", "kind": "dropped",
"count": N}`` before the next event, the same marker a TCP watcher gets. The reader
of the stream then knows it missed N updates and can re-read what it needs.

Every stream opens with ``{"op": "subscribed", ...}`` (once it is registered, so
nothing that happens after that message is missed) and SSE sends a comment line
every ``KEEPALIVE`` seconds so that proxies keep the connection open.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

import trio

from ..ops import Identity, Subscription
from .encoding import dumps, event_json

if TYPE_CHECKING:
    from ..server import Server

__all__ = ["KEEPALIVE", "MAX_BACKLOG", "EventStream", "StreamHub"]

MAX_BACKLOG = 10_000
KEEPALIVE = 15.0


class EventStream:
    """One HTTP event stream: a filtered, bounded, never-blocking buffer of live events.

    Args:
        subscription: which task events it wants (``Subscription()`` for all).
        backlog: events buffered before further events are skipped.
    """

    def __init__(self, subscription: Subscription, backlog: int) -> None:
        self.subscription: Subscription | None = subscription
        self.dropped = 0
        self.delivered = 0
        send, receive = trio.open_memory_channel[dict[str, Any]](max(1, backlog))
        self._send = send
        self.receive = receive

    def send_event(self, message: dict[str, Any]) -> None:
        """Buffer one event, or count it as dropped when the consumer is behind."""
        if self.dropped:
            try:
                self._send.send_nowait({"op": "event", "kind": "dropped", "count": self.dropped})
            except trio.WouldBlock:
                self.dropped += 1
                return
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return
            self.dropped = 0
        try:
            self._send.send_nowait(message)
            self.delivered += 1
        except trio.WouldBlock:
            self.dropped += 1
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    def send_change(self, message: dict[str, Any]) -> None:
        """A worker or queue change: passed on unless the filter excludes it."""
        flt = self.subscription
        if flt is None or flt.ids is not None or flt.types is not None or flt.owner is not None:
            return  # a stream about given tasks or task types, or one's own tasks, is not about workers and queues
        if flt.queues is not None:
            if message["op"] == "queue" and message["queue"] not in flt.queues:
                return
            if message["op"] == "worker" and not set(message["worker"].get("queues", flt.queues)) & flt.queues:
                return
        self.send_event(message)

    def close(self) -> None:
        self._send.close()

    async def messages(self, keepalive: float | None = None) -> AsyncGenerator[dict[str, Any] | None, None]:
        """Yield buffered events as JSON-ready maps; ``None`` after ``keepalive`` seconds of silence."""
        timeout = math.inf if keepalive is None else keepalive
        while True:
            msg: dict[str, Any] | None = None
            with trio.move_on_after(timeout):  # (never yield inside a cancel scope)
                try:
                    msg = await self.receive.receive()
                except trio.EndOfChannel:
                    return
            if msg is None:
                yield None
            else:
                yield event_json(msg) if msg.get("op") == "event" and "id" in msg else msg


class StreamHub:
    """The open event streams of one HTTP frontend."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.streams: set[EventStream] = set()
        self.backlog = min(server.config.subscriber_backlog, MAX_BACKLOG)
        server.change_listeners.append(self._changed)

    def _changed(self, message: dict[str, Any]) -> None:
        for s in self.streams:
            s.send_change(message)

    def open(self, identity: Identity, subscription: Subscription) -> EventStream:
        """Register a new stream for ``identity``; it receives everything that happens from now on.

        Raises:
            ProtocolError: ``busy`` at the max_subscribers limit (``Operations.subscribe``).
        """
        stream = EventStream(subscription, self.backlog)
        self.server.ops.subscribe(identity, stream, subscription)
        self.streams.add(stream)
        return stream

    def close(self, stream: EventStream) -> None:
        self.streams.discard(stream)
        self.server.unsubscribe(stream)
        stream.close()

    def close_all(self) -> None:
        """End every stream (the server is stopping)."""
        for s in list(self.streams):
            self.close(s)

    def detach(self) -> None:
        self.close_all()
        if self._changed in self.server.change_listeners:
            self.server.change_listeners.remove(self._changed)


def subscribed_message(subscription: Subscription) -> dict[str, Any]:
    """The first message of every stream: what it is filtered by."""
    return {
        "op": "subscribed",
        "queues": sorted(subscription.queues) if subscription.queues is not None else None,
        "types": sorted(subscription.types) if subscription.types is not None else None,
        "ids": sorted(subscription.ids) if subscription.ids is not None else None,
    }


def sse_frame(message: dict[str, Any] | None) -> bytes:
    """One server-sent event (or a keepalive comment for ``None``)."""
    if message is None:
        return b": keepalive\n\n"
    return b"data: " + dumps(message).encode() + b"\n\n"
