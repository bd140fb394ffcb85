"""Batched task types: dispatch hands a worker several ready tasks of one type at once.

Theory of operation
-------------------
A worker's definition may declare its type batched (hello ``type_options`` ``batch``: ``max_size``,
``max_wait``; docs/batching.md). The latest worker to join that handles the type decides whether it is
batched and how (``batching``: type -> (max_size, max_wait)), as for the type's other options (routing.py
rule 3); a worker that handles the type without declaring a batch makes it plain again.

The batch is collected here, in the server's dispatch, while its tasks are still ``ready``:

- the batch clause of ``Dispatch._admits`` (``_batch_admits``) takes a head of a batched type that is not
  part of a released batch out of its ready queue and *collects* it, per (queue, type), in a ``Collection``
  (still ``ready``, as a task held aside by a limit: no step, no event, no attempt). The first task collected
  opens the collection and arms its ``BATCH`` timer entry ``max_wait`` later;
- the collection is *released* when it holds ``max_size`` tasks, or when its timer comes up (whatever it
  holds then): its tasks go back to the front of their queue, in their order, under one batch number
  (``_released``), and a dispatch round is asked for;
- the batch clause admits a released task at once; the dispatch round keeps serving the worker that took a
  task of a batch while its credit lasts (``_pump``: the entry has a ``batch``), so the batch goes to
  one worker in one ``tasks`` frame, each entry naming its batch (``batch``). A worker with less credit than
  the batch takes what it can; the rest go to the next worker as a smaller batch of the same number.

Everything else stays per task: each task of a batch is leased, heartbeated, timed out (its backstop is armed
at once: the worker runs a batch as one call), finished, failed and retried on its own; the limits apply to
each (a task a limit holds back leaves its batch); a task lost with its worker comes back to ready alone
and is collected into a later batch.

Rules of this file:

1. Pure: ``now`` is passed in; nothing here reads a clock or does I/O.
2. No cost without a batched type: dispatch reads one dict (``batching``, empty) per task.
3. A collected task stays ``ready``; nothing about a collection is stored: after a restart its tasks are
   ready again and the next dispatch collects them into a new window (``max_wait`` from then).
4. A collection has one timer entry that stands (its number ``no``); an entry of a collection released since
   (by size, or because its type stopped being batched) is skipped by ``_batch_check``.
5. A released task is admitted once as a batch member: its batch number is dropped when it is leased
   (``Dispatch._lease``); a collected task cancelled, or forgotten by a failed commit, is skipped at release.
"""

from __future__ import annotations

import random
from typing import Any

from ...protocol.messages import TypeOptions
from .limits import Limits, Scope, Waiting
from .model import NOT_QUEUED, CoreConfig, ReadyQueue, Task, WorkerInfo
from .states import State
from .timers import BATCH

__all__ = ["Batching", "Collection"]

READY = State.READY


class Collection:
    """The tasks of one (queue, type) collected for its next batch, since ``opened``; its timer entry is due at
    ``until`` and carries ``no``."""

    __slots__ = ("no", "opened", "tasks", "until")

    def __init__(self, no: int, opened: float, until: float) -> None:
        self.no = no
        self.opened = opened
        self.until = until
        self.tasks: list[Task] = []


