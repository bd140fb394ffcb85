"""Rate limits and concurrency caps (``runq.app.core.limits``), driven with a fake clock (plain floats).

A ``Sim`` plays workers that finish every task the moment they get it (or hold them, ``finish=False``) and
moves the clock only to the core's own next deadline: a test that passes with it shows that the core wakes
itself when a limited task may go (no polling).
"""

from __future__ import annotations

import json
import random
from typing import Any

import msgpack
import pytest

from runq.app.core import Core, CoreConfig, Limit, LimitError, LimitRow, Scope, State, Waiting
from runq.app.core.limits import payload_key
from runq.app.core.timers import REFILL
from runq.protocol.messages import TaskSpec

T0 = 1_000.0


def make(**cfg: Any) -> Core:
    cfg.setdefault("lease_timeout", 1e9)  # (workers here do not send heartbeats)
    return Core(CoreConfig(**cfg), rng=random.Random(1))


def add(core: Core, type_: str = "t", n: int = 1, now: float = T0, payload: Any = None, **kw: Any) -> list[int]:
    body = msgpack.packb(payload) if payload is not None else b"\xc0"
    return [tid for tid, _ in core.enqueue([TaskSpec(type=type_, payload=body, **kw) for _ in range(n)], now)]


class Sim:
    """Workers that take what they are sent; with ``finish`` they report success at once."""

    def __init__(self, core: Core, workers: tuple[str, ...] = ("w1",), finish: bool = True, credit: int = 100_000,
                 queues: tuple[str, ...] = ("default",), now: float = T0) -> None:
        self.core = core
        self.finish = finish
        self.sent: list[tuple[float, str, int]] = []  # (when, worker, task id)
        self.leases: dict[int, tuple[str, int]] = {}
        for wid in workers:
            core.worker_joined(wid, now, queues=queues, concurrency=credit)
            core.credit(wid, credit, now)

    def step(self, now: float) -> list[int]:
        core = self.core
        core.tick(now)
        got: list[int] = []
        while True:
            fx = core.take_effects(now)
            batch = [(wid, t) for wid, msgs in fx.outbox.items() for m in msgs if m["op"] == "tasks"
                     for t in m["tasks"]]
            if not batch:
                return got
            for wid, t in batch:
                self.sent.append((now, wid, t["id"]))
                got.append(t["id"])
                self.leases[t["id"]] = (wid, t["lease"])
                if self.finish:
                    core.done(wid, [[t["id"], t["lease"], None]], now)
                    core.credit(wid, 1, now)

    def done(self, tid: int, now: float) -> None:
        wid, lease = self.leases.pop(tid)
        self.core.done(wid, [[tid, lease, None]], now)
        self.core.credit(wid, 1, now)

    def run(self, start: float, until: float) -> None:
        """Step at ``start`` and then at each of the core's own deadlines before ``until``."""
        now = start
        while True:
            for wid in list(self.core.workers):
                self.core.heartbeat(wid, now)
            self.step(now)
            nxt = self.core.next_deadline()
            if nxt is None or nxt >= until:
                return
            now = max(nxt, now)


# ---------------------------------------------------------------------- the rate (GCRA)
@pytest.mark.parametrize("burst", [1, 5, 20])
def test_ten_per_second_for_sixty_seconds_gives_six_hundred_within_the_burst(burst: int) -> None:
    core = make(lease_timeout=1e9)
    add(core, n=2_000)
    core.set_limit(("queue", "default"), T0, rate=10, period=1.0, burst=burst)
    sim = Sim(core)
    sim.run(T0, T0 + 60)
    n = len(sim.sent)
    assert abs(n - 600) <= burst, n
    times = [at for at, _, _ in sim.sent]
    assert times[:burst] == [T0] * burst  # the burst at once
    gaps = [b - a for a, b in zip(times[burst - 1:], times[burst:], strict=False)]
    assert min(gaps) == pytest.approx(0.1)  # then evenly spaced by period / rate, never closer
    assert all(g == pytest.approx(0.1) for g in gaps)


