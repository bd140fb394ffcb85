"""Every deadline of the core in one heap: delayed tasks, worker silences, server-side timeouts, limit refills,
breaker cool-downs, schedules' fire times (schedules.py); and the delayed tasks themselves.

Theory of operation
-------------------
An entry is a tuple ``(when, kind, key, ...)``: at ``when``, the timer kind ``kind`` (a small int) has work
for ``key`` (a task id, a worker id, a schedule's name). A kind may append what it needs to recognise its
own entry later: the backstop appends the lease number, the silence watch the worker's join number. All the
entries of one kind have the same shape, so two entries due at the same instant compare by key.

Entries are never taken out when they stop mattering (a delayed task retried by hand or cancelled, a task
finished before its timeout, a worker heard from): finding them in the heap would be a search. Each kind
has a *check* instead, asked whenever one of its entries reaches the top of the heap::

    check(entry) -> float | None

It returns when the entry is due now: its own ``when`` (it stands: it fires), another time (the deadline
moved, as a worker's silence does with every message it sends: the entry is re-armed there, in place), or
``None`` (stale: dropped). The kind's *fire* then does the work: ``fire(entry, now)``.

Delayed tasks are the first kind, and live here too (``Delays``): a task is
delayed when it is enqueued with ``delay`` or a future ``run_at``, and when a
failed attempt waits for its backoff (retries.py). Either way ``_schedule`` arms
one ``DELAY`` entry ``(run_at, DELAY, task id)``; when it comes up,
``_delay_check`` decides whether it still stands and ``_promote`` takes the
``due`` step and queues the task at the back of its queue.

Rules of this file:

1. One heap, ordered by ``(when, kind)``: at one instant the kinds fire in the order of their numbers
   (``DELAY``, then ``SILENCE``, then ``BACKSTOP``: delayed tasks are promoted before a silent worker's
   tasks are lost, and those before a timeout fails one; then ``REFILL`` and ``COOLDOWN``, limits.py,
   which only bring held tasks back and ask for a dispatch round; then ``SCHEDULE``, schedules.py, whose
   tasks join their queues after what was due before them; then ``BATCH``, batching.py, which releases a
   collected batch; then ``RECLAIM``, leases.py: a task recovered running that its worker did not take back
   goes back to ready).
2. An entry fires only when its kind's check says it stands: a stale entry is skipped by that check and by
   nothing else, and each check has its test in ``tests/core``.
3. ``next_deadline`` settles the top of the heap before it answers (drops stale entries, re-arms moved
   ones): the server's timer never wakes for an entry that has nothing to do.
4. A fire may arm entries due at once (a retry with no delay): ``run`` goes on until the top is later
   than ``now``.
5. Pure: ``now`` is passed in; nothing here reads a clock.
6. A delayed task has exactly one entry that stands: the one of its current
   ``run_at``. Entries of earlier ``run_at`` values stay in the heap until they
   come up and are skipped by ``_delay_check``: the task left ``scheduled``
   (retried by hand, cancelled) or was scheduled again for another time (a
   failure's backoff after a manual retry). Without the ``run_at`` comparison a
   task due at t=502 would be promoted at t=100 by its first entry
   (``test_a_stale_entry_of_the_delay_heap_is_skipped``).
7. Promotion goes to the back of the queue: a delayed task becomes ready when
   its time comes, after the tasks that were ready before it.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from typing import Any

from .effects import CoreBase
from .model import CoreConfig, Task
from .states import State, Transition

__all__ = ["BACKSTOP", "BATCH", "COOLDOWN", "DELAY", "RECLAIM", "REFILL", "SCHEDULE", "SILENCE", "Check", "Delays",
           "Fire", "TimerHeap"]

SCHEDULED = State.SCHEDULED

#: A delayed task (``scheduled``) is due: ``(run_at, DELAY, task id)``.
DELAY = 0
#: A worker may have been silent for ``lease_timeout``: ``(last_seen + lease_timeout, SILENCE, worker id,
#: join number)``.
SILENCE = 1
#: A lease's server-side timeout: ``(deadline, BACKSTOP, task id, lease number)``.
BACKSTOP = 2
#: A rate-limit bucket lets a task go again (limits.py): ``(when, REFILL, bucket number)``.
REFILL = 3
#: A circuit breaker's cool-down is over (limits.py): ``(until, COOLDOWN, task type)``.
COOLDOWN = 4
#: A schedule's fire time has come (schedules.py): ``(next_fire, SCHEDULE, schedule name)``.
SCHEDULE = 5
#: A batched type's collection waited ``max_wait`` (batching.py): ``(until, BATCH, queue, type, collection no)``.
BATCH = 6
#: A task recovered running waited ``reclaim`` seconds for its worker (leases.py): ``(when, RECLAIM, task id,
#: the worker id stored with it)``.
RECLAIM = 7

#: ``check(entry)``: when the entry is due now (its ``when``, a later time, or None when stale).
Check = Callable[[tuple[Any, ...]], "float | None"]
#: ``fire(entry, now)``: the kind's work for an entry that stands.
Fire = Callable[[tuple[Any, ...], float], None]


class TimerHeap:
    """The core's one heap of deadlines (see the module docstring).

    ``heap`` is public for the hot path that arms one entry per dispatch (``heapq.heappush`` on it is
    ``arm`` without the call) and for tests.
    """

    __slots__ = ("_checks", "_fires", "heap")

    def __init__(self) -> None:
        self.heap: list[tuple[Any, ...]] = []
        self._checks: dict[int, Check] = {}
        self._fires: dict[int, Fire] = {}

    def __len__(self) -> int:
        return len(self.heap)

    def register(self, kind: int, check: Check, fire: Fire) -> None:
        """Give timer kind ``kind`` its check and its fire (rule 2).

        Raises:
            ValueError: the kind has them already.
        """
        if kind in self._checks:
            raise ValueError(f"timer kind {kind} is registered already")
        self._checks[kind] = check
        self._fires[kind] = fire

    def arm(self, entry: tuple[Any, ...]) -> None:
        """Add ``entry`` (``(when, kind, key, ...)``)."""
        heapq.heappush(self.heap, entry)

    def arm_many(self, entries: list[tuple[Any, ...]]) -> None:
        """Add many entries at once (a restart's delayed tasks): one heapify, not one push each."""
        self.heap.extend(entries)
        heapq.heapify(self.heap)

    def run(self, now: float) -> None:
        """Fire every entry that stands and is due by ``now``, in ``(when, kind)`` order (rules 1, 2, 4)."""
        heap, checks, fires = self.heap, self._checks, self._fires
        while heap and heap[0][0] <= now:
            entry = heap[0]
            at = checks[entry[1]](entry)
            if at is None:
                heapq.heappop(heap)
            elif at > now:
                heapq.heapreplace(heap, (at, *entry[1:]))
            else:
                heapq.heappop(heap)
                fires[entry[1]](entry, now)

    def next_deadline(self) -> float | None:
        """The time of the earliest entry that stands, or None (rule 3)."""
        heap, checks = self.heap, self._checks
        while heap:
            entry = heap[0]
            at = checks[entry[1]](entry)
            if at is None:
                heapq.heappop(heap)
            elif at != entry[0]:
                heapq.heapreplace(heap, (at, *entry[1:]))
            else:
                return at
        return None


class Delays(CoreBase):
    """The timer heap's owner, and delayed tasks (see the module docstring, rules 6 and 7)."""

    def __init__(self, config: CoreConfig | None = None, rng: random.Random | None = None, next_id: int = 1,
                 next_event_id: int = 1) -> None:
        super().__init__(config, rng, next_id, next_event_id)
        #: every deadline: delayed tasks, worker silences, server-side timeouts (kinds registered by ``Core``)
        self.timers = TimerHeap()

    def _schedule(self, task: Task) -> None:
        """Arm the timer of a task that just entered ``scheduled`` with its ``run_at`` set."""
        assert task.run_at is not None
        self.timers.arm((float(task.run_at), DELAY, task.id))

    def _delay_check(self, entry: tuple[Any, ...]) -> float | None:
        """A ``DELAY`` entry stands while its task is scheduled for that very time (rule 6)."""
        when, _, tid = entry
        t = self.tasks.get(tid)
        return when if t is not None and t.state is SCHEDULED and t.run_at == when else None

    def _promote(self, entry: tuple[Any, ...], now: float) -> None:
        """A delayed task is due: ready, at the back of its queue (rule 7)."""
        t = self.tasks[entry[2]]
        self._move(t, Transition.PROMOTE, now)
        self._make_ready(t)
