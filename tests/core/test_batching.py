"""Batched task types (batching.py, docs/batching.md), coalescing by key (queue.py, docs/tasks.md), the limit
key given at enqueue (limits.py, docs/limits.md) and a definition's ``requires`` sent in the hello's type
options (routing.py rule 3). Plain floats for time: the core's fake clock."""

from __future__ import annotations

import random
from typing import Any

import msgpack
import pytest

from runq.app.core import Core, CoreConfig, State
from runq.protocol.errors import ProtocolError
from runq.protocol.messages import TaskSpec, TypeOptions, check_task_spec, parse_hello, parse_task_spec

T0 = 1_000.0
BATCHED = {"t": TypeOptions(batch_size=3, batch_wait=2.0)}


def make() -> Core:
    return Core(CoreConfig(lease_timeout=1e6), rng=random.Random(1))


def add(core: Core, n: int = 1, type_: str = "t", now: float = T0, **kw: Any) -> list[int]:
    specs = [check_task_spec(TaskSpec(type=type_, **kw)) for _ in range(n)]
    return [tid for tid, _ in core.enqueue(specs, now)]


def frames(core: Core, wid: str, now: float = T0) -> list[list[tuple[int, int | None]]]:
    """The ``tasks`` frames sent to ``wid``: per frame, (task id, batch number) of each entry."""
    fx = core.take_effects(now)
    return [[(t["id"], t.get("batch")) for t in m["tasks"]] for m in fx.outbox.get(wid, []) if m["op"] == "tasks"]


def ids(fs: list[list[tuple[int, int | None]]]) -> list[int]:
    return [i for f in fs for i, _ in f]


def batched_worker(core: Core, wid: str = "w", credit: int = 100, **opts: Any) -> None:
    core.worker_joined(wid, T0, types=("t", "u"), type_options={"t": TypeOptions(**opts)} if opts else BATCHED)
    core.credit(wid, credit, T0)


# ---------------------------------------------------------------------- batching
def test_a_batch_goes_when_it_holds_max_size_tasks_in_one_frame_under_one_number() -> None:
    core = make()
    batched_worker(core)
    a = add(core, 2)
    assert frames(core, "w") == []  # 2 of 3: collected, still ready
    assert all(core.get(i).state is State.READY for i in a)
    why = core.why_waiting(a[0], T0)
    assert why is not None and why.reason == "batch" and why.until == T0 + 2.0
    b = add(core, 4)
    fs = frames(core, "w")
    assert len(fs) == 1  # the full batch and then the next one (full again) in the one frame of this round
    assert ids(fs) == a + b[:4][:1] + b[1:4]
    numbers = [n for _, n in fs[0]]
    assert numbers[:3] == [numbers[0]] * 3 and numbers[3:] == [numbers[3]] * 3 and numbers[0] != numbers[3]
    assert all(core.get(i).state is State.RUNNING for i in a + b)


def test_a_batch_goes_after_max_wait_with_what_it_holds_and_not_before() -> None:
    core = make()
    batched_worker(core)
    a = add(core, 2)
    assert frames(core, "w") == []
    core.tick(T0 + 1.999)
    assert frames(core, "w", T0 + 1.999) == []
    assert core.next_deadline() == T0 + 2.0
    core.tick(T0 + 2.0)
    fs = frames(core, "w", T0 + 2.0)
    assert ids(fs) == a and fs[0][0][1] is not None and fs[0][0][1] == fs[0][1][1]


def test_plain_types_are_not_collected_and_pass_a_collecting_batch() -> None:
    core = make()
    batched_worker(core)
    (bt,) = add(core)
    plain = add(core, 2, type_="u")
    fs = frames(core, "w")
    assert ids(fs) == plain and all(n is None for _, n in fs[0])
    assert core.why_waiting(bt, T0) is not None


def test_a_batched_task_keeps_its_own_lease_and_timeout_and_a_lost_worker_gives_them_back_one_by_one() -> None:
    core = Core(CoreConfig(lease_timeout=5.0), rng=random.Random(1))
    core.worker_joined("w", T0, types=("t",), type_options=BATCHED)
    core.credit("w", 100, T0)
    a = add(core, 3, timeout=30.0)
    assert len(ids(frames(core, "w"))) == 3
    core.done("w", [[a[0], 1, b"\xc0"]], T0 + 1)  # one task of the batch reports alone
    assert core.get(a[0]).state is State.SUCCEEDED
    core.tick(T0 + 4)
    core.heartbeat("w", T0 + 4)
    core.tick(T0 + 9.5)  # silent for 5.5 s: its leases expire
    assert [core.get(i).state for i in a[1:]] == [State.READY, State.READY]
    assert [core.get(i).attempt for i in a[1:]] == [1, 1]
    core.worker_joined("v", T0 + 10, types=("t",), type_options=BATCHED)
    core.credit("v", 100, T0 + 10)
    assert frames(core, "v", T0 + 10) == []  # collected again into a new batch: not sent as the old one
    core.tick(T0 + 12)
    fs = frames(core, "v", T0 + 12)
    assert ids(fs) == a[1:] and fs[0][0][1] == fs[0][1][1]


