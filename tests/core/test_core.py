"""The sans-IO core, driven with a fake clock (plain floats) and a seeded random source.

Effects are read with ``core.take_effects(now)``; assertions are on the event rows
(task_id, at, kind, state, worker, attempt, detail), the outbox messages and the task fields.
Rules that the code breaks today are tests marked ``xfail(strict=True)`` with the reason "BUG: ...".
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule

from runq.app.core import (
    EVENT_ROW_COLUMNS,
    FINAL_STATES,
    TASK_COLUMNS,
    Core,
    CoreConfig,
    Effects,
    IllegalTransition,
    ReadyQueue,
    State,
    Task,
    TaskMissing,
    WorkerInfo,
)
from runq.app.core.model import NEW_COLUMNS, QUEUED, WorkerState
from runq.app.core.timers import BACKSTOP, DELAY, SILENCE
from runq.protocol.messages import MAX_CREDIT, TaskSpec

T0 = 1_000.0
STATE_NAMES = {s.value for s in State}


# ---------------------------------------------------------------------- helpers
def make(**cfg: Any) -> Core:
    return Core(CoreConfig(**cfg), rng=random.Random(1))


def spec(type_: str = "t", **kw: Any) -> TaskSpec:
    return TaskSpec(type=type_, **kw)


def add(core: Core, now: float = T0, n: int = 1, **kw: Any) -> list[int]:
    """Enqueue ``n`` tasks built from ``kw``; return their ids (all newly created)."""
    res = core.enqueue([spec(**kw) for _ in range(n)], now)
    assert all(created for _, created in res)
    return [tid for tid, _ in res]


def join(core: Core, wid: str = "w1", credit: int = 0, now: float = T0, **kw: Any) -> None:
    core.worker_joined(wid, now, **kw)
    if credit:
        core.credit(wid, credit, now)


def sent(fx: Effects, wid: str = "w1") -> list[dict[str, Any]]:
    """Task entries sent to ``wid``, in order."""
    return [t for m in fx.outbox.get(wid, []) if m["op"] == "tasks" for t in m["tasks"]]


def sent_ids(fx: Effects, wid: str = "w1") -> list[int]:
    return [t["id"] for t in sent(fx, wid)]


def other_ops(fx: Effects, wid: str = "w1") -> list[dict[str, Any]]:
    return [m for m in fx.outbox.get(wid, []) if m["op"] != "tasks"]


def ev(fx: Effects, tid: int) -> list[tuple[Any, ...]]:
    """The event rows of one task without task id, time and event id: (kind, state, worker, attempt, detail)."""
    return [e[2:7] for e in fx.events if e[0] == tid]


def kinds(fx: Effects, tid: int) -> list[str]:
    return [e[2] for e in fx.events if e[0] == tid]


def row_of(fx: Effects, tid: int) -> dict[str, Any]:
    for r in fx.rows:
        if r[0] == tid:
            return dict(zip(TASK_COLUMNS, r))
    for r in fx.new_rows:
        if r[0] == tid:
            return dict(zip(NEW_COLUMNS, r))
    raise AssertionError(f"no row for task {tid}")


def run_one(core: Core, now: float, wid: str = "w1") -> dict[str, Any]:
    """Grant one credit and return the one task sent."""
    core.credit(wid, 1, now)
    (t,) = sent(core.take_effects(now), wid)
    return t


def timers(core: Core, kind: int) -> list[tuple[Any, ...]]:
    """The entries of one kind in the core's timer heap, as ``(when, key, ...)``."""
    return sorted((e[0], *e[2:]) for e in core.timers.heap if e[1] == kind)


def recount(core: Core) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    for t in core.tasks.values():
        out[(t.queue, t.state.value)] = out.get((t.queue, t.state.value), 0) + 1
    return out


# ---------------------------------------------------------------------- enqueue
def test_ids_increase_across_calls_queues_and_from_next_id() -> None:
    core = make()
    a = add(core, n=3)
    b = add(core, queue="other", n=2)
    c = add(core, delay=5)
    assert a + b + c == [1, 2, 3, 4, 5, 6] and core.next_id == 7
    core2 = Core(CoreConfig(), random.Random(1), next_id=500)
    assert add(core2, n=2) == [500, 501]


def test_enqueue_writes_an_event_and_a_short_row_per_task() -> None:
    core = make()
    (r,) = add(core, payload=b"\x01", priority=4, timeout=7, retries=2, key="k")
    (s,) = add(core, delay=30)
    fx = core.take_effects(T0)
    # a task ready at once has no written `enqueued` row: the store synthesises it from created_at
    assert ev(fx, r) == []
    assert ev(fx, s) == [("scheduled", "scheduled", None, 0, f"run_at={T0 + 30:.3f}")]
    assert fx.rows == [] and {row[0] for row in fx.new_rows} == {r, s}
    assert row_of(fx, r) == {"id": r, "queue": "default", "type": "t", "payload": b"\x01", "priority": 4,
                             "state": "ready", "run_at": None, "timeout": 7.0, "max_retries": 2, "key": "k",
                             "created_at": T0, "requires": None, "retry_policy": None, "coalesce_key": None,
                             "limit_key": None, "owner": None}
    assert row_of(fx, s)["run_at"] == T0 + 30 and row_of(fx, s)["state"] == "scheduled"
    assert core.stats.enqueued == 2
    assert all(len(e) == len(EVENT_ROW_COLUMNS) for e in fx.events)
    assert core.take_effects(T0).events == []  # effects are taken once


def test_defaults_come_from_the_config() -> None:
    core = make(default_timeout=42.0, default_retries=5)
    (tid,) = add(core)
    t = core.get(tid)
    assert (t.timeout, t.max_retries, t.attempt, t.priority, t.queue) == (42.0, 5, 0, 0, "default")


def test_a_task_started_in_the_same_batch_is_written_as_a_full_row() -> None:
    core = make()
    join(core, credit=1)
    (tid,) = add(core)
    fx = core.take_effects(T0)
    assert [r[0] for r in fx.rows] == [tid] and fx.new_rows == []
    assert row_of(fx, tid)["state"] == "running" and row_of(fx, tid)["worker"] == "w1"
    assert ev(fx, tid) == [("started", "running", "w1", 1, None)]


# ---------------------------------------------------------------------- dispatch order
def test_priority_order_and_fifo_within_a_priority() -> None:
    rng = random.Random(7)
    core = make()
    prios = [rng.choice([-3, 0, 0, 1, 5, 5, 2**31 - 1]) for _ in range(60)]
    ids = [add(core, priority=p)[0] for p in prios]
    expected = [i for _, i in sorted(zip((-p for p in prios), ids))]
    join(core)
    got: list[int] = []
    for _ in range(len(ids)):  # one credit at a time: the order must hold across grants too
        got.append(run_one(core, T0)["id"])
    assert got == expected


def test_fifo_is_the_order_tasks_became_ready() -> None:
    core = make()
    (late,) = add(core, delay=5)  # id 1, ready only at T0 + 5
    (early,) = add(core)  # id 2
    core.tick(T0 + 5)
    (after,) = add(core, now=T0 + 6)  # id 3
    join(core, credit=3, now=T0 + 6)
    assert sent_ids(core.take_effects(T0 + 6)) == [early, late, after]


def test_queues_are_separate() -> None:
    core = make()
    a = add(core, queue="a", n=2)
    b = add(core, queue="b", n=2, priority=9)
    join(core, "wa", credit=10, queues=("a",))
    join(core, "wb", credit=1, queues=("b",))
    fx = core.take_effects(T0)
    assert sent_ids(fx, "wa") == a and sent_ids(fx, "wb") == b[:1]
    assert all(t["queue"] == "a" for t in sent(fx, "wa"))
    assert core.get(b[1]).state is State.READY


def test_worker_with_several_queues_takes_the_best_across_them() -> None:
    rng = random.Random(11)
    core = make()
    tasks = []
    for _ in range(40):
        q, p = rng.choice("abc"), rng.choice([0, 1, 2])
        tasks.append((q, p, add(core, queue=q, priority=p)[0]))
    join(core, queues=("a", "b"))
    got = [run_one(core, T0)["id"] for _ in range(sum(1 for q, _, _ in tasks if q != "c"))]
    assert got == [i for _, _, i in sorted(((-p, i, i) for q, p, i in tasks if q != "c"))]
    core.credit("w1", 5, T0)
    assert sent(core.take_effects(T0)) == []  # never from queue c
    assert core.workers["w1"].credit == 5


def test_dispatch_message_and_task_fields() -> None:
    core = make()
    (tid,) = add(core, type_="resize", payload=b"\x01", timeout=5, retries=1, priority=2, queue="img")
    join(core, credit=1, queues=("img",))
    fx = core.take_effects(T0 + 1)
    assert fx.outbox["w1"] == [{"op": "tasks", "tasks": [
        {"id": tid, "type": "resize", "payload": b"\x01", "attempt": 1, "lease": 1, "timeout": 5.0,
         "queue": "img", "priority": 2, "max_retries": 1}]}]
    t = core.get(tid)
    assert (t.state, t.worker, t.attempt, t.started_at) == (State.RUNNING, "w1", 1, T0 + 1)
    assert core.workers["w1"].running == {tid: t} and core.workers["w1"].credit == 0


def test_many_tasks_for_one_worker_go_in_one_frame() -> None:
    core = make()
    add(core, n=5)
    join(core, credit=5)
    fx = core.take_effects(T0)
    assert len(fx.outbox["w1"]) == 1 and len(fx.outbox["w1"][0]["tasks"]) == 5


# ---------------------------------------------------------------------- credit
def test_credit_bounds_dispatch() -> None:
    core = make()
    add(core, n=6)
    join(core)
    assert sent(core.take_effects(T0)) == []  # joined, no credit
    core.credit("w1", 0, T0)
    core.credit("w1", -3, T0)  # grants nothing, takes nothing back
    assert sent(core.take_effects(T0)) == [] and core.workers["w1"].credit == 0
    core.credit("w1", 2, T0)
    assert len(sent(core.take_effects(T0))) == 2
    core.credit("w1", 1, T0)
    core.credit("w1", 1, T0)  # credit adds up
    assert len(sent(core.take_effects(T0))) == 2
    core.credit("w1", 10, T0)
    assert len(sent(core.take_effects(T0))) == 2  # only 2 were left
    assert core.workers["w1"].credit == 8
    add(core, n=9)
    assert len(sent(core.take_effects(T0))) == 8  # unused credit serves later tasks
    assert core.workers["w1"].credit == 0 and len(core.workers["w1"].running) == 14


