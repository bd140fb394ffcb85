"""A commit that failed: the core's side of it (the tasks that never were, the writes to put back).

Theory of operation
-------------------
The server hands the core's effects to the store in batches (group commit) and
answers each request once the batch holding its writes has committed. When a
commit fails, nothing may be dropped and no answer may lie: an enqueue whose
tasks did not commit is refused and its tasks are forgotten (``forget``), unless
one of them was already dispatched (``can_forget``); every other write is put
back (``restore_effects``) to be retried with the next commit.

Rules of this file:

1. Pure: the core's state changes, nothing is sent or written.
2. Rows are restored from the tasks' current state, never an older snapshot.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .effects import CoreBase, EventRow
from .model import Task
from .states import FINAL_STATES, State

__all__ = ["Rollback"]

READY, SCHEDULED = State.READY, State.SCHEDULED
_FINAL_NAMES = frozenset(s._value_ for s in FINAL_STATES)


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
