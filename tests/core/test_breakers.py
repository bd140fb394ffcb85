"""Circuit breakers per task type (``runq.app.core.breakers`` and their side of dispatch in ``limits``), with a
fake clock (plain floats)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from runq.app.core import Breaker, BreakerConfig, BreakerRow, BreakerState, Core, CoreConfig, LimitError, State
from runq.app.core.timers import COOLDOWN
from runq.protocol.messages import TaskSpec

T0 = 1_000.0
CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


def make() -> Core:
    return Core(CoreConfig(lease_timeout=1e9, backoff_base=1000.0, jitter=0.0), rng=random.Random(1))


def add(core: Core, type_: str = "flaky", n: int = 1, now: float = T0) -> list[int]:
    return [tid for tid, _ in core.enqueue([TaskSpec(type=type_) for _ in range(n)], now)]


class Worker:
    """One worker with plenty of credit; ``run`` hands out what the core sends and reports outcomes."""

    def __init__(self, core: Core, now: float = T0) -> None:
        self.core = core
        core.worker_joined("w1", now, concurrency=1000)
        core.credit("w1", 100_000, now)
        self.leases: dict[int, int] = {}
        self.events: list[tuple[str, str]] = []  # breaker and limit events seen in the effects taken
        self.breaker_rows: list[tuple[str, BreakerRow | None]] = []

    def take(self, now: float) -> list[int]:
        self.core.tick(now)
        fx = self.core.take_effects(now)
        self.events += [(e.kind, e.detail) for e in fx.limit_events]
        self.breaker_rows += fx.breaker_rows
        got = [t for m in fx.outbox.get("w1", []) if m["op"] == "tasks" for t in m["tasks"]]
        for t in got:
            self.leases[t["id"]] = t["lease"]
        return [t["id"] for t in got]

    def finish(self, tid: int, ok: bool, now: float) -> None:
        lease = self.leases.pop(tid)
        if ok:
            self.core.done("w1", [[tid, lease, None]], now)
        else:
            self.core.fail("w1", tid, lease, "boom", now)


def events(w: Worker, now: float) -> list[tuple[str, str]]:
    """The events since the last call (those of effects the worker took, and any still buffered)."""
    w.take(now)
    seen, w.events = w.events, []
    return seen


def trip(core: Core, w: Worker, now: float, n: int = 4) -> list[int]:
    """Run ``n`` tasks of ``flaky`` and fail them all at ``now``."""
    ids = add(core, n=n, now=now)
    got = w.take(now)
    assert got == ids
    for tid in ids:
        w.finish(tid, False, now)
    return ids


# ---------------------------------------------------------------------- the pure state machine
def test_the_state_machine_step_by_step() -> None:
    br = Breaker("flaky", BreakerConfig(threshold=0.5, window=10.0, min_calls=4, cooldown=5.0, probes=2))
    steps: list[BreakerState | None] = []
    for ok in (True, False, True, False):  # 2 of 4: the rate reaches 0.5 with the fourth call
        steps.append(br.outcome(ok, False, T0))
    assert steps == [None, None, None, OPEN]
    br.enter(OPEN, T0)
    assert (br.admits(), br.until) == (False, T0 + 5.0)
    assert br.outcome(False, False, T0 + 1) is None  # while open: counted, decides nothing
    br.enter(HALF_OPEN, T0 + 5)
    assert br.admits() and br.take() and br.take() and not br.admits()  # two probes, then no more
    assert br.outcome(False, False, T0 + 5) is None  # not a probe: not asked
    assert br.outcome(None, True, T0 + 5) is None and br.admits()  # a probe lost: another may go
    assert br.take()
    assert br.outcome(True, True, T0 + 6) is None  # one of two
    assert br.outcome(True, True, T0 + 6) is CLOSED
    br.enter(HALF_OPEN, T0 + 7)
    br.take()
    assert br.outcome(False, True, T0 + 8) is OPEN  # a failed probe opens it again


def test_min_calls_keeps_a_few_failures_from_opening_it_and_old_outcomes_leave_the_window() -> None:
    br = Breaker("flaky", BreakerConfig(threshold=0.5, window=10.0, min_calls=3, cooldown=5.0))
    assert br.outcome(False, False, T0) is None
    assert br.outcome(False, False, T0) is None  # 2 of 2 failed, fewer than min_calls
    # 11 s later the two failures are out of the window: one more failure is 1 of 1 calls
    assert br.outcome(False, False, T0 + 11) is None
    assert br.window_counts(T0 + 11) == (1, 1)
    assert br.outcome(False, False, T0 + 12) is None
    assert br.outcome(True, False, T0 + 12) is None  # 2 of 3
    assert br.outcome(False, False, T0 + 12) is OPEN  # 3 of 4


@pytest.mark.parametrize(("kw", "words"), [
    ({"threshold": 0}, "threshold"), ({"threshold": 1.5}, "threshold"), ({"window": 0}, "window"),
    ({"cooldown": -1}, "cooldown"), ({"min_calls": 0}, "min_calls"), ({"probes": 1.5}, "probes"),
])
def test_bad_breaker_settings_are_refused(kw: dict[str, Any], words: str) -> None:
    core = make()
    with pytest.raises(LimitError, match=words):
        core.set_breaker("flaky", T0, **kw)
    assert core.breakers == {} and core.take_effects(T0).breaker_rows == []


# ---------------------------------------------------------------------- in the core
def test_it_opens_and_tasks_of_its_type_wait_ready_while_others_go() -> None:
    core = make()
    core.set_breaker("flaky", T0, threshold=0.5, window=60.0, min_calls=4, cooldown=30.0)
    w = Worker(core)
    events(w, T0)
    trip(core, w, T0)
    ev = events(w, T0)
    assert ev == [("breaker_open", "closed -> open: 4 of 4 attempts failed in the window")]
    waiting = add(core, n=2, now=T0 + 1)
    other = add(core, "fine", now=T0 + 1)
    assert w.take(T0 + 1) == other
    for tid in waiting:
        t = core.get(tid)
        assert t.state is State.READY and t.attempt == 0  # not counted as an attempt
    why = core.why_waiting(waiting[0], T0 + 1)
    assert why is not None and why.reason == "breaker_open" and why.until == T0 + 30
    (st,) = core.breaker_status(T0 + 1)
    assert (st.state, st.waiting, st.window_calls, st.window_failures, st.changes["open"]) == ("open", 2, 4, 4, 1)


def test_after_the_cool_down_probes_go_and_a_success_closes_it() -> None:
    core = make()
    core.set_breaker("flaky", T0, min_calls=2, cooldown=30.0, probes=1)
    w = Worker(core)
    trip(core, w, T0, n=2)
    waiting = add(core, n=3, now=T0 + 1)
    assert w.take(T0 + 1) == []
    events(w, T0 + 1)
    assert core.next_deadline() == T0 + 30  # the cool-down is a timer entry
    assert w.take(T0 + 30) == waiting[:1]  # half-open: one probe
    assert events(w, T0 + 30) == [("breaker_half_open", "open -> half_open: cool-down over")]
    assert w.take(T0 + 31) == []
    w.finish(waiting[0], True, T0 + 32)
    assert w.take(T0 + 32) == waiting[1:]  # closed: the rest go, in order
    assert events(w, T0 + 32) == [("breaker_closed", "half_open -> closed: 1 probe(s) succeeded")]


def test_a_failed_probe_opens_it_again_for_a_new_cool_down() -> None:
    core = make()
    core.set_breaker("flaky", T0, min_calls=2, cooldown=30.0)
    w = Worker(core)
    trip(core, w, T0, n=2)
    (probe, rest) = add(core, n=2, now=T0 + 1)
    w.take(T0 + 1)
    assert w.take(T0 + 30) == [probe]
    w.finish(probe, False, T0 + 31)
    assert w.take(T0 + 31) == []
    assert core.breakers["flaky"].state is OPEN and core.next_deadline() == T0 + 61
    assert events(w, T0 + 31)[-1] == ("breaker_open", f"half_open -> open: probe task {probe} failed")
    assert core.get(probe).attempt == 1 and core.get(rest).attempt == 0


def test_a_manual_open_outlasts_the_cool_down_until_closed_by_hand() -> None:
    core = make()
    w = Worker(core)
    ids = add(core, "anything", 2)
    core.open_breaker("anything", T0, reason="vendor down")
    assert w.take(T0) == []
    assert events(w, T0) == [("breaker_open", "closed -> open (by hand): vendor down")]
    assert w.take(T0 + 3600) == []  # no cool-down
    why = core.why_waiting(ids[0], T0 + 3600)
    assert why is not None and "(by hand)" in why.detail
    core.close_breaker("anything", T0 + 3601)
    assert w.take(T0 + 3601) == ids
    with pytest.raises(LimitError, match="no breaker"):
        core.close_breaker("never", T0)


def test_a_stale_cool_down_entry_is_skipped() -> None:
    core = make()
    core.set_breaker("flaky", T0, min_calls=2, cooldown=30.0)
    w = Worker(core)
    trip(core, w, T0, n=2)
    (entry,) = [e for e in core.timers.heap if e[1] == COOLDOWN]
    assert core._cooldown_check(entry) == T0 + 30  # it stands
    core.close_breaker("flaky", T0 + 1)
    assert core._cooldown_check(entry) is None  # closed by hand: stale
    trip(core, w, T0 + 2, n=2)  # opens again: a new entry for T0 + 32
    assert core._cooldown_check(entry) is None  # its time is not this opening's: still stale
    core.tick(T0 + 30)
    assert core.breakers["flaky"].state is OPEN
    core.tick(T0 + 32)
    assert core.breakers["flaky"].state is HALF_OPEN


def test_more_probes_set_while_half_open_count_the_probe_running() -> None:
    core = make()
    core.set_breaker("flaky", T0, min_calls=2, cooldown=30.0, probes=1)
    w = Worker(core)
    trip(core, w, T0, n=2)
    ids = add(core, n=4, now=T0 + 1)
    w.take(T0 + 1)
    assert w.take(T0 + 30) == ids[:1]
    core.set_breaker("flaky", T0 + 31, min_calls=2, cooldown=30.0, probes=3)
    assert w.take(T0 + 31) == ids[1:3]  # 3 probes in all: the one running and two more
    for tid in ids[:3]:
        w.finish(tid, True, T0 + 32)
    assert core.breakers["flaky"].state is CLOSED
    assert w.take(T0 + 32) == ids[3:]


def test_a_lost_probe_lets_another_go() -> None:
    core = make()
    core.set_breaker("flaky", T0, min_calls=2, cooldown=30.0)
    w = Worker(core)
    trip(core, w, T0, n=2)
    probes = add(core, n=2, now=T0 + 1)
    w.take(T0 + 1)
    assert w.take(T0 + 30) == probes[:1]
    core.worker_left("w1", T0 + 31)
    w2 = Worker(core, now=T0 + 31)
    assert w2.take(T0 + 31) == probes[:1]  # the lost probe goes again (front of its queue), as the one probe


def test_breaker_changes_are_rows_and_removing_it_lets_its_tasks_go() -> None:
    core = make()
    core.take_effects(T0)
    core.set_breaker("flaky", T0, threshold=0.25, window=20.0, min_calls=5, cooldown=7.0, probes=3)
    fx = core.take_effects(T0)
    assert fx.breaker_rows == [("flaky", BreakerRow("flaky", 0.25, 20.0, 5, 7.0, 3, "closed", None, False))]
    core.open_breaker("flaky", T0)
    w = Worker(core)
    ids = add(core, n=2)
    assert w.take(T0) == []
    w.breaker_rows, w.events = [], []
    assert core.remove_breaker("flaky", T0 + 1)
    assert w.take(T0 + 1) == ids
    assert w.breaker_rows == [("flaky", None)] and [k for k, _ in w.events] == ["breaker_removed"]
    assert not core.remove_breaker("flaky", T0 + 1)


# ---------------------------------------------------------------------- restarts
def restart(core: Core, now: float) -> Core:
    rows = [t.row() for t in core.tasks.values()]
    limits, breakers = core.stored_limits()
    again = make()
    again.recover(rows, [], core.next_id, now)
    again.recover_limits(list(limits), list(breakers), now)
    return again


def test_an_open_breaker_comes_back_open_until_its_cool_down_ends() -> None:
    core = make()
    core.set_breaker("flaky", T0, min_calls=2, cooldown=30.0)
    w = Worker(core)
    trip(core, w, T0, n=2)
    waiting = add(core, n=1, now=T0 + 1)
    again = restart(core, T0 + 10)
    w2 = Worker(again, now=T0 + 10)
    assert w2.take(T0 + 10) == []
    assert again.breakers["flaky"].state is OPEN and again.next_deadline() == T0 + 30
    assert w2.take(T0 + 30) == waiting  # the probe


def test_a_half_open_breaker_comes_back_open_and_probes_at_once() -> None:
    core = make()
    core.set_breaker("flaky", T0, min_calls=2, cooldown=30.0)
    w = Worker(core)
    trip(core, w, T0, n=2)
    (probe,) = add(core, n=1, now=T0 + 1)
    assert w.take(T0 + 30) == [probe]  # the probe runs when the server stops
    again = restart(core, T0 + 40)
    assert again.breakers["flaky"].state is OPEN
    w2 = Worker(again, now=T0 + 40)
    assert w2.take(T0 + 40) == [probe]  # (recovered to ready, probes again at once)
    assert again.breakers["flaky"].state is HALF_OPEN


def test_a_manually_opened_breaker_stays_open_and_a_closed_one_restarts_with_an_empty_window() -> None:
    core = make()
    core.open_breaker("paused_type", T0)
    core.set_breaker("flaky", T0, threshold=0.5, min_calls=4)
    w = Worker(core)
    trip(core, w, T0, n=3)  # 3 of 3 failed: under min_calls
    assert core.breakers["flaky"].state is CLOSED
    again = restart(core, T0 + 1)
    br = again.breakers["paused_type"]
    assert (br.state, br.manual, br.config) == (OPEN, True, None)
    assert again.breakers["flaky"].window_counts(T0 + 1) == (0, 0)  # the window starts afresh (documented)
    w2 = Worker(again, now=T0 + 1)
    trip(again, w2, T0 + 1, n=1)
    assert again.breakers["flaky"].state is CLOSED  # one failure after the restart: 1 of 1, under min_calls


def test_an_attempt_lost_released_or_cancelled_is_no_outcome() -> None:
    core = make()
    core.set_breaker("flaky", T0, threshold=0.5, min_calls=1)
    w = Worker(core)
    a, b = add(core, n=2)
    w.take(T0)
    core.cancel(a, T0)
    core.release("w1", [b], T0)
    (st,) = core.breaker_status(T0)
    assert (st.state, st.calls, st.failures) == ("closed", 0, 0)


def test_a_bad_type_name_is_refused() -> None:
    core = make()
    with pytest.raises(LimitError):
        core.open_breaker("", T0)
    with pytest.raises(LimitError):
        core.set_breaker("x" * 201, T0)


@pytest.mark.parametrize("field", ["window", "cooldown"])
def test_a_window_or_cooldown_under_a_millisecond_is_refused(field: str) -> None:
    """1e-300 s overflowed the window's slot arithmetic and broke every later read of the breakers."""
    with pytest.raises(LimitError, match=field):
        BreakerConfig(**{field: 1e-300})
    BreakerConfig(**{field: 0.001})