def test_two_workers_never_get_the_same_task() -> None:
    core = make()
    ids = add(core, n=7)
    join(core, "w1", credit=3)
    join(core, "w2", credit=3)
    fx = core.take_effects(T0)
    a, b = sent_ids(fx, "w1"), sent_ids(fx, "w2")
    assert len(a) == len(b) == 3 and not set(a) & set(b) and set(a) | set(b) < set(ids)


def test_a_trickle_of_tasks_is_spread_across_idle_workers() -> None:
    # one task at a time, each dispatched before the next arrives: every worker has room, so each takes its turn
    core = make()
    for wid in ("w1", "w2", "w3"):
        join(core, wid, credit=32, concurrency=16)
    got = []
    for i in range(6):
        (tid,) = add(core, now=T0 + i)
        fx = core.take_effects(T0 + i)
        got.append(next(wid for wid in ("w1", "w2", "w3") if sent_ids(fx, wid) == [tid]))
    assert got == ["w1", "w2", "w3", "w1", "w2", "w3"]


def test_a_task_goes_to_the_least_loaded_worker() -> None:
    core = make()
    join(core, "busy", credit=8, concurrency=4)
    add(core, n=3)
    assert len(sent(core.take_effects(T0), "busy")) == 3  # alone: it takes them (3 of 4 runners busy)
    join(core, "idle", credit=8, concurrency=4)
    (tid,) = add(core)
    assert sent_ids(core.take_effects(T0), "idle") == [tid]
    # load is per unit of concurrency: 3 held of 4 is more loaded than 4 held of 16
    join(core, "big", credit=32, concurrency=16)
    add(core, n=4)
    fx = core.take_effects(T0)
    assert len(sent(fx, "big")) == 4 and sent(fx, "busy") == []


def test_a_backlog_fills_every_worker_to_its_credit_evenly() -> None:
    core = make()
    ids = add(core, n=10)
    join(core, "w1", credit=4, concurrency=4)
    join(core, "w2", credit=4, concurrency=4)
    fx = core.take_effects(T0)
    a, b = sent_ids(fx, "w1"), sent_ids(fx, "w2")
    assert len(a) == len(b) == 4 and sorted(a + b) == ids[:8]  # in queue order, alternately
    assert len(fx.outbox["w1"]) == len(fx.outbox["w2"]) == 1  # one frame each
    assert core.hungry == {}


def test_spreading_skips_a_worker_whose_queues_have_nothing() -> None:
    core = make()
    join(core, "wa", credit=4, queues=("a",))
    join(core, "wb", credit=4, queues=("b",))
    b = add(core, n=3, queue="b")
    fx = core.take_effects(T0)
    assert sent_ids(fx, "wb") == b and sent(fx, "wa") == []
    assert core.workers["wa"].credit == 4 and "wa" in core.hungry


class CappedCore(Core):
    """A made-up eligibility rule, plugged in where such rules plug in (``Core._admits``, dispatch.py): at
    most ``cap`` tasks of queue "slow" run at once, and a type "never" is never given to worker "picky"."""

    cap = 1

    def _admits(self, q: ReadyQueue, task: Task, w: WorkerInfo, now: float) -> bool:
        if q.name == "slow" and self.counts["slow"]["running"] >= self.cap:
            return False
        if task.type == "never" and w.id == "picky":
            return False
        return super()._admits(q, task, w, now)


@pytest.mark.parametrize("queues", [("slow",), ("slow", "fast")])
def test_every_dispatch_asks_the_eligibility_point(queues: tuple[str, ...]) -> None:
    core = CappedCore(CoreConfig(), rng=random.Random(1))
    slow = add(core, n=3, queue="slow")
    fast = add(core, n=2, queue="fast", priority=-1)  # (slow first whenever slow may give)
    join(core, credit=5, queues=queues)
    fx = core.take_effects(T0)
    assert sent_ids(fx) == [slow[0], *(fast if "fast" in queues else [])]
    core.done("w1", [[slow[0], 1, b""]], T0 + 1)
    core.credit("w1", 0 if "fast" in queues else 1, T0 + 1)  # (a rule that frees a slot asks for a round)
    core._pump_needed = True
    assert sent_ids(core.take_effects(T0 + 1)) == [slow[1]]
    # the paused rule is still there, in the same place
    core.pause("slow", T0 + 2)
    core.done("w1", [[slow[1], 1, b""]], T0 + 2)
    core.credit("w1", 1, T0 + 2)
    assert sent_ids(core.take_effects(T0 + 2)) == []


def test_the_eligibility_point_sees_the_worker_in_a_round_of_many() -> None:
    core = CappedCore(CoreConfig(), rng=random.Random(1))
    (never,) = add(core, type_="never")
    join(core, "picky", credit=3)
    join(core, "w2", credit=0)
    fx = core.take_effects(T0)
    assert sent(fx, "picky") == [] and core.get(never).state is State.READY
    core.credit("w2", 1, T0)
    fx = core.take_effects(T0)  # two hungry workers: the round with a heap
    assert sent_ids(fx, "w2") == [never] and sent(fx, "picky") == []


def test_credit_from_an_unknown_worker_is_a_key_error() -> None:
    core = make()
    with pytest.raises(KeyError):
        core.credit("nobody", 1, T0)


# ---------------------------------------------------------------------- delays
def test_delayed_tasks_wait_for_their_time() -> None:
    core = make()
    (d10,) = add(core, delay=10)
    (at5,) = add(core, run_at=T0 + 5)
    (past,) = add(core, run_at=T0 - 5)
    (now_,) = add(core, run_at=T0)  # due now: ready at once
    (zero,) = add(core, delay=0)
    join(core, credit=10)
    fx = core.take_effects(T0)
    assert sent_ids(fx) == [past, now_, zero]
    assert core.get(d10).state is State.SCHEDULED and core.get(d10).run_at == T0 + 10
    assert core.counts["default"]["scheduled"] == 2
    for t in (T0 + 1, T0 + 4.999):
        core.heartbeat("w1", t)
        core.tick(t)
        assert sent(core.take_effects(t)) == []
    core.heartbeat("w1", T0 + 5)
    core.tick(T0 + 5)
    fx = core.take_effects(T0 + 5)
    assert sent_ids(fx) == [at5]
    assert ev(fx, at5) == [("due", "ready", None, 0, None), ("started", "running", "w1", 1, None)]
    assert core.get(at5).run_at is None
    core.heartbeat("w1", T0 + 9.99)
    core.tick(T0 + 9.99)
    assert sent(core.take_effects(T0 + 9.99)) == []
    core.heartbeat("w1", T0 + 10)
    core.tick(T0 + 10)
    assert sent_ids(core.take_effects(T0 + 10)) == [d10]


def test_a_stale_entry_of_the_delay_heap_is_skipped() -> None:
    """A task delayed to t=100 is retried by hand at t=1, runs, and fails at t=2 with a retry in 500 s: it is
    due at t=502. Its first entry (t=100) is still in the timer heap, and the task is scheduled again when
    that entry comes up: the entry must be recognised as stale (its time is not the task's run_at), not
    promote the task 402 s early."""
    core = make()
    (tid,) = add(core, now=0.0, delay=100)
    join(core, now=0.0)
    core.retry(tid, 1.0)
    entry = run_one(core, 1.0)
    core.fail("w1", tid, entry["lease"], "x", 2.0, retry_in=500)
    core.worker_left("w1", 2.0)
    assert core.get(tid).state is State.SCHEDULED and core.get(tid).run_at == 502.0
    core.take_effects(2.0)
    assert core.next_deadline() == 502.0  # the stale entry (100) is not the next deadline: rule 3 of timers.py
    assert timers(core, DELAY) == [(502.0, tid)]  # (settling it dropped it)
    core.timers.arm((100.0, DELAY, tid))  # as it was: now it must be skipped when it comes up, by its check
    for t in (100.0, 250.0, 501.999):
        assert core.tick(t) == 502.0
        fx = core.take_effects(t)
        assert kinds(fx, tid) == [] and core.get(tid).state is State.SCHEDULED, t
    core.tick(502.0)
    assert ev(core.take_effects(502.0), tid) == [("due", "ready", None, 1, None)]


def test_next_deadline() -> None:
    core = make(lease_timeout=10)
    assert core.next_deadline() is None and core.tick(T0) is None
    add(core, delay=100)
    assert core.next_deadline() == T0 + 100
    join(core, now=T0 + 1)
    assert core.next_deadline() == T0 + 11  # the worker's lease
    add(core, timeout=3, now=T0 + 1)
    core.credit("w1", 1, T0 + 2)
    core.take_effects(T0 + 2)
    assert core.next_deadline() == T0 + 12  # lease renewed by the credit at T0+2
    core.heartbeat("w1", T0 + 9)
    assert core.next_deadline() == T0 + 2 + 3 + 10  # the running task's server-side deadline
    assert core.tick(T0 + 9) == T0 + 15
    core.done("w1", [[2, 1, b""]], T0 + 9)
    core.worker_left("w1", T0 + 9)
    core.take_effects(T0 + 9)
    assert core.tick(T0 + 15) == T0 + 100  # the stale deadline is gone once passed


