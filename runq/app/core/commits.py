"""A commit that failed: which answers are refused, which tasks forgotten, which writes restored, which
unique-key answers enqueued again. Pure policy: the server carries out what ``CommitPolicy.settle`` returns.

Theory of operation
-------------------
The server hands the core's effects to the store in batches (group commit) and
answers each request once the batch holding its writes has committed. When a
commit fails (a full disk, say), nothing may be dropped and no answer may lie:

- An enqueue whose tasks did not commit is refused ("nothing was enqueued"),
  and its tasks are forgotten (``Rollback.forget``): their rows and events are
  not written again. Unless one of them was already dispatched or otherwise
  moved (the same flush can dispatch a task before its commit): such a task
  lives on, and the answer is kept for the commit that retries its writes.
- Every other write of the batch is put back (``Rollback.restore_effects``), to
  be retried with the next commit: rows from the tasks' current state, events
  in their original order, a final task's row even if it left memory since.
  Limits and breakers the same way (``restore_limits``, limits.py): each one the
  batch wrote is written again as it is now (a removal if it is gone), and the
  batch's events of no task (``server_events``) go back in their order.
- An enqueue answered "that key is task X" by a unique key, before X's own
  creation failed to commit, would name a task that does not exist. Its spec is
  enqueued again (the answer gets the new task, or the key's current holder):
  at once for the answers not yet handed to the store, and for those in batches
  in flight, when their batch commits (``forgotten`` remembers X until the last
  batch that may name it is over).
- A pause or resume (an answer that creates no task) stays in effect in memory
  and its write is put back like the others: its answer is kept for the commit
  that retries it (a ``store_error`` would say the queue is not paused while it
  is, and will be on disk).
- The writes that were put back need a commit even if no new request comes: the
  settlement says ``retry``.

Rules of this file:

1. Pure: the core's state and the answers change, nothing is sent or written;
   ``now`` is passed in. The server only does what the ``Settlement`` says, in
   its order: rewrite the idempotency rows of ``changed``, keep ``keep`` for its
   next batch, tell ``tell`` the commit's outcome, restore the batch's
   idempotency rows, schedule the retry, flush.
2. An answer is never told success while it names a task that was not written,
   and never refused while a task it created lives on.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from ...protocol.messages import TaskSpec
from .effects import CoreBase
from .model import Task
from .records import (
    BreakerRecord,
    EventRecord,
    LimitKey,
    LimitRecord,
    NewTaskRow,
    QueueRecord,
    RequestRecord,
    ScheduleRecord,
    ServerEventRecord,
    TaskRecord,
)
from .states import FINAL_STATES, State

if TYPE_CHECKING:
    from .queue import Core

__all__ = ["Answer", "CommitPolicy", "Rollback", "Settlement", "Writes"]

READY, SCHEDULED = State.READY, State.SCHEDULED
_FINAL_NAMES = frozenset(s._value_ for s in FINAL_STATES)


class Answer(Protocol):
    """A request answered once its batch commits, as the policy sees it (the server's ``Ack``).

    Attributes:
        created: ids of the tasks it created (grows when a unique-key hit is enqueued again).
        res: for an enqueue, its answer ``[(id, created), ...]``, changed in place; else empty.
        specs: for an enqueue, its specs (to enqueue a hit again); else empty.
    """

    created: list[int]
    res: list[tuple[int, bool]]
    specs: list[TaskSpec]


class Writes(Protocol):
    """What a batch wrote, as the policy reads it (the store's ``Batch``)."""

    rows: list[TaskRecord]
    new_rows: list[NewTaskRow]
    events: list[EventRecord]
    queue_ops: list[QueueRecord]
    requests: list[RequestRecord]
    limits: list[tuple[LimitKey, LimitRecord | None]]
    breakers: list[tuple[str, BreakerRecord | None]]
    server_events: list[ServerEventRecord]
    schedule_rows: list[tuple[str, ScheduleRecord | None]]


A = TypeVar("A", bound=Answer)


class Settlement(Generic[A]):
    """What to do once a batch's commit is over (rule 1 of this file).

    Attributes:
        tell: answers to give now, with the commit's outcome (its error, or None).
        keep: answers for a later commit (the one that writes their tasks): hand them over with the next batch.
        changed: answers whose ``res`` changed in place (a unique-key hit enqueued again): their
            idempotency rows must be written again.
        restore_requests: the batch's idempotency rows go back for the next commit (once ``tell`` is done:
            a refused request forgets its token first).
        retry: writes were put back: commit again soon, even if nothing new comes.
        flush: tasks were enqueued again for answers in ``keep``: hand their writes over now.
    """

    __slots__ = ("changed", "flush", "keep", "restore_requests", "retry", "tell")

    def __init__(self, tell: list[A], keep: list[A], changed: list[A], restore_requests: bool, retry: bool,
                 flush: bool) -> None:
        self.tell = tell
        self.keep = keep
        self.changed = changed
        self.restore_requests = restore_requests
        self.retry = retry
        self.flush = flush

    def __repr__(self) -> str:
        return (f"<Settlement tell={len(self.tell)} keep={len(self.keep)} changed={len(self.changed)}"
                f" restore_requests={self.restore_requests} retry={self.retry} flush={self.flush}>")


class Rollback(CoreBase):
    """The core's side of a failed commit: forget tasks that never were, put writes back."""

    def can_forget(self, task_ids: list[int]) -> bool:
        """True when ``forget`` would drop every one of these tasks: none has been dispatched, cancelled
        or otherwise moved since its enqueue."""
        tasks = self.tasks
        for tid in task_ids:
            t = tasks.get(tid)
            if t is None or t.attempt != 0 or t.lease != 0 or t.state not in (READY, SCHEDULED):
                return False
        return True

    def forget(self, task_ids: list[int]) -> set[int]:
        """Drop tasks whose enqueue could not be committed, if none has started yet.

        Returns:
            The ids forgotten (their rows and events must not be written).
        """
        gone: set[int] = set()
        for tid in task_ids:
            t = self.tasks.get(tid)
            if t is None or t.attempt != 0 or t.state not in (READY, SCHEDULED):
                continue
            if t.state is READY:
                self._queue(t.queue).discard(t)
            self.counts[t.queue][t.state.value] -= 1
            del self.tasks[tid]
            if t.key is not None and self.keys.get(t.key) is t:
                del self.keys[t.key]
            if t.coalesce_key is not None and self.coalescing.get(t.coalesce_key) is t:
                del self.coalescing[t.coalesce_key]  # (an enqueue merged into it is enqueued again: _hits)
            self._released.pop(tid, None)
            self._dirty.pop(tid, None)
            self._new.discard(tid)
            self.stats.enqueued -= 1
            gone.add(tid)
        if gone:
            self._events = [e for e in self._events if e.task_id not in gone]
        return gone

    def restore_effects(self, task_ids: list[int], events: list[EventRecord], queue_ops: list[QueueRecord],
                        rows: Iterable[TaskRecord] = ()) -> None:
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
            tid = row.id
            if row.state in _FINAL_NAMES and tid not in dirty and tid not in tasks and tid not in finished:
                dirty[tid] = Task.from_row(row)
        self._events[:0] = events
        self._queue_ops[:0] = queue_ops


class CommitPolicy:
    """Decides what a commit's outcome means for the answers waiting on it (see the module docstring).

    Args:
        core: the core whose effects the batches carried.
    """

    def __init__(self, core: Core) -> None:
        self.core = core
        #: tasks forgotten after a failed commit -> how many batches had been handed over then: answers in
        #: batches up to that one may name them by unique key
        self.forgotten: dict[int, int] = {}

    def settle(self, batch: Writes, acks: list[A], waiting: Sequence[A], error: BaseException | None,
               committed: int, submitted: int, now: float) -> Settlement[A]:
        """Decide what the commit of ``batch`` means, and change the core accordingly (forget, restore,
        enqueue again).

        Args:
            batch: the batch whose commit is over.
            acks: the answers that waited for it.
            waiting: the answers not handed to the store yet (they go with the next batch).
            error: why the commit failed, or None.
            committed: how many batches are over, this one included (they are reported in order).
            submitted: how many batches were handed to the store so far.
            now: the server's clock, for tasks enqueued again.

        Returns:
            What the server does next (rule 1).
        """
        core, gone = self.core, self.forgotten
        tell: list[A] = []
        keep: list[A] = []
        changed: list[A] = []
        if error is not None:
            forgotten: set[int] = set()
            for ack in acks:
                created = ack.created
                if not created and not ack.specs:
                    # a pause or resume: its change stays in memory and its write is put back below, so it is
                    # answered by the commit that retries that write, never refused while the change lives on
                    keep.append(ack)
                    continue
                if created and not core.can_forget(created):
                    # one of its tasks was already dispatched (or cancelled): it lives on, so the request is
                    # answered by the commit that retries its writes, not refused (rule 2)
                    keep.append(ack)
                    continue
                if created:
                    forgotten |= core.forget(created)
                tell.append(ack)
            core.restore_effects([r.id for r in batch.rows if r.id not in forgotten]
                                 + [tid for tid, *_ in batch.new_rows if tid not in forgotten],
                                 [e for e in batch.events if e.task_id not in forgotten], batch.queue_ops, batch.rows)
            if batch.limits or batch.breakers or batch.server_events:
                core.restore_limits(batch.limits, batch.breakers, batch.server_events)
            if batch.schedule_rows:  # (with the tasks of their firings, which no answer waits for: not forgotten)
                core.restore_schedules([name for name, _ in batch.schedule_rows])
            for tid in forgotten:
                gone[tid] = submitted
            if gone:
                # answers naming a forgotten task by its unique key, not handed over yet or kept just now:
                # enqueue them again now (those in batches in flight: when their batch is over)
                for ack in (*waiting, *keep):
                    if _hits(ack, gone):
                        self._enqueue_again(ack, now)
                        changed.append(ack)
        else:
            for ack in acks:
                if gone and _hits(ack, gone):
                    self._enqueue_again(ack, now)
                    changed.append(ack)
                    keep.append(ack)  # answered by the next commit, which writes the new tasks
                else:
                    tell.append(ack)
        if gone:
            for tid in [tid for tid, last in gone.items() if last <= committed]:
                del gone[tid]
        return Settlement(tell, keep, changed, restore_requests=error is not None and bool(batch.requests),
                          retry=error is not None, flush=error is None and bool(keep))

    def _enqueue_again(self, ack: Answer, now: float) -> None:
        """Enqueue again the specs of ``ack`` whose unique key named a task that was then forgotten: its
        answer gets the new task (or the key's current holder), in place."""
        res, gone = ack.res, self.forgotten
        at = [i for i, (tid, created) in enumerate(res) if not created and tid in gone]
        for i, (tid, created) in zip(at, self.core.enqueue([ack.specs[i] for i in at], now), strict=True):
            res[i] = (tid, created)
            if created:
                ack.created.append(tid)


def _hits(ack: Answer, gone: dict[int, int]) -> bool:
    """Whether ``ack`` answered with one of ``gone`` by a unique key."""
    return any(not created and tid in gone for tid, created in ack.res)
