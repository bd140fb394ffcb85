"""Batched definitions, coalescing and the limit key in the SDK (docs/batching.md, docs/tasks.md,
docs/limits.md): what goes on the wire, what a worker announces, and bad values refused where given."""

from __future__ import annotations

import pytest

import runq
from runq import Batch, BatchItem, Worker
from runq.protocol.client import _task_entry
from runq.protocol.values import decode_value


@runq.task(batch=Batch(max_size=50, max_wait=2.0), requires={"gpu": "1"})
def reindex(items: list[BatchItem]) -> None:
    return None


@runq.task
def plain(n: int) -> int:
    return n


def test_a_batched_definition_binds_one_task_with_item_and_refuses_call() -> None:
    e = reindex.item({"user": 7}).entry(coalesce_key="user:7", limit_key="acme")
    assert decode_value(e["payload"]) == {"user": 7}
    assert (e["type"], e["coalesce_key"], e["limit_key"], e["requires"]) == ("reindex", "user:7", "acme", {"gpu": "1"})
    with pytest.raises(TypeError, match="item"):
        reindex.call([])
    with pytest.raises(TypeError, match="not batched"):
        plain.item(1)


def test_a_worker_announces_batch_and_requires_and_grants_credit_for_a_whole_batch() -> None:
    w = Worker(concurrency=2, tasks=[reindex, plain])
    assert w._type_options()["reindex"] == {"requires": {"gpu": "1"}, "batch": {"max_size": 50, "max_wait": 2.0}}
    assert "plain" not in w._type_options()
    assert w._prefetch() == 50  # (a batch of 50 needs 50 credits)
    assert Worker(concurrency=2, prefetch=3, tasks=[reindex])._prefetch() == 3  # given: kept
    assert Worker(concurrency=2, tasks=[plain])._prefetch() == 2


def test_bad_batches_and_coalesce_rules_are_refused_where_given() -> None:
    for size, wait in ((0, 1.0), (10_001, 1.0), (5, -1.0), (5, 3601.0)):
        with pytest.raises(ValueError, match="batch"):
            Batch(max_size=size, max_wait=wait)
    with pytest.raises(ValueError, match="runq.Batch"):
        runq.task(batch=(5, 1.0))(lambda items: None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="coalesce"):
        _task_entry("t", coalesce="keep")
    with pytest.raises(ValueError, match="coalesce"):
        plain.call(1).entry(coalesce_key="k", coalesce="merge")
    assert _task_entry("t", coalesce_key="k", coalesce="keep", limit_key="x") | {"payload": b""} == {
        "type": "t", "payload": b"", "coalesce_key": "k", "coalesce": "keep", "limit_key": "x"}