# ---------------------------------------------------------------------- success
def test_success_stores_the_result_and_releases_the_task() -> None:
    core = make()
    (tid,) = add(core, key="k")
    join(core, credit=1)
    core.take_effects(T0)
    core.done("w1", [[tid, 1, b"\x2a"]], T0 + 1)
    fx = core.take_effects(T0 + 1)
    t = core.get(tid)
    assert (t.state, t.result, t.error, t.finished_at, t.run_at) == (State.SUCCEEDED, b"\x2a", None, T0 + 1, None)
    assert ev(fx, tid) == [("succeeded", "succeeded", "w1", 1, None)]
    assert row_of(fx, tid)["state"] == "succeeded" and row_of(fx, tid)["result"] == b"\x2a"
    assert tid not in core.tasks and core.finished[tid] is t and "k" not in core.keys
    assert core.workers["w1"].running == {} and core.workers["w1"].completed == 1
    assert core.stats.succeeded == 1 and core.counts["default"]["running"] == 0
    assert core.counts["default"]["succeeded"] == 0  # final tasks are not counted as live


def test_several_results_in_one_done() -> None:
    core = make()
    ids = add(core, n=3)
    join(core, credit=3)
    core.take_effects(T0)
    core.done("w1", [[i, 1, bytes([i])] for i in ids], T0)
    core.take_effects(T0)
    assert [core.get(i).result for i in ids] == [bytes([i]) for i in ids]


def test_the_finished_cache_is_bounded() -> None:
    core = make(finished_cache=2)
    ids = add(core, n=3)
    for i in ids:
        core.cancel(i, T0)
    assert list(core.finished) == ids[1:]
    with pytest.raises(TaskMissing) as exc_info:
        core.get(ids[0])
    assert exc_info.value.code == "not_found"


# ---------------------------------------------------------------------- failure, backoff, retries
def test_failures_back_off_exponentially_with_jitter_then_die() -> None:
    core = make(backoff_base=2.0, jitter=0.25)
    (tid,) = add(core, retries=3, key="k")
    join(core)
    now = T0
    for attempt in range(1, 5):
        assert run_one(core, now)["attempt"] == attempt
        core.fail("w1", tid, attempt, f"Traceback\n  boom\nValueError: {attempt}\n", now)
        fx = core.take_effects(now)
        t = core.get(tid)
        assert t.error == f"Traceback\n  boom\nValueError: {attempt}\n" and t.attempt == attempt
        failed = ("failed", "failed", "w1", attempt, f"ValueError: {attempt}")
        if attempt <= 3:
            assert t.state is State.SCHEDULED and t.worker is None
            delay = t.run_at - now  # type: ignore[operator]
            base = 2.0 * 2 ** (attempt - 1)
            assert 0.75 * base <= delay <= 1.25 * base
            assert ev(fx, tid) == [failed, ("retry_scheduled", "scheduled", None, attempt, f"in {delay:.3f}s")]
            assert core.next_deadline() == min(t.run_at, core.workers["w1"].last_seen + 10)  # type: ignore[type-var]
            core.heartbeat("w1", now + delay - 0.001)
            core.tick(now + delay - 0.001)
            assert core.get(tid).state is State.SCHEDULED
            now = t.run_at  # type: ignore[assignment]
            core.heartbeat("w1", now)
            core.tick(now)
            assert core.get(tid).state is State.READY
        else:
            assert t.state is State.DEAD and t.finished_at == now and tid not in core.tasks
            assert ev(fx, tid) == [failed, ("dead", "dead", None, 4, "4 attempts, retries spent")]
            assert "k" not in core.keys and core.stats.dead == 1 and core.stats.failed == 4
    assert core.workers["w1"].failed == 4


def test_backoff_jitter_spans_its_whole_range() -> None:
    core = make(backoff_base=1.0, jitter=0.25)
    for attempt in (1, 2, 5):
        base = 2.0 ** (attempt - 1)
        factors = [core.backoff(attempt) / base for _ in range(400)]
        assert all(0.75 <= f <= 1.25 for f in factors)
        assert min(factors) < 0.77 and max(factors) > 1.23  # the jitter is applied, both ways


def test_backoff_is_exponential_and_capped_without_jitter() -> None:
    core = make(backoff_base=1.5, backoff_max=10.0, jitter=0.0)
    assert [core.backoff(a) for a in range(1, 6)] == [1.5, 3.0, 6.0, 10.0, 10.0]
    assert core.backoff(1001) == 10.0  # the largest attempt a spec's retries (<= 1000) allows


def test_a_huge_attempt_number_backs_off_by_the_maximum() -> None:
    core = make(backoff_max=10.0, jitter=0.0)
    (tid,) = add(core)
    join(core)
    run_one(core, T0)
    core.get(tid).attempt = 2000  # as after 2000 attempts of a handler with retries=5000
    core.fail("w1", tid, 1, "x", T0, max_retries=5000)
    assert core.get(tid).state is State.SCHEDULED and core.get(tid).run_at == T0 + 10.0


def test_backoff_never_exceeds_backoff_max() -> None:
    core = make(backoff_base=1.0, backoff_max=10.0, jitter=0.25)
    assert max(core.backoff(30) for _ in range(200)) <= 10.0
    # the jitter still spreads the delays at the cap (no herd all retrying at backoff_max)
    at_cap = [core.backoff(30) for _ in range(200)]
    assert min(at_cap) >= 7.5 and len(set(at_cap)) > 100
    below = [core.backoff(2) for _ in range(200)]  # 2 s +- 25 %: the cap does not touch it
    assert 1.5 <= min(below) and max(below) <= 2.5


def test_retry_in_overrides_the_backoff_and_counts_as_an_attempt() -> None:
    core = make()
    (tid,) = add(core, retries=1)
    join(core)
    run_one(core, T0)
    core.fail("w1", tid, 1, "later", T0, retry_in=30.0)
    fx = core.take_effects(T0)
    assert core.get(tid).run_at == T0 + 30 and ev(fx, tid)[1][4] == "in 30.000s"
    core.heartbeat("w1", T0 + 30)
    core.tick(T0 + 30)
    assert run_one(core, T0 + 30)["attempt"] == 2
    core.fail("w1", tid, 2, "later again", T0 + 30, retry_in=30.0)
    assert core.get(tid).state is State.DEAD  # retry_in cannot extend the retries


def test_retry_in_zero_is_due_at_once() -> None:
    core = make()
    (tid,) = add(core)
    join(core)
    run_one(core, T0)
    core.fail("w1", tid, 1, "x", T0, retry_in=0.0)
    assert core.get(tid).state is State.SCHEDULED and core.next_deadline() == T0
    core.tick(T0)
    assert run_one(core, T0)["attempt"] == 2


@pytest.mark.parametrize(("spec_retries", "handler_retries", "attempts"), [(5, 1, 2), (0, 2, 3), (3, 0, 1)])
def test_the_handlers_retry_limit_replaces_the_tasks(spec_retries: int, handler_retries: int, attempts: int) -> None:
    core = make()
    (tid,) = add(core, retries=spec_retries)
    join(core)
    now = T0
    for attempt in range(1, attempts + 1):
        assert run_one(core, now)["attempt"] == attempt
        core.fail("w1", tid, attempt, "x", now, max_retries=handler_retries)
        now += 10_000
        core.heartbeat("w1", now)
        core.tick(now)
    t = core.get(tid)
    assert t.state is State.DEAD and t.attempt == attempts and t.max_retries == handler_retries


@pytest.mark.parametrize("retries", [0, 1, 3])
def test_max_retries_n_means_n_plus_one_attempts(retries: int) -> None:
    core = make(default_retries=retries)
    (tid,) = add(core)
    join(core)
    now = T0
    for attempt in range(1, retries + 2):
        assert core.get(tid).state is State.READY
        assert run_one(core, now)["attempt"] == attempt
        core.fail("w1", tid, attempt, "x", now)
        now += 10_000
        core.heartbeat("w1", now)
        core.tick(now)
    assert core.get(tid).state is State.DEAD and core.get(tid).attempt == retries + 1


def test_failure_details() -> None:
    core = make()
    a, b, c = add(core, n=3, retries=0)
    join(core, credit=3)
    core.take_effects(T0)
    core.fail("w1", a, 1, "x" * 500, T0)
    core.fail("w1", b, 1, "\n\n  \n", T0)
    core.fail("w1", c, 1, "deadline", T0, timed_out=True)
    fx = core.take_effects(T0)
    assert ev(fx, a)[0][4] == "x" * 200 and core.get(a).error == "x" * 500
    assert ev(fx, b)[0][4] == "\n\n  \n"  # nothing better to show: kept as is
    assert ev(fx, c)[0][4] == "timeout"


# ---------------------------------------------------------------------- leases
def test_silent_worker_loses_its_tasks_which_go_to_the_front() -> None:
    core = make(lease_timeout=10)
    core.enqueue([spec(), spec(), spec()], T0)
    join(core, credit=1)
    assert sent_ids(core.take_effects(T0)) == [1]
    core.tick(T0 + 9.99)
    assert "w1" in core.workers
    core.tick(T0 + 10)
    fx = core.take_effects(T0 + 10)
    assert "w1" not in core.workers and core.stats.lease_expiries == 1
    assert ev(fx, 1) == [("lost", "ready", "w1", 1, "lease expired after 10.0s of silence")]
    assert other_ops(fx) == [{"op": "error", "code": "lease_expired", "message": "lease expired"}]
    assert any("lease expired" in text for _, text in fx.logs)
    t = core.get(1)
    assert (t.state, t.attempt, t.worker) == (State.READY, 1, None)
    join(core, "w2", credit=1, now=T0 + 10)
    (again,) = sent(core.take_effects(T0 + 10), "w2")
    assert again["id"] == 1 and again["attempt"] == 2  # front of its queue, the attempt counted


@pytest.mark.parametrize("how", ["heartbeat", "credit", "progress", "done_other", "fail_other", "release_other"])
def test_any_message_renews_the_lease(how: str) -> None:
    core = make(lease_timeout=10)
    a, b = add(core, n=2, retries=5)
    join(core, credit=2)
    core.take_effects(T0)
    t = T0 + 8
    if how == "heartbeat":
        core.heartbeat("w1", t)
    elif how == "credit":
        core.credit("w1", 1, t)
    elif how == "progress":
        core.progress("w1", a, 1, b"\x01", t)
    elif how == "done_other":
        core.done("w1", [[b, 1, b""]], t)
    elif how == "fail_other":
        core.fail("w1", b, 1, "x", t)
    else:
        core.release("w1", [b], t)
    core.tick(T0 + 17.9)
    assert "w1" in core.workers and core.get(a).state is State.RUNNING
    core.tick(T0 + 18)
    assert "w1" not in core.workers and core.get(a).state is State.READY


