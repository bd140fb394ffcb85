"""The core's state, its effect buffers, and the one path of a state change.

Theory of operation
-------------------
``CoreBase`` holds everything the concerns of the core share: the live tasks, the
ready queues, the workers, the timer heap, the counters, and the buffers of
effects that the I/O layer collects (``Effects``). Each concern is a class
built on it (timers.py, retries.py, leases.py, dispatch.py, recovery.py,
commits.py) and ``queue.Core`` composes them; they talk through this state, so
a rule reads as plain attribute access and costs no more than it did in one
class.

Rules of this file:

1. ``_move`` is the one way a task changes state: it looks the step up in
   ``states.STEPS`` (the transition table), keeps the per-queue counts and
   totals, numbers and buffers the event row, marks the task's row dirty, and
   tells subscribers. One exception, the enqueue hot path (rule 1 of queue.py):
   ``Core.enqueue`` applies ``ENQUEUE_STEP``, the table's step for a task ready at
   once read here once, itself; its event is told but not stored, and the counts
   are kept once per queue and request (``_count_new``).
2. Effects only accumulate here; ``_take`` hands them over and starts afresh.
   The last write of a task in a batch wins: it is written once however often
   it changed.
3. ``_make_ready`` is the one way a task joins a ready queue; it asks for a
   dispatch round (``_pump_needed``), which ``take_effects`` runs.
4. A lease ends where the task leaves ``running``, in ``_move``: what the task held there under the limits
   (cap slots: ``_holds``) is given back, and its type's breaker told the outcome, by ``_run_ended``
   (limits.py), whatever ended it. With no cap and no breaker this costs a comparison.
"""

from __future__ import annotations

import random
from collections import Counter, OrderedDict
from typing import TYPE_CHECKING, Any

from ...protocol.messages import TypeOptions
from .model import CoreConfig, ReadyQueue, Task, WorkerInfo
from .records import EventRecord, LimitKey, NewTaskRow, QueueRecord, TaskRecord
from .states import STEPS, IllegalTransition, State, Transition
from .stats import CoreStats

if TYPE_CHECKING:
    from .breakers import Breaker, BreakerRow
    from .limits import Bucket, LimitEvent, LimitRow
    from .records import ScheduleRecord
    from .schedules import Schedule

__all__ = ["ENQUEUE_STEP", "CoreBase", "Effects"]

_new = tuple.__new__

# module-level aliases: attribute access on an Enum class goes through a descriptor
SCHEDULED, READY, RUNNING, SUCCEEDED, DEAD = State.SCHEDULED, State.READY, State.RUNNING, State.SUCCEEDED, State.DEAD
#: the table's step for a task enqueued ready, read once (test_states checks STEPS against the table)
ENQUEUE_STEP = STEPS[(None, Transition.ENQUEUE)]


class Effects:
    """What one batch of inputs asks the I/O layer to do.

    Attributes:
        rows: whole task rows to write.
        new_rows: rows of tasks written for the first time, still as enqueued (the short insert).
        events: event rows to append.
        outbox: messages to send, per worker id.
        notices: (event row, task) pairs for live subscribers (only while ``observed``).
        logs: (level, text) lines for the operator.
        queue_ops: (queue, paused) changes to record.
        limit_rows: (scope, row) of limits set (a ``LimitRow``) or removed (None) to record (limits.py).
        breaker_rows: (task type, row) of circuit breakers changed (a ``BreakerRow``) or removed (None).
        limit_events: changes of limits and breakers (``LimitEvent``), for the store, subscribers and metrics.
        schedule_rows: (name, row) of schedules added or changed (a ``ScheduleRecord``) or removed (None), one
            per name, to write in the same commit as the tasks their firings enqueued (schedules.py rule 2).
    """

    __slots__ = ("breaker_rows", "events", "limit_events", "limit_rows", "logs", "new_rows", "notices", "outbox",
                 "queue_ops", "rows", "schedule_rows")

    def __init__(
        self,
        rows: list[TaskRecord],
        events: list[EventRecord],
        outbox: dict[str, list[dict[str, Any]]],
        notices: list[tuple[EventRecord, Task]],
        logs: list[tuple[str, str]],
        queue_ops: list[QueueRecord],
        new_rows: list[NewTaskRow] | None = None,
        limit_rows: list[tuple[LimitKey, LimitRow | None]] | None = None,
        breaker_rows: list[tuple[str, BreakerRow | None]] | None = None,
        limit_events: list[LimitEvent] | None = None,
        schedule_rows: list[tuple[str, ScheduleRecord | None]] | None = None,
    ) -> None:
        self.new_rows = new_rows or []
        self.schedule_rows = schedule_rows or []
        self.limit_rows = limit_rows or []
        self.breaker_rows = breaker_rows or []
        self.limit_events = limit_events or []
        self.rows = rows
        self.events = events
        self.outbox = outbox
        self.notices = notices
        self.logs = logs
        self.queue_ops = queue_ops

    def __bool__(self) -> bool:
        return bool(self.rows or self.new_rows or self.events or self.outbox or self.queue_ops or self.logs
                    or self.limit_rows or self.breaker_rows or self.limit_events or self.schedule_rows)