def test_a_rate_limited_task_waits_ready_with_no_attempt_and_no_event_and_says_why() -> None:
    core = make()
    a, b = add(core, n=2)
    core.set_limit(Scope("queue", "default"), T0, rate=1, period=10.0)
    sim = Sim(core, finish=False)
    assert sim.step(T0) == [a]
    fx = core.take_effects(T0)
    assert fx.events == []  # waiting writes nothing
    t = core.get(b)
    assert t.state is State.READY and t.attempt == 0
    why = core.why_waiting(b, T0 + 1)
    assert why is not None and why.reason == "rate_limit" and why.scope == Scope("queue", "default")
    assert why.until == pytest.approx(T0 + 10)
    assert core.next_deadline() == pytest.approx(T0 + 10)  # the refill wakes dispatch
    assert sim.step(T0 + 9.999) == []
    assert sim.step(T0 + 10) == [b]


def test_a_limit_that_never_binds_changes_nothing_in_the_order() -> None:
    def order(limit: bool) -> list[int]:
        core = make()
        add(core, "a", 3, priority=1)
        add(core, "b", 3)
        add(core, "a", 3, priority=5)
        if limit:
            core.set_limit(("type", "a"), T0, rate=1e6, burst=1000, concurrency=1000)
            core.set_limit(("queue", "default"), T0, rate=1e6, burst=1000)
        sim = Sim(core)
        sim.step(T0)
        return [tid for _, _, tid in sim.sent]

    assert order(True) == order(False)


# ---------------------------------------------------------------------- who is held, who goes
def test_a_limited_type_is_held_aside_and_does_not_block_other_types_in_its_queue() -> None:
    core = make()
    slow = add(core, "slow", 3)
    fast = add(core, "fast", 2)
    core.set_limit(("type", "slow"), T0, rate=1, period=60.0)
    sim = Sim(core, finish=False)
    assert sim.step(T0) == [slow[0], *fast]
    why = core.why_waiting(slow[1], T0)
    assert why is not None and (why.reason, why.scope, why.value) == ("rate_limit", Scope("type", "slow"), None)
    assert why.until == pytest.approx(T0 + 60) and "1 per 60s" in why.detail
    assert core.queue_stats()[0]["ready"] == 2  # still counted ready
    later = add(core, "fast")
    assert sim.step(T0 + 1) == later
    assert sim.step(T0 + 60) == [slow[1]]  # held tasks come back in their order
    assert sim.step(T0 + 120) == [slow[2]]


def test_a_limited_key_does_not_block_other_keys_of_the_same_queue() -> None:
    core = make()
    acme = [add(core, "mail", payload={"customer": "acme"})[0] for _ in range(3)]
    other = add(core, "mail", payload={"customer": "globex"})
    nokey = add(core, "mail", payload={"other": 1})
    core.set_limit(("type", "mail", "customer"), T0, rate=1, period=60.0)
    sim = Sim(core, finish=False)
    assert sim.step(T0) == [acme[0], *other, *nokey]  # one per customer; no field: not limited by it
    why = core.why_waiting(acme[1], T0)
    assert why is not None and why.reason == "rate_limit" and why.value == "acme"
    assert sim.step(T0 + 60) == [acme[1]]


def test_a_queue_limit_refuses_in_place_and_other_queues_of_the_worker_still_go() -> None:
    core = make()
    a = add(core, n=3, queue="a")
    b = add(core, n=2, queue="b")
    core.set_limit(("queue", "a"), T0, concurrency=1)
    sim = Sim(core, finish=False, queues=("a", "b"))
    assert sorted(sim.step(T0)) == sorted([a[0], *b])
    assert core.get(a[1]).queued == 1  # refused in place: still in its queue, not held aside
    why = core.why_waiting(a[1], T0)
    assert why is not None and why.reason == "concurrency_cap" and "1 of 1 running" in why.detail
    sim.done(a[0], T0 + 1)
    assert sim.step(T0 + 1) == [a[1]]  # a freed slot asks for a round at once


