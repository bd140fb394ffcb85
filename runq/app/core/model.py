"""The records the core keeps: tasks, workers, ready queues, and its settings.

Theory of operation
-------------------
A ``Task`` is one mutable, slotted object per live task (a million queued tasks
must fit in a few hundred bytes each: no ``__dict__``, no per-task object beside
it); the core changes it in place and the store reads it back as a ``TaskRecord``
(``row``, ``new_row``, ``from_row``; the records and column orders are in records.py). A ``WorkerInfo`` is
a connected worker as the core sees it: its queues and concurrency, its credit,
what it holds (``running``, and ``unarmed`` for tasks prefetched beyond its
concurrency), and its ``WorkerState``. A ``ReadyQueue`` holds one named queue's
ready tasks by priority, first in first out within one, with lazy removal.

Rules of this file:

1. Records only: no rule of the queue lives here (those are in the concern
   modules of this package); a method here keeps its own record consistent.
2. ``Task``'s stored attributes are ``TaskRecord``'s fields, in their order (``__slots__`` is built from
   ``TASK_COLUMNS``): changing one is a schema change (records.py, rule 2).
"""

from __future__ import annotations

import enum
import heapq
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .records import EVENT_COLUMNS, EVENT_ROW_COLUMNS, NEW_COLUMNS, TASK_COLUMNS, NewTaskRow, TaskRecord
from .states import State

__all__ = ["EVENT_COLUMNS", "EVENT_ROW_COLUMNS", "NEW_COLUMNS", "TASK_COLUMNS", "CoreConfig", "ReadyQueue", "Task",
           "WorkerInfo", "WorkerState"]

@dataclass
class CoreConfig:
    """Rules of the queue that an operator may tune.

    Attributes:
        lease_timeout: seconds without a message from a worker before its leases expire.
        default_timeout: seconds a task may run when it names no timeout.
        default_retries: retries after a failed attempt when a task names none.
        backoff_base: seconds before the first retry; doubles per attempt.
        backoff_max: ceiling of the backoff delay, seconds.
        jitter: the backoff is multiplied by a uniform factor in [1 - jitter, 1 + jitter].
        finished_cache: how many finished tasks stay in memory for fast status reads.
        schedule_grace: seconds a schedule's fire time may be late and still count as on time; a fire time
            older than that when it comes up was missed (the server was down): the schedule's missed policy
            decides (schedules.py).
        reclaim: seconds a task found running at a restart (or a failover) stays leased to the worker that ran
            it, for that worker to take it back when it connects again (its attempt and its worker id prove it
            is the same run: leases.py ``reclaim``); then it goes back to ready. 0: back to ready at once.
    """

    lease_timeout: float = 10.0
    default_timeout: float = 600.0
    default_retries: int = 3
    backoff_base: float = 1.0
    backoff_max: float = 3600.0
    jitter: float = 0.25
    finished_cache: int = 10_000
    schedule_grace: float = 60.0
    reclaim: float = 0.0


_STATES = {s.value: s for s in State}
_new = tuple.__new__


#: ``Task.queued``: no entry in a ready queue / a live entry / a stale entry still in its deque (skipped).
NOT_QUEUED, QUEUED, STALE = 0, 1, -1


