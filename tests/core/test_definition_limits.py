"""Limits from task definitions (issue 11): a worker's hello ``type_options`` carry ``rate``/``period`` and
``concurrency``, and the core sets them as the type's limit when the worker joins (docs/limits.md, "From task
definitions"). Fake clock (plain floats)."""

from __future__ import annotations

import random

import pytest

from runq.app.core import Core, CoreConfig
from runq.protocol.errors import ProtocolError
from runq.protocol.messages import TaskSpec, TypeOptions, parse_hello

T0 = 1_000.0


def _limits(core: Core) -> list[tuple[str, float | None, float, int | None]]:
    return [(str(lim.scope), lim.rate, lim.period, lim.concurrency) for lim in core.limits()]


def test_a_definitions_limit_is_set_when_its_worker_joins_and_enforced() -> None:
    core = Core(CoreConfig(lease_timeout=1e9), rng=random.Random(1))
    ids = [tid for tid, _ in core.enqueue([TaskSpec("send"), TaskSpec("send"), TaskSpec("other")], T0)]
    core.worker_joined("w1", T0, concurrency=10, types=("send", "other"),
                       type_options={"send": TypeOptions(concurrency=1)})
    assert _limits(core) == [("type:send", None, 1.0, 1)]
    fx = core.take_effects(T0)
    assert [(e.scope, e.kind) for e in fx.limit_events] == [("type:send", "limit_set")]
    assert [row is not None for _, row in fx.limit_rows] == [True]  # (stored as any limit)
    core.credit("w1", 10, T0)
    sent = [t["id"] for msgs in core.take_effects(T0).outbox.values() for m in msgs for t in m.get("tasks", ())]
    assert sorted(sent) == [ids[0], ids[2]]  # the cap of 1 holds the second `send`
    w = core.why_waiting(ids[1], T0)
    assert w is not None and w.reason == "concurrency_cap"
    # a second worker with the same definition writes nothing; one with another definition replaces it
    core.worker_joined("w2", T0, types=("send",), type_options={"send": TypeOptions(concurrency=1)})
    assert core.take_effects(T0).limit_events == []
    core.worker_joined("w3", T0, types=("send",), type_options={"send": TypeOptions(rate=10.0, period=60.0)})
    assert _limits(core) == [("type:send", 10.0, 60.0, None)]
    # options without a limit leave the limit as it is
    core.worker_joined("w4", T0, types=("send",), type_options={"send": TypeOptions(queue="mail")})
    assert _limits(core) == [("type:send", 10.0, 60.0, None)]


@pytest.mark.parametrize(("opts", "words"), [
    ({"rate": 0}, "'rate' must be"),
    ({"rate": float("nan")}, "'rate' must be"),
    ({"rate": 1, "period": 0}, "'period'"),
    ({"period": 5}, "'period' needs a 'rate'"),
    ({"concurrency": 0}, "'concurrency' must be"),
    ({"concurrency": "3"}, "'concurrency'"),
])
def test_hello_refuses_a_bad_definition_limit(opts: dict[str, object], words: str) -> None:
    with pytest.raises(ProtocolError) as err:
        parse_hello({"op": "hello", "version": 1, "role": "worker", "type_options": {"send": opts}})
    assert err.value.code == "bad_message" and words in str(err.value)


def test_hello_reads_a_definition_limit() -> None:
    hello = parse_hello({"op": "hello", "version": 1, "role": "worker",
                         "type_options": {"a": {"rate": 5, "period": 2}, "b": {"concurrency": 3}, "c": {"rate": 1}}})
    assert hello.type_options["a"] == TypeOptions(rate=5.0, period=2.0)
    assert hello.type_options["b"] == TypeOptions(concurrency=3)
    assert hello.type_options["c"] == TypeOptions(rate=1.0, period=1.0)
