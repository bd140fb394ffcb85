"""Routing by task type (routing.py): a worker that announced its task types gets only those; a ready task
of a type no connected worker handles is held aside (still ready), blocks nothing, and comes back at the
front of its queue when a worker that handles it joins. Plain floats for time."""

from __future__ import annotations

import random
from typing import Any

from runq.app.core import Core, CoreConfig, State
from runq.protocol.messages import TaskSpec

T0 = 1_000.0


def make() -> Core:
    return Core(CoreConfig(), rng=random.Random(1))


def add(core: Core, type_: str, n: int = 1, **kw: Any) -> list[int]:
    return [tid for tid, _ in core.enqueue([TaskSpec(type=type_, **kw) for _ in range(n)], T0)]


def sent(core: Core, wid: str) -> list[tuple[int, str]]:
    fx = core.take_effects(T0)
    return [(t["id"], t["type"]) for m in fx.outbox.get(wid, []) if m["op"] == "tasks" for t in m["tasks"]]


def test_a_worker_gets_only_the_types_it_announced_and_a_typo_blocks_nobody() -> None:
    core = make()
    typo = add(core, "sendemail")  # no worker will ever handle it
    ok = add(core, "send_email", 2)
    core.worker_joined("w1", T0, types=("send_email",))
    core.credit("w1", 5, T0)
    assert sent(core, "w1") == [(ok[0], "send_email"), (ok[1], "send_email")]  # the typo did not block them
    t = core.get(typo[0])
    assert t.state is State.READY and t.attempt == 0  # held: not failed, no retry spent
    assert core.queue_stats()[0]["ready"] == 1
    assert sent(core, "w1") == []


def test_held_tasks_come_back_in_order_when_a_worker_that_handles_them_joins() -> None:
    core = make()
    core.worker_joined("w1", T0, types=("a",))
    core.credit("w1", 10, T0)
    held = add(core, "b", 3)
    first = add(core, "a")
    assert sent(core, "w1") == [(first[0], "a")]
    later = add(core, "b")  # behind the held ones
    core.worker_joined("w2", T0, types=("b",))
    core.credit("w2", 10, T0)
    assert [tid for tid, _ in sent(core, "w2")] == [*held, *later]


def test_a_worker_that_announced_nothing_takes_every_type_and_releases_what_was_held() -> None:
    core = make()
    core.worker_joined("typed", T0, types=("a",))
    core.credit("typed", 1, T0)
    (b,) = add(core, "b")
    assert sent(core, "typed") == []  # held
    core.worker_joined("any", T0)
    core.credit("any", 1, T0)
    assert sent(core, "any") == [(b, "b")]


def test_a_type_another_worker_handles_waits_for_that_worker_instead_of_being_held() -> None:
    core = make()
    core.worker_joined("wa", T0, types=("a",))
    core.worker_joined("wb", T0, types=("b",))
    (b,) = add(core, "b")
    core.credit("wa", 1, T0)
    assert sent(core, "wa") == []
    assert core.queues["default"].held == {}  # not held: wb handles it
    core.credit("wb", 1, T0)
    assert sent(core, "wb") == [(b, "b")]


def test_held_tasks_that_were_cancelled_meanwhile_stay_out() -> None:
    core = make()
    core.worker_joined("wa", T0, types=("a",))
    core.credit("wa", 1, T0)
    x, y = add(core, "b", 2)
    sent(core, "wa")
    core.cancel(x, T0)
    core.worker_joined("wb", T0, types=("b",))
    core.credit("wb", 5, T0)
    assert sent(core, "wb") == [(y, "b")]
    assert core.get(x).state is State.CANCELLED


def test_types_per_queue_and_a_worker_leaving() -> None:
    core = make()
    core.worker_joined("w1", T0, queues=("q1",), types=("t",))
    assert core._handled("q1", "t") and not core._handled("q2", "t")  # a type is handled on a queue
    core.worker_joined("w2", T0, queues=("q2",))
    assert core._handled("q2", "anything")
    core.worker_left("w1", T0)
    assert not core._handled("q1", "t")
    core.worker_joined("w2", T0, queues=("q1",), types=("t",))  # the same id again: replaced, not added
    assert core._handled("q1", "t") and not core._handled("q2", "anything")


def test_a_task_enqueued_by_type_name_gets_what_its_workers_definition_sets() -> None:
    from runq.protocol.messages import TypeOptions

    core = make()
    (before,) = add(core, "send_email")  # nothing announced yet: the server's defaults
    core.worker_joined("w1", T0, queues=("mail",), types=("send_email",),
                       type_options={"send_email": TypeOptions(queue="mail", priority=3, timeout=30.0, retries=5)})
    (by_name,) = add(core, "send_email")
    (explicit,) = add(core, "send_email", queue="other", priority=0, timeout=5.0, retries=0)
    (other,) = add(core, "resize")
    t = core.get(by_name)
    assert (t.queue, t.priority, t.timeout, t.max_retries) == ("mail", 3, 30.0, 5)
    t = core.get(explicit)
    assert (t.queue, t.priority, t.timeout, t.max_retries) == ("other", 0, 5.0, 0)  # given fields win
    for tid in (before, other):
        t = core.get(tid)
        assert (t.queue, t.priority, t.timeout, t.max_retries) == ("default", 0, 600.0, 3)
    core.worker_left("w1", T0)
    (after,) = add(core, "send_email")
    assert core.get(after).queue == "mail"  # kept after its worker left