def test_every_task_of_a_batch_has_its_backstop_armed_at_dispatch_even_beyond_concurrency() -> None:
    core = Core(CoreConfig(lease_timeout=1.0), rng=random.Random(1))
    core.worker_joined("w", T0, concurrency=1, types=("t",), type_options=BATCHED)
    core.credit("w", 10, T0)
    a = add(core, 3, timeout=5.0)
    assert len(ids(frames(core, "w"))) == 3
    for n in range(1, 6):
        core.heartbeat("w", T0 + n)
        core.tick(T0 + n)
    core.heartbeat("w", T0 + 6)
    core.tick(T0 + 6.0)  # timeout 5 + grace 1: all three time out, not only the first (concurrency 1)
    assert [core.get(i).state for i in a] == [State.SCHEDULED] * 3


def test_a_batch_goes_to_one_worker_when_several_are_hungry() -> None:
    core = make()
    for wid in ("a", "b", "c"):
        core.worker_joined(wid, T0, types=("t",), type_options=BATCHED)
        core.credit(wid, 10, T0)
    t = add(core, 3)
    fx = core.take_effects(T0)
    got = {wid: [e["id"] for m in msgs if m["op"] == "tasks" for e in m["tasks"]] for wid, msgs in fx.outbox.items()}
    assert [v for v in got.values() if v] == [t]


def test_a_worker_with_less_credit_than_the_batch_takes_what_it_can_and_the_rest_go_next() -> None:
    core = make()
    batched_worker(core, credit=2)
    t = add(core, 3)
    assert ids(frames(core, "w")) == t[:2]
    core.credit("w", 5, T0)
    fs = frames(core, "w")
    assert ids(fs) == t[2:] and fs[0][0][1] is not None


def test_a_released_task_cancelled_before_its_lease_is_forgotten() -> None:
    core = make()
    batched_worker(core, credit=2)
    t = add(core, 3)
    assert ids(frames(core, "w")) == t[:2]
    core.cancel(t[2], T0)
    assert core._released == {}


def test_a_cancelled_collected_task_is_not_sent_with_its_batch() -> None:
    core = make()
    batched_worker(core)
    a = add(core, 2)
    frames(core, "w")
    core.cancel(a[0], T0)
    core.tick(T0 + 2)
    assert ids(frames(core, "w", T0 + 2)) == a[1:]


def test_a_restart_in_the_middle_of_a_batch_window_loses_nothing_and_opens_a_new_window() -> None:
    core = make()
    batched_worker(core)
    a = add(core, 2)
    assert frames(core, "w") == []
    core.tick(T0 + 1)  # the window is half over when the server stops
    rows = [t.row() for t in core.tasks.values()]
    again = make()
    again.recover(rows, [], core.next_id, T0 + 1.5)
    assert [again.get(i).state for i in a] == [State.READY, State.READY]
    again.worker_joined("w", T0 + 1.5, types=("t",), type_options=BATCHED)
    again.credit("w", 10, T0 + 1.5)
    assert frames(again, "w", T0 + 1.5) == []
    again.tick(T0 + 2.0)  # the old window's end: nothing of it survived
    assert frames(again, "w", T0 + 2.0) == []
    assert again.next_deadline() == T0 + 3.5
    again.tick(T0 + 3.5)
    assert ids(frames(again, "w", T0 + 3.5)) == a
    b = add(again, 3, now=T0 + 4)
    assert ids(frames(again, "w", T0 + 4)) == b  # and max_size still releases at once


def test_a_worker_that_handles_the_type_without_a_batch_makes_it_plain_and_releases_what_was_collected() -> None:
    core = make()
    batched_worker(core, credit=0)
    core.worker_joined("x", T0, types=("u",))  # does not handle t: changes nothing
    core.credit("w", 10, T0)
    a = add(core, 2)
    assert frames(core, "w") == []
    core.worker_joined("v", T0, types=("t",))
    fs = frames(core, "w")
    assert ids(fs) == a and all(n is None for _, n in fs[0])
    b = add(core)
    assert ids(frames(core, "w")) == b


