"""The read queries of a runq database, in one place: the store and the offline dashboard both use them.

Theory of operation
-------------------
The SQLite store (sqlite.py) reads tasks and timelines for the server; the dashboard's offline mode
(runq/tui/offline.py) reads the same file with aiosqlite, read-only, when no server runs. Both build their
SQL here, from the records' column orders (runq/app/core/records.py), and both rebuild a timeline's unstored
``enqueued`` event with ``timeline`` here, so the two cannot drift apart.

The dashboard imports this module (and so ``runq.app.store`` and ``runq.app.core``), never the server or
the HTTP layer (tests/tui/test_model.py checks it).

Rules of this file:

1. Pure: text and records in, text and records out; no connection, no I/O.
2. The SQL uses ``?`` placeholders by default; ``mark`` gives another driver's (``%s`` for psycopg).
"""

from __future__ import annotations

from typing import Any

from ..core.records import (
    BREAKER_COLUMNS,
    EVENT_ROW_COLUMNS,
    LIMIT_COLUMNS,
    SERVER_EVENT_COLUMNS,
    TASK_COLUMNS,
    DeadFilter,
    EventRecord,
)

__all__ = [
    "BREAKERS_SQL",
    "CREATED_AT_SQL",
    "EVENTS_SQL",
    "FIRST_EVENTS",
    "LIMITS_SQL",
    "PROBES",
    "TASK_BY_ID_SQL",
    "TASK_COLUMNS_SQL",
    "dead_query",
    "needs_enqueued",
    "server_events_query",
    "task_list_query",
    "timeline",
]

#: the stored columns of a task, in ``TaskRecord`` order
TASK_COLUMNS_SQL = ", ".join(TASK_COLUMNS)
#: the stored columns of an event, in ``EventRecord`` order
EVENT_COLUMNS_SQL = ", ".join(EVENT_ROW_COLUMNS)
#: one task by id (a ``TaskRecord``)
TASK_BY_ID_SQL = f"SELECT {TASK_COLUMNS_SQL} FROM tasks WHERE id = ?"
#: a task's stored events in order (``EventRecord``s)
EVENTS_SQL = f"SELECT {EVENT_COLUMNS_SQL} FROM events WHERE task_id = ? ORDER BY id"
#: a task's ``created_at`` (the time of its unstored ``enqueued`` event)
CREATED_AT_SQL = "SELECT created_at FROM tasks WHERE id = ?"
#: the stored limits by scope (``LimitRecord``s)
LIMITS_SQL = f"SELECT {', '.join(LIMIT_COLUMNS)} FROM limits ORDER BY scope, name, key"
#: the stored breakers by task type (``BreakerRecord``s once ``manual``, stored as 0 or 1, is made a bool)
BREAKERS_SQL = f"SELECT {', '.join(BREAKER_COLUMNS)} FROM breakers ORDER BY type"
#: one query per table naming every column a reader reads: a file without them is not a runq database
PROBES = (f"SELECT {TASK_COLUMNS_SQL} FROM tasks LIMIT 0", f"SELECT {EVENT_COLUMNS_SQL} FROM events LIMIT 0",
          "SELECT name, paused FROM queues LIMIT 0")

#: the events a stored timeline may start with; any other first event means the ``enqueued`` one was not stored
FIRST_EVENTS = ("enqueued", "scheduled")


