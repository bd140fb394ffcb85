"""The queue as a sans-IO state machine: events in, effects out.

Theory of operation
-------------------
``Core`` holds every non-final task, the ready queues, the delayed tasks, the
connected workers and their leases. It never awaits, never reads a clock and
never touches a socket: every input method takes ``now`` (unix seconds from the
server's one injectable clock), and every consequence is appended to the
effect buffers that the I/O layer collects with ``take_effects()``:

- ``dirty``: tasks whose row must be (re)written; the last version in a batch
  wins, so a task enqueued, started and finished inside one group commit is
  written once;
- ``events``: event rows (``EVENT_ROW_COLUMNS``: numbered by ``next_event_id`` in the order they
  happen), the timeline and audit log;
- ``outbox``: messages to send, per worker id;
- ``notices``: (event row, task) pairs for live subscribers, when ``observed``;
- ``logs``: (level, text) lines worth an operator's attention.

Rules of this file:

1. Every state change goes through ``_move``, which looks the step up in
   ``states.STEPS`` (the one transition table), counts it, and writes its event
   row; recovery's included. Enqueue applies the same table step to a whole batch
   of tasks ready at once (``_enqueued``: one lookup per batch, the enqueue hot
   path) and, for speed, does not write that ``enqueued`` event: it is told to
   subscribers, and the store gives it back from the task row (``created_at``)
   when it reads the timeline (``Store.events``). A delayed task's ``scheduled``
   event is written as usual.
2. A task is leased to at most one worker (``task.worker`` while RUNNING); a
   result is accepted only from that worker for that lease (``task.lease``, a
   number that changes with every dispatch, unlike ``attempt``, which a release
   lowers and a manual retry resets). Anything else is a late result: refused,
   logged, and written as an event when the task is known.
3. Dispatch happens only by credit: a worker is sent at most as many tasks as
   it granted, and only from queues that are not paused.
4. Finished tasks leave ``tasks`` (memory stays bounded by the live work); the
   last ``finished_cache`` of them stay readable in ``finished``.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from collections.abc import Iterable
from typing import Any

from ...protocol.errors import RunqError
from ...protocol.messages import TaskSpec
from .model import NOT_QUEUED, CoreConfig, ReadyQueue, Task, WorkerInfo, WorkerState
from .states import FINAL_STATES, STEPS, TRANSITIONS, IllegalTransition, State, Transition
from .timers import BACKSTOP, DELAY, SILENCE, TimerHeap

__all__ = ["Core", "CoreStats", "Effects", "TaskMissing"]

S, T = State, Transition
# module-level aliases: attribute access on an Enum class goes through a descriptor
SCHEDULED, READY, RUNNING, SUCCEEDED, DEAD = S.SCHEDULED, S.READY, S.RUNNING, S.SUCCEEDED, S.DEAD
T_ENQUEUE, T_SCHEDULE, T_DISPATCH, T_SUCCEED = T.ENQUEUE, T.SCHEDULE, T.DISPATCH, T.SUCCEED
EventRow = tuple[int, float, str, str, "str | None", int, "str | None", int]
_FINAL_NAMES = frozenset(s._value_ for s in FINAL_STATES)


class TaskMissing(RunqError):
    """No live or recently finished task has this id (the store may still have it)."""

    code = "not_found"


class Effects:
    """What one batch of inputs asks the I/O layer to do."""

    __slots__ = ("events", "logs", "new_rows", "notices", "outbox", "queue_ops", "rows")

    def __init__(
        self,
        rows: list[tuple[Any, ...]],
        events: list[EventRow],
        outbox: dict[str, list[dict[str, Any]]],
        notices: list[tuple[EventRow, Task]],
        logs: list[tuple[str, str]],
        queue_ops: list[tuple[str, bool]],
        new_rows: list[tuple[Any, ...]] | None = None,
    ) -> None:
        self.new_rows = new_rows or []
        self.rows = rows
        self.events = events
        self.outbox = outbox
        self.notices = notices
        self.logs = logs
        self.queue_ops = queue_ops

    def __bool__(self) -> bool:
        return bool(self.rows or self.new_rows or self.events or self.outbox or self.queue_ops or self.logs)


class CoreStats:
    """Counters since start (frozen snapshot via ``Core.statistics``)."""

    __slots__ = ("cancelled", "dead", "enqueued", "failed", "late_results", "lease_expiries", "succeeded")

    def __init__(self) -> None:
        self.enqueued = self.succeeded = self.failed = self.dead = 0
        self.cancelled = self.lease_expiries = self.late_results = 0


class Core:
    """The queue's state and rules. See the module docstring.

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
        self.tasks: dict[int, Task] = {}
        self.finished: dict[int, Task] = {}
        self.queues: dict[str, ReadyQueue] = {}
        #: every deadline: delayed tasks, worker silences, server-side timeouts (timers.py)
        self.timers = TimerHeap()
        self.timers.register(DELAY, self._delay_check, self._promote)
        self.timers.register(SILENCE, self._silence_check, self._silence_expired)
        self.timers.register(BACKSTOP, self._backstop_check, self._backstop_fired)
        self._joins = 0  # workers joined so far: a worker's join number tells its silence entry from older ones
        self.workers: dict[str, WorkerInfo] = {}
        #: the highest lease number given so far (a task read back from the store starts above it)
        self.max_lease = 0
        self.hungry: dict[str, WorkerInfo] = {}  # workers with credit > 0, not draining
        self._served = 0  # dispatches so far: WorkerInfo.served orders equally loaded workers
        self.keys: dict[str, Task] = {}
        self.counts: dict[str, Counter[str]] = {}
        self.stats = CoreStats()
        #: per queue, how many times each transition happened since start (rates and metrics read it)
        self.totals: dict[str, Counter[str]] = {}
        #: when a list, every finished attempt appends (queue, type, seconds it ran, succeeded); the reader drains it
        self.run_times: list[tuple[str, str, float, bool]] | None = None
        self.observed = False
        self._dirty: dict[int, Task] = {}
        self._new: set[int] = set()
        self._events: list[EventRow] = []
        self._outbox: dict[str, list[dict[str, Any]]] = {}
        self._notices: list[tuple[EventRow, Task]] = []
        self._logs: list[tuple[str, str]] = []
        self._queue_ops: list[tuple[str, bool]] = []
        self._pump_needed = False

    # ------------------------------------------------------------------ effects
    def take_effects(self, now: float) -> Effects:
        """Dispatch what can be dispatched at ``now``, then return and clear
        everything the inputs since the last call asked for."""
        if self._pump_needed:
            self._pump(now)
        rows = []
        new_rows = []
        new = self._new
        for t in self._dirty.values():
            if t.id in new and t.attempt == 0 and (t.state is READY or t.state is SCHEDULED) and t.progress is None:
                new_rows.append(t.new_row())  # first write of a task still as enqueued: a short insert
            else:
                rows.append(t.row())
        fx = Effects(rows, self._events, self._outbox, self._notices, self._logs, self._queue_ops, new_rows)
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
        row = (task.id, now, kind, name, worker, task.attempt, detail, eid)
        self._events.append(row)
        self._dirty[task.id] = task
        if self.observed:
            self._notices.append((row, task))

    def _enqueued(self, tasks: list[Task], now: float) -> None:
        """Apply ``enqueue`` (new -> ready) to tasks just made, in order, and queue them: ``_move`` for a batch,
        the step looked up once, its event told to subscribers but not stored (rule 1)."""
        state, kind, name = STEPS[(None, T_ENQUEUE)]
        dirty, observed, notices = self._dirty, self.observed, self._notices
        queue = tasks[0].queue
        same = all(t.queue == queue for t in tasks)  # one queue per batch is the rule: one count update
        q = self._queue(queue)
        for task in tasks:
            task.state = state
            dirty[task.id] = task
            if observed:
                notices.append(((task.id, now, kind, name, None, 0, None, 0), task))  # (not stored: rule 1)
            if same:
                q.push(task)
            else:
                self._queue(task.queue).push(task)
        per_queue = {queue: len(tasks)} if same else Counter(t.queue for t in tasks)
        for qname, n in per_queue.items():
            counts = self.counts.get(qname)
            if counts is None:
                counts = self.counts[qname] = Counter()
            counts[name] += n
            totals = self.totals.get(qname)
            if totals is None:
                totals = self.totals[qname] = Counter()
            totals[kind] += n
        self._pump_needed = True

    def _finish(self, task: Task, now: float) -> None:
        """Bookkeeping for a task that reached a final state."""
        task.finished_at = now
        task.run_at = None
        counts = self.counts[task.queue]
        counts[task.state._value_] -= 1  # final tasks are not counted as live
        self.tasks.pop(task.id, None)
        if task.key is not None and self.keys.get(task.key) is task:
            del self.keys[task.key]
        fin = self.finished
        fin[task.id] = task
        if len(fin) > self.config.finished_cache:
            del fin[next(iter(fin))]
        st = self.stats
        if task.state is SUCCEEDED:
            st.succeeded += 1
        elif task.state is DEAD:
            st.dead += 1
        else:
            st.cancelled += 1

    def _queue(self, name: str) -> ReadyQueue:
        q = self.queues.get(name)
        if q is None:
            q = self.queues[name] = ReadyQueue(name)
        return q

    def _make_ready(self, task: Task, front: bool = False) -> None:
        task.run_at = None
        self._queue(task.queue).push(task, front)
        self._pump_needed = True

    # ------------------------------------------------------------------ clients
    def enqueue(self, specs: list[TaskSpec], now: float) -> list[tuple[int, bool]]:
        """Add tasks. Returns ``(id, created)`` per spec; ``created`` is False when a
        non-final task already held the spec's unique key (its id is returned)."""
        out: list[tuple[int, bool]] = []
        cfg = self.config
        tasks, new, keys = self.tasks, self._new, self.keys
        ready: list[Task] = []  # made ready at once: they take the ``enqueued`` step together
        created = 0
        for spec in specs:
            if spec.key is not None:
                holder = keys.get(spec.key)
                if holder is not None:
                    out.append((holder.id, False))
                    continue
            run_at = spec.run_at if spec.run_at is not None else (now + spec.delay if spec.delay else None)
            if run_at is not None and run_at <= now:
                run_at = None  # due already: ready at once
            tid = self.next_id
            self.next_id = tid + 1
            task = Task(
                tid, spec.queue, spec.type, spec.payload, spec.priority, None, run_at,
                spec.timeout if spec.timeout is not None else cfg.default_timeout,
                spec.retries if spec.retries is not None else cfg.default_retries,
                0, spec.key, None, None, None, now,
            )
            tasks[tid] = task
            new.add(tid)
            if spec.key is not None:
                keys[spec.key] = task
            if run_at is not None:
                if ready:  # (the tasks before it first: subscribers hear of them in order)
                    self._enqueued(ready, now)
                    ready = []
                self._move(task, T_SCHEDULE, now, detail=f"run_at={run_at:.3f}")
                self.timers.arm((float(run_at), DELAY, tid))
            else:
                ready.append(task)
            created += 1
            out.append((tid, True))
        if ready:
            self._enqueued(ready, now)
        self.stats.enqueued += created
        return out

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
        elif task.state is S.RUNNING and worker is not None:
            w = self.workers.get(worker)
            if w is not None:
                w.running.pop(task.id, None)
                self._send(worker, {"op": "cancel", "id": task.id, "lease": task.lease})
                self._ended(w, task.id, now)
        self._move(task, T.CANCEL, now, worker=worker, detail=reason)
        self._finish(task, now)
        return task

    def retry(self, task_id: int, now: float, task: Task | None = None) -> Task:
        """Bring a dead, cancelled or waiting-to-retry task back to ready now.

        Args:
            task: the task as read from the store, when it is no longer in memory.

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
                raise IllegalTransition(t.state, T.RETRY)
            self.keys[t.key] = t
        was_final = t.state in FINAL_STATES
        if was_final:
            self.finished.pop(t.id, None)
            t.attempt = 0  # a manual retry gives the task a fresh set of retries
            t.finished_at = None
            t.worker = None
            self.tasks[t.id] = t
            self.counts.setdefault(t.queue, Counter())[t.state.value] += 1  # undo _finish's discount
        self._move(t, T.RETRY, now, detail="manual retry")
        self._make_ready(t)
        return t

    def pause(self, queue: str, now: float) -> None:
        """Stop dispatching from ``queue``; enqueue is still accepted."""
        q = self._queue(queue)
        if not q.paused:
            q.paused = True
            self._queue_ops.append((queue, True))

    def resume(self, queue: str, now: float) -> None:
        """Dispatch from ``queue`` again."""
        q = self._queue(queue)
        if q.paused:
            q.paused = False
            self._queue_ops.append((queue, False))
            self._pump_needed = True

    # ------------------------------------------------------------------ workers
    def worker_joined(
        self, worker_id: str, now: float, queues: tuple[str, ...] = ("default",), concurrency: int = 1,
        name: str | None = None, host: str | None = None, pid: int | None = None, types: tuple[str, ...] = (),
    ) -> WorkerInfo:
        """Register a worker (it gets tasks once it grants credit); ``types`` are the task types it handles."""
        w = WorkerInfo(
            id=worker_id, queues=tuple(queues), concurrency=concurrency, name=name, host=host, pid=pid,
            connected_at=now, last_seen=now, types=tuple(types),
        )
        self.workers[worker_id] = w
        self._joins += 1
        w.joined = self._joins
        self.timers.arm((now + self.config.lease_timeout, SILENCE, worker_id, w.joined))
        for q in queues:
            self._queue(q)
        return w

    def worker_left(self, worker_id: str, now: float, reason: str = "disconnected") -> None:
        """A worker went away: its leased tasks go back to ready, the attempt counted."""
        w = self.workers.pop(worker_id, None)
        self.hungry.pop(worker_id, None)
        if w is None:
            return
        for task in reversed(list(w.running.values())):  # each goes to the front: keep their order
            self._lose(task, now, worker_id, reason)
        w.running.clear()
        w.unarmed.clear()

    def _lose(self, task: Task, now: float, worker_id: str, reason: str) -> None:
        if task.attempt > task.max_retries:
            self._move(task, T.LOSE_LAST, now, worker=worker_id, detail=f"{reason}; attempts spent")
            task.error = f"lost: {reason} (attempt {task.attempt} of {task.max_retries + 1})"
            self._finish(task, now)
        else:
            task.worker = None
            self._move(task, T.LOSE, now, worker=worker_id, detail=reason)
            self._make_ready(task, front=True)

    def credit(self, worker_id: str, n: int, now: float) -> None:
        """The worker can take ``n`` more tasks."""
        w = self.workers[worker_id]
        w.last_seen = now
        if n <= 0:
            return
        w.credit += n
        if w.state is WorkerState.ACTIVE:
            self.hungry[worker_id] = w
            self._pump_needed = True

    def heartbeat(self, worker_id: str, now: float) -> None:
        """Any sign of life from a worker renews the leases of all its tasks."""
        w = self.workers.get(worker_id)
        if w is not None:
            w.last_seen = now

    def drain_worker(self, worker_id: str, now: float) -> None:
        """Stop giving tasks to a worker and ask it to finish and leave."""
        w = self.workers[worker_id]
        w.state = WorkerState.DRAINING
        self.hungry.pop(worker_id, None)
        self._send(worker_id, {"op": "drain"})

    def _leased(self, worker_id: str, task_id: Any, lease: Any, now: float, what: str) -> Task | None:
        """Return the task if ``worker_id`` holds its lease number ``lease``; else refuse it."""
        task = self.tasks.get(task_id) if isinstance(task_id, int) else None
        if (
            task is not None and task.state is RUNNING and task.worker == worker_id
            and task.lease == lease and type(lease) is int and worker_id in self.workers
        ):
            return task
        self.stats.late_results += 1
        if task is None and isinstance(task_id, int):
            task = self.finished.get(task_id)
        state = task.state._value_ if task is not None else "not in memory"
        self._log("warning", f"refused {what} for task {task_id} lease {lease} from worker {worker_id}: "
                             f"it does not hold that lease (task is {state})")
        if task is not None:  # (an unknown id gets no event: there is no timeline to add it to)
            eid = self.next_event_id
            self.next_event_id = eid + 1
            self._events.append((task.id, now, "late_result", state, worker_id,
                                 lease if type(lease) is int else -1, f"{what} refused: lease not held", eid))
        return None

    def done(self, worker_id: str, results: list[Any], now: float) -> None:
        """Results of succeeded tasks: ``[[id, lease, result_bin], ...]``."""
        w = self.workers.get(worker_id)
        if w is not None:
            w.last_seen = now
        for item in results:
            task_id, lease, result = item[0], item[1], item[2]
            task = self._leased(worker_id, task_id, lease, now, "done")
            if task is None:
                continue
            assert w is not None
            del w.running[task.id]
            if w.unarmed:
                self._ended(w, task.id, now)
            w.completed += 1
            task.result = result
            task.error = None
            self._move(task, T_SUCCEED, now, worker=worker_id)
            if self.run_times is not None:
                self.run_times.append((task.queue, task.type, now - (task.started_at or now), True))
            self._finish(task, now)

    def fail(self, worker_id: str, task_id: Any, lease: Any, error: str, now: float,
             retry_in: float | None = None, timed_out: bool = False, max_retries: int | None = None) -> None:
        """The attempt of lease ``lease`` failed; retry after backoff (or ``retry_in``) or go dead.

        Args:
            max_retries: the handler's own retry limit, replacing the task's.
        """
        w = self.workers.get(worker_id)
        if w is not None:
            w.last_seen = now
        task = self._leased(worker_id, task_id, lease, now, "fail")
        if task is None:
            return
        assert w is not None
        del w.running[task.id]
        self._ended(w, task.id, now)
        w.failed += 1
        if max_retries is not None:
            task.max_retries = max_retries
        self._fail(task, error, now, worker_id, retry_in, "timeout" if timed_out else None)

    def _fail(self, task: Task, error: str, now: float, worker_id: str | None,
              retry_in: float | None, detail: str | None) -> None:
        task.error = error
        self.stats.failed += 1
        if self.run_times is not None:
            self.run_times.append((task.queue, task.type, now - (task.started_at or now), False))
        self._move(task, T.FAIL, now, worker=worker_id, detail=detail or _first_line(error))
        if task.attempt > task.max_retries:
            self._move(task, T.EXHAUST, now, detail=f"{task.attempt} attempts, retries spent")
            self._finish(task, now)
            return
        delay = retry_in if retry_in is not None else self.backoff(task.attempt)
        task.run_at = now + delay
        task.worker = None
        self._move(task, T.BACKOFF, now, detail=f"in {delay:.3f}s")
        self.timers.arm((task.run_at, DELAY, task.id))

    def backoff(self, attempt: int) -> float:
        """Seconds before retry number ``attempt``: exponential with jitter, never above ``backoff_max``."""
        cfg = self.config
        # 2.0 ** 1023 is the largest power a float holds: past it the cap applies anyway
        base = min(cfg.backoff_base * 2.0 ** min(max(attempt - 1, 0), 1023), cfg.backoff_max)
        factor: float = 1 + cfg.jitter * (2 * self.rng.random() - 1)
        return min(base * factor, cfg.backoff_max)

    def progress(self, worker_id: str, task_id: Any, lease: Any, value: bytes, now: float) -> None:
        """Store the latest progress value of a running task and tell subscribers."""
        w = self.workers.get(worker_id)
        if w is not None:
            w.last_seen = now
        task = self._leased(worker_id, task_id, lease, now, "progress")
        if task is None:
            return
        task.progress = value
        self._dirty[task.id] = task
        if self.observed:
            self._notices.append(((task.id, now, "progress", task.state.value, worker_id, task.attempt, None, 0),
                                  task))  # (live only: not stored)

    def release(self, worker_id: str, task_ids: list[Any], now: float) -> None:
        """Graceful hand-back: the tasks go back to ready without counting the attempt.

        Only a stopping worker hands tasks back, so the worker becomes ``draining``
        (even with an empty list): it gets no new task, whatever credit it granted.
        """
        w = self.workers.get(worker_id)
        if w is not None:
            w.last_seen = now
            w.state = WorkerState.DRAINING
            self.hungry.pop(worker_id, None)
        for tid in reversed(task_ids):  # each goes to the front: keep their order
            task = self.tasks.get(tid) if isinstance(tid, int) else None
            if task is None or task.state is not S.RUNNING or task.worker != worker_id:
                self._log("warning", f"worker {worker_id} released task {tid} it does not hold")
                continue
            assert w is not None
            del w.running[task.id]
            self._ended(w, task.id, now)
            task.attempt -= 1
            task.worker = None
            self._move(task, T.RELEASE, now, worker=worker_id, detail="worker shutting down")
            self._make_ready(task, front=True)

    # ------------------------------------------------------------------ dispatch
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
                t = self._next_for(w)
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
            t = self._next_for(w)
            if t is None:  # nothing this worker may take (its queues are empty or paused)
                heapq.heappop(heap)
                continue
            self._served += 1
            w.served = self._served
            b = batches.get(wid)
            if b is None:
                b = batches[wid] = []
            b.append(self._lease(t, w, now))
            if w.credit <= 0:
                heapq.heappop(heap)
                del hungry[wid]
            else:
                heapq.heapreplace(heap, (len(w.running) / w.concurrency, w.served, wid))
        for wid, b in batches.items():
            self._send(wid, {"op": "tasks", "tasks": b})

    def _next_for(self, w: WorkerInfo) -> Task | None:
        """Pop the task ``w`` should run next: the best across its queues that are not paused."""
        queues = self.queues
        if len(w.queues) == 1:
            q = queues[w.queues[0]]
            return None if q.paused else q.pop()
        best: Task | None = None
        bq: ReadyQueue | None = None
        for name in w.queues:
            q = queues[name]
            if q.paused:
                continue
            t = q.peek()
            if t is not None and (best is None or t.priority > best.priority
                                  or (t.priority == best.priority and t.id < best.id)):
                best, bq = t, q
        if bq is not None:
            bq.pop()
        return best

    def _lease(self, task: Task, w: WorkerInfo, now: float) -> dict[str, Any]:
        w.credit -= 1
        task.attempt += 1
        lease = task.lease = task.lease + 1
        if lease > self.max_lease:  # noqa: PLR1730 - the dispatch hot path: a comparison, not a call
            self.max_lease = lease
        task.worker = w.id
        task.started_at = now
        running = w.running
        running[task.id] = task
        self._move(task, T_DISPATCH, now, worker=w.id)
        if len(running) <= w.concurrency:
            heapq.heappush(self.timers.heap, (now + task.timeout + self.config.lease_timeout, BACKSTOP, task.id, lease))
        else:  # prefetched: the worker starts it once a runner is free (see _ended)
            w.unarmed[task.id] = (task, lease)
        return {
            "id": task.id, "type": task.type, "payload": task.payload, "attempt": task.attempt, "lease": lease,
            "timeout": task.timeout, "queue": task.queue, "priority": task.priority,
            "max_retries": task.max_retries,
        }

    def _ended(self, w: WorkerInfo, task_id: int, now: float) -> None:
        """Task ``task_id`` left ``w.running``: arm the backstop of the prefetched tasks the worker can
        now have started (the server-side timeout of a task counts from when a runner was free for it)."""
        unarmed = w.unarmed
        if not unarmed:
            return
        unarmed.pop(task_id, None)
        grace = self.config.lease_timeout
        while unarmed and len(w.running) - len(unarmed) < w.concurrency:
            tid = next(iter(unarmed))
            task, lease = unarmed.pop(tid)
            self.timers.arm((now + task.timeout + grace, BACKSTOP, tid, lease))

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

    def _delay_check(self, entry: tuple[Any, ...]) -> float | None:
        when, _, tid = entry
        t = self.tasks.get(tid)
        # stale once the task left SCHEDULED (retried by hand, cancelled, promoted) or was scheduled again
        # for another time (that time has its own entry): a task due at 502 is not promoted at 100
        return when if t is not None and t.state is SCHEDULED and t.run_at == when else None

    def _promote(self, entry: tuple[Any, ...], now: float) -> None:
        t = self.tasks[entry[2]]
        self._move(t, T.PROMOTE, now)
        self._make_ready(t)

    def _silence_check(self, entry: tuple[Any, ...]) -> float | None:
        _, _, wid, joined = entry
        w = self.workers.get(wid)
        if w is None or w.joined != joined:  # gone (and maybe back under the same id: that join has its own)
            return None
        return w.last_seen + self.config.lease_timeout  # later than the entry when it was heard from since

    def _silence_expired(self, entry: tuple[Any, ...], now: float) -> None:
        w = self.workers[entry[2]]
        self.stats.lease_expiries += 1
        self._log("warning", f"worker {w.id} missed heartbeats for {now - w.last_seen:.1f}s: "
                             f"lease expired, {len(w.running)} task(s) back to ready")
        self.worker_left(w.id, now, reason=f"lease expired after {now - w.last_seen:.1f}s of silence")
        self._send(w.id, {"op": "error", "code": "lease_expired", "message": "lease expired"})

    def _backstop_check(self, entry: tuple[Any, ...]) -> float | None:
        when, _, tid, lease = entry
        t = self.tasks.get(tid)
        # stale once that lease is over (a result, a loss, a release, a cancel): a later lease of the same
        # task has its own deadline
        return when if t is not None and t.state is RUNNING and t.lease == lease else None

    def _backstop_fired(self, entry: tuple[Any, ...], now: float) -> None:
        _, _, tid, lease = entry
        t = self.tasks[tid]
        wid = t.worker
        holder = self.workers.get(wid) if wid else None
        if holder is not None:
            holder.running.pop(tid, None)
            self._send(holder.id, {"op": "cancel", "id": tid, "lease": lease})
            self._ended(holder, tid, now)
        self._fail(t, f"timeout: no result within {t.timeout}s (+{self.config.lease_timeout}s grace)", now, wid,
                   None, "timeout (server)")

    # ------------------------------------------------------------------ restart
    def recover(self, rows: Iterable[tuple[Any, ...]], paused: list[str], next_id: int, now: float,
                next_event_id: int = 1) -> int:
        """Rebuild state from the store's non-final task rows (in id order).

        ``next_id`` and ``next_event_id`` are the store's next free task and event ids.

        Tasks that were running in the previous life go back to ready with a
        ``recovered`` event. Returns how many were running. Equal strings, created_at times and
        small payloads are shared between tasks, so a million queued tasks of a
        few types take a few hundred bytes each.
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
        for row in rows:
            t = new(Task)
            (t.id, queue, type_, payload, t.priority, state_name, t.run_at, timeout, t.max_retries,
             t.attempt, t.key, t.result, t.error, t.progress, created_at, t.started_at, t.finished_at,
             t.worker) = row
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
            counts = self.counts.get(t.queue)
            if counts is None:
                counts = self.counts[t.queue] = Counter()
            if state is RUNNING:
                t.state = RUNNING
                t.worker = None
                counts["running"] += 1
                self._move(t, T.RECOVER, now, detail="server restarted while it ran")
                recovered += 1
                self._queue(t.queue).push(t)
                continue
            if state is S.FAILED:  # a crash between fail and backoff: the backoff step now, due at once
                t.state = state
                counts[state._value_] += 1
                t.run_at = now
                self._move(t, T.BACKOFF, now, detail="server restarted before its retry was scheduled")
                delayed.append((now, DELAY, t.id))
                continue
            t.state = state
            counts[state.value] += 1
            if state is SCHEDULED:
                delayed.append((t.run_at or now, DELAY, t.id))
            else:
                self._queue(t.queue).push(t)
        self.timers.arm_many(delayed)
        for name in paused:
            self._queue(name).paused = True
        self._pump_needed = True
        return recovered

    # ------------------------------------------------------------------ store failures
    def can_forget(self, task_ids: list[int]) -> bool:
        """True when ``forget`` would drop every one of these tasks: none has been dispatched, cancelled
        or otherwise moved since its enqueue."""
        tasks = self.tasks
        for tid in task_ids:
            t = tasks.get(tid)
            if t is None or t.attempt != 0 or t.lease != 0 or t.state not in (S.READY, S.SCHEDULED):
                return False
        return True

    def forget(self, task_ids: list[int]) -> set[int]:
        """Drop tasks whose enqueue could not be committed, if none has started yet.

        Returns the ids forgotten (their rows and events must not be written).
        """
        gone: set[int] = set()
        for tid in task_ids:
            t = self.tasks.get(tid)
            if t is None or t.attempt != 0 or t.state not in (S.READY, S.SCHEDULED):
                continue
            if t.state is S.READY:
                self._queue(t.queue).discard(t)
            self.counts[t.queue][t.state.value] -= 1
            del self.tasks[tid]
            if t.key is not None and self.keys.get(t.key) is t:
                del self.keys[t.key]
            self._dirty.pop(tid, None)
            self._new.discard(tid)
            self.stats.enqueued -= 1
            gone.add(tid)
        if gone:
            self._events = [e for e in self._events if e[0] not in gone]
        return gone

    def restore_effects(self, task_ids: list[int], events: list[EventRow], queue_ops: list[tuple[str, bool]],
                        rows: Iterable[tuple[Any, ...]] = ()) -> None:
        """Put back the writes of a batch that failed to commit, so the next one retries them.

        Rows are rewritten from the tasks' current state (never an older snapshot). A task no longer in
        memory is final and left the finished-task cache meanwhile: its row in ``rows`` (the batch's whole
        rows) is written again as it was when that row is final (a final task does not change; when
        the row is older, the task's final row is in a later batch, which restores or wrote it).
        """
        dirty, tasks, finished = self._dirty, self.tasks, self.finished
        for tid in task_ids:
            t = tasks.get(tid) or finished.get(tid)
            if t is not None:
                dirty[tid] = t
        for row in rows:
            tid = row[0]
            if row[5] in _FINAL_NAMES and tid not in dirty and tid not in tasks and tid not in finished:
                dirty[tid] = Task.from_row(row)
        self._events[:0] = events
        self._queue_ops[:0] = queue_ops

    # ------------------------------------------------------------------ reading
    def task_types(self) -> list[dict[str, Any]]:
        """The task types the connected workers handle: per type (by name), how many workers and which
        queues they take tasks from."""
        by_type: dict[str, tuple[int, dict[str, None]]] = {}
        for w in self.workers.values():
            for t in w.types:
                n, queues = by_type.get(t, (0, {}))
                queues.update(dict.fromkeys(w.queues))
                by_type[t] = (n + 1, queues)
        return [{"type": t, "workers": n, "queues": sorted(queues)} for t, (n, queues) in sorted(by_type.items())]

    def queue_stats(self) -> list[dict[str, Any]]:
        """Per queue: counts of live tasks by state and the paused flag."""
        out = []
        for name in sorted(set(self.queues) | set(self.counts)):
            c = self.counts.get(name, Counter())
            q = self.queues.get(name)
            out.append({
                "queue": name, "paused": bool(q and q.paused),
                "scheduled": c["scheduled"], "ready": c["ready"], "running": c["running"],
                "workers": sum(1 for w in self.workers.values() if name in w.queues),
            })
        return out


def _first_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else text)[:200]
