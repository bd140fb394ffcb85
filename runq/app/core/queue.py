"""The queue as a sans-IO state machine: events in, effects out. ``Core`` is its facade.

Theory of operation
-------------------
``Core`` holds every non-final task, the ready queues, the delayed tasks, the
connected workers and their leases. It never awaits, never reads a clock and
never touches a socket: every input method takes ``now`` (unix seconds from the
server's one injectable clock), and every consequence is appended to the
effect buffers that the I/O layer collects with ``take_effects()``:

- ``rows``/``new_rows``: tasks whose row must be (re)written; the last version in a
  batch wins, so a task enqueued, started and finished inside one group commit is
  written once;
- ``events``: event rows (``EVENT_ROW_COLUMNS``: numbered by ``next_event_id`` in the order they
  happen), the timeline and audit log;
- ``outbox``: messages to send, per worker id;
- ``notices``: (event row, task) pairs for live subscribers, when ``observed``;
- ``logs``: (level, text) lines worth an operator's attention.

``Core`` is composed of one class per concern, each in its own module (the
package docstring lists them); this module holds what clients ask directly
(enqueue, get, cancel, retry, delete_dead, and ``audit``: an operator's action as a server event), the clock's entry (``tick``) and the collection
of effects. The server, the TCP frontend and the HTTP API call only ``Core``'s
public methods.

Rules of this file (and of the core):

1. Every state change goes through ``_move`` (effects.py), which looks the step
   up in ``states.STEPS`` (the one transition table), counts it, and writes its
   event row; recovery's included. One exception, for speed: ``enqueue`` applies
   the table's step for a task ready at once itself (``ENQUEUE_STEP``, read from
   the table once; the counts kept once per queue and request) and does not
   write that ``enqueued`` event: it is told to subscribers, and the store gives
   it back from the task row (``created_at``) when it reads the timeline
   (``Store.events``). A delayed task's ``scheduled`` event is written as usual.
2. A task is leased to at most one worker (``task.worker`` while RUNNING); a
   result is accepted only from that worker for that lease (``task.lease``, a
   number that changes with every dispatch, unlike ``attempt``, which a release
   lowers and a manual retry resets). Anything else is a late result: refused,
   logged, and written as an event when the task is known (leases.py).
3. Dispatch happens only by credit: a worker is sent at most as many tasks as
   it granted, and only what ``_admits`` lets through (dispatch.py).
4. Finished tasks leave ``tasks`` (memory stays bounded by the live work); the
   last ``finished_cache`` of them stay readable in ``finished``.
5. Every deadline is an entry of the one timer heap (timers.py); ``tick(now)``
   fires what is due, in time order.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

from ...protocol.messages import TaskSpec
from ...protocol.retry_policy import policy_text
from ..errors import TaskMissing
from .commits import A, CommitPolicy, Rollback, Settlement, Writes
from .dispatch import Dispatch
from .effects import ENQUEUE_STEP, Effects
from .limits import Waiting
from .model import CoreConfig, Task
from .records import EventRecord
from .recovery import Recovery
from .routing import requires_text
from .schedules import Schedules
from .states import FINAL_STATES, TRANSITIONS, IllegalTransition, State, Transition
from .stats import queue_stats, task_types
from .timers import BACKSTOP, BATCH, COOLDOWN, DELAY, RECLAIM, REFILL, SCHEDULE, SILENCE

__all__ = ["Core", "TaskMissing"]

S, T = State, Transition
T_SCHEDULE = T.SCHEDULE
_new = tuple.__new__


class Core(Dispatch, Recovery, Rollback, Schedules):
    """The queue's state and rules. See the module docstring.

    Args:
        config: tunable rules.
        rng: randomness for backoff jitter (pass a seeded one for determinism).
        next_id: the first task id to assign.
        next_event_id: the first event id to assign (``recover`` raises it past the stored ones).
    """

    def __init__(self, config: CoreConfig | None = None, rng: random.Random | None = None, next_id: int = 1,
                 next_event_id: int = 1) -> None:
        super().__init__(config, rng, next_id, next_event_id)
        # Every timer kind, with the check that skips its stale entries and what it does when due (timers.py).
        # A new kind takes the next number there and is registered here.
        self.timers.register(DELAY, self._delay_check, self._promote)
        self.timers.register(SILENCE, self._silence_check, self._silence_expired)
        self.timers.register(BACKSTOP, self._backstop_check, self._backstop_fired)
        self.timers.register(REFILL, self._refill_check, self._refilled)
        self.timers.register(COOLDOWN, self._cooldown_check, self._cooled)
        self.timers.register(SCHEDULE, self._schedule_check, self._schedule_fired)
        self.timers.register(BATCH, self._batch_check, self._batch_due)
        self.timers.register(RECLAIM, self._reclaim_check, self._reclaim_expired)
        #: what a failed commit means for the answers waiting on it (commits.py)
        self.commits = CommitPolicy(self)

    # ------------------------------------------------------------------ effects
    def take_effects(self, now: float) -> Effects:
        """Dispatch what can be dispatched at ``now``, then return and clear
        everything the inputs since the last call asked for."""
        if self._pump_needed:
            self._pump(now)
        return self._take()

    # ------------------------------------------------------------------ time
    def tick(self, now: float) -> float | None:
        """Apply everything due by ``now``, in time order; return the next time ``tick`` is needed.

        Due work (the timer kinds of ``timers.py``): delayed tasks become ready; workers silent for
        ``lease_timeout`` lose their leases; tasks running past timeout + lease_timeout with no word from
        their worker fail as timed out.
        """
        self.timers.run(now)
        return self.timers.next_deadline()

    def next_deadline(self) -> float | None:
        """The earliest time at which ``tick`` has work, or ``None``."""
        return self.timers.next_deadline()

    # ------------------------------------------------------------------ clients
    def enqueue(self, specs: list[TaskSpec], now: float, owner: str | None = None) -> list[tuple[int, bool]]:
        """Add tasks. Returns ``(id, created)`` per spec; ``created`` is False when a
        non-final task already held the spec's unique key (its id is returned). ``owner``: the identity that
        enqueues them (docs/security.md), never a field of a spec."""
        out: list[tuple[int, bool]] = []
        cfg = self.config
        tasks, new, keys, queues, dirty = self.tasks, self._new, self.keys, self.queues, self._dirty
        notices = self._notices if self.observed else None
        # the table's step for a task ready at once (rule 1: the state and the event from the table, the
        # event told but not stored, the counts kept once per queue below)
        ready_state, kind, name = ENQUEUE_STEP
        ready_queue, ready_n = "", 0  # this request's ready tasks not counted yet: their queue (one, as a rule)
        created = 0
        type_options = self.type_options
        coalescing = self.coalescing
        for spec in specs:
            if spec.key is not None:
                holder = keys.get(spec.key)
                if holder is not None:
                    out.append((holder.id, False))
                    continue
            ck = spec.coalesce_key
            if ck is not None:
                holder = coalescing.get(ck)
                if holder is not None and (holder.state is S.READY or holder.state is S.SCHEDULED):
                    self._coalesce(holder, spec, now)
                    out.append((holder.id, False))
                    continue
            run_at = spec.run_at if spec.run_at is not None else (now + spec.delay if spec.delay else None)
            if run_at is not None and run_at <= now:
                run_at = None  # due already: ready at once
            tid = self.next_id
            self.next_id = tid + 1
            qname, priority, timeout, retries = spec.queue, spec.priority, spec.timeout, spec.retries
            requires = spec.requires
            if type_options and (qname is None or priority is None or timeout is None or retries is None
                                 or requires is None):
                o = type_options.get(spec.type)  # what its workers' definition sets (routing.py)
                if o is not None:
                    qname = qname if qname is not None else o.queue
                    priority = priority if priority is not None else o.priority
                    timeout = timeout if timeout is not None else o.timeout
                    retries = retries if retries is not None else o.retries
                    requires = requires if requires is not None else o.requires
            task = Task(
                tid, qname or "default", spec.type, spec.payload, priority or 0, None, run_at,
                timeout if timeout is not None else cfg.default_timeout,
                retries if retries is not None else cfg.default_retries,
                0, spec.key, None, None, None, now, None, None, None,
                None if requires is None else requires_text(requires),
                None if spec.retry_policy is None else policy_text(spec.retry_policy), ck, spec.limit_key, owner,
            )
            tasks[tid] = task
            new.add(tid)
            if spec.key is not None:
                keys[spec.key] = task
            if ck is not None:
                coalescing[ck] = task
            created += 1
            out.append((tid, True))
            if run_at is not None:
                self._move(task, T_SCHEDULE, now, detail=f"run_at={run_at:.3f}")
                self._schedule(task)
                continue
            task.state = ready_state
            dirty[tid] = task
            if notices is not None:
                notices.append((_new(EventRecord, (tid, now, kind, name, None, 0, None, 0)), task))  # (not stored: rule 1)
            qname = task.queue
            q = queues.get(qname)
            if q is None:
                q = self._queue(qname)
            q.push(task)
            if qname != ready_queue:
                if ready_n:
                    self._count_new(ready_queue, kind, name, ready_n)
                ready_queue, ready_n = qname, 0
            ready_n += 1
        if ready_n:
            self._count_new(ready_queue, kind, name, ready_n)
            self._pump_needed = True
        self.stats.enqueued += created
        return out

    def _coalesce(self, holder: Task, spec: TaskSpec, now: float) -> None:
        """An enqueue with the coalesce key of ``holder``, a task still waiting (ready or scheduled), merges into
        it (docs/tasks.md, "Coalescing"): by the spec's rule, ``replace`` (the default) gives ``holder`` the new
        payload, ``keep`` leaves it as it is. Nothing else of the task changes (its id, its place in line, its
        ``run_at``); the merge is a ``coalesced`` event of its timeline and a count."""
        replace = spec.coalesce != "keep"
        if replace and spec.payload != holder.payload:
            holder.payload = spec.payload
            self._dirty[holder.id] = holder
        eid = self.next_event_id
        self.next_event_id = eid + 1
        row = EventRecord(holder.id, now, "coalesced", holder.state._value_, None, holder.attempt,
                          "replace: its payload replaced by a later enqueue" if replace else
                          "keep: a later enqueue merged into it, its payload dropped", eid)
        self._events.append(row)
        if self.observed:
            self._notices.append((row, holder))
        self.stats.coalesced += 1

    def get(self, task_id: int) -> Task:
        """Return a live or recently finished task.

        Raises:
            TaskMissing: not in memory (ask the store).
        """
        t = self.tasks.get(task_id) or self.finished.get(task_id)
        if t is None:
            raise TaskMissing(f"task {task_id} is not in memory")
        return t

    def cancel(self, task_id: int, now: float, reason: str = "by request") -> Task:
        """Cancel a task that is not final; a running one is cancelled on its worker.

        Raises:
            TaskMissing: no live task has this id.
            IllegalTransition: the task is already final.
        """
        task = self.tasks.get(task_id)
        if task is None:
            fin = self.finished.get(task_id)
            if fin is not None:
                raise IllegalTransition(fin.state, T.CANCEL)
            raise TaskMissing(f"no live task {task_id}")
        worker = task.worker if task.state is S.RUNNING else None
        if task.state is S.READY:
            self._queue(task.queue).discard(task)
            self._released.pop(task.id, None)  # (a task of a batch not leased yet: batching.py rule 5)
        elif task.state is S.RUNNING and worker is not None:
            w = self.workers.get(worker)
            if w is not None:
                w.running.pop(task.id, None)
                self._send(worker, {"op": "cancel", "id": task.id, "lease": task.lease})
                self._ended(w, task.id, now)
        self._move(task, T.CANCEL, now, worker=worker, detail=reason)
        self._finish(task, now)
        return task

    def retry(self, task_id: int, now: float, task: Task | None = None, detail: str = "manual retry") -> Task:
        """Bring a dead, cancelled or waiting-to-retry task back to ready now.

        Args:
            task: the task as read from the store, when it is no longer in memory.
            detail: the ``retried`` event's detail.

        Raises:
            TaskMissing: unknown id and no ``task`` given.
            IllegalTransition: the task is ready, running or succeeded.
        """
        t = self.tasks.get(task_id) or self.finished.get(task_id)
        if t is None and task is not None:
            t = task
            # its lease numbers were forgotten with it: start above any given since, so that a late
            # result of an earlier dispatch can never match the next one
            t.lease = max(t.lease, self.max_lease)
        if t is None:
            raise TaskMissing(f"no task {task_id} in memory")
        if (t.state, T.RETRY) not in TRANSITIONS:
            raise IllegalTransition(t.state, T.RETRY)
        if t.key is not None:
            holder = self.keys.get(t.key)
            if holder is not None and holder is not t:
                raise IllegalTransition(t.state, T.RETRY, f"cannot retry task {t.id}: its unique key {t.key!r} is "
                                        f"held by task {holder.id} ({holder.state.value}); it can be retried once "
                                        "that task is final")
            self.keys[t.key] = t
        was_final = t.state in FINAL_STATES
        if was_final:
            self.finished.pop(t.id, None)
            t.attempt = 0  # a manual retry gives the task a fresh set of retries
            t.finished_at = None
            t.worker = None
            self.tasks[t.id] = t
            self.counts.setdefault(t.queue, Counter())[t.state.value] += 1  # undo _finish's discount
        self._move(t, T.RETRY, now, detail=detail)
        self._make_ready(t)
        return t

    def delete_dead(self, task_id: int, now: float, task: Task | None = None, detail: str = "deleted") -> Task:
        """Delete a dead task from the dead-letter queue: the ``deleted`` step to ``cancelled`` (final, its timeline
        kept: docs/dead-letters.md).

        Args:
            task: the task as read from the store, when it is no longer in memory.
            detail: the ``deleted`` event's detail.

        Raises:
            TaskMissing: unknown id and no ``task`` given.
            IllegalTransition: the task is not dead.
        """
        t = self.tasks.get(task_id) or self.finished.get(task_id) or task
        if t is None:
            raise TaskMissing(f"no task {task_id} in memory")
        if (t.state, T.DELETE) not in TRANSITIONS:
            raise IllegalTransition(t.state, T.DELETE)
        counts = self.counts.setdefault(t.queue, Counter())
        counts[t.state.value] += 1  # (a final task is not counted as live: _move's step leaves the counts so)
        self._move(t, T.DELETE, now, detail=detail)
        counts[t.state.value] -= 1
        fin = self.finished
        fin.pop(t.id, None)
        fin[t.id] = t
        if len(fin) > self.config.finished_cache:
            fin.popitem(last=False)
        return t

    # ------------------------------------------------------------------ commits
    def settle_commit(self, batch: Writes, acks: list[A], waiting: Sequence[A], error: BaseException | None,
                      committed: int, submitted: int, now: float) -> Settlement[A]:
        """The commit of ``batch`` is over: decide what to tell, keep, forget, restore and enqueue again
        (``CommitPolicy.settle``, commits.py); the server carries it out."""
        return self.commits.settle(batch, acks, waiting, error, committed, submitted, now)

    # ------------------------------------------------------------------ reading
    def task_types(self) -> list[dict[str, Any]]:
        """The task types the connected workers handle: per type (by name), how many workers and which
        queues they take tasks from; its batch (``max_size``, ``max_wait``: batching.py) or None, and the
        labels its definition requires or None."""
        out = task_types(self.workers)
        for d in out:
            b = self.batching.get(d["type"])
            d["batch"] = None if b is None else {"max_size": b[0], "max_wait": b[1]}
            o = self.type_options.get(d["type"])
            d["requires"] = None if o is None or not o.requires else dict(o.requires)
        return out

    def why_waiting(self, task_id: int, now: float) -> Waiting | None:
        """Why a task does not run yet: a rate limit, a concurrency cap or an open circuit breaker holding it
        (limits.py), its queue paused, no connected worker for its type, or its ``run_at`` ahead. None when
        nothing holds it back (it waits for its turn and a worker's credit) or it is not waiting.

        Raises:
            TaskMissing: no live task has this id.
        """
        t = self.tasks.get(task_id)
        if t is None:
            if task_id in self.finished:
                return None
            raise TaskMissing(f"no live task {task_id}")
        return self._waiting_reason(t, now)

    def queue_stats(self) -> list[dict[str, Any]]:
        """Per queue: counts of live tasks by state, the paused flag, and how many workers serve it."""
        return queue_stats(self.queues, self.counts, self.workers, self.totals)
