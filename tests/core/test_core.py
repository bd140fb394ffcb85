"""The sans-IO core, driven with a fake clock (plain floats) and a seeded random source."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from runq.app.core import Core, CoreConfig, IllegalTransition, State, Task, TaskMissing
from runq.protocol.messages import TaskSpec

T0 = 1_000.0


def make(**cfg: Any) -> Core:
    return Core(CoreConfig(**cfg), rng=random.Random(1))


def spec(type_: str = "t", **kw: Any) -> TaskSpec:
    return TaskSpec(type=type_, **kw)


def join(core: Core, wid: str = "w1", credit: int = 0, now: float = T0, **kw: Any) -> None:
    core.worker_joined(wid, now, **kw)
    if credit:
        core.credit(wid, credit, now)


def dispatched(fx: Any, wid: str = "w1") -> list[dict[str, Any]]:
    return [t for m in fx.outbox.get(wid, []) if m["op"] == "tasks" for t in m["tasks"]]


def kinds(fx: Any, tid: int) -> list[str]:
    return [e[2] for e in fx.events if e[0] == tid]


# ---------------------------------------------------------------------- enqueue and dispatch
def test_ids_increase_and_priority_then_fifo_order() -> None:
    core = make()
    ids = [i for i, _ in core.enqueue([spec(priority=p) for p in (0, 5, 1, 5, 0)], T0)]
    assert ids == [1, 2, 3, 4, 5]
    join(core, credit=10)
    got = [t["id"] for t in dispatched(core.take_effects(T0))]
    assert got == [2, 4, 3, 1, 5]


def test_worker_with_several_queues_takes_the_best_across_them() -> None:
    core = make()
    core.enqueue([spec(queue="a", priority=1), spec(queue="b", priority=3), spec(queue="a", priority=3),
                  spec(queue="c", priority=9)], T0)
    join(core, queues=("a", "b"), credit=10)
    assert [t["id"] for t in dispatched(core.take_effects(T0))] == [2, 3, 1]  # never queue c


def test_credit_bounds_dispatch() -> None:
    core = make()
    core.enqueue([spec() for _ in range(5)], T0)
    join(core)
    assert dispatched(core.take_effects(T0)) == []
    core.credit("w1", 2, T0)
    assert len(dispatched(core.take_effects(T0))) == 2
    core.credit("w1", 0, T0)
    assert dispatched(core.take_effects(T0)) == []
    core.credit("w1", 10, T0)
    assert len(dispatched(core.take_effects(T0))) == 3
    assert core.workers["w1"].credit == 7


def test_dispatch_message_and_events() -> None:
    core = make()
    (tid, created), = core.enqueue([spec("resize", payload=b"\x01", timeout=5, retries=1)], T0)
    assert created
    join(core, credit=1)
    fx = core.take_effects(T0 + 1)
    (msg,) = dispatched(fx)
    assert msg == {"id": tid, "type": "resize", "payload": b"\x01", "attempt": 1, "timeout": 5.0,
                   "queue": "default", "priority": 0, "max_retries": 1}
    assert [e[2:6] for e in fx.events] == [("enqueued", "ready", None, 0), ("started", "running", "w1", 1)]
    assert core.get(tid).started_at == T0 + 1


# ---------------------------------------------------------------------- delays
def test_delayed_tasks_wait_for_their_time() -> None:
    core = make()
    (tid, _), = core.enqueue([spec(delay=10)], T0)
    (at, _), = core.enqueue([spec(run_at=T0 + 5)], T0)
    (past, _), = core.enqueue([spec(run_at=T0 - 5)], T0)
    join(core, credit=10)
    assert [t["id"] for t in dispatched(core.take_effects(T0))] == [past]
    assert core.get(tid).state is State.SCHEDULED
    assert core.next_deadline() == pytest.approx(T0 + 5)
    core.tick(T0 + 5)
    fx = core.take_effects(T0 + 5)
    assert [t["id"] for t in dispatched(fx)] == [at] and kinds(fx, at) == ["due", "started"]
    core.heartbeat("w1", T0 + 9)
    core.tick(T0 + 9.99)
    assert dispatched(core.take_effects(T0 + 9.99)) == []
    core.tick(T0 + 10)
    assert [t["id"] for t in dispatched(core.take_effects(T0 + 10))] == [tid]


# ---------------------------------------------------------------------- results
def test_success_stores_result_and_frees_the_key() -> None:
    core = make()
    (tid, _), = core.enqueue([spec(key="k")], T0)
    assert core.enqueue([spec(key="k")], T0) == [(tid, False)]
    join(core, credit=1)
    core.take_effects(T0)
    core.done("w1", [[tid, 1, b"\x2a"]], T0 + 1)
    fx = core.take_effects(T0 + 1)
    t = core.get(tid)
    assert t.state is State.SUCCEEDED and t.result == b"\x2a" and t.finished_at == T0 + 1
    assert tid not in core.tasks and tid in core.finished
    assert kinds(fx, tid) == ["succeeded"]
    (new, created), = core.enqueue([spec(key="k")], T0 + 2)
    assert created and new != tid


def test_failures_back_off_exponentially_with_jitter_then_die() -> None:
    core = make(backoff_base=2.0, jitter=0.25)
    (tid, _), = core.enqueue([spec(retries=3)], T0)
    join(core, credit=100)
    now = T0
    delays = []
    for attempt in range(1, 5):
        core.take_effects(now)
        core.fail("w1", tid, attempt, f"boom {attempt}", now)
        fx = core.take_effects(now)
        t = core.get(tid)
        if attempt <= 3:
            assert t.state is State.SCHEDULED and kinds(fx, tid) == ["failed", "retry_scheduled"]
            delay = t.run_at - now  # type: ignore[operator]
            base = 2.0 * 2 ** (attempt - 1)
            assert 0.75 * base <= delay <= 1.25 * base
            delays.append(delay)
            now = t.run_at  # type: ignore[assignment]
            core.heartbeat("w1", now)
            core.tick(now)
        else:
            assert t.state is State.DEAD and kinds(fx, tid) == ["failed", "dead"]
            assert t.error == "boom 4" and t.attempt == 4
    assert delays == sorted(delays)


def test_backoff_is_capped() -> None:
    core = make(backoff_base=1.0, backoff_max=10.0, jitter=0.0)
    assert core.backoff(1) == 1.0 and core.backoff(3) == 4.0 and core.backoff(30) == 10.0


def test_retry_in_and_handler_retries_override() -> None:
    core = make()
    (tid, _), = core.enqueue([spec(retries=5)], T0)
    join(core, credit=10)
    core.take_effects(T0)
    core.fail("w1", tid, 1, "later", T0, retry_in=30.0)
    assert core.get(tid).run_at == T0 + 30
    core.heartbeat("w1", T0 + 30)
    core.tick(T0 + 30)
    core.take_effects(T0 + 30)
    core.fail("w1", tid, 2, "again", T0 + 30, max_retries=1)
    assert core.get(tid).state is State.DEAD and core.get(tid).max_retries == 1


# ---------------------------------------------------------------------- leases
def test_silent_worker_loses_its_tasks_which_go_to_the_front() -> None:
    core = make(lease_timeout=10)
    core.enqueue([spec(), spec(), spec()], T0)
    join(core, credit=1)
    core.take_effects(T0)
    core.heartbeat("w1", T0 + 8)
    core.tick(T0 + 17)
    assert "w1" in core.workers  # heartbeat renewed the lease
    fx = core.take_effects(T0 + 17)
    core.tick(T0 + 18)
    fx = core.take_effects(T0 + 18)
    assert "w1" not in core.workers and core.stats.lease_expiries == 1
    assert kinds(fx, 1) == ["lost"] and "lease expired" in fx.events[0][6]
    assert core.get(1).state is State.READY and core.get(1).attempt == 1
    assert any(m["op"] == "error" for m in fx.outbox["w1"])
    join(core, "w2", credit=1, now=T0 + 18)
    (again,) = dispatched(core.take_effects(T0 + 18), "w2")
    assert again["id"] == 1 and again["attempt"] == 2  # front of its queue, attempt counted


def test_lost_on_the_last_attempt_is_dead() -> None:
    core = make()
    (tid, _), = core.enqueue([spec(retries=0)], T0)
    join(core, credit=1)
    core.take_effects(T0)
    core.worker_left("w1", T0 + 1)
    fx = core.take_effects(T0 + 1)
    assert core.get(tid).state is State.DEAD and kinds(fx, tid) == ["lost_dead"]


def test_late_and_wrong_attempt_results_are_refused() -> None:
    core = make()
    (tid, _), = core.enqueue([spec()], T0)
    join(core, credit=1)
    core.take_effects(T0)
    core.done("w1", [[tid, 7, b"x"]], T0)  # wrong attempt
    join(core, "w2", credit=1)
    core.fail("w2", tid, 1, "not mine", T0)  # wrong worker
    core.progress("w2", tid, 1, b"\x01", T0)
    fx = core.take_effects(T0)
    assert core.get(tid).state is State.RUNNING and core.get(tid).result is None
    assert kinds(fx, tid) == ["late_result"] * 3 and core.stats.late_results == 3
    assert len(fx.logs) == 3 and all("refused" in text for _, text in fx.logs)
    core.worker_left("w1", T0 + 1)
    core.done("w1", [[tid, 1, b"x"]], T0 + 2)
    assert core.get(tid).state is State.READY


def test_server_side_timeout_backstop() -> None:
    core = make(lease_timeout=10)
    (tid, _), = core.enqueue([spec(timeout=5, retries=1)], T0)
    join(core, credit=1)
    core.take_effects(T0)
    for t in (T0 + 3, T0 + 6, T0 + 9, T0 + 12, T0 + 14.9):
        core.heartbeat("w1", t)
        core.tick(t)
    assert core.get(tid).state is State.RUNNING
    core.heartbeat("w1", T0 + 15)
    core.tick(T0 + 15)
    fx = core.take_effects(T0 + 15)
    assert core.get(tid).state is State.SCHEDULED and "timeout" in (core.get(tid).error or "")
    assert {"op": "cancel", "id": tid, "attempt": 1} in fx.outbox["w1"]
    assert ("failed", "timeout (server)") in [(e[2], e[6]) for e in fx.events]


# ---------------------------------------------------------------------- cancel, retry, release
def test_cancel_in_each_state() -> None:
    core = make()
    (ready, _), (sched, _), (run, _) = core.enqueue([spec(priority=1), spec(delay=60), spec()], T0)
    join(core, credit=1)
    core.take_effects(T0)  # `ready` (priority 1) is running now... pick by state instead
    running = next(t for t in core.tasks.values() if t.state is State.RUNNING).id
    queued = run if running == ready else ready
    assert core.cancel(queued, T0).state is State.CANCELLED
    assert core.cancel(sched, T0).state is State.CANCELLED
    core.cancel(running, T0)
    fx = core.take_effects(T0)
    assert {"op": "cancel", "id": running, "attempt": 1} in fx.outbox["w1"]
    assert running not in core.workers["w1"].running
    with pytest.raises(IllegalTransition):
        core.cancel(running, T0)
    with pytest.raises(TaskMissing):
        core.cancel(999, T0)
    core.credit("w1", 5, T0)
    assert dispatched(core.take_effects(T0)) == []  # cancelled tasks never dispatched
    core.tick(T0 + 61)
    assert dispatched(core.take_effects(T0 + 61)) == []


def test_retry_brings_back_dead_and_cancelled_only() -> None:
    core = make()
    (a, _), (b, _) = core.enqueue([spec(retries=0), spec()], T0)
    join(core, credit=1)
    core.take_effects(T0)
    core.fail("w1", a, 1, "x", T0)
    core.cancel(b, T0)
    for tid in (a, b):
        t = core.retry(tid, T0 + 1)
        assert t.state is State.READY and t.attempt == 0 and tid in core.tasks
    with pytest.raises(IllegalTransition):
        core.retry(a, T0 + 1)  # ready
    core.credit("w1", 1, T0 + 1)
    core.take_effects(T0 + 1)
    core.done("w1", [[a, 1, b""]], T0 + 2)
    with pytest.raises(IllegalTransition):
        core.retry(a, T0 + 3)  # succeeded
    stored = Task.from_row(Task(50, "default", "t", b"", 0, State.DEAD, None, 1.0, 0, 1, None, None, "e",
                                None, T0).row())
    assert core.retry(50, T0 + 3, stored).state is State.READY
    with pytest.raises(TaskMissing):
        core.retry(77, T0)


def test_release_does_not_count_the_attempt() -> None:
    core = make()
    core.enqueue([spec(), spec()], T0)
    join(core, credit=2)
    core.take_effects(T0)
    core.release("w1", [2], T0)
    fx = core.take_effects(T0)
    assert kinds(fx, 2) == ["released"] and core.get(2).attempt == 0 and core.get(2).state is State.READY
    join(core, "w2", credit=1)
    assert dispatched(core.take_effects(T0), "w2")[0] == {**dispatched_template(2), "attempt": 1}


def dispatched_template(tid: int) -> dict[str, Any]:
    return {"id": tid, "type": "t", "payload": b"\xc0", "attempt": 1, "timeout": 600.0, "queue": "default",
            "priority": 0, "max_retries": 3}


def test_pause_and_resume() -> None:
    core = make()
    core.pause("default", T0)
    core.enqueue([spec()], T0)
    join(core, credit=1)
    fx = core.take_effects(T0)
    assert dispatched(fx) == [] and fx.queue_ops == [("default", True)]
    core.resume("default", T0)
    fx = core.take_effects(T0)
    assert len(dispatched(fx)) == 1 and fx.queue_ops == [("default", False)]


def test_drain_worker() -> None:
    core = make()
    core.enqueue([spec(), spec()], T0)
    join(core, credit=1)
    core.take_effects(T0)
    core.drain_worker("w1", T0)
    core.credit("w1", 5, T0)
    fx = core.take_effects(T0)
    assert fx.outbox["w1"] == [{"op": "drain"}] and core.workers["w1"].state == "draining"


# ---------------------------------------------------------------------- restart
def test_recover_rebuilds_state() -> None:
    rows = [
        Task(3, "q", "t", b"", 0, State.READY, None, 1.0, 3, 0, "k3", None, None, None, T0).row(),
        Task(4, "q", "t", b"", 0, State.RUNNING, None, 1.0, 3, 1, None, None, None, None, T0, T0, None,
             "w-old").row(),
        Task(5, "q", "t", b"", 0, State.SCHEDULED, T0 + 100, 1.0, 3, 0, None, None, None, None, T0).row(),
    ]
    core = make()
    assert core.recover(iter(rows), ["q"], 9, T0 + 1) == 1
    fx = core.take_effects(T0 + 1)
    assert kinds(fx, 4) == ["recovered"] and core.get(4).state is State.READY and core.get(4).worker is None
    assert core.get(5).state is State.SCHEDULED and core.next_deadline() == T0 + 100
    assert core.queues["q"].paused and core.enqueue([spec(key="k3")], T0) == [(3, False)]
    assert core.enqueue([spec()], T0)[0][0] == 9
    assert core.counts["q"]["ready"] == 2 and core.counts["q"]["scheduled"] == 1


# ---------------------------------------------------------------------- invariants under random operations
class CoreMachine(RuleBasedStateMachine):
    """Random sequences of inputs; after each step the core's books must balance."""

    def __init__(self) -> None:
        super().__init__()
        self.core = Core(CoreConfig(lease_timeout=10, backoff_base=1), rng=random.Random(3))
        self.now = T0
        self.granted: Counter[str] = Counter()
        self.received: Counter[str] = Counter()
        self.nworkers = 0

    def effects(self) -> None:
        fx = self.core.take_effects(self.now)
        for wid, msgs in fx.outbox.items():
            for m in msgs:
                if m["op"] == "tasks":
                    self.received[wid] += len(m["tasks"])
        for row in fx.rows:
            assert row[5] in {s.value for s in State}
        for e in fx.events:
            assert e[3] in {s.value for s in State}

    @rule(n=st.integers(1, 4), prio=st.integers(0, 2), delay=st.sampled_from([None, 0.5, 3.0]),
          key=st.sampled_from([None, "a", "b"]), retries=st.integers(0, 2))
    def enqueue(self, n: int, prio: int, delay: float | None, key: str | None, retries: int) -> None:
        self.core.enqueue([TaskSpec(type="t", priority=prio, delay=delay, key=key, retries=retries)
                           for _ in range(n)], self.now)
        self.effects()

    @rule()
    def join(self) -> None:
        self.nworkers += 1
        self.core.worker_joined(f"w{self.nworkers}", self.now)

    @precondition(lambda self: self.core.workers)
    @rule(n=st.integers(0, 3), data=st.data())
    def credit(self, n: int, data: st.DataObject) -> None:
        wid = data.draw(st.sampled_from(sorted(self.core.workers)))
        self.core.credit(wid, n, self.now)
        self.granted[wid] += n
        self.effects()

    @precondition(lambda self: any(w.running for w in self.core.workers.values()))
    @rule(data=st.data(), outcome=st.sampled_from(["done", "fail", "retry_in", "release", "late"]))
    def finish(self, data: st.DataObject, outcome: str) -> None:
        w = data.draw(st.sampled_from([w for w in self.core.workers.values() if w.running]))
        tid = data.draw(st.sampled_from(sorted(w.running)))
        attempt = w.running[tid].attempt
        if outcome == "done":
            self.core.done(w.id, [[tid, attempt, b""]], self.now)
        elif outcome == "fail":
            self.core.fail(w.id, tid, attempt, "x", self.now)
        elif outcome == "retry_in":
            self.core.fail(w.id, tid, attempt, "x", self.now, retry_in=0.1)
        elif outcome == "release":
            self.core.release(w.id, [tid], self.now)
        else:
            self.core.done(w.id, [[tid, attempt + 1, b""]], self.now)
        self.effects()

    @precondition(lambda self: self.core.tasks)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        self.core.cancel(data.draw(st.sampled_from(sorted(self.core.tasks))), self.now)
        self.effects()

    @precondition(lambda self: self.core.finished)
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        tid = data.draw(st.sampled_from(sorted(self.core.finished)))
        try:
            self.core.retry(tid, self.now)
        except IllegalTransition:
            assert self.core.finished[tid].state is State.SUCCEEDED or self.core.finished[tid].key is not None
        self.effects()

    @precondition(lambda self: self.core.workers)
    @rule(data=st.data())
    def leave(self, data: st.DataObject) -> None:
        self.core.worker_left(data.draw(st.sampled_from(sorted(self.core.workers))), self.now)
        self.effects()

    @rule(dt=st.sampled_from([0.2, 1.0, 4.0, 11.0]), beat=st.booleans())
    def tick(self, dt: float, beat: bool) -> None:
        self.now += dt
        if beat:
            for wid in list(self.core.workers):
                self.core.heartbeat(wid, self.now)
        self.core.tick(self.now)
        self.effects()

    @invariant()
    def books_balance(self) -> None:
        core = self.core
        holders: dict[int, str] = {}
        for w in core.workers.values():
            assert self.received[w.id] <= self.granted[w.id]
            for tid, t in w.running.items():
                assert tid not in holders, f"task {tid} held by two workers"
                holders[tid] = w.id
                assert t.state is State.RUNNING and t.worker == w.id
        recount: Counter[tuple[str, str]] = Counter()
        for t in core.tasks.values():
            assert t.state not in (State.SUCCEEDED, State.DEAD, State.CANCELLED, State.FAILED)
            if t.state is State.RUNNING:
                assert holders.get(t.id) == t.worker
            recount[(t.queue, t.state.value)] += 1
        for queue, counts in core.counts.items():
            for state, n in counts.items():
                assert n == recount[(queue, state)], (queue, state, n, recount)
        for name, q in core.queues.items():
            assert q.ready == recount[(name, "ready")]
        for key, t in core.keys.items():
            assert t.id in core.tasks and t.key == key


TestCoreMachine = CoreMachine.TestCase
TestCoreMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