def test_a_worker_back_under_the_same_id_has_one_silence_watch() -> None:
    """The silence entry of a worker's earlier join is stale: dropped, not re-armed beside the new one."""
    core = make(lease_timeout=10)
    join(core, now=T0)
    core.worker_left("w1", T0 + 1)
    join(core, now=T0 + 2)  # the same id again
    assert core.tick(T0 + 10) == T0 + 12  # the first join's entry came up: it is not this worker's
    assert timers(core, SILENCE) == [(T0 + 12, "w1", core.workers["w1"].joined)]
    core.heartbeat("w1", T0 + 11)
    assert core.tick(T0 + 12) == T0 + 21 and "w1" in core.workers  # re-armed in place, still one
    assert len(timers(core, SILENCE)) == 1
    core.tick(T0 + 21)
    assert core.workers == {} and core.stats.lease_expiries == 1


def test_a_disconnect_loses_the_tasks_at_once() -> None:
    core = make()
    ids = add(core, n=2)
    join(core, credit=2)
    core.take_effects(T0)
    core.worker_left("w1", T0 + 1)
    fx = core.take_effects(T0 + 1)
    for i in ids:
        assert ev(fx, i) == [("lost", "ready", "w1", 1, "disconnected")]
    assert "w1" not in core.workers and core.stats.lease_expiries == 0
    core.worker_left("w1", T0 + 2)  # twice: nothing
    assert core.take_effects(T0 + 2).events == []


@pytest.mark.parametrize("how", ["lost", "released"])
def test_tasks_back_together_keep_their_order(how: str) -> None:
    core = make()
    ids = add(core, n=4)
    join(core, credit=2)
    core.take_effects(T0)
    if how == "released":
        core.release("w1", ids[:2], T0)
    core.worker_left("w1", T0)
    join(core, "w2", credit=4)
    assert sent_ids(core.take_effects(T0), "w2") == ids


def test_lost_on_the_last_attempt_is_dead() -> None:
    core = make()
    (tid,) = add(core, retries=1, key="k")
    join(core)
    run_one(core, T0)
    core.worker_left("w1", T0)
    join(core, "w2", now=T0)
    run_one(core, T0, "w2")
    core.tick(T0 + 10)  # w2 silent for lease_timeout
    fx = core.take_effects(T0 + 10)
    t = core.get(tid)
    assert ev(fx, tid) == [("lost_dead", "dead", "w2", 2, "lease expired after 10.0s of silence; attempts spent")]
    assert t.state is State.DEAD and t.error is not None and t.error.startswith("lost: lease expired")
    assert "attempt 2 of 2" in t.error and "k" not in core.keys and core.stats.dead == 1
    assert tid not in core.tasks


def test_late_results_from_a_worker_that_lost_its_lease_are_refused() -> None:
    core = make()
    (tid,) = add(core)
    join(core)
    run_one(core, T0)
    core.tick(T0 + 10)  # w1 silent: lease expired
    join(core, "w2", now=T0 + 10)
    assert run_one(core, T0 + 10, "w2")["attempt"] == 2
    before = core.get(tid).row()
    core.done("w1", [[tid, 1, b"late"]], T0 + 11)
    core.fail("w1", tid, 1, "late", T0 + 11)
    core.progress("w1", tid, 1, b"\x07", T0 + 11)
    core.done("w1", [[tid, 2, b"late"]], T0 + 11)  # even with the current attempt: w1 does not hold it
    fx = core.take_effects(T0 + 11)
    assert core.get(tid).row() == before  # nothing changed
    assert fx.rows == [] and fx.new_rows == []
    assert ev(fx, tid) == [
        ("late_result", "running", "w1", 1, "done refused: lease not held"),
        ("late_result", "running", "w1", 1, "fail refused: lease not held"),
        ("late_result", "running", "w1", 1, "progress refused: lease not held"),
        ("late_result", "running", "w1", 2, "done refused: lease not held"),
    ]
    assert core.stats.late_results == 4 and len(fx.logs) == 4
    assert all(level == "warning" and "refused" in text and f"task {tid}" in text for level, text in fx.logs)
    core.done("w2", [[tid, 2, b"ok"]], T0 + 12)
    assert core.get(tid).state is State.SUCCEEDED and core.get(tid).result == b"ok"


def test_a_result_for_the_wrong_attempt_or_from_another_worker_is_refused() -> None:
    core = make()
    (tid,) = add(core)
    join(core)
    join(core, "w2")
    run_one(core, T0)
    core.done("w1", [[tid, 2, b"x"]], T0)  # wrong attempt
    core.done("w1", [[tid, 0, b"x"]], T0)
    core.fail("w2", tid, 1, "not mine", T0)  # another worker
    core.done("w1", [[tid, "1", b"x"]], T0)  # not an int
    core.done("w1", [["1", 1, b"x"]], T0)  # not an int id: no event
    core.release("w2", [tid], T0)  # release of a task not held: logged and ignored
    fx = core.take_effects(T0)
    t = core.get(tid)
    assert (t.state, t.worker, t.attempt, t.result) == (State.RUNNING, "w1", 1, None)
    assert [(e[0], e[2], e[3]) for e in ev(fx, tid)] == [
        ("late_result", "w1", 2), ("late_result", "w1", 0), ("late_result", "w2", 1), ("late_result", "w1", -1)]
    assert len(fx.events) == 4 and core.stats.late_results == 5 and len(fx.logs) == 6
    assert core.workers["w1"].running == {tid: t} and core.workers["w2"].running == {}


def test_a_duplicate_done_is_refused_the_second_time() -> None:
    core = make()
    (tid,) = add(core)
    join(core, credit=1)
    core.take_effects(T0)
    core.done("w1", [[tid, 1, b"a"], [tid, 1, b"b"]], T0)
    fx = core.take_effects(T0)
    assert core.get(tid).result == b"a" and kinds(fx, tid) == ["succeeded", "late_result"]


def test_a_late_result_for_a_finished_task_has_a_real_state_in_its_event() -> None:
    core = make()
    (tid,) = add(core)
    join(core, credit=1)
    core.take_effects(T0)
    core.cancel(tid, T0)
    core.done("w1", [[tid, 1, b"late"]], T0)
    core.done("w1", [[999, 1, b"?"]], T0)
    fx = core.take_effects(T0)
    assert core.get(tid).state is State.CANCELLED and core.get(tid).result is None
    assert core.stats.late_results == 2
    assert all(e[3] in STATE_NAMES for e in fx.events), fx.events


# ---------------------------------------------------------------------- server-side timeout
def test_server_side_timeout_backstop() -> None:
    core = make(lease_timeout=10.0)
    (tid,) = add(core, timeout=5.0, retries=1)
    join(core)
    run_one(core, T0)
    for at in (T0 + 3, T0 + 6, T0 + 9, T0 + 12, T0 + 14.99):
        core.heartbeat("w1", at)  # the worker is alive, but says nothing about the task
        core.tick(at)
    assert core.get(tid).state is State.RUNNING
    core.heartbeat("w1", T0 + 15)
    core.tick(T0 + 15)
    fx = core.take_effects(T0 + 15)
    t = core.get(tid)
    assert t.state is State.SCHEDULED and t.error == "timeout: no result within 5.0s (+10.0s grace)"
    assert other_ops(fx) == [{"op": "cancel", "id": tid, "lease": 1}]
    assert [e[:4] for e in ev(fx, tid)] == [("failed", "failed", "w1", 1), ("retry_scheduled", "scheduled", None, 1)]
    assert ev(fx, tid)[0][4] == "timeout (server)"
    assert core.workers["w1"].running == {}
    core.fail("w1", tid, 1, "timed out", T0 + 15.5, timed_out=True)  # the worker's own report, too late
    assert core.get(tid).state is State.SCHEDULED and core.stats.late_results == 1
    assert t.run_at is not None
    due = t.run_at
    core.heartbeat("w1", due)
    core.tick(due)
    assert run_one(core, due)["attempt"] == 2
    core.heartbeat("w1", due + 15)
    core.tick(due + 15)
    fx = core.take_effects(due + 15)
    assert core.get(tid).state is State.DEAD and kinds(fx, tid) == ["failed", "dead"]


def test_a_result_before_the_backstop_disarms_it() -> None:
    core = make(lease_timeout=10)
    (tid,) = add(core, timeout=5)
    join(core)
    run_one(core, T0)
    core.done("w1", [[tid, 1, b""]], T0 + 14)
    core.take_effects(T0 + 14)
    core.heartbeat("w1", T0 + 15)
    core.tick(T0 + 15)
    fx = core.take_effects(T0 + 15)
    assert core.get(tid).state is State.SUCCEEDED and fx.events == [] and other_ops(fx) == []


@pytest.mark.parametrize("how", ["release", "manual retry"])
def test_a_new_lease_is_not_timed_out_by_an_old_deadline(how: str) -> None:
    core = make(lease_timeout=10)
    (tid,) = add(core, timeout=5, retries=0)
    join(core)
    run_one(core, T0)  # deadline T0 + 15 for attempt 1
    if how == "release":
        core.release("w1", [tid], T0 + 1)
    else:
        core.fail("w1", tid, 1, "x", T0 + 1)
        core.retry(tid, T0 + 1)
    core.worker_left("w1", T0 + 1)
    core.take_effects(T0 + 1)
    join(core, "w2", now=T0 + 12)
    assert run_one(core, T0 + 12, "w2")["attempt"] == 1  # its own deadline: T0 + 27
    core.heartbeat("w2", T0 + 15)
    core.tick(T0 + 15)
    assert core.get(tid).state is State.RUNNING, "timed out 3 s into a 5 s run"


