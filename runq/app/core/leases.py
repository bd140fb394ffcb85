"""Workers and their leases: who holds which task, what a worker may report, and what ends a lease.

Theory of operation
-------------------
A dispatched task is leased to one worker under a lease number (``task.lease``,
new with every dispatch: dispatch.py). The lease ends with a result (``done``,
``fail``), a graceful hand-back (``release``), the worker's departure
(``worker_left``: disconnect, or silence), a cancel, or the server-side timeout.
Two timer kinds (timers.py) watch leases:

- ``SILENCE``: one entry per connected worker, ``(last_seen + lease_timeout,
  SILENCE, worker id, join number)``. Any message moves ``last_seen``; the entry
  is not moved with it (that would be a heap operation per message) but
  re-armed when it comes up and the worker was heard from since. When it stands,
  the worker is lost: its tasks go back to ready (``lost``), or end dead on
  their last attempt (``lost_dead``).
- ``BACKSTOP``: one entry per lease of a task the worker can have started,
  ``(deadline, BACKSTOP, task id, lease)``: ``timeout + lease_timeout`` after the
  dispatch, or, for a task prefetched beyond the worker's concurrency, after a
  runner was free for it (``_ended``). When it stands, the attempt fails as timed
  out (retries.py).

Rules of this file:

1. A result is accepted only from the holder of the current lease (``_leased``);
   anything else is a late result: refused, counted, logged, and written as a
   ``late_result`` event when the task is known.
2. Any message from a worker renews all its leases (``last_seen``); exactly
   ``lease_timeout`` of silence expires them.
3. A lease's backstop stands only while that lease does: the deadline of an
   earlier dispatch never times out a later one (``_backstop_check``).
4. Lost and released tasks go to the front of their queue, in the order they were
   held; a release does not count the attempt and makes the worker draining.
5. A task recovered running with ``reclaim`` (recovery.py) is held for the worker id stored with it: only
   a worker that names that id AND the stored attempt takes it back (``reclaim``), and only while no
   connected worker has that id (worker ids carry a random part: one of this server's own workers cannot
   stand for it); ``reclaim`` seconds after the start it goes back to ready (``RECLAIM``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .model import Task, WorkerInfo, WorkerState
from .records import EventRecord
from .retries import TIMEOUT_TYPE, Retries
from .states import State, Transition
from .timers import BACKSTOP, SILENCE

__all__ = ["Leases"]

T = Transition
RUNNING = State.RUNNING
T_SUCCEED = T.SUCCEED


class Leases(Retries):
    """Workers and their leases (see the module docstring)."""

    # ------------------------------------------------------------------ workers come and go
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

    def heartbeat(self, worker_id: str, now: float) -> None:
        """Any sign of life from a worker renews the leases of all its tasks (rule 2)."""
        w = self.workers.get(worker_id)
        if w is not None:
            w.last_seen = now

    def drain_worker(self, worker_id: str, now: float) -> None:
        """Stop giving tasks to a worker and ask it to finish and leave.

        Raises:
            KeyError: no such worker.
        """
        w = self.workers[worker_id]
        w.state = WorkerState.DRAINING
        self.hungry.pop(worker_id, None)
        self._send(worker_id, {"op": "drain"})

    # ------------------------------------------------------------------ what a lease holder reports
    def _leased(self, worker_id: str, task_id: Any, lease: Any, now: float, what: str) -> Task | None:
        """Return the task if ``worker_id`` holds its lease number ``lease``; else refuse it (rule 1)."""
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
            self._events.append(EventRecord(task.id, now, "late_result", state, worker_id,
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
             retry_in: float | None = None, timed_out: bool = False, max_retries: int | None = None,
             error_types: Sequence[str] = ()) -> None:
        """The attempt of lease ``lease`` failed; retry after its policy's delay (or ``retry_in``) or go dead.

        Args:
            max_retries: the handler's own retry limit, replacing the task's.
            error_types: the exception's type names, most derived first (retries.py rule 3); a timeout that
                names none counts as ``TIMEOUT_TYPE``.
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
        if timed_out and not error_types:
            error_types = (TIMEOUT_TYPE,)
        self._fail(task, error, now, worker_id, retry_in, "timeout" if timed_out else None, error_types)

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
            self._notices.append((EventRecord(task.id, now, "progress", task.state.value, worker_id, task.attempt,
                                              None, 0), task))  # (live only: not stored)

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
            if task is None or task.state is not RUNNING or task.worker != worker_id:
                self._log("warning", f"worker {worker_id} released task {tid} it does not hold")
                continue
            assert w is not None
            del w.running[task.id]
            self._ended(w, task.id, now)
            task.attempt -= 1
            task.worker = None
            self._move(task, T.RELEASE, now, worker=worker_id, detail="worker shutting down")
            self._make_ready(task, front=True)

    # ------------------------------------------------------------------ the backstop
    def _arm_backstop(self, task: Task, w: WorkerInfo, lease: int, now: float) -> None:
        """``task`` was just leased to ``w`` (it is in ``w.running``): arm its backstop now, or once the
        worker has a runner free for it when it is held beyond the worker's concurrency (prefetched)."""
        if len(w.running) <= w.concurrency:
            self.timers.arm((now + task.timeout + self.config.lease_timeout, BACKSTOP, task.id, lease))
        else:  # prefetched: the worker starts it once a runner is free (see _ended)
            w.unarmed[task.id] = (task, lease)

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

    def _backstop_check(self, entry: tuple[Any, ...]) -> float | None:
        """A ``BACKSTOP`` entry stands while its lease does (rule 3)."""
        when, _, tid, lease = entry
        t = self.tasks.get(tid)
        return when if t is not None and t.state is RUNNING and t.lease == lease else None

    def _backstop_fired(self, entry: tuple[Any, ...], now: float) -> None:
        """No result within ``timeout + lease_timeout``: the worker is told to cancel, the attempt fails."""
        _, _, tid, lease = entry
        t = self.tasks[tid]
        wid = t.worker
        holder = self.workers.get(wid) if wid else None
        if holder is not None:
            holder.running.pop(tid, None)
            self._send(holder.id, {"op": "cancel", "id": tid, "lease": lease})
            self._ended(holder, tid, now)
        self._fail(t, f"timeout: no result within {t.timeout}s (+{self.config.lease_timeout}s grace)", now, wid,
                   None, "timeout (server)", (TIMEOUT_TYPE,))

    # ------------------------------------------------------------------ taken back after a restart (failover)
    def reclaim(self, worker_id: str, held: list[Any], now: float) -> list[int]:
        """Worker ``worker_id``, just joined, still runs (or has the results of) tasks of an earlier session:
        ``held`` is ``[[id, attempt, lease, earlier worker id], ...]``. A task recovered running at this
        server's start and still held for that earlier worker id with that attempt (rule 5) is leased to this
        worker again, under the lease number the worker knows (its results name it), with a ``reclaimed``
        event; anything else is refused. Returns the ids taken back (the worker stops running the others).

        Raises:
            KeyError: ``worker_id`` is not a connected worker.
        """
        w = self.workers[worker_id]
        taken: list[int] = []
        for item in held:
            tid, attempt, lease, earlier = item
            t = self.tasks.get(tid) if type(tid) is int else None
            if (t is None or t.state is not RUNNING or t.worker is None or t.worker != earlier
                    or earlier in self.workers or t.attempt != attempt or type(lease) is not int or lease < 1):
                continue
            t.worker = worker_id
            t.lease = lease
            self.max_lease = max(self.max_lease, lease)
            w.running[tid] = t
            self._arm_backstop(t, w, lease, now)
            eid = self.next_event_id
            self.next_event_id = eid + 1
            self._events.append(EventRecord(tid, now, "reclaimed", RUNNING._value_, worker_id, attempt,
                                            f"taken back from worker {earlier} after a server restart", eid))
            self._dirty[tid] = t
            taken.append(tid)
        return taken

    def _reclaim_check(self, entry: tuple[Any, ...]) -> float | None:
        """A ``RECLAIM`` entry stands while its task is still held for the worker of the earlier life."""
        when, _, tid, earlier = entry
        t = self.tasks.get(tid)
        return when if t is not None and t.state is RUNNING and t.worker == earlier and earlier not in self.workers \
            else None

    def _reclaim_expired(self, entry: tuple[Any, ...], now: float) -> None:
        """Its worker did not take it back in time: back to ready, as at a restart without ``reclaim``."""
        t = self.tasks[entry[2]]
        t.worker = None
        self._move(t, T.RECOVER, now, detail=f"server restarted while it ran; worker {entry[3]} did not take it back "
                                             f"within {self.config.reclaim:g}s")
        self._make_ready(t, front=True)

    # ------------------------------------------------------------------ silence
    def _silence_check(self, entry: tuple[Any, ...]) -> float | None:
        """A ``SILENCE`` entry stands for its worker's own join; it is due ``lease_timeout`` after the
        worker was last heard from (later than the entry when it was heard from since: re-armed)."""
        _, _, wid, joined = entry
        w = self.workers.get(wid)
        if w is None or w.joined != joined:  # gone (and maybe back under the same id: that join has its own)
            return None
        return w.last_seen + self.config.lease_timeout

    def _silence_expired(self, entry: tuple[Any, ...], now: float) -> None:
        """The worker was silent for ``lease_timeout``: it is lost with its leases (rule 2)."""
        w = self.workers[entry[2]]
        self.stats.lease_expiries += 1
        self._log("warning", f"worker {w.id} missed heartbeats for {now - w.last_seen:.1f}s: "
                             f"lease expired, {len(w.running)} task(s) back to ready")
        self.worker_left(w.id, now, reason=f"lease expired after {now - w.last_seen:.1f}s of silence")
        self._send(w.id, {"op": "error", "code": "lease_expired", "message": "lease expired"})
