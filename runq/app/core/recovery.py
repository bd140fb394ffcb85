"""Recovery: the core rebuilt from the store's live task rows when the server starts.

Theory of operation
-------------------
The store hands over every non-final task row in id order, the paused queues,
and its next free task and event ids. ``recover`` makes the tasks again:

- ``ready`` rows go back in their queues, in id order (a front place from a loss
  or a release is not kept);
- ``scheduled`` rows get their ``DELAY`` timer entry (all armed with one heapify);
- ``running`` rows take the ``recovered`` step to ready (worker cleared, attempt
  still counted): no worker of the previous life holds a lease any more. With
  ``CoreConfig.reclaim`` > 0 they stay running instead, leased to the worker id
  stored with them, for ``reclaim`` seconds (a ``RECLAIM`` timer entry): that
  worker, connected again, may take them back and report their results
  (leases.py ``reclaim``); those it does not take back take the ``recovered``
  step then;
- a row left in ``failed`` (a crash between a failure and its backoff, which this
  version never writes) takes the ``backoff`` step at once, due now.

Rules of this file:

1. A change of state goes through the transition table with its event, as
   anywhere else (``_move``): ``recovered`` and ``retry_scheduled`` rows are
   written by the first commit after the start.
2. Memory: a million queued tasks must fit in a few hundred bytes each, so equal
   strings, equal small payloads and the ``created_at`` of one enqueue batch are
   shared between tasks, and no per-task object is made beyond the task itself.
3. Ids never go back: ``next_id`` and ``next_event_id`` only rise.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from .model import NOT_QUEUED, Task
from .records import TaskRow
from .states import State, Transition
from .timers import DELAY, RECLAIM, Delays

__all__ = ["Recovery"]

S, T = State, Transition


class Recovery(Delays):
    """Rebuilding at start (see the module docstring)."""

    def recover(self, rows: Iterable[TaskRow], paused: list[str], next_id: int, now: float,
                next_event_id: int = 1) -> int:
        """Rebuild state from the store's non-final task rows (in id order).

        Args:
            rows: task rows (``TaskRow``: unpacked whole below, mypy checks the count and the types).
            paused: the names of the paused queues.
            next_id: the store's next free task id.
            now: the server's clock.
            next_event_id: the store's next free event id.

        Returns:
            How many tasks were running in the previous life (now ready again, or held for their workers).
        """
        self.next_id = max(self.next_id, next_id)
        self.next_event_id = max(self.next_event_id, next_event_id)
        recovered = 0
        shared: dict[Any, Any] = {}
        share = shared.setdefault
        tasks = self.tasks
        states = {s.value: s for s in State}
        new = Task.__new__
        created: float = -1.0
        delayed: list[tuple[Any, ...]] = []  # timer entries of the scheduled tasks: one heapify at the end
        reclaimable: list[tuple[Any, ...]] = []  # RECLAIM entries of the running ones held for their workers
        reclaim = self.config.reclaim
        running, failed, scheduled = S.RUNNING, S.FAILED, S.SCHEDULED
        for row in rows:
            t = new(Task)
            (t.id, queue, type_, payload, t.priority, state_name, t.run_at, timeout, t.max_retries,
             t.attempt, t.key, t.result, t.error, t.progress, created_at, t.started_at, t.finished_at,
             t.worker, t.requires, t.retry_policy, t.coalesce_key, t.limit_key, t.owner) = row
            # the tasks of one enqueue batch share one created_at, as they did before the restart (24 bytes each)
            if created_at != created:
                created = created_at
            t.created_at = created
            t.queue = share(queue, queue)
            t.type = share(type_, type_)
            t.payload = share(payload, payload) if payload is not None and len(payload) <= 32 else payload
            t.timeout = share(timeout, timeout)
            t.queued = NOT_QUEUED
            t.lease = t.attempt
            state = states[state_name]
            tasks[t.id] = t
            if t.key is not None:
                self.keys[t.key] = t
            if t.coalesce_key is not None:  # (rows come by id: the latest task with the key holds it, as before)
                self.coalescing[t.coalesce_key] = t
            counts = self.counts.get(t.queue)
            if counts is None:
                counts = self.counts[t.queue] = Counter()
            # as it was stored, counted: the steps below move it from there
            t.state = state
            counts[state_name] += 1
            if state is running and reclaim and t.worker is not None:
                # held for its worker to take back (leases.py ``reclaim``); back to ready if it does not in time
                reclaimable.append((now + reclaim, RECLAIM, t.id, t.worker))
                recovered += 1
            elif state is running:
                t.worker = None
                self._move(t, T.RECOVER, now, detail="server restarted while it ran")
                recovered += 1
                self._queue(t.queue).push(t)
            elif state is failed:  # a crash between fail and backoff: the backoff step now, due at once
                t.run_at = now
                self._move(t, T.BACKOFF, now, detail="server restarted before its retry was scheduled")
                delayed.append((now, DELAY, t.id))
            elif state is scheduled:
                if t.run_at is None:  # (never written so; due at once rather than never)
                    t.run_at = now
                delayed.append((t.run_at, DELAY, t.id))
            else:
                self._queue(t.queue).push(t)
        self.timers.arm_many(delayed)
        self.timers.arm_many(reclaimable)
        for name in paused:
            self._queue(name).paused = True
        self._pump_needed = True
        return recovered
