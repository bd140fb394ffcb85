"""What both stores' writers share: merging a group commit's batches, and the writer thread around ``commit``.

Theory of operation
-------------------
A store (sqlite.py, postgres.py) commits in ONE thread at a time: its writer thread, which takes every batch
waiting and writes them as one transaction (group commit), or a caller of ``commit_here`` / ``write_now``
while the writer is idle. ``GroupWriter`` is that scaffolding: the queue, the lock held by whoever commits
(``_writing``), ``start`` / ``submit`` / ``write_now`` / ``commit_here``, the thread's loop, and ``_report``
(the counters, then every batch's ``on_done`` in order, in ONE call of ``notify``: one wake-up of the trio
loop per commit). A store gives ``commit(batches, notify)`` and, if it needs them, the hooks
``_before_start`` (before the thread starts) and ``_after_commits`` (in the thread, after a round of commits:
SQLite's checkpoints, PostgreSQL's prune slices). ``close`` is the store's: it calls ``_stop_writer`` first.

``merge_batches`` turns the batches of one commit into one ``Merged``: the last row of a task wins, events
and server events are appended in order, queue changes, limits and breakers are kept in order (the store
writes them in that order, so the last one of a key wins), the last record of a request id and of a schedule
name wins, ``requests_below`` and ``prune_before`` take the largest. A lone batch (a lone request's commit,
the usual case under light load) keeps its lists as they are: no copying on the hot path.

Rules of this file:

1. No database here: no SQL, no driver import. What differs between the stores stays in their modules.
2. Every batch gets its ``on_done`` exactly once, in submission order, even when its commit failed.
"""

from __future__ import annotations

