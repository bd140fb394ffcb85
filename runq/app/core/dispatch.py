"""Dispatch: ready tasks go to workers by credit, each to the least loaded worker that may take it.

Theory of operation
-------------------
A worker grants credit (``credit``); a worker with credit that is not draining is
*hungry*. Whenever a task becomes ready or a worker grants credit,
``_pump_needed`` is set and the next ``take_effects`` runs one dispatch round
(``_pump``): while some hungry worker can take a task, the least loaded of them
(fewest held tasks per unit of concurrency, then the one served longest ago)
gets the best task it may take (``_next_for``), and the lease starts
(``_lease``). Each worker's tasks of one round go in one ``tasks`` frame.

``_next_for`` looks at the head of each of the worker's queues (the highest
priority, first in) and takes the best head that ``_admits`` lets through.
``_admits`` is THE eligibility point: the one place that decides whether a
worker may be given a task now. It holds three rules: pause, the task types a
worker announced (routing.py holds back the tasks of a type no worker handles,
so that they block nobody), and the limits (limits.py: rate limits,
concurrency caps, circuit breakers, read through one flag when none is set);
routing labels (routing.py rule 4) are one more clause there, and dependencies plug in there too.

Rules of this file:

1. Dispatch happens only by credit: a worker is sent at most as many tasks as it
   granted, and never while draining.
2. A task is given only if ``_admits`` says so for that task, that worker, now; a
   queue whose head is refused is passed over for that worker in this round
   (the tasks behind the head wait with it: rules that refuse one task but not
   the next must keep such tasks out of the ready queue, see ``_admits``). A
   head that ``_admits`` took out of the queue as it refused it (held aside by a
   limit, limits.py: still ready), or put behind others (a batch released before it,
   batching.py), is no longer the head: the next one is looked at.
3. Across a worker's queues, the best head wins: the highest priority, then the
   lower id.
"""

from __future__ import annotations

import heapq
from typing import Any

from ...protocol.messages import MAX_CREDIT
from .batching import Batching
from .model import QUEUED, ReadyQueue, Task, WorkerInfo, WorkerState
from .records import QueueRecord
from .routing import fits
from .states import Transition
from .timers import BACKSTOP

__all__ = ["Dispatch"]

T_DISPATCH = Transition.DISPATCH


