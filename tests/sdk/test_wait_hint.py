"""A wait that times out says why when it can tell cheaply: no connected worker serves the task's queue, or
none of that queue handles its type (issue 10)."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest

from runq import Client, SyncClient, Worker
from runq.protocol.tasks import no_worker_hint


def _worker(queues: list[str], types: list[str], state: str = "active") -> dict[str, Any]:
    return {"id": "w", "queues": queues, "types": types, "state": state}


@pytest.mark.parametrize(("task", "workers", "hint"), [
    ({"state": "ready", "queue": "q", "type": "t"}, [], "no connected worker serves queue 'q'"),
    ({"state": "ready", "queue": "q", "type": "t"}, [_worker(["other"], [])], "no connected worker serves queue 'q'"),
    ({"state": "ready", "queue": "q", "type": "t"}, [_worker(["q"], ["t"], "draining")],
     "no connected worker serves queue 'q'"),
    ({"state": "ready", "queue": "q", "type": "t"}, [_worker(["q"], ["a", "b"])],
     "no connected worker of queue 'q' handles type 't'"),
    ({"state": "ready", "queue": "q", "type": "t"}, [_worker(["q"], ["a"]), _worker(["q"], ["t"])], ""),
    ({"state": "ready", "queue": "q", "type": "t"}, [_worker(["q"], [])], ""),  # announced none: takes any type
    ({"state": "scheduled", "queue": "q", "type": "t"}, [], ""),  # waits for its time, not for a worker
    ({"state": "running", "queue": "q", "type": "t"}, [], ""),
])
def test_no_worker_hint(task: dict[str, Any], workers: list[dict[str, Any]], hint: str) -> None:
    assert no_worker_hint(task, workers) == hint


def test_sync_wait_says_no_worker_serves_the_queue(threaded_server: Any) -> None:
    with SyncClient(threaded_server.address) as c:
        tid = c.enqueue("t", 1, queue="nobody")
        with pytest.raises(TimeoutError, match=f"task {tid} is still ready after 0.2s: no connected worker serves "
                                               "queue 'nobody'$"):
            c.wait(tid, timeout=0.2)
        later = c.enqueue("t", 1, queue="nobody", delay=3600)
        with pytest.raises(TimeoutError, match=r"still scheduled after 0.1s$"):  # no hint: it waits for its time
            c.wait(later, timeout=0.1)


def test_async_wait_says_no_worker_handles_the_type(threaded_server: Any) -> None:
    worker = Worker(queues=["default"])

    @worker.task("add")
    async def add(p: dict[str, int]) -> int:
        return p["a"] + p["b"]

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run, threaded_server.address)
            async with Client(threaded_server.address) as c:
                ok = await c.enqueue("add", {"a": 1, "b": 2})
                assert await c.result(ok, timeout=10) == 3  # the worker is there and takes its type
                other = await c.enqueue("mul", {"a": 1, "b": 2})
                with pytest.raises(TimeoutError, match="no connected worker of queue 'default' handles type 'mul'"):
                    await c.wait(other, timeout=0.2)
                away = await c.enqueue("add", {"a": 1, "b": 2}, queue="elsewhere")
                with pytest.raises(TimeoutError, match="no connected worker serves queue 'elsewhere'"):
                    await c.result(away, timeout=0.2)
            worker.stop()

    asyncio.run(asyncio.wait_for(main(), 20))
