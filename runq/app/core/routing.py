"""Routing by task type: a task goes only to a worker that handles its type.

Theory of operation
-------------------
A worker may announce the task types it handles (hello ``types``). One that announced none takes any type
(a worker written in another language, an older SDK). The core counts, per queue, the connected workers
that take any type (``_serving_any``) and, per (queue, type), those that announced that type
(``_serving``): a (queue, type) is *handled* when either count is above zero.

Dispatch gives a worker only a task of a type it handles (the type clause of ``Dispatch._admits``). A
ready task whose type no connected worker of its queue handles must not block the tasks behind it, nor be
handed to a worker that would fail it with "no handler" (and so spend its retries on a typo): when such a
task reaches the head of its queue for a worker that cannot take it, it is *held* (``ReadyQueue.hold``):
taken out of the ready order, still in state ``ready``, kept aside per (queue, type). A worker that joins
and handles a held (queue, type) brings those tasks back to the front of their queue, in their order.

Rules of this file:

1. Holding is lazy: it happens in dispatch, to a head that a worker could not take, and only when no
   connected worker handles it. Nothing is held while no worker is connected (nothing is dispatched), and
   a task whose type another connected worker handles waits for that worker in its queue.
2. A held task stays ``ready``: counts, listings and the timeline do not change; a cancel, or a failed
   commit that forgets it, is skipped when it would be brought back.
3. A worker may also say what its definition of a type sets (hello ``type_options``: queue, priority,
   timeout, retries). A task enqueued by that type's name without those fields gets them (``Core.enqueue``):
   another language, ``runq enqueue`` or the HTTP API enqueue ``send_email`` onto the queue its definition
   names, not onto ``default`` where no worker of it listens. The latest worker to join with a type's
   options sets them; they are kept after it leaves (until the server stops).
4. Labels (docs/routing.md): a worker may offer labels (hello ``labels``, ``region=eu``), a task may require
   some (``requires``, stored as compact sorted JSON). Such a task goes only to a worker whose labels include
   every required pair (the label clause of ``Dispatch._admits``). A head that no connected worker of its
   queue fits is held as in rule 1, under the key ``LABELS_KEY + requires``; a worker that joins and fits
   brings those tasks back. A head that another connected worker fits waits for it in its queue (rule 1).
"""

from __future__ import annotations

import json
from functools import lru_cache

from ...protocol.messages import TypeOptions
from .leases import Leases
from .model import NOT_QUEUED, ReadyQueue, Task, WorkerInfo
from .states import State

__all__ = ["LABELS_KEY", "Routing", "fits", "requires_text"]

READY = State.READY
#: the prefix of a held key for tasks held for want of labels (a task type cannot start with it)
LABELS_KEY = "\x00requires:"


def requires_text(requires: dict[str, str]) -> str:
    """A task's ``requires`` as stored: compact JSON, sorted by name."""
    return json.dumps(requires, sort_keys=True, separators=(",", ":"))


@lru_cache(maxsize=1024)
def _pairs(requires: str) -> tuple[tuple[str, str], ...]:
    return tuple(json.loads(requires).items())


def fits(requires: str, labels: dict[str, str]) -> bool:
    """Whether a worker offering ``labels`` has every pair of ``requires`` (stored text)."""
    return all(labels.get(k) == v for k, v in _pairs(requires))


class Routing(Leases):
    """Which connected workers handle which (queue, type), and the tasks held for want of one."""

    def worker_joined(
        self, worker_id: str, now: float, queues: tuple[str, ...] = ("default",), concurrency: int = 1,
        name: str | None = None, host: str | None = None, pid: int | None = None, types: tuple[str, ...] = (),
        type_options: dict[str, TypeOptions] | None = None, labels: dict[str, str] | None = None,
    ) -> WorkerInfo:
        """Register a worker (``Leases.worker_joined``), count what it handles, learn what its definitions
        set (rule 3) and bring back the tasks held for it (and for its labels: rule 4)."""
        gone = self.workers.get(worker_id)
        if gone is not None:  # (the same id again: the earlier one is replaced)
            self._count(gone, -1)
        w = super().worker_joined(worker_id, now, queues, concurrency, name, host, pid, types)
        if labels:
            w.labels = dict(labels)
        self._count(w, 1)
        if type_options:
            self.type_options.update(type_options)
        for name_ in w.queues:
            q = self.queues[name_]
            if q.held:
                for type_ in list(q.held):
                    if type_.startswith(LABELS_KEY):
                        if fits(type_[len(LABELS_KEY):], w.labels):
                            self._bring_back(q, type_)
                    elif not w.type_set or type_ in w.type_set:
                        self._bring_back(q, type_)
        return w

    def worker_left(self, worker_id: str, now: float, reason: str = "disconnected") -> None:
        """A worker went away (``Leases.worker_left``): it no longer counts as handling its types."""
        w = self.workers.get(worker_id)
        super().worker_left(worker_id, now, reason)
        if w is not None and worker_id not in self.workers:
            self._count(w, -1)

    def _count(self, w: WorkerInfo, step: int) -> None:
        if not w.types:
            for q in w.queues:
                self._serving_any[q] += step
                if self._serving_any[q] <= 0:
                    del self._serving_any[q]
            return
        for q in w.queues:
            for t in w.types:
                key = (q, t)
                self._serving[key] += step
                if self._serving[key] <= 0:
                    del self._serving[key]

    def _handled(self, queue: str, type_: str) -> bool:
        """Whether a connected worker takes tasks of ``type_`` from ``queue``."""
        return queue in self._serving_any or (queue, type_) in self._serving

    def _head_for(self, q: ReadyQueue, w: WorkerInfo) -> Task | None:
        """The head of ``q`` as ``w`` sees it: a head of a type no connected worker handles is held first
        (rule 1), so that it blocks neither ``w`` nor the queue."""
        t = q.peek()
        types = w.type_set
        while t is not None:
            if types and t.type not in types and not self._handled(q.name, t.type):
                q.hold(t)
            elif t.requires is not None and not fits(t.requires, w.labels) and not self._fitted(q.name, t):
                q.hold(t, LABELS_KEY + t.requires)  # (rule 4)
            else:
                return t
            t = q.peek()
        return t

    def _fitted(self, queue: str, t: Task) -> bool:
        """Whether a connected worker of ``queue`` that handles ``t``'s type has the labels it requires."""
        req = t.requires
        return req is None or any(
            queue in w.queues and (not w.type_set or t.type in w.type_set) and fits(req, w.labels)
            for w in self.workers.values())

    def _bring_back(self, q: ReadyQueue, type_: str) -> None:
        """Put the tasks held in ``q`` under ``type_`` (a type, or a ``LABELS_KEY`` key) back at the front of
        their queue, in their order."""
        back = [t for t in q.unhold(type_) if t.state is READY and t.queued == NOT_QUEUED
                and self.tasks.get(t.id) is t and t.queue == q.name]
        for t in reversed(back):
            q.push(t, front=True)
        if back:
            self._pump_needed = True