def test_a_stale_batch_timer_entry_is_skipped() -> None:
    core = make()
    batched_worker(core)
    a = add(core, 3)  # full at once: released, its timer entry (T0 + 2) stale
    assert ids(frames(core, "w")) == a
    b = add(core, 1, now=T0 + 1.5)
    assert frames(core, "w", T0 + 1.5) == []
    core.tick(T0 + 2.0)  # the first collection's entry: must not release the second one early
    assert frames(core, "w", T0 + 2.0) == []
    core.tick(T0 + 3.5)
    assert ids(frames(core, "w", T0 + 3.5)) == b


def test_limits_apply_to_each_task_of_a_batch() -> None:
    core = make()
    batched_worker(core)
    core.set_limit(("type", "t"), T0, concurrency=2)
    a = add(core, 3)
    assert ids(frames(core, "w")) == a[:2]  # the cap: two of the batch run, the third waits for a slot
    core.done("w", [[a[0], 1, b"\xc0"]], T0 + 0.5)
    assert ids(frames(core, "w", T0 + 0.5)) == a[2:]


def test_hello_type_options_batch_is_checked() -> None:
    base = {"op": "hello", "version": 1, "role": "worker", "types": ["t"]}
    h = parse_hello({**base, "type_options": {"t": {"batch": {"max_size": 50, "max_wait": 1.5}}}})
    assert h.type_options["t"].batch_size == 50 and h.type_options["t"].batch_wait == 1.5
    for bad in ({"max_size": 0, "max_wait": 1}, {"max_size": 10_001, "max_wait": 1}, {"max_size": 5, "max_wait": -1},
                {"max_size": 5, "max_wait": 3601}, {"max_size": "5"}, [5, 1], {"max_size": True, "max_wait": 1}):
        with pytest.raises(ProtocolError) as e:
            parse_hello({**base, "type_options": {"t": {"batch": bad}}})
        assert e.value.code == "bad_message" and "batch" in str(e.value)


# ---------------------------------------------------------------------- coalescing
def test_replace_the_newest_payload_wins_and_every_enqueue_is_answered_with_the_waiting_tasks_id() -> None:
    core = make()
    first = core.enqueue([TaskSpec("reindex", b"\x01", coalesce_key="user:7")], T0)
    core.take_effects(T0)
    later = core.enqueue([TaskSpec("reindex", b"\x02", coalesce_key="user:7"),
                          TaskSpec("reindex", b"\x03", coalesce_key="user:7", coalesce="replace")], T0 + 1)
    tid = first[0][0]
    assert first == [(tid, True)] and later == [(tid, False), (tid, False)]
    assert core.get(tid).payload == b"\x03" and len(core.tasks) == 1 and core.stats.coalesced == 2
    fx = core.take_effects(T0 + 1)
    assert [(e.task_id, e.kind) for e in fx.events] == [(tid, "coalesced"), (tid, "coalesced")]
    assert [r.payload for r in fx.rows] == [b"\x03"]  # the new payload is written


def test_keep_the_first_payload_stays() -> None:
    core = make()
    ((tid, _),) = core.enqueue([TaskSpec("reindex", b"\x01", coalesce_key="k")], T0)
    assert core.enqueue([TaskSpec("reindex", b"\x02", coalesce_key="k", coalesce="keep")], T0) == [(tid, False)]
    assert core.get(tid).payload == b"\x01"
    fx = core.take_effects(T0)
    assert [e.kind for e in fx.events] == ["coalesced"] and "keep" in (fx.events[0].detail or "")


def test_a_running_task_is_not_merged_into_and_a_scheduled_one_is() -> None:
    core = make()
    core.worker_joined("w", T0)
    ((a, _),) = core.enqueue([TaskSpec("t", b"\x01", coalesce_key="k")], T0)
    core.credit("w", 1, T0)
    core.take_effects(T0)
    assert core.get(a).state is State.RUNNING
    ((b, created),) = core.enqueue([TaskSpec("t", b"\x02", coalesce_key="k", delay=60)], T0)
    assert created and b != a
    assert core.enqueue([TaskSpec("t", b"\x03", coalesce_key="k")], T0) == [(b, False)]
    assert core.get(b).payload == b"\x03" and core.get(b).state is State.SCHEDULED
    core.done("w", [[a, 1, b"\xc0"]], T0 + 1)
    assert core.enqueue([TaskSpec("t", b"\x04", coalesce_key="k")], T0 + 1) == [(b, False)]  # b still holds it


def test_a_finished_task_frees_its_coalesce_key() -> None:
    core = make()
    ((a, _),) = core.enqueue([TaskSpec("t", coalesce_key="k")], T0)
    core.cancel(a, T0)
    assert core.coalescing == {}  # (memory stays bounded by the live tasks)
    ((b, created),) = core.enqueue([TaskSpec("t", coalesce_key="k")], T0)
    assert created and b != a and "k" in core.coalescing


