"""The offline source: a runq database file, opened read-only with aiosqlite.

Theory of operation
-------------------
``runq tui --db FILE`` works when no server runs: the file is opened with a
``file:...?mode=ro`` URI (nothing is ever written, and a server writing the
file at the same time is not disturbed: WAL readers never block the writer).
Every ``POLL_SECONDS`` the queue counts, the workers seen in the event log,
the rates and the Gantt lanes are read again. The source's clock (``now``) is
the time of the file's latest event or enqueue, so an old file shows its last
minutes, not an empty present. Actions raise ``ReadOnly``.

The columns, the task-list and timeline queries and the rule that rebuilds a
timeline's unstored ``enqueued`` event are the store's own (runq/app/store/queries.py,
which imports neither the server nor the HTTP layer: the dashboard never does).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from typing import Any
from urllib.parse import quote

import aiosqlite

from ..app.core.records import make_event, make_server_event, make_task
from ..app.store import POSTGRES_PREFIXES, queries
from ..app.store.schema import SCHEMA_VERSION
from ..protocol.errors import RunqError, TaskNotFound
from ..protocol.values import decode_task
from .model import COMPLETE_KINDS, DashboardState, Lanes, RateSeries, WorkerRow
from .source import Source, TaskPage

__all__ = ["OfflineError", "OfflineSource"]

POLL_SECONDS = 2.0
#: one query per table, naming every column read below: a file without them is refused up front
_PROBES = queries.PROBES


def _check_version(path: str, version: int) -> None:
    if version > SCHEMA_VERSION:
        raise OfflineError(f"{path}: database schema version {version} is newer than this dashboard reads "
                           f"({SCHEMA_VERSION}); use the runq that wrote it")


def _uri(path: str) -> str:
    """A read-only SQLite URI for ``path``."""
    return f"file:{quote(os.path.abspath(path))}?mode=ro"


class OfflineError(RunqError):
    """The file is not a runq database (or cannot be opened)."""


class OfflineSource(Source):
    """A read-only view of a database file.

    Args:
        path: the SQLite file ``runq serve --db`` wrote.
        window: seconds of history read for rates and lanes.
    """

    def __init__(self, path: str, *, window: float = 600.0, max_bars: int = 20_000) -> None:
        self.path = path
        self.window = window
        self.description = f"{path} (offline)"
        self.state = DashboardState(offline=True, max_bars=max_bars)
        self.state.server = path
        self.state.status = f"offline: {path}, read-only (no server)"
        self.conn: aiosqlite.Connection | None = None
        self._now = 0.0
        self._task: asyncio.Task[None] | None = None
        self.loaded = asyncio.Event()

    @staticmethod
    def check(path: str) -> None:
        """Fail early, before the screen opens, when ``path`` is not a runq database.

        Raises:
            OfflineError: no such file, or not a runq database.
        """
        if path.startswith(POSTGRES_PREFIXES):
            raise OfflineError("the offline dashboard reads SQLite files only; a PostgreSQL database is seen "
                               "through its server: runq tui --server HOST:PORT")
        if not os.path.isfile(path):
            raise OfflineError(f"no such database file: {path}")
        try:
            with contextlib.closing(sqlite3.connect(_uri(path), uri=True)) as conn:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                _check_version(path, version)
                for sql in _PROBES:
                    conn.execute(sql).fetchall()
        except sqlite3.Error as exc:
            raise OfflineError(f"{path} is not a runq database: {exc}") from exc

    async def start(self) -> None:
        if not os.path.isfile(self.path):
            raise OfflineError(f"no such database file: {self.path}")
        uri = _uri(self.path)
        try:
            self.conn = await aiosqlite.connect(uri, uri=True)
            (version,), = await self._all("PRAGMA user_version")
            _check_version(self.path, version)
            for sql in _PROBES:
                await self._all(sql)
        except OfflineError:
            await self.close()
            raise
        except Exception as exc:
            await self.close()
            raise OfflineError(f"{self.path} is not a runq database: {exc}") from exc
        await self.refresh()
        self._task = asyncio.get_running_loop().create_task(self._poll(), name="runq-tui-offline")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        conn, self.conn = self.conn, None
        if conn is not None:
            await conn.close()

    def now(self) -> float:
        return self._now

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            try:
                await self.refresh()
            except (sqlite3.Error, ValueError) as exc:  # a file being written may be busy for a moment: show it, go on
                self.state.status = f"offline: {self.path}: {exc}"
                self.state.version += 1

    async def _all(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        assert self.conn is not None
        async with self.conn.execute(sql, args) as cur:
            return [tuple(r) for r in await cur.fetchall()]

    async def refresh(self) -> None:
        """Read the file again into ``state``."""
        st = self.state
        (last_created, last_event), = await self._all(
            "SELECT (SELECT MAX(created_at) FROM tasks), (SELECT MAX(at) FROM events)")
        self._now = max(last_created or 0.0, last_event or 0.0)
        now = self._now
        since = now - self.window

        queues: dict[str, dict[str, Any]] = {}
        for name, paused in await self._all("SELECT name, paused FROM queues"):
            queues[name] = {"queue": name, "paused": bool(paused)}
        for name, state, n in await self._all("SELECT queue, state, COUNT(*) FROM tasks GROUP BY queue, state"):
            queues.setdefault(name, {"queue": name, "paused": False})[state] = n
        for name, n in await self._all(
                "SELECT t.queue, COUNT(*) FROM events e JOIN tasks t ON t.id = e.task_id "
                "WHERE e.kind = 'failed' GROUP BY t.queue"):
            queues.setdefault(name, {"queue": name, "paused": False})["failed"] = n
        for m in queues.values():
            m.setdefault("succeeded", 0)
            m.setdefault("dead", 0)
            m.setdefault("failed", 0)
        st.set_queues(sorted(queues.values(), key=lambda m: str(m["queue"])))

        for q in st.queues.values():
            q.enqueue_rate = RateSeries()
            q.complete_rate = RateSeries()
        for name, created in await self._all(
                "SELECT queue, created_at FROM tasks WHERE created_at >= ?", (since,)):
            st.queue(name).enqueue_rate.add(created)
        kinds = tuple(sorted(COMPLETE_KINDS))
        marks = ", ".join("?" * len(kinds))
        for name, at in await self._all(
                f"SELECT t.queue, e.at FROM events e JOIN tasks t ON t.id = e.task_id "
                f"WHERE e.at >= ? AND e.kind IN ({marks})", (since, *kinds)):
            st.queue(name).complete_rate.add(at)

        workers = []
        running = {w: n for w, n in await self._all(
            "SELECT worker, COUNT(*) FROM tasks WHERE state = 'running' GROUP BY worker")}
        for wid, last, done, failed in await self._all(
                "SELECT worker, MAX(at), SUM(kind = 'succeeded'), SUM(kind = 'failed') FROM events "
                "WHERE worker IS NOT NULL GROUP BY worker ORDER BY worker"):
            row = WorkerRow(id=str(wid), in_flight=int(running.get(wid, 0)), last_heartbeat=last, state="seen",
                            completed=int(done or 0), failed=int(failed or 0))
            workers.append(row)
        st.workers = {w.id: w for w in workers}

        lanes = Lanes(st.lanes.max_bars)
        for tid, at, kind, worker, attempt, type_ in await self._all(
                "SELECT e.task_id, e.at, e.kind, e.worker, e.attempt, t.type FROM events e "
                "JOIN tasks t ON t.id = e.task_id WHERE e.at >= ? ORDER BY e.id", (since,)):
            lanes.apply(kind, tid, at, worker, attempt, type_)
        st.lanes = lanes
        try:  # the stored limits (schema v5 on): the Queues screen shows each queue's
            rows = await self._all("SELECT scope, name, key, rate, period, burst, concurrency FROM limits "
                                   "ORDER BY scope, name, key")
        except sqlite3.OperationalError:  # (no such table: a database older than limits)
            rows = []
        keys = ("scope", "name", "key", "rate", "period", "burst", "concurrency")
        st.limits = [dict(zip(keys, r, strict=True)) for r in rows]
        if st.schedules_wanted:
            await self._read_schedules()
        st.status = f"offline: {self.path}, read-only (no server); clock stopped at the file's last event"
        st.version += 1
        self.loaded.set()

    async def _read_schedules(self) -> None:
        """The stored schedules (while their screen is in view); a file from before schedules has none."""
        st = self.state
        try:
            rows = await self._all("SELECT name, type, cron, tz, every, missed, max_missed, paused, next_fire, "
                                   "last_fire, created_at FROM schedules ORDER BY name")
        except sqlite3.OperationalError as exc:  # (no such table: a database older than schema v6)
            st.schedules, st.schedules_error = [], f"{self.path} holds no schedules ({exc})"
            return
        keys = ("name", "type", "cron", "tz", "every", "missed", "max_missed", "paused", "next_fire", "last_fire",
                "created_at")
        st.schedules = [dict(zip(keys, r, strict=True)) | {"paused": bool(r[7])} for r in rows]
        st.schedules_error = ""

    # ------------------------------------------------------------------ reads
    async def list_tasks(self, *, state: str | None = None, queue: str | None = None, type: str | None = None,
                         limit: int = 100, cursor: int | None = None) -> TaskPage:
        sql, args = queries.task_list_query(state, queue, type, limit, cursor)
        rows = await self._all(sql, tuple(args))
        tasks = [decode_task(make_task(r)._asdict()) for r in rows]
        return tasks, (tasks[-1]["id"] if len(tasks) == limit else None)

    async def server_events(self, limit: int = 200) -> list[dict[str, Any]]:
        sql, args = queries.server_events_query(None, limit)
        return [make_server_event(r)._asdict() for r in await self._all(sql, tuple(args))]

    async def get(self, task_id: int) -> dict[str, Any]:
        rows = await self._all(queries.TASK_BY_ID_SQL, (task_id,))
        if not rows:
            raise TaskNotFound("not_found", f"no task {task_id} in {self.path}")
        return decode_task(make_task(rows[0])._asdict())

    async def events(self, task_id: int) -> list[dict[str, Any]]:
        stored = [make_event(r) for r in await self._all(queries.EVENTS_SQL, (task_id,))]
        created = None
        if queries.needs_enqueued(stored):
            created = next((at for (at,) in await self._all(queries.CREATED_AT_SQL, (task_id,))), None)
        return [e.as_dict() for e in queries.timeline(task_id, stored, created)]
