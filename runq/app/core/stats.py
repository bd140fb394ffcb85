"""What the core counts, and the summaries read from it (queues, task types).

Theory of operation
-------------------
The core keeps three kinds of figures, all updated where the change happens
(``effects.CoreBase._move`` and the concern that decides), never recomputed by
walking the tasks:

- ``CoreStats``: counters since start (enqueued, succeeded, failed, dead,
  cancelled, lease expiries, refused late results), for ``/metrics`` and
  ``statistics``;
- ``counts``: per queue, the live tasks by state name (the queue view);
- ``totals``: per queue, how many times each transition happened (rates).

The functions here read them, with the workers, into the maps the server
returns. They are pure: no clock, no I/O, nothing changed.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from .model import ReadyQueue, WorkerInfo

__all__ = [
    "CoreStats",
    "queue_stats",
    "queue_totals",
    "task_types",
]


class CoreStats:
    """Counters since start.

    Attributes:
        enqueued: tasks created (a unique-key hit creates none).
        succeeded, failed, dead, cancelled: attempts failed, and tasks that reached each final state.
        lease_expiries: workers lost to silence.
        late_results: results, failures and progress refused because the sender did not hold the lease.
        coalesced: enqueues merged into a waiting task with the same coalesce key (docs/tasks.md).
    """

    __slots__ = ("cancelled", "coalesced", "dead", "enqueued", "failed", "late_results", "lease_expiries", "succeeded")

    def __init__(self) -> None:
        self.enqueued = self.succeeded = self.failed = self.dead = 0
        self.cancelled = self.lease_expiries = self.late_results = 0
        self.coalesced = 0


def queue_totals(counter: Counter[str] | None) -> dict[str, int]:
    """Cumulative counts of one queue since the server started, from ``Core.totals`` (transition name ->
    count)."""
    c = counter if counter is not None else Counter()
    succeeded, dead, cancelled = c["succeeded"], c["dead"] + c["lost_dead"], c["cancelled"]
    return {"enqueued": c["enqueued"] + c["scheduled"], "succeeded": succeeded, "failed": c["failed"],
            "dead": dead, "cancelled": cancelled, "completed": succeeded + dead + cancelled,
            "retried": c["retried"], "lost": c["lost"] + c["lost_dead"]}


def queue_stats(queues: dict[str, ReadyQueue], counts: dict[str, Counter[str]], workers: dict[str, WorkerInfo],
                totals: dict[str, Counter[str]]) -> list[dict[str, Any]]:
    """Per queue, by name: counts of live tasks by state, the paused flag, how many workers serve it, and what
    happened in it since the server started (enqueued, succeeded, failed attempts, dead, cancelled)."""
    out = []
    for name in sorted(set(queues) | set(counts)):
        c = counts.get(name, Counter())
        q = queues.get(name)
        t = queue_totals(totals.get(name))
        out.append({
            "queue": name, "paused": bool(q and q.paused),
            "scheduled": c["scheduled"], "ready": c["ready"], "running": c["running"],
            "workers": sum(1 for w in workers.values() if name in w.queues),
            "enqueued": t["enqueued"], "succeeded": t["succeeded"], "failed": t["failed"], "dead": t["dead"],
            "cancelled": t["cancelled"],
        })
    return out


def task_types(workers: dict[str, WorkerInfo]) -> list[dict[str, Any]]:
    """The task types the connected workers handle: per type (by name), how many workers and which queues
    they take tasks from."""
    by_type: dict[str, tuple[int, dict[str, None]]] = {}
    for w in workers.values():
        for t in w.types:
            n, queues = by_type.get(t, (0, {}))
            queues.update(dict.fromkeys(w.queues))
            by_type[t] = (n + 1, queues)
    return [{"type": t, "workers": n, "queues": sorted(queues)} for t, (n, queues) in sorted(by_type.items())]
