"""Batched handlers, coalescing, the limit key and a definition's ``requires`` on a real server with SDK workers
and clients over TCP (docs/batching.md, docs/tasks.md, docs/limits.md, docs/routing.md)."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from server_helpers import until

import runq
from runq import BatchItem, Client, Worker
from runq.app.server import Server

calls: list[list[Any]] = []


@runq.task(batch=runq.Batch(max_size=4, max_wait=0.2), retries=0)
def square(items: list[BatchItem]) -> list[Any]:
    calls.append([i.payload for i in items])
    return [ValueError("seven is refused") if i.payload == 7 else i.payload * i.payload for i in items]


@runq.task(type="render", requires={"gpu": "1"})
def render() -> str:
    return "drawn"


@pytest.mark.trio
async def test_a_batched_handler_gets_batches_of_at_most_max_size_and_reports_each_task(
        server: Server, nursery: trio.Nursery) -> None:
    calls.clear()
    w = Worker(concurrency=1, prefetch=20, tasks=[square])
    nursery.start_soon(w.run, f"127.0.0.1:{server.port}")
    with trio.fail_after(20):
        async with Client(f"127.0.0.1:{server.port}") as c:
            await until(server, lambda: bool(server.core.hungry))
            types = await c.task_types()
            assert types[0]["batch"] == {"max_size": 4, "max_wait": 0.2}
            handles = await c.enqueue_many([square.item(n) for n in range(10)])  # one request: all ready at once
            done = [await c.wait(int(h), timeout=10) for h in handles]
    assert sorted(len(b) for b in calls) == [2, 4, 4] and sorted(n for b in calls for n in b) == list(range(10))
    assert [d["state"] for d in done] == ["succeeded"] * 7 + ["dead"] + ["succeeded"] * 2
    assert [d["result"] for d in done if d["state"] == "succeeded"] == [0, 1, 4, 9, 16, 25, 36, 64, 81]
    assert "seven is refused" in done[7]["error"]
    w.stop()


@pytest.mark.trio
async def test_coalescing_limit_key_and_definition_requires_over_tcp(server: Server, nursery: trio.Nursery) -> None:
    with trio.fail_after(20):
        async with Client(f"127.0.0.1:{server.port}") as c:
            first = await c.enqueue("reindex", {"user": 7}, coalesce_key="user:7")
            again = [await c.enqueue("reindex", {"user": 7, "n": n}, coalesce_key="user:7") for n in range(3)]
            kept = await c.enqueue("reindex", {"user": 7, "n": 99}, coalesce_key="user:7", coalesce="keep")
            assert again == [first] * 3 and kept == first
            task = await c.get(first)
            assert task["coalesce_key"] == "user:7" and task["payload"] == {"user": 7, "n": 2}
            events = await c.events(first)
            assert [e["kind"] for e in events].count("coalesced") == 4
            assert (await c.stats())["coalesced"] == 4
            limited = await c.enqueue("send", None, limit_key="acme")
            assert (await c.get(limited))["limit_key"] == "acme"
            with pytest.raises(ValueError, match="coalesce"):  # (refused before anything is sent)
                await c.enqueue_many([{"type": "t", "coalesce": "merge", "coalesce_key": "k"}])
            gpu = Worker(tasks=[render], labels={"gpu": "1"})
            nursery.start_soon(gpu.run, f"127.0.0.1:{server.port}")
            await until(server, lambda: len(server.core.workers) == 1)
            by_name = await c.enqueue("render")  # enqueued by name: the definition's requires, sent in its hello
            assert (await c.get(by_name))["requires"] == '{"gpu":"1"}'
            assert (await c.wait(by_name, timeout=10))["result"] == "drawn"
            gpu.stop()


gate: list[trio.Event] = []


@runq.task(type="moody", batch=runq.Batch(max_size=3, max_wait=0.1), retries=1)
async def moody(items: list[BatchItem]) -> Any:
    kinds = {i.payload for i in items}
    if "wait" in kinds:
        await gate[0].wait()
    if "raise" in kinds and items[0].attempt == 1:
        raise RuntimeError("the whole batch fails")
    if "short" in kinds:
        return [1, 2, 3, 4]  # more results than tasks (at most 3): every task fails
    return [runq.Retry(0.01) if i.payload == "again" and i.attempt == 1 else i.attempt for i in items]


@pytest.mark.trio
async def test_a_batched_handler_that_raises_retries_asks_and_answers_badly(server: Server,
                                                                             nursery: trio.Nursery) -> None:
    gate[:] = [trio.Event()]
    w = Worker(concurrency=1, prefetch=10, tasks=[moody])
    nursery.start_soon(w.run, f"127.0.0.1:{server.port}")
    with trio.fail_after(20):
        async with Client(f"127.0.0.1:{server.port}") as c:
            await until(server, lambda: bool(server.core.hungry))
            raised = await c.enqueue_many([moody.item(p) for p in ("raise", "x", "y")])
            assert [(await c.wait(int(h), timeout=10))["result"] for h in raised] == [2, 2, 2]  # failed, retried
            for h in raised:
                failed = [e["detail"] for e in await c.events(int(h)) if e["kind"] == "failed"]
                assert len(failed) == 1 and "the whole batch fails" in failed[0]
            again = await c.enqueue_many([moody.item(p) for p in ("again", "x", "y")])
            assert [(await c.wait(int(h), timeout=10))["result"] for h in again] == [2, 1, 1]
            short = await c.enqueue_many([moody.item("short") for _ in range(3)])
            done = [await c.wait(int(h), timeout=10) for h in short]
            assert [d["state"] for d in done] == ["dead"] * 3 and "must return None or a list" in done[0]["error"]
            waiting = await c.enqueue_many([moody.item(p) for p in ("wait", "x", "y")])
            await until(server, lambda: all(server.core.get(int(h)).state.value == "running" for h in waiting))
            await c.cancel(int(waiting[1]))  # one task of the running batch: the others go on
            gate[0].set()
            assert [(await c.wait(int(h), timeout=10))["state"] for h in waiting] == [
                "succeeded", "cancelled", "succeeded"]
    assert server.core.stats.late_results == 0
    w.stop()