def task_list_query(state: str | None = None, queue: str | None = None, type: str | None = None,
                    limit: int = 100, cursor: int | None = None, mark: str = "?",
                    owner: str | None = None) -> tuple[str, list[Any]]:
    """The SQL and arguments of a page of tasks, newest first, filtered by state, queue and type.

    Args:
        state, queue, type: keep only the tasks with this value (None: any).
        owner: keep only the tasks of this owner (None: any owner; docs/security.md).
        limit: at most this many tasks.
        cursor: the last id of the previous page (None: the first page).
        mark: the driver's placeholder.

    Returns:
        (sql, args): the rows are ``TaskRecord``s.
    """
    where: list[str] = []
    args: list[Any] = []
    for col, val in (("state", state), ("queue", queue), ("type", type), ("owner", owner)):
        if val is not None:
            where.append(f"{col} = {mark}")
            args.append(val)
    if cursor is not None:
        where.append(f"id < {mark}")
        args.append(cursor)
    sql = f"SELECT {TASK_COLUMNS_SQL} FROM tasks"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY id DESC LIMIT {mark}"
    args.append(limit)
    return sql, args


def dead_query(f: DeadFilter, limit: int, cursor: int | None = None, oldest_first: bool = False,
               mark: str = "?") -> tuple[str, list[Any]]:
    """The SQL and arguments of a page of dead tasks (``TaskRecord``s) that ``f`` lets through (docs/dead-letters.md).

    Args:
        f: the filter (the error text is a substring, ASCII letters compared without case, ``%`` and ``_``
            taken literally).
        limit: at most this many tasks.
        cursor: newest first only: the last id of the previous page.
        oldest_first: by increasing id (the bulk operations take the oldest first), else newest first.
        mark: the driver's placeholder.
    """
    where = [f"state = {mark}"]
    args: list[Any] = ["dead"]
    for col, val in (("queue", f.queue), ("type", f.type)):
        if val is not None:
            where.append(f"{col} = {mark}")
            args.append(val)
    if f.error is not None:
        text = f.error.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        where.append(f"lower(error) LIKE {mark} ESCAPE '\\'")
        args.append(f"%{text}%")
    if f.since is not None:
        where.append(f"finished_at >= {mark}")
        args.append(f.since)
    if f.until is not None:
        where.append(f"finished_at < {mark}")
        args.append(f.until)
    if cursor is not None and not oldest_first:
        where.append(f"id < {mark}")
        args.append(cursor)
    order = "ASC" if oldest_first else "DESC"
    args.append(limit)
    return f"SELECT {TASK_COLUMNS_SQL} FROM tasks WHERE {' AND '.join(where)} ORDER BY id {order} LIMIT {mark}", args


def server_events_query(since: int | None = None, limit: int = 100, mark: str = "?") -> tuple[str, list[Any]]:
    """The SQL and arguments of the events of no task (``ServerEventRecord``s), oldest first: the ``limit``
    most recent ones, or with ``since`` (an event id) the first ``limit`` ones after it."""
    cols = ", ".join(SERVER_EVENT_COLUMNS)
    if since is not None:
        return f"SELECT {cols} FROM server_events WHERE id > {mark} ORDER BY id LIMIT {mark}", [since, limit]
    return (f"SELECT {cols} FROM (SELECT {cols} FROM server_events ORDER BY id DESC LIMIT {mark}) AS latest ORDER BY id",
            [limit])


def needs_enqueued(stored: list[EventRecord]) -> bool:
    """Whether a timeline read from the store lacks its first event (then read the task's ``created_at``)."""
    return not stored or stored[0].kind not in FIRST_EVENTS


def timeline(task_id: int, stored: list[EventRecord], created_at: float | None) -> list[EventRecord]:
    """A task's timeline from its stored events: with its ``enqueued`` event first when that was not stored.

    The core does not write the ``enqueued`` event of a task ready at once (it would double the rows an
    enqueue costs): it is rebuilt here from the task's ``created_at``, with event id 0, so that a timeline
    always starts with ``enqueued`` (or ``scheduled``, which is stored).

    Args:
        task_id: the task.
        stored: its stored events, in order.
        created_at: its ``created_at``, or None when the task is not stored (then ``stored`` as it is).
    """
    if not needs_enqueued(stored) or created_at is None:
        return stored
    return [EventRecord(task_id, created_at, "enqueued", "ready", None, 0, None, 0), *stored]