# ---------------------------------------------------------------------- concurrency caps
def test_a_cap_holds_across_all_workers_and_every_end_of_a_lease_frees_its_slot() -> None:
    core = make(lease_timeout=5.0)
    ids = add(core, "job", 8, timeout=10.0)
    core.set_limit(("type", "job"), T0, concurrency=2)
    sim = Sim(core, workers=("w1", "w2"), finish=False, credit=10)
    first = sim.step(T0)
    assert len(first) == 2

    def running() -> int:
        return sum(1 for t in ids if core.get(t).state is State.RUNNING)

    sim.done(first[0], T0 + 1)  # succeeded
    assert len(sim.step(T0 + 1)) == 1 and running() == 2
    wid, lease = sim.leases.pop(first[1])
    core.fail(wid, first[1], lease, "boom", T0 + 2)  # failed (a retry later)
    assert len(sim.step(T0 + 2)) == 1 and running() == 2
    victim = next(t for t in ids if core.get(t).state is State.RUNNING)
    core.cancel(victim, T0 + 3)  # cancelled while running
    assert len(sim.step(T0 + 3)) == 1 and running() == 2
    holder = core.get(next(t for t in ids if core.get(t).state is State.RUNNING)).worker
    assert holder is not None
    lost = len(core.workers[holder].running)
    core.worker_left(holder, T0 + 4)  # lost with its worker
    got = sim.step(T0 + 4)
    assert running() == 2 and len(got) == lost  # the slots the loss freed are taken again, no more


def test_a_released_task_and_a_timed_out_one_free_their_slots() -> None:
    core = make(lease_timeout=1.0)
    ids = add(core, "job", 4, timeout=5.0)
    core.set_limit(("type", "job"), T0, concurrency=1)
    sim = Sim(core, workers=("w1",), finish=False, credit=10)
    (first,) = sim.step(T0)
    core.heartbeat("w1", T0 + 5.5)
    sim.step(T0 + 6.0)  # the backstop (timeout + lease_timeout) failed it: its slot is free
    assert core.get(first).state is State.SCHEDULED
    running = [t for t in ids if core.get(t).state is State.RUNNING]
    assert len(running) == 1
    core.worker_joined("w2", T0 + 6)
    core.credit("w2", 5, T0 + 6)
    core.release("w1", running, T0 + 6)  # handed back: its slot is free, w2 gets the next
    got = sim.step(T0 + 6)
    assert len(got) == 1 and sim.sent[-1][1] == "w2"


# ---------------------------------------------------------------------- changes at run time
def test_changing_a_limit_takes_effect_at_once_and_removing_it_lets_everything_go() -> None:
    core = make()
    ids = add(core, "t", 10)
    core.set_limit(("type", "t"), T0, rate=1, period=100.0)
    sim = Sim(core, finish=False)
    assert sim.step(T0) == ids[:1]
    core.set_limit(("type", "t"), T0 + 1, rate=1, period=100.0, burst=4)  # a burst of 4: the 3 left go now
    assert sim.step(T0 + 1) == ids[1:4]
    core.set_limit(("type", "t"), T0 + 2, concurrency=5)  # no rate, a cap of 5 with 4 running: one more
    assert sim.step(T0 + 2) == ids[4:5]
    assert sim.step(T0 + 3) == []
    assert core.remove_limit(("type", "t"), T0 + 3) is not None
    assert sim.step(T0 + 3) == ids[5:]
    assert core.remove_limit(("type", "t"), T0 + 3) is None


def test_a_cap_set_while_tasks_run_counts_them_at_once() -> None:
    core = make()
    ids = add(core, "t", 4, payload={"k": "x"}) + add(core, "t", 2, payload={"k": "y"})
    sim = Sim(core, finish=False, credit=3)
    assert sim.step(T0) == ids[:3]  # three of key x run, dispatched before any limit
    core.set_limit(("type", "t", "k"), T0, concurrency=2)
    core.set_limit(("queue", "default"), T0, concurrency=4)
    core.credit("w1", 10, T0)
    assert sim.step(T0) == ids[4:5]  # x is over its cap (3 of 2), y may go, and then the queue is full (4 of 4)
    sim.done(ids[0], T0 + 1)
    sim.done(ids[1], T0 + 1)
    # x is at 1 of 2: its held task comes back first, then y's second fills the queue (4 of 4)
    assert sim.step(T0 + 1) == [ids[3], ids[5]]
    assert [s.running for s in core.limit_status(T0 + 1)] == [4, 2, 2]  # queue; then x, y of the keyed cap


def test_limits_are_effects_to_store_and_events() -> None:
    core = make()
    core.take_effects(T0)
    lim = core.set_limit(("type", "mail", "customer"), T0, rate=5, period=2.0, burst=3, concurrency=7)
    fx = core.take_effects(T0)
    assert fx.limit_rows == [(Scope("type", "mail", "customer"), LimitRow("type", "mail", "customer", 5, 2.0, 3, 7))]
    assert [(e.scope, e.kind) for e in fx.limit_events] == [("type:mail[customer]", "limit_set")]
    assert fx  # something to do for the server
    assert core.limits() == [lim]
    core.remove_limit(("type", "mail", "customer"), T0)
    fx = core.take_effects(T0)
    assert fx.limit_rows == [(Scope("type", "mail", "customer"), None)]
    assert [e.kind for e in fx.limit_events] == ["limit_removed"]
    assert core.limits() == []