class Task:
    """One task, mutable, owned by the core.

    Besides the stored columns: ``queued`` tells whether the task has an entry in its ready queue
    (``NOT_QUEUED``, ``QUEUED`` or ``STALE``, see ``ReadyQueue``), and ``lease`` is the number of its
    latest dispatch: it grows with every dispatch, never goes back (a release or a manual retry does not
    undo it, unlike ``attempt``), and a result is accepted only with the current one. It is not stored.
    """

    __slots__ = TASK_COLUMNS + ("queued", "lease")

    id: int
    queue: str
    type: str
    payload: bytes
    priority: int
    state: State
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
    requires: str | None
    retry_policy: str | None
    coalesce_key: str | None
    limit_key: str | None
    owner: str | None
    queued: int
    lease: int

    def __init__(
        self, id: int, queue: str, type: str, payload: bytes, priority: int = 0, state: Any = None,
        run_at: float | None = None, timeout: float = 600.0, max_retries: int = 3, attempt: int = 0,
        key: str | None = None, result: bytes | None = None, error: str | None = None,
        progress: bytes | None = None, created_at: float = 0.0, started_at: float | None = None,
        finished_at: float | None = None, worker: str | None = None, requires: str | None = None,
        retry_policy: str | None = None,
        coalesce_key: str | None = None, limit_key: str | None = None, owner: str | None = None,
    ) -> None:
        self.id = id
        self.queue = queue
        self.type = type
        self.payload = payload
        self.priority = priority
        self.state = state
        self.run_at = run_at
        self.timeout = timeout
        self.max_retries = max_retries
        self.attempt = attempt
        self.key = key
        self.result = result
        self.error = error
        self.progress = progress
        self.created_at = created_at
        self.started_at = started_at
        self.finished_at = finished_at
        self.worker = worker
        self.requires = requires
        self.retry_policy = retry_policy
        self.coalesce_key = coalesce_key
        self.limit_key = limit_key
        self.owner = owner
        self.queued = NOT_QUEUED
        self.lease = attempt

    def row(self) -> TaskRecord:
        """The task as the store keeps it (built with ``tuple.__new__``: runq/app/core/records.py)."""
        return _new(TaskRecord, (
            self.id, self.queue, self.type, self.payload, self.priority, self.state._value_, self.run_at,
            self.timeout, self.max_retries, self.attempt, self.key, self.result, self.error, self.progress,
            self.created_at, self.started_at, self.finished_at, self.worker, self.requires, self.retry_policy,
            self.coalesce_key, self.limit_key, self.owner,
        ))

    def new_row(self) -> NewTaskRow:
        """The task as first written (the short insert): a plain tuple, ``NewTaskRecord``'s fields (records.py)."""
        return (self.id, self.queue, self.type, self.payload, self.priority, self.state._value_, self.run_at,
                self.timeout, self.max_retries, self.key, self.created_at, self.requires, self.retry_policy,
                self.coalesce_key, self.limit_key, self.owner)

    def as_dict(self) -> dict[str, Any]:
        """The task as a wire/JSON-ready map (bytes fields stay bytes)."""
        d = {name: getattr(self, name) for name in TASK_COLUMNS}
        d["state"] = self.state.value
        return d

    @classmethod
    def from_row(cls, row: TaskRecord) -> Task:
        """Rebuild a task from its stored record (unpacked in field order: mypy checks the count and types)."""
        t = cls.__new__(cls)
        (t.id, t.queue, t.type, t.payload, t.priority, state, t.run_at, t.timeout, t.max_retries,
         t.attempt, t.key, t.result, t.error, t.progress, t.created_at, t.started_at, t.finished_at,
         t.worker, t.requires, t.retry_policy, t.coalesce_key, t.limit_key, t.owner) = row
        t.state = _STATES[state]
        t.queued = NOT_QUEUED
        t.lease = t.attempt
        return t

    def __repr__(self) -> str:
        return f"<Task {self.id} {self.type} {self.state.value} attempt={self.attempt}>"


class WorkerState(str, enum.Enum):
    """What a connected worker is doing, as the worker map, the dashboard and the metrics name it.

    A ``str`` enum: its members compare and hash as their wire values (``"active"``, ``"draining"``).
    """

    #: takes tasks against the credit it grants
    ACTIVE = "active"
    #: told to stop (``drain_worker``) or stopping by itself (it sent ``release``): given no new task
    DRAINING = "draining"

    def __str__(self) -> str:
        return self.value


