"""Routing by labels (routing.py rule 4, docs/routing.md): a task that ``requires`` labels goes only to a
worker whose labels include every required pair; one that no connected worker fits is held aside (still
ready), blocks nobody, says why, and comes back when a worker that fits joins. Plain floats for time."""

from __future__ import annotations

import random
from typing import Any

import pytest

from runq.app.core import Core, CoreConfig, State, Task
from runq.protocol.errors import ProtocolError
from runq.protocol.messages import TaskSpec, check_task_spec, parse_hello, parse_task_spec

T0 = 1_000.0


def make() -> Core:
    return Core(CoreConfig(), rng=random.Random(1))


def add(core: Core, n: int = 1, type_: str = "t", **kw: Any) -> list[int]:
    specs = [check_task_spec(TaskSpec(type=type_, **kw)) for _ in range(n)]
    return [tid for tid, _ in core.enqueue(specs, T0)]


def sent(core: Core, wid: str) -> list[int]:
    fx = core.take_effects(T0)
    return [t["id"] for m in fx.outbox.get(wid, []) if m["op"] == "tasks" for t in m["tasks"]]


def test_a_task_that_requires_a_region_goes_only_to_a_worker_of_that_region() -> None:
    core = make()
    core.worker_joined("eu", T0, labels={"region": "eu"})
    core.worker_joined("us", T0, labels={"region": "us", "gpu": "1"})
    eu = add(core, 3, requires={"region": "eu"})
    core.credit("us", 10, T0)
    assert sent(core, "us") == []  # the eu tasks wait for the eu worker (not held: it is connected)
    assert core.queues["default"].held == {}
    core.credit("eu", 10, T0)
    assert sent(core, "eu") == eu
    anyone = add(core, 2)
    assert sorted(sent(core, "us") + sent(core, "eu")) == anyone  # a task that requires nothing goes anywhere


def test_a_task_no_connected_worker_fits_waits_says_why_blocks_nobody_and_runs_when_one_joins() -> None:
    core = make()
    core.worker_joined("cpu", T0, labels={"region": "eu"})
    (gpu,) = add(core, requires={"gpu": "1", "region": "eu"})
    plain = add(core, 2)
    core.credit("cpu", 10, T0)
    assert sent(core, "cpu") == plain  # the gpu task did not block them
    t = core.get(gpu)
    assert t.state is State.READY and t.attempt == 0
    why = core.why_waiting(gpu, T0)
    assert why is not None and why.reason == "no_worker_with_labels" and "gpu=1, region=eu" in why.detail
    core.worker_joined("half", T0, labels={"gpu": "1"})  # gpu but not eu: still not fitting
    core.credit("half", 10, T0)
    assert sent(core, "half") == []
    core.worker_joined("gpu", T0, labels={"gpu": "1", "region": "eu", "zone": "a"})
    core.credit("gpu", 10, T0)
    assert sent(core, "gpu") == [gpu]
    assert core.why_waiting(gpu, T0) is None


def test_a_worker_without_labels_takes_no_task_that_requires_some() -> None:
    core = make()
    core.worker_joined("w", T0)
    (r,) = add(core, requires={"region": "eu"})
    core.credit("w", 1, T0)
    assert sent(core, "w") == []
    why = core.why_waiting(r, T0)
    assert why is not None and why.reason == "no_worker_with_labels"


def test_requires_are_kept_across_a_restart() -> None:
    core = make()
    (r,) = add(core, requires={"region": "eu"})
    (row,) = [t.row() for t in [core.get(r)]]
    assert row.requires == '{"region":"eu"}'
    again = make()
    again.recover(iter([tuple(row)]), [], r + 1, T0)  # type: ignore[list-item]
    again.worker_joined("us", T0, labels={"region": "us"})
    again.credit("us", 1, T0)
    assert sent(again, "us") == []
    again.worker_joined("eu", T0, labels={"region": "eu"})
    again.credit("eu", 1, T0)
    assert sent(again, "eu") == [r]
    assert Task.from_row(row).requires == '{"region":"eu"}'


@pytest.mark.parametrize("bad", [{"": "x"}, {"a": ""}, {"a b": "x"}, {"a": 1}, {"a": "x" * 65},
                                 {f"k{i}": "v" for i in range(33)}, ["region=eu"]])
def test_bad_labels_and_requires_are_refused_with_a_clear_error(bad: Any) -> None:
    with pytest.raises(ProtocolError, match="'requires'") as e:
        parse_task_spec({"type": "t", "requires": bad, "queue": "q"})
    assert e.value.code in ("bad_request", "bad_message")
    with pytest.raises(ProtocolError, match="'labels'"):
        parse_hello({"op": "hello", "version": 1, "role": "worker", "labels": bad})


def test_labels_and_requires_are_parsed_sorted_and_empty_requires_is_none() -> None:
    h = parse_hello({"op": "hello", "version": 1, "role": "worker", "labels": {"z": "1", "region": "eu-west.1"}})
    assert list(h.labels.items()) == [("region", "eu-west.1"), ("z", "1")]
    assert parse_task_spec({"type": "t", "requires": {}, "queue": "q"}).requires is None
    assert parse_task_spec({"type": "t", "requires": {"b": "2", "a": "1"}}).requires == {"a": "1", "b": "2"}