class CoreBase:
    """The shared state of the core's concerns (see the module docstring); not used alone.

    Args:
        config: tunable rules.
        rng: randomness for backoff jitter (pass a seeded one for determinism).
        next_id: the first task id to assign.
        next_event_id: the first event id to assign (``recover`` raises it past the stored ones).
    """

    def __init__(self, config: CoreConfig | None = None, rng: random.Random | None = None, next_id: int = 1,
                 next_event_id: int = 1) -> None:
        self.config = config or CoreConfig()
        self.rng = rng or random.Random()
        self.next_id = next_id
        self.next_event_id = next_event_id
        #: the live (non-final) tasks
        self.tasks: dict[int, Task] = {}
        #: the last ``finished_cache`` tasks that reached a final state, oldest first (an OrderedDict: the
        #: oldest leaves in O(1), where ``next(iter(d))`` on a dict emptied from the front scans its holes)
        self.finished: OrderedDict[int, Task] = OrderedDict()
        self.queues: dict[str, ReadyQueue] = {}
        self.workers: dict[str, WorkerInfo] = {}
        #: connected workers per (queue, task type) they announced, and per queue those that take any type
        #: (routing.py: whether a type is handled)
        self._serving: Counter[tuple[str, str]] = Counter()
        self._serving_any: Counter[str] = Counter()
        #: per task type, the options its workers' definition sets (hello ``type_options``; the latest joined
        #: worker's win): a task enqueued by type name without them gets them (routing.py)
        self.type_options: dict[str, TypeOptions] = {}
        self._joins = 0  # workers joined so far: a worker's join number tells its silence entry from older ones
        #: the highest lease number given so far (a task read back from the store starts above it)
        self.max_lease = 0
        self.hungry: dict[str, WorkerInfo] = {}  # workers with credit > 0, not draining
        self._served = 0  # dispatches so far: WorkerInfo.served orders equally loaded workers
        #: unique key -> the live task holding it
        self.keys: dict[str, Task] = {}
        #: task id -> its batch number, for the tasks of a released batch not leased yet (batching.py)
        self._released: dict[int, int] = {}
        #: coalesce key -> the latest live task enqueued with it (queue.py: an enqueue merges into it while it
        #: waits); an entry leaves with its task (``_finish``)
        self.coalescing: dict[str, Task] = {}
        #: per queue, live tasks by state name
        self.counts: dict[str, Counter[str]] = {}
        self.stats = CoreStats()
        #: per queue, how many times each transition happened since start (rates and metrics read it)
        self.totals: dict[str, Counter[str]] = {}
        #: when a list, every finished attempt appends (queue, type, seconds it ran, succeeded); the reader drains it
        self.run_times: list[tuple[str, str, float, bool]] | None = None
        #: whether anyone subscribes to live events (``notices`` are made only then)
        self.observed = False
        self._dirty: dict[int, Task] = {}
        self._new: set[int] = set()
        self._events: list[EventRecord] = []
        self._outbox: dict[str, list[dict[str, Any]]] = {}
        self._notices: list[tuple[EventRecord, Task]] = []
        self._logs: list[tuple[str, str]] = []
        self._queue_ops: list[QueueRecord] = []
        self._pump_needed = False
        #: whether any limit or breaker is configured (limits.py): dispatch reads only this flag without one
        self._limited = False
        #: running task id -> the buckets with a cap it holds a slot of (limits.py)
        self._holds: dict[int, tuple[Bucket, ...]] = {}
        #: circuit breakers by task type (limits.py, breakers.py)
        self.breakers: dict[str, Breaker] = {}
        self._limit_rows: list[tuple[LimitKey, LimitRow | None]] = []
        self._breaker_rows: list[tuple[str, BreakerRow | None]] = []
        self._limit_events: list[LimitEvent] = []
        #: ready task id -> the limit bucket or breaker holding it aside (limits.py)
        self._held_by: dict[int, Bucket | Breaker] = {}
        #: the periodic tasks by name (schedules.py)
        self.schedules: dict[str, Schedule] = {}
        #: schedules changed (or removed: None) since the last ``_take``: their rows go with that batch
        self._schedule_rows: dict[str, Schedule | None] = {}

    # ------------------------------------------------------------------ effects
    def _take(self) -> Effects:
        """Return and clear the effects buffered since the last call (rule 2)."""
        rows: list[TaskRecord] = []
        new_rows: list[NewTaskRow] = []
        new = self._new
        for t in self._dirty.values():
            if t.id in new and t.attempt == 0 and (t.state is READY or t.state is SCHEDULED) and t.progress is None:
                new_rows.append(t.new_row())  # first write of a task still as enqueued: a short insert
            else:
                rows.append(t.row())
        fx = Effects(rows, self._events, self._outbox, self._notices, self._logs, self._queue_ops, new_rows)
        if self._limit_rows or self._breaker_rows or self._limit_events:
            fx.limit_rows, fx.breaker_rows, fx.limit_events = self._limit_rows, self._breaker_rows, self._limit_events
            self._limit_rows, self._breaker_rows, self._limit_events = [], [], []
        if self._schedule_rows:  # (each as it is now: the last change of a schedule in a batch wins)
            fx.schedule_rows = [(name, None if s is None else s.record()) for name, s in self._schedule_rows.items()]
            self._schedule_rows = {}
        self._dirty = {}
        self._new = set()
        self._events = []
        self._outbox = {}
        self._notices = []
        self._logs = []
        self._queue_ops = []
        return fx

    def _send(self, worker_id: str, message: dict[str, Any]) -> None:
        box = self._outbox.get(worker_id)
        if box is None:
            self._outbox[worker_id] = [message]
        else:
            box.append(message)

    def _log(self, level: str, text: str) -> None:
        self._logs.append((level, text))

    # ------------------------------------------------------------------ the one path of a change
    def _move(self, task: Task, tr: Transition, now: float, worker: str | None = None, detail: str | None = None) -> None:
        """Apply ``tr`` to ``task`` by the transition table: its state, the counts, its event row, its row.

        Raises:
            IllegalTransition: the table has no such step from the task's state.
        """
        old = task.state
        step = STEPS.get((old, tr))
        if step is None:
            raise IllegalTransition(old, tr)
        task.state = step.state
        kind, name = step.kind, step.name
        counts = self.counts.get(task.queue)
        if counts is None:
            counts = self.counts[task.queue] = Counter()
        if old is not None:
            counts[old._value_] -= 1
        counts[name] += 1
        totals = self.totals.get(task.queue)
        if totals is None:
            totals = self.totals[task.queue] = Counter()
        totals[kind] += 1
        eid = self.next_event_id
        self.next_event_id = eid + 1
        row: EventRecord = _new(EventRecord, (task.id, now, kind, name, worker, task.attempt, detail, eid))
        self._events.append(row)
        self._dirty[task.id] = task
        if self.observed:
            self._notices.append((row, task))
        if old is RUNNING and (self._holds or self.breakers):  # the lease ended: give back what it held (rule 4)
            self._run_ended(task, tr, now)

    def _run_ended(self, task: Task, tr: Transition, now: float) -> None:
        """``task`` left ``running``: give back what it held under the limits (limits.py overrides this)."""

    def _count_new(self, queue: str, kind: str, name: str, n: int) -> None:
        """Count ``n`` tasks of ``queue`` that took the creation step ``kind`` into state ``name`` (enqueue's
        ``enqueued`` steps, counted once per queue and request rather than once per task)."""
        counts = self.counts.get(queue)
        if counts is None:
            counts = self.counts[queue] = Counter()
        counts[name] += n
        totals = self.totals.get(queue)
        if totals is None:
            totals = self.totals[queue] = Counter()
        totals[kind] += n

    def _finish(self, task: Task, now: float) -> None:
        """Bookkeeping for a task that reached a final state."""
        task.finished_at = now
        task.run_at = None
        counts = self.counts[task.queue]
        counts[task.state._value_] -= 1  # final tasks are not counted as live
        self.tasks.pop(task.id, None)
        if task.key is not None and self.keys.get(task.key) is task:
            del self.keys[task.key]
        if task.coalesce_key is not None and self.coalescing.get(task.coalesce_key) is task:
            del self.coalescing[task.coalesce_key]
        fin = self.finished
        fin[task.id] = task
        if len(fin) > self.config.finished_cache:
            fin.popitem(last=False)
        st = self.stats
        if task.state is SUCCEEDED:
            st.succeeded += 1
        elif task.state is DEAD:
            st.dead += 1
        else:
            st.cancelled += 1

    # ------------------------------------------------------------------ ready queues
    def _queue(self, name: str) -> ReadyQueue:
        q = self.queues.get(name)
        if q is None:
            q = self.queues[name] = ReadyQueue(name)
        return q

    def _make_ready(self, task: Task, front: bool = False) -> None:
        """Put a task that just became READY in its queue (rule 3); ``front`` for one that had waited."""
        task.run_at = None
        if self._held_by:  # (a held entry of its earlier wait is stale now: limits.py rule 4)
            self._held_by.pop(task.id, None)
        self._queue(task.queue).push(task, front)
        self._pump_needed = True
