"""The records the core hands to the store and gets back from it: one named type per kind of row.

Theory of operation
-------------------
What the core persists crosses to the store as named tuples: ``TaskRecord`` (a whole task),
``NewTaskRecord`` (a task as first written, the short insert), ``EventRecord`` (one line of a task's
timeline), ``RequestRecord`` (enqueue answers by idempotency token), ``QueueRecord`` (a queue paused or
resumed), ``DeadFilter`` (which dead tasks a dead-letter read takes: a query, not a row), ``LimitRecord`` and ``BreakerRecord`` (a rate limit or concurrency cap, a circuit breaker:
runq/app/core/limits.py, which names them ``LimitRow`` and ``BreakerRow``) and ``ServerEventRecord`` (an
event that belongs to no task: a limit set or removed, a breaker's change; the operators' audit log) and ``ScheduleRecord`` (a periodic task's schedule). Each field name is the name of the column that stores it, and the field order is the column order:
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

__all__ = [
    "BREAKER_COLUMNS",
    "EVENT_COLUMNS",
    "EVENT_ROW_COLUMNS",
    "LIMIT_COLUMNS",
    "NEW_COLUMNS",
    "QUEUE_COLUMNS",
    "REQUEST_COLUMNS",
    "SCHEDULE_COLUMNS",
    "SERVER_EVENT_COLUMNS",
    "TASK_COLUMNS",
    "BreakerRecord",
    "DeadFilter",
    "EventRecord",
    "LimitKey",
    "LimitRecord",
    "NewTaskRecord",
    "NewTaskRow",
    "QueueRecord",
    "RequestRecord",
    "ScheduleRecord",
    "ServerEventRecord",
    "TaskRecord",
    "TaskRow",
    "make_breaker",
    "make_event",
    "make_limit",
    "make_request",
    "make_schedule",
    "make_server_event",
    "make_task",
]


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
    #: the labels a worker must have to be given it (docs/routing.md): compact JSON, sorted by name; None: any
    requires: str | None
    #: its own retry policy, given at enqueue (docs/tasks.md): compact JSON (``policy_text``); None: its type's
    retry_policy: str | None
    #: its coalesce key (docs/tasks.md, "Coalescing"): a later enqueue with it merges into this task while it waits
    coalesce_key: str | None
    #: the key value of the per-key limits it is subject to, given at enqueue (docs/limits.md); None: the payload's
    limit_key: str | None
    #: the identity that enqueued it (docs/security.md); None: enqueued without users (shared token, open server)
    owner: str | None


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
    requires: str | None
    retry_policy: str | None
    coalesce_key: str | None
    limit_key: str | None
    owner: str | None


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


class LimitRecord(NamedTuple):
    """A rate limit and/or a concurrency cap as stored, one per scope (runq/app/core/limits.py, ``LimitRow``
    there): the scope's kind (``queue`` or ``type``), name and payload key (``""``: the whole scope) are the
    record's key; ``rate`` tasks per ``period`` seconds with a ``burst``, and/or at most ``concurrency`` running."""

    scope: str
    name: str
    key: str
    rate: float | None
    period: float
    burst: int
    concurrency: int | None


class BreakerRecord(NamedTuple):
    """A task type's circuit breaker as stored (runq/app/core/breakers.py, ``BreakerRow`` there), keyed by
    ``type``: its settings (all None for one opened by hand without any), its ``state`` (``closed``, ``open``,
    ``half_open``), when an automatic opening's cool-down ends (``until``), and whether it was opened by hand."""

    type: str
    threshold: float | None
    window: float | None
    min_calls: int | None
    cooldown: float | None
    probes: int | None
    state: str
    until: float | None
    manual: bool


class ServerEventRecord(NamedTuple):
    """An event of the server that belongs to no task: a limit set or removed, a breaker set, removed, opened,
    half-open or closed (the core's ``LimitEvent``); later the audit log of operators' actions.

    Attributes:
        id: numbered by the store when written (None in a record to write), increasing in commit order.
        at: when (the server's wall clock).
        scope: what it is about (``"type:send_email"``, ``"queue:mail[customer]"``).
        kind: ``limit_set``, ``limit_removed``, ``breaker_set``, ``breaker_removed``, ``breaker_open``,
            ``breaker_half_open``, ``breaker_closed``.
        detail: what changed, in words.
        actor: who did it (an operator, for the audit log), or None (the server itself).
    """

    id: int | None
    at: float
    scope: str
    kind: str
    detail: str
    actor: str | None = None


class DeadFilter(NamedTuple):
    """Which dead tasks a dead-letter operation reads (docs/dead-letters.md): each field None for any.

    Attributes:
        queue: only this queue.
        type: only this task type.
        error: only tasks whose error contains this text (ASCII letters compared without case).
        since: only tasks dead at or after this unix time (their ``finished_at``).
        until: only tasks dead before this unix time.
    """

    queue: str | None = None
    type: str | None = None
    error: str | None = None
    since: float | None = None
    until: float | None = None


#: The key of a ``limits`` row: (scope kind, name, payload key), a ``LimitRecord``'s first three fields (the
#: core's ``Scope``, limits.py, is one). The core's effects and the store's ``Batch`` carry limits as
#: (key, record or None for a removal).
LimitKey = tuple[str, str, str]


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
                bytes | None, float, float | None, float | None, str | None, str | None, str | None, str | None,
                str | None, str | None]

#: A task as first written, as the core hands it to the store: a plain tuple of ``NewTaskRecord``'s fields, in
#: their order and with their types (tests/core/test_records.py holds them equal). The second place where a row
#: crosses unnamed, for speed: one is made per enqueued task and only written (``executemany``, ``COPY``), and
#: a ``NewTaskRecord`` per task made ``python -m bench.throughput --only enqueue_batch`` cost the server ~1 us
#: more per task (8.9 against 7.9 us of CPU per task, 7 runs each alternated, 2026-11-30). ``NewTaskRecord(*row)``
#: names one.
NewTaskRow = tuple[int, str, str, bytes, int, str, float | None, float, int, str | None, float, str | None, str | None,
                   str | None, str | None, str | None]

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
#: Column order of a ``limits`` row (its key: scope, name, key).
LIMIT_COLUMNS: tuple[str, ...] = LimitRecord._fields
#: Column order of a ``breakers`` row (its key: type).
BREAKER_COLUMNS: tuple[str, ...] = BreakerRecord._fields
#: Column order of a ``server_events`` row.
SERVER_EVENT_COLUMNS: tuple[str, ...] = ServerEventRecord._fields
#: Column order of a ``schedules`` row.
SCHEDULE_COLUMNS: tuple[str, ...] = ScheduleRecord._fields

_new = tuple.__new__
#: A read row (a plain tuple in column order) as a record, in one C call (see the module docstring).
make_task: Callable[[tuple[Any, ...]], TaskRecord] = functools.partial(_new, TaskRecord)
make_event: Callable[[tuple[Any, ...]], EventRecord] = functools.partial(_new, EventRecord)
make_request: Callable[[tuple[Any, ...]], RequestRecord] = functools.partial(_new, RequestRecord)
make_limit: Callable[[tuple[Any, ...]], LimitRecord] = functools.partial(_new, LimitRecord)
make_breaker: Callable[[tuple[Any, ...]], BreakerRecord] = functools.partial(_new, BreakerRecord)
make_server_event: Callable[[tuple[Any, ...]], ServerEventRecord] = functools.partial(_new, ServerEventRecord)
make_schedule: Callable[[tuple[Any, ...]], ScheduleRecord] = functools.partial(_new, ScheduleRecord)
