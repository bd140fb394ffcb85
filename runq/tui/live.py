"""The live source: a running server, followed through the public client SDK.

Theory of operation
-------------------
One background task (``_run``) owns a ``Client``. The client reconnects by itself when its connection is
lost (``Client`` docs: backoff with jitter), so ``_run`` does not: it serves one *session* after another on
the same client. A session subscribes to every event, polls queues, workers and stats twice a second in a
second task, and feeds each live event into ``DashboardState.apply_event`` (a few counter updates: events
are coalesced, never drawn one by one). A subscription ends with its connection: the state is then marked
disconnected (the screens show a "reconnecting" banner) and the next session's first request waits for the
client's own reconnection.

The client cannot tell a server that answers badly: one that welcomes and then stalls, or sends a poll
reply the dashboard cannot read. Then ``_run`` closes that client and opens a new one, after a delay
from the same ``Backoff`` object the client uses between its reconnection attempts: one reconnect policy
(``LiveSource.backoff``, 0.2 s doubling up to 2 s, jittered).

Requests from the screens (a page of tasks, actions) go over the same client while a session is up and
raise ``NotConnected`` while it is down, or when the connection is lost while they wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ..protocol.calls import Backoff
from ..protocol.client import Client, EventStream
from ..protocol.errors import RemoteError, RunqError
from ..protocol.tls import TLSOption, client_context
from .model import Bar, DashboardState
from .source import NotConnected, Source, TaskPage

__all__ = ["LiveSource"]

POLL_SECONDS = 0.5
STALL_SECONDS = 5.0  # a poll answered later than this: the connection is treated as lost
SETUP_SECONDS = 15.0  # subscribe, first poll and the Gantt seed at a connection: longer, it is treated as lost
SEED_TASKS = 500  # per state, read at connection to start the Gantt view
SEED_SECONDS = 600.0  # attempts that ended longer ago than this are not seeded into the Gantt view
CONNECT_SECONDS = 3.0

T = TypeVar("T")


class LiveSource(Source):
    """Follow a running server.

    Args:
        address: ``HOST:PORT`` of the server's TCP protocol.
        token: shared secret (default: ``RUNQ_TOKEN``).
        tls: TLS to the server, as ``Client``'s (default: ``RUNQ_TLS_CA`` / ``RUNQ_TLS``; docs/tls.md).

    Raises:
        TLSError: ``tls`` names a CA file that cannot be read.
    """

    def __init__(self, address: str, *, token: str | None = None,
                 max_bars: int = 20_000, tls: TLSOption = None) -> None:
        self.address = address
        self.token = token
        self.tls = client_context(tls)  # (read once: every client of this source connects the same way)
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
        #: the one reconnect policy: the client's delays between reconnection attempts, and ours between
        #: clients (a first connection that failed, or a server given up on)
        self.backoff = Backoff(base=0.2, cap=2.0)
        self._lost = asyncio.Event()  # set when the current session's connection ends
        #: the ops the server says this connection may ask (welcome ``identity``); None: it did not say
        self.ops: frozenset[str] | None = None

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

    def may(self, op: str) -> bool:
        return self.ops is None or op in self.ops

    async def _run(self) -> None:
        """Clients one after another: a new one only when the first connection failed or its server was given
        up on; a lost connection is the client's to restore (``_sessions``)."""
        while not self._closing:
            client = Client(self.address, token=self.token, connect_timeout=CONNECT_SECONDS, retry_for=math.inf,
                            backoff=self.backoff, tls=self.tls or False)
            try:
                await client.connect()
                reason = await self._sessions(client)
            except (OSError, RunqError, TimeoutError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # noqa: BLE001 - odd data from the server: try again, never stop following
                reason = f"unexpected {type(exc).__name__}: {exc}"
            finally:
                self._down()
                await client.aclose()
            if self._closing:
                break
            self._disconnected(reason)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.backoff.next())

    def _down(self) -> None:
        self.client = None
        self._stream = None
        self._lost.set()

    def _disconnected(self, reason: str) -> None:
        if "is a standby" in reason:  # (every address given is a standby: the banner says STANDBY and names the active)
            self.state.set_connected(False, f"{self.address} is a standby ({reason}); trying again")
            return
        self.state.set_connected(False, f"disconnected from {self.address} ({reason}); reconnecting")

    async def _sessions(self, client: Client) -> str:
        """Follow the server through ``client`` across its reconnections; return why it was given up on.

        Raises:
            TimeoutError: the server, connected, did not answer the first requests in time (it stalls).
            RunqError: the client gave up (the server refused it for good: token, version).
        """
        seen = client.connections - 1  # connections before the current one
        while not self._closing:
            try:
                stream = await self._setup(client)
            except TimeoutError:
                if client.connections == seen:
                    continue  # no server yet: the client is still reconnecting, the request waits for it
                raise  # connected, and the server did not answer in time: it stalls
            if self._closing:
                break
            self._lost = asyncio.Event()
            self.client = client
            self.connects += 1
            self.state.set_connected(True)
            self._poll_error = ""
            self.backoff.reset()  # a session that worked: the next outage starts the delays over
            poller = asyncio.get_running_loop().create_task(self._poller(client, stream))
            try:
                await self._follow(stream)
            finally:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
                await stream.aclose()  # ended with its connection; the client outlives it
                seen = client.connections
                self._down()
            if self._poll_error:
                return self._poll_error  # a stalled or odd server: a new client
            if not self._closing:
                self._disconnected("the server closed the connection")
        return "closed"

    async def _setup(self, client: Client) -> EventStream:
        """Subscribe, poll once and seed the Gantt view (at the first connection), within ``setup_timeout``
        once the client is connected."""
        ident = client.welcome.get("identity")
        if isinstance(ident, dict) and isinstance(ident.get("ops"), list):
            self.ops = frozenset(str(op) for op in ident["ops"])
            self.state.identity = f"{ident.get('name')} ({ident.get('role')})"
        async with asyncio.timeout(self.setup_timeout):  # a server that welcomes, then stalls
            stream = self._stream = await client.subscribe(buffer=100_000)
            if self._closing:
                return stream
            await self._poll_once(client)
            if self.connects == 0:
                await self._seed_lanes(client)
        w = client.welcome
        self.state.lease_timeout = float(w.get("lease_timeout") or self.state.lease_timeout)
        self.state.heartbeat = float(w.get("heartbeat") or self.state.lease_timeout / 3)
        who = f" as {self.state.identity}" if self.state.identity else ""
        self.state.server = f"{self.address} ({w.get('server', 'runq')}){who}"
        return stream

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
        # (what the identity may not read is not asked for: a user sees its own tasks, not the queues' counts)
        queues, workers, stats = await asyncio.gather(
            client.queues() if self.may("queues") else _nothing([]),
            client.workers() if self.may("workers") else _nothing([]),
            client.stats() if self.may("stats") else _nothing(self.state.stats))
        self.state.set_queues(queues)
        self.state.set_workers(workers, self.now())
        self.state.stats = stats
        if self.may("limits"):  # (the limits of each queue, for the Queues screen: a server that cannot list
            try:                # them, or a caller who may not, shows none)
                self.state.limits = await client.limits()
            except (RemoteError, KeyError, TypeError, ValueError):
                self.state.limits = []
        else:
            self.state.limits = []
        if self.state.schedules_wanted and self.may("schedules"):
            await self._poll_schedules(client)

    async def _poll_schedules(self, client: Client) -> None:
        """The schedules, while their screen is in view; a server that cannot list them (an older one, an
        odd reply) leaves a note on that screen rather than ending the connection's polls."""
        st = self.state
        try:
            st.schedules = await client.schedules()
            st.schedules_error = ""
        except (RemoteError, KeyError, TypeError, ValueError) as exc:
            st.schedules_error = f"the server did not list its schedules: {type(exc).__name__}: {exc}"
        st.version += 1

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

    async def _call(self, request: Callable[[Client], Awaitable[T]]) -> T:
        """``request`` on the client while a session is up; ``NotConnected`` when none is, or when the
        connection is lost while it waits (the client would hold it until it reconnected)."""
        client, lost = self.client, self._lost
        if client is None:
            raise NotConnected(f"not connected to {self.address}")
        call = asyncio.ensure_future(request(client))
        ended = asyncio.ensure_future(lost.wait())
        try:
            await asyncio.wait((call, ended), return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
            if not call.done():
                call.cancel()
                with contextlib.suppress(asyncio.CancelledError, RunqError):
                    await call
        if call.cancelled():
            raise NotConnected(f"connection to {self.address} lost; reconnecting")
        return call.result()

    # ------------------------------------------------------------------ reads
    async def list_tasks(self, *, state: str | None = None, queue: str | None = None, type: str | None = None,
                         limit: int = 100, cursor: int | None = None) -> TaskPage:
        return await self._call(lambda c: c.list_tasks(state=state, queue=queue, type=type, limit=limit,
                                                       cursor=cursor))

    async def get(self, task_id: int) -> dict[str, Any]:
        return await self._call(lambda c: c.get(task_id))

    async def events(self, task_id: int) -> list[dict[str, Any]]:
        return await self._call(lambda c: c.events(task_id))

    async def why(self, task_id: int) -> dict[str, Any] | None:
        return await self._call(lambda c: c.why(task_id))

    async def dead_list(self, *, queue: str | None = None, type: str | None = None, error: str | None = None,
                        since: float | None = None, until: float | None = None, limit: int = 100) -> TaskPage:
        return await self._call(lambda c: c.dead_list(queue=queue, type=type, error=error, since=since, until=until,
                                                      limit=limit))

    # ------------------------------------------------------------------ actions
    async def dead_retry(self, **dead_filter: Any) -> dict[str, Any]:
        return await self._call(lambda c: c.dead_retry(**dead_filter))

    async def dead_delete(self, **dead_filter: Any) -> dict[str, Any]:
        return await self._call(lambda c: c.dead_delete(**dead_filter))

    async def cancel(self, task_id: int) -> dict[str, Any]:
        return await self._call(lambda c: c.cancel(task_id))

    async def retry(self, task_id: int) -> dict[str, Any]:
        return await self._call(lambda c: c.retry(task_id))

    async def pause(self, queue: str) -> None:
        await self._call(lambda c: c.pause(queue))
        self.state.queue(queue).paused = True
        self.state.version += 1

    async def resume(self, queue: str) -> None:
        await self._call(lambda c: c.resume(queue))
        self.state.queue(queue).paused = False
        self.state.version += 1

    async def drain(self, worker_id: str) -> dict[str, Any]:
        worker = await self._call(lambda c: c.drain(worker_id))
        row = self.state.workers.get(worker_id)
        if row is not None:
            row.state = "draining"
            self.state.version += 1
        return worker

    async def enqueue(self, type: str, payload: Any = None, *, queue: str | None = None,
                      priority: int | None = None, delay: float | None = None) -> int:
        return await self._call(lambda c: c.enqueue(type, payload, queue=queue, priority=priority, delay=delay))


    # ------------------------------------------------------------------ schedules (periodic tasks)
    async def pause_schedule(self, name: str) -> dict[str, Any]:
        return self._kept(await self._call(lambda c: c.pause_schedule(name)))

    async def resume_schedule(self, name: str) -> dict[str, Any]:
        return self._kept(await self._call(lambda c: c.resume_schedule(name)))

    async def run_schedule_now(self, name: str) -> int:
        return await self._call(lambda c: c.run_schedule_now(name))

    async def server_events(self, limit: int = 200) -> list[dict[str, Any]]:
        return await self._call(lambda c: c.server_events(limit=limit))

    def _kept(self, schedule: dict[str, Any]) -> dict[str, Any]:
        """Show ``schedule`` as the server answered it, before the next poll."""
        st = self.state
        st.schedules = [schedule if s.get("name") == schedule["name"] else s for s in st.schedules]
        st.version += 1
        return schedule


async def _nothing(value: T) -> T:
    """``value``, as a poll the identity may not make answers (``_poll_once``)."""
    return value