@pytest.mark.parametrize("end", ["done", "fail", "cancel", "release"])
def test_the_backstop_of_a_prefetched_task_counts_from_when_a_runner_was_free(end: str) -> None:
    """A worker of concurrency 1 that also took a second task (prefetch) starts it only when the first
    ends: its timeout + grace count from then, not from its dispatch (it was failed 40 s after its
    dispatch while it had run 15 s of its 30)."""
    core = make(lease_timeout=10)
    first, second = add(core, n=2, timeout=30.0, retries=0)
    join(core, credit=2, concurrency=1)
    assert sent_ids(core.take_effects(T0)) == [first, second]
    core.heartbeat("w1", T0 + 25)
    if end == "done":
        core.done("w1", [[first, 1, b""]], T0 + 25)
    elif end == "fail":
        core.fail("w1", first, 1, "x", T0 + 25)
    elif end == "cancel":
        core.cancel(first, T0 + 25)
    else:
        core.release("w1", [first], T0 + 25)
    core.take_effects(T0 + 25)
    for at in (T0 + 33, T0 + 41, T0 + 49, T0 + 57, T0 + 64.9):
        core.heartbeat("w1", at)
        core.tick(at)
        assert core.get(second).state is State.RUNNING, at
    core.heartbeat("w1", T0 + 65)
    core.tick(T0 + 65)  # 30 s + 10 s after the first one ended
    assert core.get(second).state is State.DEAD
    assert core.get(second).error == "timeout: no result within 30.0s (+10s grace)"


def test_the_backstop_of_tasks_beyond_the_concurrency_is_armed_in_dispatch_order() -> None:
    core = make(lease_timeout=10)
    ids = add(core, n=4, timeout=5.0, retries=0)
    join(core, credit=4, concurrency=2)
    core.take_effects(T0)
    assert sorted(tid for _, tid, _ in timers(core, BACKSTOP)) == ids[:2]
    core.done("w1", [[ids[1], 1, b""]], T0 + 1)
    assert sorted(tid for _, tid, _ in timers(core, BACKSTOP)) == [ids[0], ids[1], ids[2]]  # (ids[1]'s is stale)
    core.worker_left("w1", T0 + 2)  # the rest are lost, nothing left unarmed
    assert core.workers == {} and core.next_deadline() is None  # every backstop is stale: its task was lost


# ---------------------------------------------------------------------- cancel
def test_cancel_a_ready_task() -> None:
    core = make()
    (a,) = add(core, key="ka")
    (b,) = add(core)
    core.take_effects(T0)
    t = core.cancel(a, T0 + 1, reason="operator")
    fx = core.take_effects(T0 + 1)
    assert t.state is State.CANCELLED and t.finished_at == T0 + 1 and a not in core.tasks
    assert ev(fx, a) == [("cancelled", "cancelled", None, 0, "operator")]
    assert "ka" not in core.keys and core.stats.cancelled == 1
    assert core.queues["default"].ready == 1 and core.counts["default"]["ready"] == 1
    join(core, credit=5, now=T0 + 1)
    assert sent_ids(core.take_effects(T0 + 1)) == [b]  # never dispatched afterwards


def test_cancel_a_scheduled_task() -> None:
    core = make()
    (tid,) = add(core, delay=60)
    core.cancel(tid, T0)
    fx = core.take_effects(T0)
    assert ev(fx, tid)[-1] == ("cancelled", "cancelled", None, 0, "by request")
    join(core, credit=5)
    core.tick(T0 + 61)
    fx = core.take_effects(T0 + 61)
    assert sent(fx) == [] and fx.events == [] and core.get(tid).state is State.CANCELLED


def test_cancel_a_running_task_tells_its_worker() -> None:
    core = make()
    (tid,) = add(core)
    join(core)
    run_one(core, T0)
    core.cancel(tid, T0 + 1)
    fx = core.take_effects(T0 + 1)
    assert ev(fx, tid) == [("cancelled", "cancelled", "w1", 1, "by request")]
    assert other_ops(fx) == [{"op": "cancel", "id": tid, "lease": 1}]
    assert core.workers["w1"].running == {} and core.get(tid).state is State.CANCELLED
    core.done("w1", [[tid, 1, b"too late"]], T0 + 2)  # the worker finished before it heard
    assert core.get(tid).state is State.CANCELLED and core.get(tid).result is None
    assert core.stats.late_results == 1
    core.credit("w1", 1, T0 + 2)
    assert sent(core.take_effects(T0 + 2)) == []


def test_cancel_a_task_waiting_for_its_retry() -> None:
    core = make()
    (tid,) = add(core)
    join(core)
    run_one(core, T0)
    core.fail("w1", tid, 1, "x", T0)
    core.cancel(tid, T0)
    core.tick(T0 + 100)
    assert core.get(tid).state is State.CANCELLED and core.get(tid).error == "x"


def end_running(core: Core, tid: int, final: str) -> None:
    """Run task ``tid`` (retries=0) on a new worker w1 and end it as ``final``."""
    join(core)
    run_one(core, T0)
    if final == "succeeded":
        core.done("w1", [[tid, 1, b""]], T0)
    elif final == "dead":
        core.fail("w1", tid, 1, "x", T0)
    else:
        core.cancel(tid, T0)


@pytest.mark.parametrize("final", ["succeeded", "dead", "cancelled"])
def test_cancel_a_final_task_is_illegal(final: str) -> None:
    core = make()
    (tid,) = add(core, retries=0)
    end_running(core, tid, final)
    core.take_effects(T0)
    with pytest.raises(IllegalTransition) as exc_info:
        core.cancel(tid, T0)
    assert f"'{final}'" in str(exc_info.value) and exc_info.value.code == "invalid_state"
    assert core.take_effects(T0).events == []


def test_cancel_an_unknown_task() -> None:
    with pytest.raises(TaskMissing):
        make().cancel(999, T0)


# ---------------------------------------------------------------------- retry
@pytest.mark.parametrize("final", ["dead", "cancelled", "lost_dead"])
def test_retry_brings_a_dead_or_cancelled_task_back_with_fresh_attempts(final: str) -> None:
    core = make()
    (tid,) = add(core, retries=1, key="k")
    join(core)
    if final == "cancelled":
        core.cancel(tid, T0)
    else:
        for attempt in (1, 2):
            run_one(core, T0)
            if final == "dead":
                core.fail("w1", tid, attempt, "x", T0, retry_in=0)
                core.tick(T0)
            else:
                core.worker_left("w1", T0)
                join(core)
    core.take_effects(T0)
    assert core.get(tid).state.value == final.replace("lost_", "")
    t = core.retry(tid, T0 + 5)
    fx = core.take_effects(T0 + 5)
    assert ev(fx, tid) == [("retried", "ready", None, 0, "manual retry")]
    assert (t.state, t.attempt, t.worker, t.finished_at) == (State.READY, 0, None, None)
    assert tid in core.tasks and tid not in core.finished and core.keys["k"] is t
    assert core.counts["default"]["ready"] == 1
    entry = run_one(core, T0 + 5)
    assert entry["attempt"] == 1 and entry["lease"] == (1 if final == "cancelled" else 3)  # a lease is never reused
    if final != "cancelled":
        core.fail("w1", tid, 1, "stale", T0 + 5)  # the number of an earlier lease: refused
        assert core.get(tid).state is State.RUNNING
    core.fail("w1", tid, entry["lease"], "again", T0 + 5)
    assert core.get(tid).state is State.SCHEDULED  # a fresh set of retries


def test_retry_of_a_task_waiting_for_its_backoff_runs_it_now_and_keeps_the_count() -> None:
    core = make()
    (tid,) = add(core, retries=3)
    join(core)
    run_one(core, T0)
    core.fail("w1", tid, 1, "x", T0, retry_in=3600)
    core.take_effects(T0)
    t = core.retry(tid, T0 + 1)
    assert t.state is State.READY and t.attempt == 1 and t.run_at is None
    assert run_one(core, T0 + 1)["attempt"] == 2
    core.done("w1", [[tid, 2, b""]], T0 + 2)
    core.heartbeat("w1", T0 + 3601)
    core.tick(T0 + 3601)  # the old retry time passes: nothing happens
    assert core.get(tid).state is State.SUCCEEDED and core.take_effects(T0 + 3601).events[-1][2] == "succeeded"


@pytest.mark.parametrize("state", ["ready", "running", "succeeded"])
def test_retry_is_illegal_for_ready_running_and_succeeded(state: str) -> None:
    core = make()
    (tid,) = add(core)
    join(core)
    if state != "ready":
        run_one(core, T0)
    if state == "succeeded":
        core.done("w1", [[tid, 1, b""]], T0)
    core.take_effects(T0)
    before = core.get(tid).row()
    with pytest.raises(IllegalTransition) as exc_info:
        core.retry(tid, T0)
    assert f"'{state}'" in str(exc_info.value) and "'retried'" in str(exc_info.value)
    assert core.get(tid).row() == before and core.take_effects(T0).events == []


def test_retry_of_a_task_given_from_the_store() -> None:
    core = make()
    row = Task(50, "q", "t", b"\x01", 2, State.DEAD, None, 1.0, 0, 1, "k50", None, "boom", None, T0,
               T0, T0 + 1, "w-old").row()
    stored = Task.from_row(row)
    with pytest.raises(TaskMissing):
        core.retry(50, T0 + 3)
    t = core.retry(50, T0 + 3, stored)
    fx = core.take_effects(T0 + 3)
    assert t is stored and core.get(50) is t and core.keys["k50"] is t
    assert (t.state, t.attempt, t.worker, t.finished_at) == (State.READY, 0, None, None)
    assert ev(fx, 50) == [("retried", "ready", None, 0, "manual retry")]
    assert core.counts["q"]["ready"] == 1 and core.counts["q"]["dead"] == 0
    join(core, queues=("q",), credit=1, now=T0 + 3)
    assert sent(core.take_effects(T0 + 3))[0]["id"] == 50
    succeeded = Task.from_row(Task(51, "q", "t", b"", 0, State.SUCCEEDED, None, 1.0, 0, 1).row())
    with pytest.raises(IllegalTransition):
        core.retry(51, T0, succeeded)


