"""Routing by labels on a real server (docs/routing.md): two SDK workers offer different labels; a task that
requires a region runs only on that region's worker, one that no worker fits waits (``why`` says so) and
runs when a worker that fits joins."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from server_helpers import until

import runq
from runq import Client, Worker
from runq.app.server import Server


def region_worker(region: str, **labels: str) -> Worker:
    w = Worker(concurrency=2, name=f"w-{region}", labels={"region": region, **labels})

    @w.task("where")
    async def where(p: Any) -> str:
        return region

    return w


@runq.task(type="where", requires={"region": "eu"})
async def where_eu() -> str:
    return ""


@pytest.mark.trio
async def test_tasks_go_to_the_worker_with_the_labels_they_require(server: Server, nursery: trio.Nursery) -> None:
    eu, us = region_worker("eu"), region_worker("us")
    nursery.start_soon(eu.run, f"127.0.0.1:{server.port}")
    nursery.start_soon(us.run, f"127.0.0.1:{server.port}")
    addr = f"127.0.0.1:{server.port}"
    with trio.fail_after(20):
        async with Client(addr) as c:
            await until(server, lambda: len(server.core.workers) == 2)
            labels = sorted(w["labels"]["region"] for w in await c.workers())
            assert labels == ["eu", "us"]
            eu_ids = [await c.enqueue("where", i, requires={"region": "eu"}) for i in range(4)]
            us_ids = [await c.enqueue("where", i, requires={"region": "us"}) for i in range(4)]
            typed = await c.enqueue(where_eu.call())  # the definition's requires
            gpu = await c.enqueue("where", 0, requires={"gpu": "1"})
            assert [(await c.wait(t, timeout=10))["result"] for t in eu_ids] == ["eu"] * 4
            assert [(await c.wait(t, timeout=10))["result"] for t in us_ids] == ["us"] * 4
            assert (await typed.result(timeout=10)) == "eu"
            why = await c.why(gpu)
            assert why is not None and why["reason"] == "no_worker_with_labels" and "gpu=1" in why["detail"]
            assert (await c.get(gpu))["state"] == "ready"
            assert (await c.get(gpu))["requires"] == '{"gpu":"1"}'
            gpu_worker = region_worker("ap", gpu="1")
            nursery.start_soon(gpu_worker.run, addr)
            assert (await c.wait(gpu, timeout=10))["result"] == "ap"
    for w in (eu, us, gpu_worker):
        w.stop()