class Batching(Limits):
    """Batched task types (see the module docstring)."""

    def __init__(self, config: CoreConfig | None = None, rng: random.Random | None = None, next_id: int = 1,
                 next_event_id: int = 1) -> None:
        super().__init__(config, rng, next_id, next_event_id)
        #: batched task types: type -> (max_size, max_wait)
        self.batching: dict[str, tuple[int, float]] = {}
        #: (queue, type) -> the tasks collected for its next batch
        self._collecting: dict[tuple[str, str], Collection] = {}
        self._batches = 0  # batch numbers given so far
        self._collections = 0  # collection numbers given so far

    def worker_joined(
        self, worker_id: str, now: float, queues: tuple[str, ...] = ("default",), concurrency: int = 1,
        name: str | None = None, host: str | None = None, pid: int | None = None, types: tuple[str, ...] = (),
        type_options: dict[str, TypeOptions] | None = None, labels: dict[str, str] | None = None,
    ) -> WorkerInfo:
        """A worker joins (``Limits.worker_joined``); the types it handles become batched as its definitions
        say, or plain when they declare no batch (the latest worker to join decides)."""
        w = super().worker_joined(worker_id, now, queues, concurrency, name, host, pid, types, type_options, labels)
        opts = type_options or {}
        for type_ in dict.fromkeys((*types, *opts)):
            o = opts.get(type_)
            if o is not None and o.batch_size is not None:
                self.batching[type_] = (o.batch_size, o.batch_wait or 0.0)
                for (qname, t), c in list(self._collecting.items()):
                    if t == type_ and len(c.tasks) >= o.batch_size:
                        self._release((qname, t))
            elif type_ in self.batching:
                del self.batching[type_]
                for key in [k for k in self._collecting if k[1] == type_]:
                    self._release(key, batch=False)
        return w

    # ------------------------------------------------------------------ dispatch's side
    def _batch_admits(self, q: ReadyQueue, t: Task, now: float) -> bool:
        """The batch clause of ``Dispatch._admits`` for ``t``, the head of ``q``, of a batched type: a task of a
        released batch goes; any other is collected (taken out of ``q``, still ready) and waits for its batch."""
        if t.id in self._released:
            return True
        size, wait = self.batching[t.type]
        key = (q.name, t.type)
        c = self._collecting.get(key)
        if c is None:
            self._collections += 1
            c = self._collecting[key] = Collection(self._collections, now, now + wait)
            self.timers.arm((c.until, BATCH, q.name, t.type, c.no))
        q.take(t)
        c.tasks.append(t)
        if len(c.tasks) >= size:
            self._release(key)
            return q.peek() is t  # (the first of its own batch: it goes now, as a released task)
        return False

    def _release(self, key: tuple[str, str], batch: bool = True) -> None:
        """Put the tasks collected for ``key`` back at the front of their queue, in their order, as one batch
        (or as plain tasks: ``batch=False``), and ask for a dispatch round."""
        c = self._collecting.pop(key)
        q = self._queue(key[0])
        tasks = self.tasks
        back = [t for t in c.tasks if t.state is READY and t.queued == NOT_QUEUED and tasks.get(t.id) is t
                and t.queue == key[0]]
        if not back:
            return
        if batch:
            self._batches += 1
            no = self._batches
            for t in back:
                self._released[t.id] = no
        for t in reversed(back):
            q.push(t, front=True)
        self._pump_needed = True

    # ------------------------------------------------------------------ the BATCH timer kind
    def _batch_check(self, entry: tuple[Any, ...]) -> float | None:
        """A ``BATCH`` entry stands while its collection is still collecting (rule 4)."""
        when, _, queue, type_, no = entry
        c = self._collecting.get((queue, type_))
        return when if c is not None and c.no == no else None

    def _batch_due(self, entry: tuple[Any, ...], now: float) -> None:
        """A collection waited ``max_wait``: its batch goes with what it holds."""
        self._release((entry[2], entry[3]))

    # ------------------------------------------------------------------ reading
    def _waiting_reason(self, t: Task, now: float) -> Waiting | None:
        """Why ``t`` waits (``Limits._waiting_reason``), and ``batch`` for a task collected for its batch."""
        if t.state is READY and t.queued == NOT_QUEUED:
            c = self._collecting.get((t.queue, t.type))
            if c is not None and t in c.tasks:
                size, _ = self.batching.get(t.type, (0, 0.0))
                return Waiting("batch", Scope("type", t.type), None, c.until,
                               f"collected for a batch of task type {t.type!r}: {len(c.tasks)} of {size} so far, "
                               f"the batch goes at {c.until:.3f} at the latest")
        return super()._waiting_reason(t, now)

    def batch_status(self) -> list[dict[str, Any]]:
        """Per batched type: its ``max_size`` and ``max_wait``, and per queue how many tasks are collected."""
        out = []
        for type_, (size, wait) in sorted(self.batching.items()):
            collecting = {qn: len(c.tasks) for (qn, tn), c in self._collecting.items() if tn == type_}
            out.append({"type": type_, "max_size": size, "max_wait": wait, "collecting": collecting})
        return out