import queue as queue_mod
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from ..core.records import (
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
from .base import Batch, Notify, StoreStats

__all__ = ["GroupWriter", "Merged", "merge_batches"]


class Merged(NamedTuple):
    """The writes of one group commit (``merge_batches``). A tuple: the lone batch's path builds one per commit."""

    rows: dict[int, TaskRecord]
    new_rows: list[NewTaskRow]
    events: list[EventRecord]
    queue_ops: list[QueueRecord]
    requests: dict[int, RequestRecord]
    requests_below: int
    prune: float | None
    limits: list[tuple[LimitKey, LimitRecord | None]]
    breakers: list[tuple[str, BreakerRecord | None]]
    server_events: list[ServerEventRecord]
    schedules: dict[str, ScheduleRecord | None]

    @property
    def task_rows(self) -> int:
        """Task rows written (new and updated)."""
        return len(self.rows) + len(self.new_rows)


def merge_batches(batches: list[Batch]) -> Merged:
    """The writes of ``batches``, merged for one transaction (module docstring)."""
    schedules: dict[str, ScheduleRecord | None] = {}
    for b in batches:
        for name, sched in b.schedule_rows:
            schedules[name] = sched
    if len(batches) == 1:  # (the lone request's commit: its lists as they are; ids are unique in a batch)
        (b,) = batches
        return Merged({r.id: r for r in b.rows} if b.rows else {}, b.new_rows, b.events, b.queue_ops,
                      {r.id: r for r in b.requests} if b.requests else {}, b.requests_below or 0, b.prune_before,
                      b.limits, b.breakers, b.server_events, schedules)
    rows: dict[int, TaskRecord] = {}
    requests: dict[int, RequestRecord] = {}
    new_rows: list[NewTaskRow] = []
    events: list[EventRecord] = []
    queue_ops: list[QueueRecord] = []
    limits: list[tuple[LimitKey, LimitRecord | None]] = []
    breakers: list[tuple[str, BreakerRecord | None]] = []
    server_events: list[ServerEventRecord] = []
    requests_below = 0
    prune: float | None = None
    for b in batches:
        if b.requests:
            for q in b.requests:
                requests[q.id] = q
        if b.requests_below is not None:
            requests_below = max(requests_below, b.requests_below)
        new_rows.extend(b.new_rows)
        for r in b.rows:
            rows[r.id] = r
        events.extend(b.events)
        queue_ops.extend(b.queue_ops)
        if b.limits or b.breakers or b.server_events:  # (rare: limits and breakers change by hand)
            limits.extend(b.limits)
            breakers.extend(b.breakers)
            server_events.extend(b.server_events)
        if b.prune_before is not None:
            prune = b.prune_before if prune is None else max(prune, b.prune_before)
    return Merged(rows, new_rows, events, queue_ops, requests, requests_below, prune, limits, breakers,
                  server_events, schedules)


def _call(fn: Callable[[], None]) -> None:
    fn()


_STOP = object()
_ASKED = object()  # ``_ask``: run ``_after_commits(asked=True)`` in the writer thread


class GroupWriter:
    """The writer thread of a store, around the store's ``commit`` (module docstring).

    A store calls ``_init_writer(notify)`` in its constructor and ``_stop_writer()`` first in its ``close``.

    Attributes:
        notify: how the writer thread runs ``on_done`` callbacks (default: call them in the thread).
        stats: commit counters.
    """

    notify: Notify
    stats: StoreStats

    def _init_writer(self, notify: Notify | None) -> None:
        self.notify = notify or _call
        self.stats = StoreStats()
        self._q: queue_mod.SimpleQueue[Any] = queue_mod.SimpleQueue()
        self._writing = threading.Lock()  # held by whoever commits
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ what a store gives
    def commit(self, batches: list[Batch], notify: Notify | None = None) -> BaseException | None:
        """Write ``batches`` in one transaction, then ``_report``; return the error (``_writing`` held)."""
        raise NotImplementedError

    def _before_start(self) -> None:
        """Runs in ``start``, before the writer thread does."""

    def _after_commits(self, asked: bool) -> None:
        """Runs in the writer thread after each round of commits, ``_writing`` not held; ``asked``: ``_ask``
        was called since the last round."""

    # ------------------------------------------------------------------ the writer thread
    def start(self) -> None:
        """Start the writer thread."""
        if self._thread is None:
            self._before_start()
            self._thread = threading.Thread(target=self._run, name="runq-store-writer", daemon=True)
            self._thread.start()

    def submit(self, batch: Batch) -> None:
        """Queue ``batch`` for the next group commit (returns at once)."""
        self._q.put(batch)

    def _ask(self) -> None:
        """Have the writer thread call ``_after_commits(asked=True)`` soon."""
        self._q.put(_ASKED)

    def _stop_writer(self, timeout: float | None = None) -> bool:
        """Commit what is queued and stop the writer thread (the first thing a store's ``close`` does).

        Args:
            timeout: seconds to wait for the thread at most (None: until it ends, SQLite's and a leading
                PostgreSQL store's case). A thread still running then is left to end on its own (a daemon
                thread: it ends with the process at the latest).

        Returns:
            False if the thread was still running after ``timeout`` (it may hold the write connection: the
            store must not close it), else True.
        """
        if self._thread is None:
            return True
        self._q.put(_STOP)
        self._thread.join(timeout)
        stopped = not self._thread.is_alive()
        self._thread = None
        return stopped

    def _run(self) -> None:
        q = self._q
        while True:
            item = q.get()
            batches = []
            stop = asked = False
            while True:
                if item is _STOP:
                    stop = True
                elif item is _ASKED:
                    asked = True
                else:
                    batches.append(item)
                try:
                    item = q.get_nowait()
                except queue_mod.Empty:
                    break
            if batches:
                with self._writing:
                    self.commit(batches)
            if stop:  # (what is left of the hooks' work waits for the next start: ``close`` is not held up)
                return
            self._after_commits(asked)

    def commit_here(self, batches: list[Batch]) -> bool:
        """Commit ``batches`` in the calling thread, their ``on_done`` called here too, unless the writer thread
        is committing at this moment (then return False, nothing done).

        The caller must know that every batch it submitted before has been reported (so that batches still
        commit in order); the server checks that.
        """
        if not self._writing.acquire(blocking=False):
            return False
        try:
            self.commit(batches, notify=_call)
        finally:
            self._writing.release()
        return True

    def write_now(self, batch: Batch) -> None:
        """Commit ``batch`` synchronously in the calling thread (startup and tests only).

        Raises:
            StoreError: the commit failed.
        """
        with self._writing:
            err = self.commit([batch])
        if err is not None:
            raise err

    def _report(self, batches: list[Batch], m: Merged, error: BaseException | None, t0: float, pruned: int,
                notify: Notify | None) -> BaseException | None:
        """Count the commit, then hand every batch's ``on_done`` to ``notify`` (default: the store's) in ONE call.

        Args:
            t0: ``time.perf_counter()`` when the commit began.
            pruned: the tasks the commit pruned (``Batch.pruned`` of each batch).

        Returns:
            ``error``.
        """
        st = self.stats
        rows, events = len(m.rows) + len(m.new_rows), len(m.events)
        st.commits += 1
        st.batches += len(batches)
        st.last_commit_rows = rows + events
        st.commit_seconds_total += time.perf_counter() - t0
        if error is None:
            st.rows += rows
            st.events += events
        for b in batches:
            b.pruned = pruned
        done = [b.on_done for b in batches if b.on_done is not None]
        if done:
            def report() -> None:
                for on_done in done:
                    on_done(error)

            (notify or self.notify)(report)  # (one hand-over per commit: one wake-up of the trio loop)
        return error