def test_a_coalesce_key_survives_a_restart() -> None:
    core = make()
    ((a, _),) = core.enqueue([TaskSpec("t", b"\x01", coalesce_key="k")], T0)
    rows = [t.row() for t in core.tasks.values()]
    again = make()
    again.recover(rows, [], core.next_id, T0 + 1)
    assert again.enqueue([TaskSpec("t", b"\x02", coalesce_key="k")], T0 + 1) == [(a, False)]
    assert again.get(a).payload == b"\x02"


def test_coalesce_specs_are_checked() -> None:
    assert parse_task_spec({"type": "t", "coalesce_key": "k", "coalesce": "keep"}).coalesce == "keep"
    for bad in ({"coalesce_key": ""}, {"coalesce_key": "k" * 1001}, {"coalesce_key": "k", "coalesce": "merge"},
                {"coalesce": "keep"}, {"coalesce_key": 7}, {"limit_key": ""}, {"limit_key": "x" * 201}):
        with pytest.raises(ProtocolError) as e:
            parse_task_spec({"type": "t", **bad})
        assert e.value.code == ("bad_message" if bad == {"coalesce_key": 7} else "bad_request")  # (a wrong type)


# ---------------------------------------------------------------------- limit key
def test_a_limit_key_given_at_enqueue_is_the_key_of_per_key_limits_instead_of_the_payload_field() -> None:
    core = make()
    core.worker_joined("w", T0)
    core.credit("w", 100, T0)
    core.set_limit(("queue", "default", "customer"), T0, concurrency=1)
    pay = msgpack.packb({"customer": "acme"})
    a = add(core, 2, limit_key="acme")  # no payload field at all: limited by the key given
    b = add(core, 1, limit_key="globex", payload=pay)  # the key given wins over the payload's field
    c = add(core, 1, payload=pay)  # no key given: the payload's field, as before
    got = ids(frames(core, "w"))
    assert got == [a[0], b[0]]  # a[1] waits for acme's slot; c is acme by its payload and waits too
    why = core.why_waiting(a[1], T0)
    assert why is not None and why.reason == "concurrency_cap" and why.value == "acme"
    core.done("w", [[a[0], 1, b"\xc0"]], T0 + 1)
    assert ids(frames(core, "w", T0 + 1)) == [a[1]]
    assert core.get(c[0]).state is State.READY


def test_a_limit_key_survives_a_restart() -> None:
    core = make()
    (a,) = add(core, limit_key="acme")
    rows = [t.row() for t in core.tasks.values()]
    again = make()
    again.recover(rows, [], core.next_id, T0)
    assert again.get(a).limit_key == "acme"


# ---------------------------------------------------------------------- requires from a definition
def test_a_definitions_requires_applies_to_tasks_enqueued_by_name() -> None:
    core = make()
    core.worker_joined("gpu", T0, types=("render",), labels={"gpu": "1"},
                       type_options={"render": TypeOptions(requires={"gpu": "1"})})
    (a,) = add(core, type_="render")
    (b,) = add(core, type_="render", requires={"gpu": "2"})  # given at enqueue: the definition's does not apply
    assert core.get(a).requires == '{"gpu":"1"}' and core.get(b).requires == '{"gpu":"2"}'
    h = parse_hello({"op": "hello", "version": 1, "role": "worker",
                     "type_options": {"render": {"requires": {"gpu": "1"}}}})
    assert h.type_options["render"].requires == {"gpu": "1"}
    with pytest.raises(ProtocolError):
        parse_hello({"op": "hello", "version": 1, "role": "worker", "type_options": {"render": {"requires": {"g": ""}}}})


def test_a_batch_of_one_goes_at_once() -> None:
    core = make()
    core.worker_joined("w", T0, types=("t",), type_options={"t": TypeOptions(batch_size=1, batch_wait=5.0)})
    core.credit("w", 10, T0)
    a = add(core, 2)
    fs = frames(core, "w")
    assert ids(fs) == a and fs[0][0][1] != fs[0][1][1]


def test_a_task_forgotten_after_a_failed_commit_frees_its_coalesce_key() -> None:
    core = make()
    ((a, _),) = core.enqueue([TaskSpec("t", b"\x01", coalesce_key="k")], T0)
    assert core.forget([a]) == {a}
    assert core.coalescing == {}
    ((b, created),) = core.enqueue([TaskSpec("t", b"\x02", coalesce_key="k")], T0)
    assert created and b != a