@pytest.mark.parametrize(("scope", "kw", "words"), [
    (("topic", "x"), {"rate": 1}, "scope kind"),
    (("queue", ""), {"rate": 1}, "name"),
    (("queue",), {"rate": 1}, "scope must be"),
    (("queue", "q"), {}, "give a 'rate'"),
    (("queue", "q"), {"rate": 0}, "'rate'"),
    (("queue", "q"), {"rate": float("nan")}, "'rate'"),
    (("queue", "q"), {"rate": 1, "period": 0}, "'period'"),
    (("queue", "q"), {"rate": 1, "burst": 0}, "'burst'"),
    (("queue", "q"), {"rate": 1, "burst": 2.5}, "'burst'"),
    (("queue", "q"), {"concurrency": 0}, "'concurrency'"),
    (("queue", "q"), {"concurrency": True}, "'concurrency'"),
])
def test_bad_limits_are_refused_with_a_clear_error_and_change_nothing(scope: Any, kw: dict[str, Any],
                                                                      words: str) -> None:
    core = make()
    (tid,) = add(core)
    with pytest.raises(LimitError, match=words) as e:
        core.set_limit(scope, T0, **kw)
    assert e.value.code == "bad_request"
    assert core.limits() == [] and core.take_effects(T0).limit_rows == []
    sim = Sim(core)
    assert sim.step(T0) == [tid]


# ---------------------------------------------------------------------- restarts
def test_limits_come_back_from_their_rows_and_a_rate_restarts_empty() -> None:
    core = make(lease_timeout=1e9)
    add(core, n=2_000)
    core.set_limit(("queue", "default"), T0, rate=10, burst=5)
    core.set_limit(("type", "t"), T0, concurrency=3)
    rows, _ = core.stored_limits()
    sim = Sim(core)
    sim.run(T0, T0 + 30.05)
    first = len(sim.sent)
    # the server stops at T0 + 30.05 and starts again at once: a new core from the stored rows
    stored = [t.row() for t in core.tasks.values()]
    again = make(lease_timeout=1e9)
    again.recover(stored, [], core.next_id, T0 + 30.05)
    again.recover_limits(list(rows), [], T0 + 30.05)
    assert again.limits() == core.limits()
    fx = again.take_effects(T0 + 30.05)
    assert fx.limit_rows == [] and fx.limit_events == []  # restored, not set again
    sim2 = Sim(again, now=T0 + 30.05)
    sim2.run(T0 + 30.05, T0 + 60)
    total = first + len(sim2.sent)
    assert sim2.sent[0][0] == pytest.approx(T0 + 30.15)  # empty at the restart: no second burst
    assert abs(total - 600) <= 5, total


def test_a_per_key_bucket_made_after_a_restart_starts_empty_as_of_the_restart() -> None:
    core = make()
    core.recover_limits([LimitRow("type", "mail", "customer", 1, 10.0, 3, None)], [], T0)
    sim = Sim(core, finish=False)
    ids = [add(core, "mail", payload={"customer": "acme"}, now=T0 + 15)[0] for _ in range(4)]
    assert sim.step(T0 + 15) == ids[:1]  # 15 s after the restart: one interval's token, not the burst of 3
    assert sim.step(T0 + 20) == ids[1:2]


def test_a_bad_stored_limit_row_is_refused() -> None:
    core = make()
    with pytest.raises(LimitError):
        core.recover_limits([LimitRow("queue", "q", "", -1, 1.0, 1, None)], [], T0)


