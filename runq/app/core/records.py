"""The records the core hands to the store and gets back from it: one named type per kind of row.

Theory of operation
-------------------
What the core persists crosses to the store as named tuples: ``TaskRecord`` (a whole task),
``NewTaskRecord`` (a task as first written, the short insert), ``EventRecord`` (one line of a task's
timeline), ``RequestRecord`` (enqueue answers by idempotency token), ``QueueRecord`` (a queue paused or
resumed) and ``ScheduleRecord`` (a periodic task's schedule). Each field name is the name of the column that
stores it, and the field order is the column order:
``TASK_COLUMNS`` and the other column tuples are the records' ``_fields``, the ONE definition that the core,
the store (runq.app.store, which re-exports these as its contract: runq/app/store/base.py), the server and
the dashboard read.

Why named tuples, not dataclasses: the store hands them to SQLite as they are (a record IS the tuple of its
column values, so a multi-row ``INSERT`` flattens them in C), and a read row becomes a record with one C call
(``make_task(row)``: ``tuple.__new__``, no Python-level ``__init__``). On the hot paths the core builds them
the same way (``_new(EventRecord, (...))``: about 60 ns more than a plain tuple, against 300 ns for the
generated ``__new__``); elsewhere build them by name. One exception: ``Store.load`` streams plain tuples
(``TaskRow``, below).

Rules of this file:

1. Records only: no rule of the queue and no I/O.
2. Changing a field (name or order) is a schema change: a migration in every store, and docs/protocol.md
   section 8 (the wire's task map) is checked against ``TASK_COLUMNS``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = ["EVENT_COLUMNS", "EVENT_ROW_COLUMNS", "NEW_COLUMNS", "QUEUE_COLUMNS", "REQUEST_COLUMNS",
           "SCHEDULE_COLUMNS", "TASK_COLUMNS", "EventRecord", "NewTaskRecord", "QueueRecord", "RequestRecord",
           "ScheduleRecord", "TaskRecord", "TaskRow", "make_event", "make_request", "make_schedule", "make_task"]


class TaskRecord(NamedTuple):
    """A whole task as stored (``state`` is the state's name)."""

    id: int
    queue: str
    type: str
    payload: bytes
    priority: int
    state: str
    run_at: float | None
    timeout: float
    max_retries: int
    attempt: int
    key: str | None
    result: bytes | None
    error: str | None
    progress: bytes | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    worker: str | None


class NewTaskRecord(NamedTuple):
    """A task as first written, still as enqueued (the other columns are NULL or 0): a shorter insert."""

    id: int
    queue: str
    type: str
    payload: bytes
    priority: int
    state: str
    run_at: float | None
    timeout: float
    max_retries: int
    key: str | None
    created_at: float


class EventRecord(NamedTuple):
    """One event of a task's timeline (the audit log).

    ``id`` comes last: the core numbers its events in the order they happen, so a timeline read by id is in
    that order even when a failed commit is retried after later ones committed. The ``enqueued`` event of a
    task ready at once is not stored; the store rebuilds it on read with ``id`` 0 (runq.app.store.queries).
    The wire's event map is ``as_dict()``: every field but ``id``.
    """

    task_id: int
    at: float
    kind: str
    state: str
    worker: str | None
    attempt: int
    detail: str | None
    id: int

    def as_dict(self) -> dict[str, Any]:
        """The event as the protocol and the HTTP API send it (``EVENT_COLUMNS``: without the event id)."""
        return {"task_id": self.task_id, "at": self.at, "kind": self.kind, "state": self.state,
                "worker": self.worker, "attempt": self.attempt, "detail": self.detail}


class RequestRecord(NamedTuple):
    """The answer to a run of ``seqs`` enqueue requests of one client, from ``seq`` on (runq.app.core.requests).

    ``answer`` is ``encode_answer``'s text; ``id`` numbers the first of the run (the others take the next
    numbers); ``digests`` the digests of the requests' tasks, one after the other (None when not known).
    """

    id: int
    client_id: str
    seq: int
    at: float
    answer: str
    seqs: int
    digests: bytes | None


class QueueRecord(NamedTuple):
    """A queue paused or resumed."""

    name: str
    paused: bool


class ScheduleRecord(NamedTuple):
    """A periodic task's schedule as stored (runq.app.core.schedules: ``Schedule`` is its live form).

    ``cron`` (with ``tz``) or ``every`` is set, not both. ``next_fire`` is the dedup mark: every fire time
    before it has been handled (its task written in the same commit as this row, or skipped by the missed
    policy); None while paused. ``last_fire`` is the latest fire time that enqueued a task.
    """

    name: str
    type: str
    payload: bytes
    queue: str | None
    priority: int | None
    timeout: float | None
    retries: int | None
    cron: str | None
    tz: str
    every: float | None
    missed: str
    max_missed: int
    paused: bool
    next_fire: float | None
    last_fire: float | None
    created_at: float


#: A task as ``Store.load`` streams it at a restart: a plain tuple of ``TaskRecord``'s fields, in their order
#: and with their types (tests/core/test_records.py holds them equal). The one place where a row crosses
#: unnamed, for speed: a restart reads every live task, and naming each row (``make_task``, ~130 ns) then
#: unpacking a tuple subclass (the interpreter's fast path takes exact tuples only) made a restart with a
#: million queued tasks 0.3 s (9%) slower, measured. Recovery unpacks it whole (mypy checks the count and the
#: types); ``TaskRecord(*row)`` names one.
TaskRow = tuple[int, str, str, bytes, int, str, float | None, float, int, int, str | None, bytes | None, str | None,
                bytes | None, float, float | None, float | None, str | None]

#: Column order of a task row, as the store persists it.
TASK_COLUMNS: tuple[str, ...] = TaskRecord._fields
#: Columns written for a task that was just enqueued (the others are NULL or 0).
NEW_COLUMNS: tuple[str, ...] = NewTaskRecord._fields
#: Column order of an event row as the core makes it and the store keeps it: the event's id last.
EVENT_ROW_COLUMNS: tuple[str, ...] = EventRecord._fields
#: The event's fields the wire carries (``EventRecord.as_dict``): all but the id.
EVENT_COLUMNS: tuple[str, ...] = EVENT_ROW_COLUMNS[:-1]
#: Column order of a ``requests`` row.
REQUEST_COLUMNS: tuple[str, ...] = RequestRecord._fields
#: Columns of a ``queues`` row.
QUEUE_COLUMNS: tuple[str, ...] = QueueRecord._fields
#: Column order of a ``schedules`` row.
SCHEDULE_COLUMNS: tuple[str, ...] = ScheduleRecord._fields

_new = tuple.__new__
#: A read row (a plain tuple in column order) as a record, in one C call (see the module docstring).
make_task: Callable[[tuple[Any, ...]], TaskRecord] = functools.partial(_new, TaskRecord)
make_event: Callable[[tuple[Any, ...]], EventRecord] = functools.partial(_new, EventRecord)
make_request: Callable[[tuple[Any, ...]], RequestRecord] = functools.partial(_new, RequestRecord)
make_schedule: Callable[[tuple[Any, ...]], ScheduleRecord] = functools.partial(_new, ScheduleRecord)