def test_retry_is_refused_while_another_live_task_holds_the_key() -> None:
    core = make()
    (a,) = add(core, key="k")
    core.cancel(a, T0)
    (b,) = add(core, key="k")
    with pytest.raises(IllegalTransition):
        core.retry(a, T0)
    assert core.get(a).state is State.CANCELLED and core.keys["k"].id == b
    core.cancel(b, T0)
    assert core.retry(a, T0).state is State.READY and core.keys["k"].id == a


def test_a_retried_task_goes_to_the_back_of_its_queue() -> None:
    core = make()
    a, b, c = add(core, n=3)
    core.cancel(a, T0)
    core.retry(a, T0)
    join(core, credit=3)
    assert sent_ids(core.take_effects(T0)) == [b, c, a]


def test_a_result_from_a_cancelled_run_does_not_complete_the_retried_task() -> None:
    core = make()
    (tid,) = add(core)
    join(core, credit=2)
    core.take_effects(T0)
    core.cancel(tid, T0)  # the worker is told, but its `done` is already on the wire
    core.retry(tid, T0)
    assert sent_ids(core.take_effects(T0)) == [tid]  # the same worker gets it again, as attempt 1
    core.done("w1", [[tid, 1, b"from the cancelled run"]], T0)
    assert core.get(tid).state is State.RUNNING


# ---------------------------------------------------------------------- unique keys
def test_unique_key_while_live_returns_the_same_task() -> None:
    core = make()
    res = core.enqueue([spec(key="k"), spec(key="k", type_="other"), spec(key="j")], T0)
    assert res == [(1, True), (1, False), (2, True)]
    fx = core.take_effects(T0)
    assert sorted(r[0] for r in fx.new_rows) == [1, 2] and core.stats.enqueued == 2
    join(core)
    for phase in ("running", "scheduled"):
        if phase == "running":
            run_one(core, T0)
        else:
            core.fail("w1", 1, 1, "x", T0)
        assert core.get(1).state.value == phase
        assert core.enqueue([spec(key="k")], T0) == [(1, False)]
    assert core.next_id == 3


@pytest.mark.parametrize("final", ["succeeded", "dead", "cancelled"])
def test_unique_key_is_free_once_the_task_is_final(final: str) -> None:
    core = make()
    (tid,) = add(core, key="k", retries=0)
    end_running(core, tid, final)
    assert core.enqueue([spec(key="k")], T0 + 1) == [(tid + 1, True)]
    assert core.keys["k"].id == tid + 1


# ---------------------------------------------------------------------- pause and resume
def test_pause_and_resume() -> None:
    core = make()
    core.pause("default", T0)
    core.pause("default", T0)  # already paused: no second op
    ids = add(core, n=2)
    (later,) = add(core, delay=5)
    join(core, credit=5)
    fx = core.take_effects(T0)
    assert sent(fx) == [] and fx.queue_ops == [("default", True)]
    (stats,) = core.queue_stats()
    assert {k: stats[k] for k in ("queue", "paused", "scheduled", "ready", "running", "workers")} == {
        "queue": "default", "paused": True, "scheduled": 1, "ready": 2, "running": 0, "workers": 1}
    core.heartbeat("w1", T0 + 5)
    core.tick(T0 + 5)  # becomes ready, still not dispatched
    fx = core.take_effects(T0 + 5)
    assert sent(fx) == [] and kinds(fx, later) == ["due"]
    core.resume("default", T0 + 5)
    core.resume("default", T0 + 5)
    fx = core.take_effects(T0 + 5)
    assert sent_ids(fx) == ids + [later] and fx.queue_ops == [("default", False)]


def test_pause_only_stops_that_queue() -> None:
    core = make()
    (a,) = add(core, queue="a", priority=9)
    (b,) = add(core, queue="b")
    core.pause("a", T0)
    join(core, credit=2, queues=("a", "b"))
    assert sent_ids(core.take_effects(T0)) == [b]
    core.resume("a", T0)
    assert sent_ids(core.take_effects(T0)) == [a]


def test_pausing_does_not_touch_running_tasks_and_unknown_queues_are_created() -> None:
    core = make()
    (tid,) = add(core)
    join(core)
    run_one(core, T0)
    core.pause("default", T0)
    core.pause("nowhere", T0)
    core.done("w1", [[tid, 1, b""]], T0)
    fx = core.take_effects(T0)
    assert core.get(tid).state is State.SUCCEEDED
    assert fx.queue_ops == [("default", True), ("nowhere", True)] and core.queues["nowhere"].paused


# ---------------------------------------------------------------------- release and drain
def test_release_does_not_count_the_attempt_and_goes_to_the_front() -> None:
    core = make()
    ids = add(core, n=4)
    join(core, credit=2)
    core.take_effects(T0)
    core.release("w1", [ids[1]], T0 + 1)
    fx = core.take_effects(T0 + 1)
    assert ev(fx, ids[1]) == [("released", "ready", "w1", 0, "worker shutting down")]
    t = core.get(ids[1])
    assert (t.state, t.attempt, t.worker) == (State.READY, 0, None)
    assert core.workers["w1"].running.keys() == {ids[0]}
    join(core, "w2", credit=3, now=T0 + 1)
    entries = sent(core.take_effects(T0 + 1), "w2")
    assert [e["id"] for e in entries] == [ids[1], ids[2], ids[3]] and entries[0]["attempt"] == 1


def test_release_on_the_last_attempt_keeps_the_task_alive() -> None:
    core = make()
    (tid,) = add(core, retries=0)
    join(core)
    run_one(core, T0)
    core.release("w1", [tid], T0)
    core.worker_left("w1", T0)
    assert core.get(tid).state is State.READY and core.get(tid).attempt == 0


def test_release_of_a_task_not_held_is_logged_and_ignored() -> None:
    core = make()
    (tid,) = add(core)
    join(core)
    core.release("w1", [tid, 999, "x"], T0)
    fx = core.take_effects(T0)
    assert core.get(tid).state is State.READY and kinds(fx, tid) == []
    assert len(fx.logs) == 3 and all("does not hold" in text for _, text in fx.logs)


def test_a_graceful_stop_costs_no_attempt() -> None:
    core = make()
    (tid,) = add(core, retries=0)
    join(core, credit=3)  # concurrency + prefetch
    core.take_effects(T0)
    core.release("w1", [tid], T0)  # stopping: hand back what has not started
    fx = core.take_effects(T0)
    core.worker_left("w1", T0)  # then close
    assert sent(fx) == [], "sent back to the worker that is stopping"
    assert core.get(tid).state is State.READY and core.get(tid).attempt == 0


def test_an_empty_release_says_the_worker_is_stopping() -> None:
    core = make()
    join(core, credit=3)
    core.release("w1", [], T0)  # a stopping worker that holds nothing unstarted
    (tid,) = add(core, now=T0 + 1)
    fx = core.take_effects(T0 + 1)
    assert sent(fx) == [] and fx.events == [] and core.workers["w1"].state == "draining"
    assert core.get(tid).state is State.READY


def test_a_task_retried_from_the_store_gets_a_lease_never_given_before() -> None:
    core = make()
    (tid,) = add(core)
    join(core)
    for _ in range(3):  # leases 1..3 of the task, on the same worker
        entry = run_one(core, T0)
        core.release("w1", [tid], T0)
        core.workers["w1"].state = WorkerState.ACTIVE  # (as if it had reconnected)
    assert entry["lease"] == 3 and core.max_lease == 3
    core.cancel(tid, T0)
    stored = Task.from_row(core.get(tid).row())  # as the server reads it back once it left memory
    core.finished.clear()
    assert stored.lease == stored.attempt == 0
    core.retry(tid, T0 + 1, stored)
    entry = run_one(core, T0 + 1)
    assert entry["attempt"] == 1 and entry["lease"] == 4
    core.done("w1", [[tid, 3, b"from an old run"]], T0 + 1)
    assert core.get(tid).state is State.RUNNING
    core.done("w1", [[tid, 4, b"ok"]], T0 + 1)
    assert core.get(tid).state is State.SUCCEEDED and core.get(tid).result == b"ok"


def test_drain_worker() -> None:
    core = make()
    a, b, c = add(core, n=3)
    join(core, credit=1)
    core.take_effects(T0)
    core.drain_worker("w1", T0)
    core.credit("w1", 5, T0)
    fx = core.take_effects(T0)
    assert fx.outbox["w1"] == [{"op": "drain"}] and core.workers["w1"].state == "draining"
    assert core.workers["w1"].as_dict()["state"] == "draining"
    core.done("w1", [[a, 1, b""]], T0 + 1)  # results of running tasks are still accepted
    core.release("w1", [], T0 + 1)
    fx = core.take_effects(T0 + 1)
    assert core.get(a).state is State.SUCCEEDED and sent(fx) == []
    join(core, "w2", credit=5, now=T0 + 1)
    assert sent_ids(core.take_effects(T0 + 1), "w2") == [b, c]
    core.tick(T0 + 11)  # a draining worker's lease still expires
    assert "w1" not in core.workers
    with pytest.raises(KeyError):
        core.drain_worker("nobody", T0)


def test_task_types_of_the_connected_workers() -> None:
    core = make()
    assert core.task_types() == []
    join(core, "w1", queues=("mail",), types=("send_email", "add"))
    join(core, "w2", queues=("default", "mail"), types=("add",))
    join(core, "w3")  # announced none
    assert core.task_types() == [
        {"type": "add", "workers": 2, "queues": ["default", "mail"], "batch": None, "requires": None},
        {"type": "send_email", "workers": 1, "queues": ["mail"], "batch": None, "requires": None},
    ]
    assert core.workers["w1"].as_dict()["types"] == ["send_email", "add"]
    core.worker_left("w1", T0)
    assert [t["type"] for t in core.task_types()] == ["add"]


