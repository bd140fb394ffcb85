"""The queue as a pure state machine: no I/O, no clock reads. ``Core`` (queue.py) is its facade.

Where each concern lives (each module opens with its theory of operation and its rules):

========================  ==================================================================================
module                    concern
========================  ==================================================================================
``states.py``             the ONE transition table (``TRANSITIONS``, and ``STEPS``: the same with its stored
                          names precomputed); ``IllegalTransition``
``model.py``              the records: ``Task``, ``WorkerInfo`` and ``WorkerState``, ``ReadyQueue``,
                          ``CoreConfig``
``records.py``            what crosses to the store and back: ``TaskRecord``, ``NewTaskRecord``,
                          ``EventRecord``, ``RequestRecord``, ``QueueRecord``; the column orders
``effects.py``            the shared state of the concerns (``CoreBase``), the effect buffers (``Effects``),
                          and the one path of a state change (``_move``; ``ENQUEUE_STEP`` for enqueue)
``timers.py``             the ONE timer heap of every deadline, entries ``(when, kind, key, ...)``, each kind's
                          check skipping its stale entries; delayed tasks (``scheduled`` until ``run_at``,
                          then promoted: timer kind ``DELAY``)
``retries.py``            failed attempts: retried after the delay of the task's retry policy (its own, its
                          type's, the server's), or dead (retries spent, ``never_retry``, not ``retry_on``)
``leases.py``             workers and their leases: join, leave, silence (``SILENCE``), results and late
                          results, release, the server-side timeout (``BACKSTOP``), tasks recovered running
                          taken back by their worker (``reclaim``, ``RECLAIM``)
``routing.py``            which connected workers handle which (queue, task type); ready tasks of a type no
                          worker handles held aside until one joins
``limits.py``             rate limits (GCRA) and concurrency caps per queue, task type and payload key, and
                          the circuit breakers' side of dispatch: tasks held aside (still ``ready``), refills
                          (timer kind ``REFILL``), cool-downs (``COOLDOWN``), ``why_waiting``
``breakers.py``           the circuit breaker per task type: its pure state machine and records
``schedules.py``          periodic tasks: cron (cronsim, in an IANA zone) or interval schedules, fire times,
                          the missed-window policy, the dedup mark, the timer kind ``SCHEDULE``
``batching.py``           batched task types: ready tasks of a type collected per queue, handed out together
``dispatch.py``           credit, pause, the dispatch round, and ``_admits``: THE eligibility point
``recovery.py``           the core rebuilt from the store's rows at start
``commits.py``            a failed commit: what to refuse, forget, restore and enqueue again
``stats.py``              counters (``CoreStats``) and the queue and task-type summaries
``requests.py``           enqueue answers by idempotency token (``Requests``)
``queue.py``              ``Core``: the concerns composed, plus enqueue, get, cancel, retry, ``tick``,
                          ``take_effects``
========================  ==================================================================================

The concerns are classes built on one another in the order of their needs (``CoreBase`` <- ``Delays``
(timers.py) <- ``Retries`` <- ``Leases`` <- ``Routing`` <- ``Limits`` <- ``Batching`` <- ``Dispatch``; ``Recovery`` on ``Delays``, ``Rollback`` on
``CoreBase``; ``Schedules`` on ``Delays``) and composed by ``Core``: a rule reads the shared state as plain attributes, at the cost it had in one class.
"""

from __future__ import annotations

from ..errors import ScheduleError, ScheduleMissing
from .breakers import BREAKER_COLUMNS, Breaker, BreakerConfig, BreakerRow, BreakerState, LimitError
from .effects import Effects
from .limits import LIMIT_COLUMNS, BreakerStatus, BucketStatus, Limit, LimitEvent, LimitRow, Scope, Waiting
from .model import EVENT_COLUMNS, EVENT_ROW_COLUMNS, TASK_COLUMNS, CoreConfig, ReadyQueue, Task, WorkerInfo, WorkerState
from .queue import Core, TaskMissing
from .records import EventRecord, NewTaskRecord, QueueRecord, RequestRecord, ScheduleRecord, TaskRecord, TaskRow
from .requests import REQUEST_COLUMNS, Requests
from .schedules import MISSED_POLICIES, Firing, Schedule
from .states import FINAL_STATES, STEPS, TRANSITIONS, IllegalTransition, State, Step, Transition, next_state
from .stats import CoreStats
from .timers import TimerHeap

__all__ = [
    "BREAKER_COLUMNS",
    "EVENT_COLUMNS",
    "EVENT_ROW_COLUMNS",
    "FINAL_STATES",
    "LIMIT_COLUMNS",
    "MISSED_POLICIES",
    "REQUEST_COLUMNS",
    "STEPS",
    "TASK_COLUMNS",
    "TRANSITIONS",
    "Breaker",
    "BreakerConfig",
    "BreakerRow",
    "BreakerState",
    "BreakerStatus",
    "BucketStatus",
    "Core",
    "CoreConfig",
    "CoreStats",
    "Effects",
    "EventRecord",
    "Firing",
    "IllegalTransition",
    "Limit",
    "LimitError",
    "LimitEvent",
    "LimitRow",
    "NewTaskRecord",
    "QueueRecord",
    "ReadyQueue",
    "RequestRecord",
    "Requests",
    "Schedule",
    "ScheduleError",
    "ScheduleMissing",
    "ScheduleRecord",
    "Scope",
    "State",
    "Step",
    "Task",
    "TaskMissing",
    "TaskRecord",
    "TaskRow",
    "TimerHeap",
    "Transition",
    "Waiting",
    "WorkerInfo",
    "WorkerState",
    "next_state",
]
