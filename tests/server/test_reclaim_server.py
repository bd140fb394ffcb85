"""Results across a restart with ``reclaim`` (docs/operations.md, "Results across a failover"), in one process:
a real server on a real SQLite file stopped while an SDK worker runs a task, a new server on the same file and
port, and the same worker reconnecting. With ``reclaim`` the new server holds the task for that worker, which
takes it back and reports it: it ran once. Without, the worker's run is stopped and the task runs again."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from runq import Client, Worker
from runq.app.core import CoreConfig
from runq.app.server import Server, ServerConfig


async def restart_while_running(tmp_path: Path, reclaim_after: float) -> tuple[dict[str, object], list[str], int, int]:
    """Run one task on a worker, restart the server under it (the second one with ``reclaim_after``), let the
    run finish; return the task, its event kinds, how many runs began, and the most at once."""
    db = str(tmp_path / "runq.db")
    runs = {"began": 0, "now": 0, "most": 0}
    release = trio.Event()

    async def slow(x: int) -> int:
        runs["began"] += 1
        runs["now"] += 1
        runs["most"] = max(runs["most"], runs["now"])
        try:
            await release.wait()
        finally:
            runs["now"] -= 1
        return x + 1

    worker = Worker(concurrency=2)
    worker.register("slow", slow)
    first = Server(ServerConfig(db=db, port=0, core=CoreConfig(reclaim=5.0)))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            async with trio.open_nursery() as first_life:
                port = await first_life.start(first.serve)
                address = f"127.0.0.1:{port}"
                nursery.start_soon(worker.run, address)
                async with Client(address) as c:
                    tid = await c.enqueue("slow", 1)
                    while (await c.get(tid))["state"] != "running":
                        await trio.sleep(0.01)
                first.stopping.set()  # (a graceful stop leaves the running task running in the database)
            second = Server(ServerConfig(db=db, port=port, core=CoreConfig(reclaim=reclaim_after)))
            await nursery.start(second.serve)
            async with Client(address) as c:
                while worker.sessions < 2:
                    await trio.sleep(0.01)
                release.set()
                task = await c.wait(tid, timeout=30)
                events = [e["kind"] for e in await c.events(tid)]
            worker.stop()
            second.stopping.set()
    return task, events, runs["began"], runs["most"]


@pytest.mark.trio
async def test_the_worker_takes_its_run_back_and_its_result_counts(tmp_path: Path) -> None:
    task, events, began, most = await restart_while_running(tmp_path, reclaim_after=5.0)
    assert (task["state"], task["result"], task["attempt"]) == ("succeeded", 2, 1)
    assert events == ["enqueued", "started", "reclaimed", "succeeded"]
    assert began == 1 and most == 1


@pytest.mark.trio
async def test_without_reclaim_on_the_new_server_the_run_is_stopped_and_runs_again_never_twice_at_once(
        tmp_path: Path) -> None:
    task, events, began, most = await restart_while_running(tmp_path, reclaim_after=0.0)
    assert (task["state"], task["result"], task["attempt"]) == ("succeeded", 2, 2)
    assert events == ["enqueued", "started", "recovered", "started", "succeeded"]
    assert began == 2 and most == 1