# ---------------------------------------------------------------------- restart
def test_recover_rebuilds_state() -> None:
    rows = [
        Task(3, "q", "t", b"", 0, State.READY, None, 1.0, 3, 0, "k3", None, None, None, T0).row(),
        Task(4, "q", "t", b"\x09", 0, State.RUNNING, None, 1.0, 3, 2, None, None, "e", b"\x05", T0, T0, None,
             "w-old").row(),
        Task(5, "q", "t", b"", 0, State.SCHEDULED, T0 + 100, 1.0, 3, 1, None, None, None, None, T0).row(),
        Task(6, "r", "t", b"", 1, State.READY, None, 1.0, 3, 0, None, None, None, None, T0).row(),
        Task(7, "q", "t", b"", 0, State.FAILED, None, 1.0, 3, 1, None, None, "x", None, T0).row(),
    ]
    core = make()
    assert core.recover(iter(rows), ["q"], 9, T0 + 1) == 1
    fx = core.take_effects(T0 + 1)
    assert [e[0] for e in fx.events] == [4, 7]
    assert ev(fx, 4) == [("recovered", "ready", None, 2, "server restarted while it ran")]
    # a row left in `failed` takes the table's backoff step, with its event, and its row is written again
    assert ev(fx, 7) == [("retry_scheduled", "scheduled", None, 1, "server restarted before its retry was scheduled")]
    assert row_of(fx, 7)["state"] == "scheduled" and row_of(fx, 7)["run_at"] == T0 + 1
    t4 = core.get(4)
    assert (t4.state, t4.worker, t4.attempt, t4.payload, t4.progress) == (State.READY, None, 2, b"\x09", b"\x05")
    assert core.get(5).state is State.SCHEDULED and core.get(5).run_at == T0 + 100
    assert core.get(7).state is State.SCHEDULED and core.get(7).run_at == T0 + 1  # failed: retried now
    assert core.queues["q"].paused and not core.queues["r"].paused
    assert core.enqueue([spec(key="k3")], T0 + 1) == [(3, False)]
    assert add(core, now=T0 + 1) == [9]  # next_id continues
    assert +core.counts["q"] == {"ready": 2, "scheduled": 2}
    assert core.counts["default"]["ready"] == 1
    join(core, credit=5, queues=("q", "r"), now=T0 + 1)
    assert sent_ids(core.take_effects(T0 + 1)) == [6]  # q is paused
    core.resume("q", T0 + 1)
    core.tick(T0 + 1)
    fx = core.take_effects(T0 + 1)
    assert sent_ids(fx) == [3, 4, 7]  # the ready ones in id order, then the promoted one
    assert [t["attempt"] for t in sent(fx)] == [1, 3, 2]  # the recovered attempt stays counted


def test_recover_never_lowers_next_id() -> None:
    core = Core(CoreConfig(), random.Random(1), next_id=20)
    core.recover([], [], 5, T0)
    assert add(core) == [20]


def test_a_task_recovered_on_its_last_attempt_runs_once_more() -> None:
    row = Task(1, "default", "t", b"", 0, State.RUNNING, None, 1.0, 1, 2, None, None, None, None, T0, T0,
               None, "w-old").row()
    core = make()
    core.recover([row], [], 2, T0)
    join(core)
    assert run_one(core, T0)["attempt"] == 3
    core.fail("w1", 1, 3, "x", T0)
    assert core.get(1).state is State.DEAD


# ---------------------------------------------------------------------- failed commits
def test_a_failed_commit_is_rewritten_even_for_tasks_that_left_the_finished_cache() -> None:
    core = make(finished_cache=1)
    ids = add(core, n=3)
    join(core, credit=3)
    fx = core.take_effects(T0)
    core.done("w1", [[tid, 1, b"r"] for tid in ids], T0 + 1)
    failed = core.take_effects(T0 + 1)
    assert {r[0]: r[5] for r in failed.rows} == dict.fromkeys(ids, "succeeded")
    assert list(core.finished) == [ids[-1]]
    core.restore_effects([r[0] for r in failed.rows], failed.events, [], failed.rows)
    again = core.take_effects(T0 + 2)
    assert sorted(again.rows) == sorted(failed.rows)
    assert [e for e in again.events if e in failed.events] == failed.events
    assert sent_ids(fx) == ids


def test_enqueues_can_be_forgotten_only_while_untouched() -> None:
    core = make()
    a, b = add(core, n=2)
    assert core.can_forget([a, b])
    join(core, credit=1)
    core.take_effects(T0)  # a is dispatched
    assert not core.can_forget([a, b]) and core.can_forget([b])
    core.release("w1", [a], T0)
    assert core.get(a).attempt == 0 and not core.can_forget([a])  # (its rows were written since)
    core.cancel(b, T0)
    assert not core.can_forget([b])


# ---------------------------------------------------------------------- counts
def test_queue_stats_match_the_tasks() -> None:
    core = make()
    add(core, queue="a", n=3)
    add(core, queue="a", delay=9)
    add(core, queue="b", n=2)
    join(core, credit=2, queues=("a",))
    join(core, "w2", queues=("a", "b"))
    core.take_effects(T0)
    core.cancel(6, T0)
    core.done("w1", [[1, 1, b""]], T0)
    assert core.queue_stats() == [
        {"queue": "a", "paused": False, "scheduled": 1, "ready": 1, "running": 1, "workers": 2,
         "enqueued": 4, "succeeded": 1, "failed": 0, "dead": 0, "cancelled": 0},
        {"queue": "b", "paused": False, "scheduled": 0, "ready": 1, "running": 0, "workers": 1,
         "enqueued": 2, "succeeded": 0, "failed": 0, "dead": 0, "cancelled": 1},  # (totals since the start)
    ]
    assert "default" not in {s["queue"] for s in core.queue_stats()}


# ---------------------------------------------------------------------- invariants under random operations
def check_effects(fx: Effects) -> None:
    """Every written row and event carries a legal state and the right shape."""
    for r in fx.rows:
        assert len(r) == len(TASK_COLUMNS) and r[5] in STATE_NAMES and r[5] != "failed", r
    for r in fx.new_rows:
        assert len(r) == len(NEW_COLUMNS) and r[5] in ("ready", "scheduled"), r
    assert not {r[0] for r in fx.rows} & {r[0] for r in fx.new_rows}
    for e in fx.events:
        assert len(e) == len(EVENT_ROW_COLUMNS) and e[3] in STATE_NAMES, e


def check_invariants(core: Core, granted: dict[str, int], received: dict[str, int], now: float,
                     recovered_last: frozenset[int] = frozenset()) -> None:
    """``recovered_last``: tasks recovered on their last attempt, which run once more (docs/semantics.md)."""
    holders: dict[int, str] = {}
    armed = {(tid, lease) for _, tid, lease in timers(core, BACKSTOP)}
    assert set(core.hungry) <= set(core.workers)
    for w in core.workers.values():
        assert received.get(w.id, 0) <= granted.get(w.id, 0), "sent more tasks than the credit granted"
        assert w.credit == granted.get(w.id, 0) - received.get(w.id, 0) >= 0
        assert (w.id in core.hungry) == (w.credit > 0 and w.state == "active"), w.id
        # the backstop is armed for the tasks the worker can have started: the first `concurrency` it holds
        assert len(w.running) - len(w.unarmed) == min(len(w.running), w.concurrency), w.id
        assert list(w.unarmed) == list(w.running)[len(w.running) - len(w.unarmed):]
        for tid, (t, lease) in w.unarmed.items():
            assert w.running[tid] is t and t.lease == lease and (tid, lease) not in armed
        for tid, t in w.running.items():
            assert tid not in holders, f"task {tid} held by {holders[tid]} and {w.id}"
            holders[tid] = w.id
            assert core.tasks.get(tid) is t and t.state is State.RUNNING and t.worker == w.id
    deadlines = {(tid, lease) for _, tid, lease in timers(core, BACKSTOP)}
    sched = {(tid, at) for at, tid in timers(core, DELAY)}
    # one silence watch per connected worker, of its own join (an earlier worker's under the same id is stale)
    silences = [(wid, joined) for _, wid, joined in timers(core, SILENCE)
                if wid in core.workers and core.workers[wid].joined == joined]
    assert sorted(silences) == sorted((wid, w.joined) for wid, w in core.workers.items())
    counted: dict[tuple[str, str], int] = {}
    for t in core.tasks.values():
        assert t.state not in FINAL_STATES and t.state is not State.FAILED, t
        assert t.id not in core.finished
        counted[(t.queue, t.state.value)] = counted.get((t.queue, t.state.value), 0) + 1
        if t.state is State.RUNNING:
            assert holders.get(t.id) == t.worker, f"running task {t.id} not in its worker's running dict"
            # the server-side backstop is armed, or will be once the worker has a runner free for it
            assert (t.id, t.lease) in deadlines or t.id in core.workers[t.worker or ""].unarmed
            assert t.lease >= t.attempt
            assert 1 <= t.attempt <= t.max_retries + 1 or (t.id in recovered_last and t.attempt >= 1)
        else:
            assert t.id not in holders
        if t.state is State.SCHEDULED:
            assert (t.id, t.run_at) in sched  # it will be promoted
        assert (t.queued == QUEUED) == (t.state is State.READY)
        if t.key is not None:
            assert core.keys[t.key] is t
    assert set(holders) <= set(core.tasks)
    for (queue, state), n in counted.items():
        assert core.counts[queue][state] == n, (queue, state)
    for queue, c in core.counts.items():
        for state, n in c.items():
            assert n == counted.get((queue, state), 0), (queue, state, n)
    for s in core.queue_stats():
        for state in ("scheduled", "ready", "running"):
            assert s[state] == counted.get((s["queue"], state), 0)
    for name, q in core.queues.items():
        assert q.ready == counted.get((name, "ready"), 0)
    for key, t in core.keys.items():
        assert core.tasks.get(t.id) is t and t.key == key
    for t in core.finished.values():
        assert t.state in FINAL_STATES and t.finished_at is not None
    # nothing waits while a worker could take it (checked right after take_effects)
    for w in core.workers.values():
        if w.credit > 0 and w.state == "active":
            for name in w.queues:
                q = core.queues[name]
                assert q.paused or q.peek() is None, f"{w.id} has credit but {name} has ready tasks"
    nd = core.next_deadline()
    due = [t.run_at for t in core.tasks.values() if t.state is State.SCHEDULED]
    due += [w.last_seen + core.config.lease_timeout for w in core.workers.values()]
    if due:  # (a standing backstop may come first)
        assert nd is not None and nd <= min(due)
    if not core.workers and not due:
        assert nd is None  # (no worker: no running task, every backstop is stale)