# ---------------------------------------------------------------------- the refill timer and held lists
def test_a_stale_refill_entry_is_skipped() -> None:
    core = make()
    add(core, "t", 3)
    core.set_limit(("type", "t"), T0, rate=1, period=10.0)
    sim = Sim(core, finish=False)
    sim.step(T0)
    (entry,) = [e for e in core.timers.heap if e[1] == REFILL]
    assert core._refill_check(entry) == entry[0]  # it stands
    core.set_limit(("type", "t"), T0 + 1, rate=1, period=20.0)  # the bucket's wake is reset: the entry is stale
    assert core._refill_check(entry) is None
    sim.step(T0 + 1)  # held again, a new entry
    (entry2,) = [e for e in core.timers.heap if e[1] == REFILL and core._refill_check(e) is not None]
    core.remove_limit(("type", "t"), T0 + 2)  # the bucket is gone: stale too
    assert core._refill_check(entry2) is None


def test_a_held_task_cancelled_meanwhile_does_not_come_back_and_a_retried_one_comes_once() -> None:
    core = make()
    a, b, c = add(core, "t", 3)
    core.set_limit(("type", "t"), T0, rate=1, period=10.0)
    sim = Sim(core, finish=False)
    assert sim.step(T0) == [a]
    core.cancel(b, T0 + 1)
    core.cancel(c, T0 + 1)
    core.retry(c, T0 + 2)  # ready again, in its queue: held again when refused
    assert core.why_waiting(b, T0) is None  # (final: not waiting)
    assert sim.step(T0 + 2) == []
    assert sim.step(T0 + 10) == [c]
    assert sim.step(T0 + 30) == []
    assert core.get(c).attempt == 1


def test_a_stale_held_entry_does_not_put_back_a_task_routing_holds_since() -> None:
    core = make()
    core.worker_joined("w1", T0, types=("t",))
    core.credit("w1", 10, T0)
    a, c = add(core, "t", 2)
    core.set_limit(("type", "t"), T0, rate=1, period=10.0)
    core.take_effects(T0)  # a goes, c is held by the limit (and its refill armed for T0 + 10)
    core.cancel(c, T0 + 1)
    core.retry(c, T0 + 1)  # ready again, in its queue
    core.worker_left("w1", T0 + 2)  # a goes back too; now no worker handles type t
    core.worker_joined("w2", T0 + 2, types=("other",))
    core.credit("w2", 10, T0 + 2)
    core.take_effects(T0 + 2)
    q = core.queues["default"]
    assert [t.id for t in q.held["t"]] == [a, c]  # held by routing: no worker handles t
    core.tick(T0 + 10)  # the limit's refill: its entry for c is stale (c was retried since)
    core.take_effects(T0 + 10)
    assert q.ready == 0 and core.get(c).queued == 0  # not put back by the limit while routing holds it
    core.worker_joined("w3", T0 + 20, types=("t",))
    core.credit("w3", 10, T0 + 20)
    fx = core.take_effects(T0 + 20)
    assert [t["id"] for m in fx.outbox["w3"] for t in m["tasks"]] == [a]  # the rate: one per 10 s
    assert q.ready == 0  # c is held by the limit again, counted once


def test_per_key_buckets_of_keys_no_longer_in_use_are_forgotten() -> None:
    core = make()
    core.set_limit(("type", "t", "k"), T0, rate=100)
    sim = Sim(core)
    for i in range(5_000):
        add(core, "t", payload={"k": i}, now=T0 + i)
        sim.step(T0 + i)
    assert len(sim.sent) == 5_000
    assert len(core._buckets) <= 2_048  # swept, not one per key ever seen


def test_payload_key_reads_msgpack_and_json_maps_and_dotted_paths() -> None:
    assert payload_key(msgpack.packb({"customer": "acme"}), "customer") == "acme"
    assert payload_key(msgpack.packb({"customer": 42}), "customer") == "42"
    assert payload_key(msgpack.packb({"a": {"b": "x"}}), "a.b") == "x"
    assert payload_key(json.dumps({"customer": "acme"}).encode(), "customer") == "acme"
    assert payload_key(msgpack.packb({"customer": [1]}), "customer") is None
    assert payload_key(msgpack.packb([1, 2]), "customer") is None
    assert payload_key(b"\xc1garbage", "customer") is None
    assert payload_key(None, "customer") is None


def test_limit_status_shows_each_bucket() -> None:
    core = make()
    core.set_limit(("type", "mail", "customer"), T0, rate=1, period=10.0, concurrency=5)
    for c in ("a", "a", "b"):
        add(core, "mail", payload={"customer": c})
    sim = Sim(core, finish=False)
    sim.step(T0)
    st = {s.value: s for s in core.limit_status(T0)}
    assert st["a"].running == 1 and st["a"].waiting == 1 and st["a"].next_at == pytest.approx(T0 + 10)
    assert st["b"].running == 1 and st["b"].waiting == 0 and st["a"].admitted == 1 and st["a"].deferred == 1
    assert st["a"].limit == Limit(Scope("type", "mail", "customer"), 1, 10.0, 1, 5)