class Dispatch(Batching):
    """Credit, pause and the dispatch round (see the module docstring)."""

    def credit(self, worker_id: str, n: int, now: float) -> None:
        """The worker can take ``n`` more tasks.

        Raises:
            KeyError: no such worker.
        """
        w = self.workers[worker_id]
        w.last_seen = now
        if n <= 0:
            return
        w.credit = min(w.credit + n, MAX_CREDIT)  # (held credit is capped: docs/protocol.md section 6.3)
        if w.state is WorkerState.ACTIVE:
            self.hungry[worker_id] = w
            self._pump_needed = True

    def pause(self, queue: str, now: float) -> None:
        """Stop dispatching from ``queue``; enqueue is still accepted."""
        q = self._queue(queue)
        if not q.paused:
            q.paused = True
            self._queue_ops.append(QueueRecord(queue, True))

    def resume(self, queue: str, now: float) -> None:
        """Dispatch from ``queue`` again."""
        q = self._queue(queue)
        if q.paused:
            q.paused = False
            self._queue_ops.append(QueueRecord(queue, False))
            self._pump_needed = True

    # ------------------------------------------------------------------ the round
    def _pump(self, now: float) -> None:
        """Hand ready tasks to workers with credit (called from ``take_effects``).

        Each task goes to the least loaded worker that can take it: the fewest held tasks (running and
        prefetched) per unit of concurrency, and among equals the one served longest ago. Handing each
        worker all its credit in turn would give a trickle of tasks to the first worker only.
        """
        self._pump_needed = False
        hungry = self.hungry
        if not hungry:
            return
        if len(hungry) == 1:  # the common case of one worker, and every drain's tail: no heap
            wid, w = next(iter(hungry.items()))
            batch: list[dict[str, Any]] = []
            while w.credit > 0:
                t = self._next_for(w, now)
                if t is None:
                    break
                batch.append(self._lease(t, w, now))
            if w.credit <= 0:
                del hungry[wid]
            if batch:
                self._send(wid, {"op": "tasks", "tasks": batch})
            return
        heap = [(len(w.running) / w.concurrency, w.served, wid) for wid, w in hungry.items()]
        heapq.heapify(heap)
        batches: dict[str, list[dict[str, Any]]] = {}
        while heap:
            wid = heap[0][2]
            w = hungry[wid]
            t = self._next_for(w, now)
            if t is None:  # nothing this worker may take (its queues are empty, or refused by _admits)
                heapq.heappop(heap)
                continue
            self._served += 1
            w.served = self._served
            b = batches.get(wid)
            if b is None:
                b = batches[wid] = []
            entry = self._lease(t, w, now)
            b.append(entry)
            if w.credit <= 0:
                heapq.heappop(heap)
                del hungry[wid]
            elif "batch" in entry:
                pass  # a batch's task: the rest of the batch is at the front of its queue, for this same worker
            else:
                heapq.heapreplace(heap, (len(w.running) / w.concurrency, w.served, wid))
        for wid, b in batches.items():
            self._send(wid, {"op": "tasks", "tasks": b})

    def _next_for(self, w: WorkerInfo, now: float) -> Task | None:
        """Take the task ``w`` should run next out of its queue: the best head across its queues that
        ``_admits`` lets through (rules 2, 3)."""
        queues = self.queues
        if len(w.queues) == 1:
            q = queues[w.queues[0]]
            t = self._head_for(q, w)
            while t is not None and not self._admits(q, t, w, now):
                if t.queued == QUEUED and q.peek() is t:  # refused in place: the queue waits (rule 2)
                    return None
                t = self._head_for(q, w)  # held aside (limits.py): the next head
            if t is None:
                return None
            q.take(t)
            return t
        best: Task | None = None
        bq: ReadyQueue | None = None
        for name in w.queues:
            q = queues[name]
            t = self._head_for(q, w)
            while t is not None and (best is None or t.priority > best.priority
                                     or (t.priority == best.priority and t.id < best.id)):
                if self._admits(q, t, w, now):
                    best, bq = t, q
                    break
                if t.queued == QUEUED and q.peek() is t:  # refused in place (rule 2)
                    break
                t = self._head_for(q, w)  # held aside: the next head
        if bq is not None and best is not None:
            bq.take(best)
        return best

    def _admits(self, q: ReadyQueue, task: Task, w: WorkerInfo, now: float) -> bool:
        """THE eligibility point: may ``task``, the head of ``q``, go to worker ``w`` at ``now``?

        Every rule that can hold a ready task back is one clause here, and nowhere else. Today: a paused
        queue gives nothing; a worker that announced its task types gets only tasks of those types
        (routing.py: a head that no connected worker handles was held before it got here); a task that
        ``requires`` labels goes only to a worker that has them (routing.py rule 4, held likewise); the limits
        (limits.py), read only while one is configured: a queue's own limit refuses in place, a type's or a
        key's limit and an open circuit breaker hold the head aside (it leaves the queue, still ready).

        How a rule plugs in (limits, caps, breakers, dependencies, routing):

        - its state lives in its own module, as a concern class composed into ``Core`` (queue.py);
        - it adds one clause here, cheap when the rule is not configured (a dict lookup or a flag: this runs
          once per task dispatched);
        - what a dispatch uses up (a rate token, a cap slot) is taken in ``_lease``, the one place a task is
          handed over, and given back where the lease ends (``effects._finish`` or the ``Leases`` methods);
        - when something it refused may pass later, it asks for a round: ``self._pump_needed = True``, at
          once (a cap slot freed by a finished task) or from its own timer kind (a rate refill, a breaker's
          cool-down: timers.py);
        - refusing a head passes over the queue for this worker in this round (rule 2). A rule that holds
          back single tasks while others behind them may go keeps them out of the ready queue instead: held
          aside, still ready (routing labels, routing.py rule 4), or in a state of its own (``blocked``, for
          dependencies) added to the transition table.
        """
        return not q.paused and (not w.type_set or task.type in w.type_set) and (
            task.requires is None or fits(task.requires, w.labels)) and (
            not self.batching or task.type not in self.batching or self._batch_admits(q, task, now)) and (
            not self._limited or self._limit_admits(q, task, now))

    def _lease(self, task: Task, w: WorkerInfo, now: float) -> dict[str, Any]:
        """Lease ``task`` (just taken out of its queue) to ``w``: the ``started`` step, a new lease number,
        its backstop; return its entry of the ``tasks`` frame."""
        if self._limited:  # what the dispatch uses up under the limits (limits.py)
            self._limit_take(task, now)
        w.credit -= 1
        task.attempt += 1
        lease = task.lease = task.lease + 1
        if lease > self.max_lease:  # noqa: PLR1730 - the dispatch hot path: a comparison, not a call
            self.max_lease = lease
        task.worker = w.id
        task.started_at = now
        w.running[task.id] = task
        self._move(task, T_DISPATCH, now, worker=w.id)
        batch = self._released.pop(task.id, None) if self._released else None  # (batching.py rule 5)
        if batch is None:
            self._arm_backstop(task, w, lease, now)
            return {
                "id": task.id, "type": task.type, "payload": task.payload, "attempt": task.attempt, "lease": lease,
                "timeout": task.timeout, "queue": task.queue, "priority": task.priority,
                "max_retries": task.max_retries,
            }
        # a batch's tasks run at once, in one call: each one's server-side timeout counts from now
        self.timers.arm((now + task.timeout + self.config.lease_timeout, BACKSTOP, task.id, lease))
        return {
            "id": task.id, "type": task.type, "payload": task.payload, "attempt": task.attempt, "lease": lease,
            "timeout": task.timeout, "queue": task.queue, "priority": task.priority,
            "max_retries": task.max_retries, "batch": batch,
        }