@dataclass(eq=False)
class WorkerInfo:
    """A connected worker, as the core sees it."""

    id: str
    queues: tuple[str, ...]
    concurrency: int
    name: str | None
    host: str | None
    pid: int | None
    connected_at: float
    last_seen: float
    credit: int = 0
    running: dict[int, Task] = field(default_factory=dict)
    #: held tasks beyond ``concurrency`` (prefetched: the worker has not started them yet), in dispatch
    #: order, with their lease: their timeout backstop is armed once one of the first ``concurrency`` ends
    unarmed: dict[int, tuple[Task, int]] = field(default_factory=dict)
    #: the task types it announced (its handlers); empty when it announced none (it takes any type)
    types: tuple[str, ...] = ()
    #: ``types`` as a set, for dispatch's type check (set from ``types`` when the record is made)
    type_set: frozenset[str] = frozenset()
    #: the labels it offers (hello ``labels``): it is given a task that ``requires`` labels only if it has them
    labels: dict[str, str] = field(default_factory=dict)
    state: WorkerState = WorkerState.ACTIVE
    #: its join number (the core's count of joins then): tells its silence timer from one of an earlier
    #: worker that had the same id
    joined: int = 0
    #: when it was last given a task (the core's dispatch count then): among equally loaded workers, the one
    #: served longest ago is served first
    served: int = 0
    completed: int = 0
    failed: int = 0

    def __post_init__(self) -> None:
        self.type_set = frozenset(self.types)

    def as_dict(self) -> dict[str, Any]:
        """The worker map of the protocol and the HTTP API."""
        return {
            "id": self.id, "name": self.name, "host": self.host, "pid": self.pid,
            "queues": list(self.queues), "types": list(self.types), "labels": dict(self.labels),
            "concurrency": self.concurrency,
            "in_flight": len(self.running),
            "running": list(self.running), "credit": self.credit, "connected_at": self.connected_at,
            "last_heartbeat": self.last_seen, "state": self.state.value,
            "completed": self.completed, "failed": self.failed,
        }


class ReadyQueue:
    """The ready tasks of one named queue: highest priority first, FIFO within one.

    Entries are removed lazily: a task that leaves READY other than by ``pop``
    (cancelled) stays in its deque marked ``STALE`` and is skipped when it reaches
    the front. A task has at most one entry: pushing a task whose stale entry is
    still in the deque (a retry right after a cancel) first removes that entry, so
    the task takes its new place, not its old one.
    """

    __slots__ = ("by_priority", "held", "name", "paused", "priorities", "ready")

    def __init__(self, name: str) -> None:
        self.name = name
        self.by_priority: dict[int, deque[Task]] = {}
        self.priorities: list[int] = []  # heap of negated priorities present in by_priority
        self.ready = 0
        self.paused = False
        #: ready tasks taken out of the order because no connected worker handles their type, per type, in
        #: the order they were held (routing.py)
        self.held: dict[str, deque[Task]] = {}

    def push(self, task: Task, front: bool = False) -> None:
        """Add a task that became READY: at the back of its priority, or at the front (``front``)."""
        p = task.priority
        d = self.by_priority.get(p)
        if d is None:
            d = self.by_priority[p] = deque()
            heapq.heappush(self.priorities, -p)
        elif task.queued == STALE:  # rare (retry after cancel): O(n), keeps the hot path free of it
            d.remove(task)
        if front:
            d.appendleft(task)
        else:
            d.append(task)
        task.queued = QUEUED
        self.ready += 1

    def discard(self, task: Task) -> None:
        """Forget a queued task (lazily) when it leaves READY other than by pop."""
        if task.queued == QUEUED:
            task.queued = STALE
            self.ready -= 1

    def peek(self) -> Task | None:
        """The first task (highest priority, first in), left in place; None when there is none."""
        prios = self.priorities
        while prios:
            p = -prios[0]
            d = self.by_priority[p]
            while d:
                t = d[0]
                if t.queued == QUEUED:
                    return t
                d.popleft()
                t.queued = NOT_QUEUED  # its stale entry is gone
            heapq.heappop(prios)
            del self.by_priority[p]
        return None

    def pop(self) -> Task | None:
        """Take out and return the first task, or None when there is none."""
        t = self.peek()
        if t is not None:
            self.take(t)
        return t

    def take(self, task: Task) -> None:
        """Take out ``task``, the first task as ``peek`` just returned it."""
        self.by_priority[task.priority].popleft()
        task.queued = NOT_QUEUED
        self.ready -= 1

    def hold(self, task: Task, key: str | None = None) -> None:
        """Take out ``task``, the first task as ``peek`` just returned it, and keep it aside under its type
        (or ``key``: routing.py, rule 4)."""
        self.take(task)
        if key is None:
            key = task.type
        d = self.held.get(key)
        if d is None:
            d = self.held[key] = deque()
        d.append(task)

    def unhold(self, type_: str) -> deque[Task]:
        """The tasks held under ``type_``, in the order they were held (no longer kept here)."""
        return self.held.pop(type_, deque())