def test_why_waiting_names_a_paused_queue_and_a_type_no_worker_handles() -> None:
    core = make()
    (a,) = add(core, "t")
    (b,) = add(core, "nobody", queue="q2")
    core.pause("default", T0)
    assert core.why_waiting(a, T0) == Waiting("paused", Scope("queue", "default"), None, None,
                                              "queue 'default' is paused")
    core.worker_joined("w1", T0, queues=("q2",), types=("t",))
    core.credit("w1", 1, T0)
    core.take_effects(T0)
    why = core.why_waiting(b, T0)
    assert why is not None and why.reason == "no_worker"
    (c,) = add(core, "t", delay=5.0)
    why = core.why_waiting(c, T0)
    assert why is not None and why.reason == "scheduled" and why.until == T0 + 5


# ---------------------------------------------------------------------- everything at once, at random
@pytest.mark.parametrize("seed", range(8))
def test_random_traffic_never_breaks_a_limit_and_loses_no_task(seed: int) -> None:
    rng = random.Random(seed)
    core = make()
    core.set_limit(("queue", "a"), T0, rate=5, burst=2)
    core.set_limit(("type", "x"), T0, concurrency=2)
    core.set_limit(("type", "z", "k"), T0, rate=2, period=1.0)
    core.set_breaker("y", T0, threshold=0.5, window=5.0, min_calls=3, cooldown=2.0)
    sim = Sim(core, workers=("w1", "w2"), finish=False, credit=10_000, queues=("a", "b"))
    ids: list[int] = []
    now = T0
    for _ in range(400):
        r = rng.random()
        if r < 0.4:
            ids += add(core, rng.choice("xyz"), 1, now=now, queue=rng.choice("ab"),
                       payload={"k": rng.choice("pq")}, priority=rng.choice([0, 0, 1]))
        elif r < 0.7 and sim.leases:
            tid = rng.choice(sorted(sim.leases))
            wid, lease = sim.leases.pop(tid)
            if rng.random() < 0.6:
                core.done(wid, [[tid, lease, None]], now)
            else:
                core.fail(wid, tid, lease, "boom", now, retry_in=rng.random())
            core.credit(wid, 1, now)
        else:
            now += rng.random() * 0.5
        sim.step(now)
        running = [core.get(t) for t in ids if core.get(t).state is State.RUNNING]
        assert sum(1 for t in running if t.type == "x") <= 2
        for q in core.queues.values():  # the ready count of a queue is its tasks in the ready order
            in_order = [t for t in core.tasks.values() if t.queue == q.name and t.queued == 1]
            assert q.ready == len(in_order)
        for t in core.tasks.values():  # a ready task out of the order has exactly one holder
            if t.state is State.READY and t.queued != 1:
                held_by_routing = any(t in d for d in core.queues[t.queue].held.values())
                assert held_by_routing != (t.id in core._held_by)
    starts: dict[str, list[float]] = {"a": [], "p": [], "q": []}
    for at, _, tid in sim.sent:
        t = core.get(tid)
        if t.queue == "a":
            starts["a"].append(at)
    for at, _, tid in sim.sent:
        t = core.get(tid)
        if t.type == "z":
            starts[msgpack.unpackb(t.payload)["k"]].append(at)
    for name, rate, burst in (("a", 5, 2), ("p", 2, 1), ("q", 2, 1)):
        s = sorted(starts[name])
        for i, t0 in enumerate(s):  # over any stretch d: at most burst + d * rate
            for j in range(i, len(s)):
                assert j - i + 1 <= burst + (s[j] - t0) * rate + 1e-6
    # the rules go: every task ends
    for scope in [lim.scope for lim in core.limits()]:
        core.remove_limit(scope, now)
    core.remove_breaker("y", now)
    sim.finish = True
    for tid in sorted(sim.leases):
        sim.done(tid, now)
    for _ in range(50):
        now += 1.0
        sim.step(now)
    assert all(core.get(t).state in (State.SUCCEEDED, State.DEAD) for t in ids)