class Driver:
    """Applies random operations to a core and checks the invariants after each one."""

    OPS = ("enqueue", "enqueue", "credit", "credit", "finish", "finish", "finish", "cancel", "retry", "tick",
           "tick", "join", "leave", "pause", "drain", "release_all", "retry_stored", "restart")

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.core = Core(CoreConfig(lease_timeout=10, backoff_base=0.5, backoff_max=8), rng=random.Random(seed))
        self.now = T0
        self.granted: dict[str, int] = {}
        self.received: dict[str, int] = {}
        self.nworkers = 0
        self.seen_states: set[str] = set()
        self.seen_kinds: set[str] = set()
        #: what a store would hold: every task row written (full rows, by id), and the paused queues
        self.disk: dict[int, tuple[Any, ...]] = {}
        self.paused: set[str] = set()
        #: (task id, lease) given in this life of the core: a lease is never given twice
        self.leases: set[tuple[int, int]] = set()
        self.recovered_last: set[int] = set()
        #: per task, the state named by the last live event told about it: every change of state goes
        #: through the transition table, which tells subscribers (the ``enqueued`` of rule 1 included)
        self.told: dict[int, str] = {}
        self.core.observed = True

    def effects(self) -> None:
        fx = self.core.take_effects(self.now)
        check_effects(fx)
        for r in fx.new_rows:
            full = dict.fromkeys(TASK_COLUMNS)
            full.update(zip(NEW_COLUMNS, r, strict=True))
            full["attempt"] = 0
            assert r[0] not in self.disk, "a task inserted twice"
            self.disk[r[0]] = tuple(full.values())
        for r in fx.rows:
            self.disk[r[0]] = r
        for name, paused in fx.queue_ops:
            (self.paused.add if paused else self.paused.discard)(name)
        for wid, msgs in fx.outbox.items():
            for m in msgs:
                if m["op"] == "tasks":
                    self.received[wid] = self.received.get(wid, 0) + len(m["tasks"])
                    for t in m["tasks"]:
                        task = self.core.tasks[t["id"]]
                        assert task.worker == wid and task.attempt == t["attempt"] and task.lease == t["lease"]
                        assert (t["id"], t["lease"]) not in self.leases, "a lease number given twice"
                        self.leases.add((t["id"], t["lease"]))
        self.seen_kinds.update(e[2] for e in fx.events)
        for row, task in fx.notices:
            assert row[0] == task.id
            self.told[task.id] = row[3]
        for t in [*self.core.tasks.values(), *self.core.finished.values()]:
            assert self.told.get(t.id) == t.state.value, f"task {t.id} became {t.state.value} with no event"
        check_invariants(self.core, self.granted, self.received, self.now, frozenset(self.recovered_last))
        self.seen_states.update(t.state.value for t in self.core.tasks.values())
        self.seen_states.update(t.state.value for t in self.core.finished.values())

    def step(self, op: str | None = None) -> None:
        core, rng = self.core, self.rng
        op = op or rng.choice(self.OPS)
        if op == "enqueue":
            core.enqueue([TaskSpec(type="t", queue=rng.choice("ab"), priority=rng.choice([0, 1, 2]),
                                   delay=rng.choice([None, None, 0.5, 3.0]), key=rng.choice([None, None, "x", "y"]),
                                   retries=rng.choice([0, 1, 2]), timeout=rng.choice([None, 2.0, 30.0]))
                          for _ in range(rng.randint(1, 4))], self.now)
        elif op == "join":
            self.nworkers += 1
            core.worker_joined(f"w{self.nworkers}", self.now, queues=rng.choice([("a",), ("b",), ("a", "b")]))
        elif op == "credit" and core.workers:
            wid = rng.choice(sorted(core.workers))
            n = rng.randint(-1, 3)
            core.credit(wid, n, self.now)
            self.granted[wid] = self.granted.get(wid, 0) + max(n, 0)
        elif op == "finish" and any(w.running for w in core.workers.values()):
            w = rng.choice([w for w in core.workers.values() if w.running])
            tid = rng.choice(sorted(w.running))
            lease = w.running[tid].lease
            outcome = rng.choice(["done", "done", "fail", "retry_in", "release", "late", "progress", "other"])
            before = core.tasks[tid].row()
            if outcome == "done":
                core.done(w.id, [[tid, lease, b"r"]], self.now)
            elif outcome == "fail":
                core.fail(w.id, tid, lease, "x", self.now, max_retries=rng.choice([None, 0, 2]))
            elif outcome == "retry_in":
                core.fail(w.id, tid, lease, "x", self.now, retry_in=rng.choice([0.0, 0.3, 2.0]))
            elif outcome == "release":
                core.release(w.id, [tid], self.now)
            elif outcome == "progress":
                core.progress(w.id, tid, lease, b"p", self.now)
            elif outcome == "late":  # a wrong lease: refused, the task unchanged
                core.done(w.id, [[tid, lease + rng.choice([-1, 1]), b""]], self.now)
                assert core.tasks[tid].row() == before
            else:  # from a worker that does not hold it: refused, the task unchanged
                others = [x for x in core.workers if x != w.id]
                if others:
                    core.fail(rng.choice(others), tid, lease, "x", self.now)
                    assert core.tasks[tid].row() == before
        elif op == "cancel" and core.tasks:
            core.cancel(rng.choice(sorted(core.tasks)), self.now)
        elif op == "retry" and (core.finished or core.tasks):
            tid = rng.choice(sorted(core.finished) + sorted(core.tasks))
            t = core.get(tid)
            ok = t.state in (State.DEAD, State.CANCELLED, State.SCHEDULED) and (
                t.key is None or core.keys.get(t.key, t) is t)
            try:
                core.retry(tid, self.now)
                assert ok
            except IllegalTransition:
                assert not ok
        elif op == "release_all" and core.workers:  # a stopping worker hands back all it holds (and one it does not)
            w = core.workers[rng.choice(sorted(core.workers))]
            core.release(w.id, [*w.running, 10**9], self.now)
            assert w.state == "draining" and not w.running
        elif op == "retry_stored":  # a final task no longer in memory, read back from the store
            gone = [tid for tid, r in self.disk.items()
                    if r[5] in ("dead", "cancelled") and tid not in core.tasks and tid not in core.finished]
            if gone:
                tid = rng.choice(sorted(gone))
                t = Task.from_row(self.disk[tid])
                try:
                    core.retry(tid, self.now, t)
                    assert t.key is None or core.keys[t.key] is t
                except IllegalTransition:
                    assert t.key is not None and core.keys.get(t.key) not in (None, t)
        elif op == "restart" and any(w.running for w in core.workers.values()) and rng.random() < 0.4:
            # the server restarts from what was written (while a task runs): every worker is gone
            live = sorted((r for r in self.disk.values() if r[5] in ("scheduled", "ready", "running", "failed")),
                          key=lambda r: r[0])
            running = sum(1 for r in live if r[5] == "running")
            self.recovered_last |= {r[0] for r in live if r[5] == "running" and r[9] >= r[8] + 1}
            self.core = core = Core(core.config, rng=random.Random(rng.random()))
            core.observed = True
            assert core.recover(iter(live), sorted(self.paused), max(self.disk, default=0) + 1, self.now) == running
            self.granted, self.received, self.leases = {}, {}, set()
            # (worker ids keep growing: no worker of the previous life can speak for a new lease)
        elif op == "leave" and core.workers:
            core.worker_left(rng.choice(sorted(core.workers)), self.now)
        elif op == "pause":
            q = rng.choice("ab")
            if q in core.queues and core.queues[q].paused:
                core.resume(q, self.now)
            else:
                core.pause(q, self.now)
        elif op == "drain" and core.workers and rng.random() < 0.3:
            core.drain_worker(rng.choice(sorted(core.workers)), self.now)
        elif op == "tick":
            self.now += rng.choice([0.2, 1.0, 4.0, 11.0])
            for wid in list(core.workers):
                if rng.random() < 0.85:
                    core.heartbeat(wid, self.now)
            core.tick(self.now)
        self.effects()


@pytest.mark.parametrize("seed", range(12))
def test_random_sequences_keep_the_books_balanced(seed: int) -> None:
    d = Driver(seed)
    for _ in range(2000):
        d.step()
    # the run exercised the interesting paths (else the test proves little)
    assert {"scheduled", "ready", "running", "succeeded", "dead", "cancelled"} <= d.seen_states
    assert {"lost", "released", "retried", "due", "retry_scheduled", "late_result", "recovered"} <= d.seen_kinds, \
        d.seen_kinds


class CoreMachine(RuleBasedStateMachine):
    """The same operations, chosen by hypothesis (which shrinks a failing sequence to a short one)."""

    def __init__(self) -> None:
        super().__init__()
        self.driver = Driver(0)

    @rule(op=st.sampled_from(sorted(set(Driver.OPS))), choices=st.integers(0, 2**32))
    def step(self, op: str, choices: int) -> None:
        self.driver.rng = random.Random(choices)  # the operation's own choices (which task, which outcome)
        self.driver.step(op)


TestCoreMachine = CoreMachine.TestCase
TestCoreMachine.settings = settings(max_examples=60, stateful_step_count=50, deadline=None, derandomize=True,
                                    database=None)


def test_held_credit_is_capped_so_that_it_fits_64_bits() -> None:
    """Two grants of 2^63-1 overflowed every int64 reader of a worker's credit (issue 10)."""
    core = make()
    join(core, credit=2**63 - 1)
    core.credit("w1", 2**63 - 1, T0)
    assert core.workers["w1"].credit == 1_000_000_000 == MAX_CREDIT
    add(core)  # (one task sent: one credit used)
    core.take_effects(T0)
    assert core.workers["w1"].credit == MAX_CREDIT - 1
