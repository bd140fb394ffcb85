"""The live source: a running server, followed through the public client SDK.

Theory of operation
-------------------
One background task (``_run``) owns the ``Client``: it connects, subscribes
to every event, polls queues, workers and stats twice a second in a second
task, and feeds each live event into ``DashboardState.apply_event`` (a few
counter updates: events are coalesced, never drawn one by one). When the
connection ends, for any reason, the state is marked disconnected (the
screens show a banner) and ``_run`` reconnects with a growing delay (0.2 s to
2 s) until the server is back or the source is closed.

Requests from the screens (a page of tasks, actions) go over the same
connection while it is up and raise ``NotConnected`` while it is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from ..protocol.client import Client, EventStream
from ..protocol.errors import RunqError
from .model import Bar, DashboardState
from .source import NotConnected, Source, TaskPage

__all__ = ["LiveSource"]

POLL_SECONDS = 0.5
STALL_SECONDS = 5.0  # a poll answered later than this: the connection is treated as lost
SETUP_SECONDS = 15.0  # subscribe, first poll and the Gantt seed at a connection: longer, it is treated as lost
SEED_TASKS = 500  # per state, read at connection to start the Gantt view
SEED_SECONDS = 600.0  # attempts that ended longer ago than this are not seeded into the Gantt view


class LiveSource(Source):
    """Follow a running server.

    Args:
        address: ``HOST:PORT`` of the server's TCP protocol.
        token: shared secret (default: ``RUNQ_TOKEN``).
    """

    def __init__(self, address: str, *, token: str | None = None,
                 max_bars: int = 20_000) -> None:
        self.address = address
        self.token = token
        self.description = address
        self.state = DashboardState(max_bars=max_bars)
        self.state.server = address
        self.state.status = f"connecting to {address}"
        self.client: Client | None = None
        self.connects = 0
        self._offset = 0.0
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._wake = asyncio.Event()
        self._stream: EventStream | None = None
        self._poll_error = ""
        self.setup_timeout = SETUP_SECONDS
        self.malformed = 0  # live events that could not be applied (skipped)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="runq-tui-live")

    async def close(self) -> None:
        """Stop following: end the event stream so the client closes its connection cleanly."""
        self._closing = True
        self._wake.set()
        if self._stream is not None:
            await self._stream.aclose()
        task, self._task = self._task, None
        if task is not None:
            # connected: the stream's end lets _run close the client cleanly; else nothing to close
            done, _ = await asyncio.wait([task], timeout=3.0 if self.client is not None else 0.1)
            if not done:  # stuck in a connect or a request: cancel it
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def now(self) -> float:
        return time.time() + self._offset

    async def _run(self) -> None:
        delay = 0.2
        while not self._closing:
            reason = "connection lost"
            try:
                async with Client(self.address, token=self.token, connect_timeout=3.0) as client:
                    async with asyncio.timeout(self.setup_timeout):  # a server that welcomes, then stalls
                        stream = self._stream = await client.subscribe(buffer=100_000)
                        if self._closing:
                            break
                        await self._poll_once(client)
                        if self.connects == 0:
                            await self._seed_lanes(client)
                    w = client.welcome
                    self.state.lease_timeout = float(w.get("lease_timeout") or self.state.lease_timeout)
                    self.state.heartbeat = float(w.get("heartbeat") or self.state.lease_timeout / 3)
                    self.state.server = f"{self.address} ({w.get('server', 'runq')})"
                    self.client = client
                    self.connects += 1
                    self.state.set_connected(True)
                    self._poll_error = ""
                    delay = 0.2
                    poller = asyncio.get_running_loop().create_task(self._poller(client, stream))
                    try:
                        await self._follow(stream)
                    finally:
                        poller.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await poller
                    reason = self._poll_error or "the server closed the connection"
            except (OSError, RunqError, TimeoutError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # noqa: BLE001 - odd data from the server: reconnect, never stop following
                reason = f"unexpected {type(exc).__name__}: {exc}"
            finally:
                self.client = None
                self._stream = None
            if self._closing:
                break
            self.state.set_connected(False, f"disconnected from {self.address} ({reason}); reconnecting")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            delay = min(delay * 2, 2.0)

    async def _follow(self, stream: EventStream) -> None:
        state = self.state
        clock = time.time
        async for ev in stream:
            arrived = clock()
            at = ev.get("at")
            # clocks are assumed in step; an event "from the future" says the server's clock is ahead
            if isinstance(at, float) and at - arrived > 1.0 + self._offset:
                self._offset = at - arrived
            try:
                # rates are bucketed by the receive time on the dashboard's clock, the one the screens read
                state.apply_event(ev, arrived + self._offset)
            except (TypeError, ValueError, KeyError, AttributeError) as exc:  # a malformed event: skip it
                self.malformed += 1
                state.note = f"{self.malformed} malformed live events skipped (last: {type(exc).__name__}: {exc})"
                state.version += 1

    async def _poll_once(self, client: Client) -> None:
        queues, workers, stats = await asyncio.gather(client.queues(), client.workers(), client.stats())
        self.state.set_queues(queues)
        self.state.set_workers(workers, self.now())
        self.state.stats = stats

    async def _seed_lanes(self, client: Client) -> None:
        """Start the Gantt view with the attempts the server knows of (running, and the latest finished),
        so it is not empty until new events come."""
        since = self.now() - SEED_SECONDS
        bars = []
        for state in ("running", "succeeded", "dead"):
            tasks, _ = await client.list_tasks(state=state, limit=SEED_TASKS)
            for t in tasks:
                started, worker = t.get("started_at"), t.get("worker")
                end = None if state == "running" else t.get("finished_at")
                outcome = None if state == "running" else ("succeeded" if state == "succeeded" else "failed")
                try:
                    if started is None or worker is None or float(end or self.now()) < since:
                        continue
                    bars.append(Bar(int(t["id"]), int(t["attempt"]), str(t["type"]), str(worker), float(started),
                                    None if end is None else float(end), outcome))
                except (KeyError, TypeError, ValueError):  # an odd task map: no bar for it
                    continue
        self.state.lanes.seed(bars)
        self.state.version += 1

    async def _poller(self, client: Client, stream: EventStream) -> None:
        try:
            while True:
                await asyncio.sleep(POLL_SECONDS)
                await asyncio.wait_for(self._poll_once(client), STALL_SECONDS)
        except (RunqError, TimeoutError) as exc:
            # ends _follow: the connection is gone or stalled, _run reconnects
            self._poll_error = f"poll failed: {type(exc).__name__}: {exc}"
            await stream.aclose()
        except Exception as exc:  # noqa: BLE001 - an odd reply: reconnect rather than follow without polls
            self._poll_error = f"poll failed: unexpected {type(exc).__name__}: {exc}"
            await stream.aclose()

    def _client(self) -> Client:
        if self.client is None:
            raise NotConnected(f"not connected to {self.address}")
        return self.client

    # ------------------------------------------------------------------ reads
    async def list_tasks(self, *, state: str | None = None, queue: str | None = None, type: str | None = None,
                         limit: int = 100, cursor: int | None = None) -> TaskPage:
        return await self._client().list_tasks(state=state, queue=queue, type=type, limit=limit, cursor=cursor)

    async def get(self, task_id: int) -> dict[str, Any]:
        return await self._client().get(task_id)

    async def events(self, task_id: int) -> list[dict[str, Any]]:
        return await self._client().events(task_id)

    # ------------------------------------------------------------------ actions
    async def cancel(self, task_id: int) -> dict[str, Any]:
        return await self._client().cancel(task_id)

    async def retry(self, task_id: int) -> dict[str, Any]:
        return await self._client().retry(task_id)

    async def pause(self, queue: str) -> None:
        await self._client().pause(queue)
        self.state.queue(queue).paused = True
        self.state.version += 1

    async def resume(self, queue: str) -> None:
        await self._client().resume(queue)
        self.state.queue(queue).paused = False
        self.state.version += 1

    async def drain(self, worker_id: str) -> dict[str, Any]:
        worker = await self._client().drain(worker_id)
        row = self.state.workers.get(worker_id)
        if row is not None:
            row.state = "draining"
            self.state.version += 1
        return worker

    async def enqueue(self, type: str, payload: Any = None, *, queue: str | None = None,
                      priority: int | None = None, delay: float | None = None) -> int:
        return await self._client().enqueue(type, payload, queue=queue, priority=priority, delay=delay)

