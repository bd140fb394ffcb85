"""The SDK under asyncio (and the blocking SyncClient) against a real server."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import anyio
import pytest

from runq import Client, Retry, SyncClient, TaskFailed, TaskNotFound, Worker


def _run(coro_fn, timeout: float = 20.0):
    async def bounded():
        return await asyncio.wait_for(coro_fn(), timeout)

    return asyncio.run(bounded())


def test_client_and_worker_under_asyncio(threaded_server: Any) -> None:
    worker = Worker(concurrency=2)
    seen_threads: list[int] = []
    loop_thread = threading.get_ident()

    @worker.task("add")
    async def add(p):
        await asyncio.sleep(0)  # a real asyncio call inside the handler
        return p["a"] + p["b"]

    @worker.task("mul")
    def mul(p, ctx):
        seen_threads.append(threading.get_ident())
        ctx.progress({"half": True})
        return p["a"] * p["b"]

    attempts: list[int] = []

    @worker.task("again", retries=2)
    async def again(p, ctx):
        attempts.append(ctx.attempt)
        if ctx.attempt < 2:
            raise Retry(delay=0.05)
        return "ok"

    @worker.task("bad", retries=0)
    def bad(p):
        raise KeyError("missing thing")

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run, threaded_server.address)
            async with Client(threaded_server.address) as c:
                a = await c.enqueue("add", {"a": 2, "b": 3})
                m = await c.enqueue("mul", {"a": 4, "b": 5})
                r = await c.enqueue("again")
                b = await c.enqueue("bad")
                assert await c.result(a, timeout=10) == 5
                assert await c.result(m, timeout=10) == 20
                assert (await c.get(m))["progress"] == {"half": True}
                assert await c.result(r, timeout=10) == "ok"
                with pytest.raises(TaskFailed) as exc_info:
                    await c.result(b, timeout=10)
                assert exc_info.value.task["state"] == "dead"
                assert "KeyError: 'missing thing'" in exc_info.value.task["error"]
                with pytest.raises(TaskNotFound):
                    await c.get(10_000)
            worker.stop()

    _run(main)
    assert attempts == [1, 2]
    assert seen_threads and seen_threads[0] != loop_thread


def test_sync_client(threaded_server: Any) -> None:
    with SyncClient(threaded_server.address) as c:
        ids = c.enqueue_many([{"type": "t", "payload": i, "priority": i % 3} for i in range(10)])
        assert ids == sorted(ids) and len(set(ids)) == 10
        assert c.get(ids[3])["payload"] == 3
        same = c.enqueue("t", 1, key="k1")
        assert c.enqueue("t", 2, key="k1") == same
        cancelled = c.cancel(ids[0])
        assert cancelled["state"] == "cancelled"
        assert c.retry(ids[0])["state"] == "ready"
        kinds = [e["kind"] for e in c.events(ids[0])]
        assert kinds == ["enqueued", "cancelled", "retried"]
        tasks, cursor = c.list_tasks(limit=5)
        assert [t["id"] for t in tasks] == sorted((t["id"] for t in tasks), reverse=True) and cursor is not None
        rest, _ = c.list_tasks(limit=100, cursor=cursor)
        assert len(tasks) + len(rest) == 11
        c.pause("default")
        assert next(q for q in c.queues() if q["queue"] == "default")["paused"] is True
        c.resume("default")
        with pytest.raises(TimeoutError):
            c.wait(ids[1], timeout=0.2)


def test_a_script_that_never_closes_its_sync_client_still_exits(threaded_server: Any) -> None:
    """The blocking client's loop thread used to be a thread-pool worker, which the interpreter joins at
    exit: a script that forgot close() (or ``with``) hung for ever after its last line."""
    import subprocess
    import sys

    script = ("from runq import SyncClient\n"
              f"c = SyncClient({threaded_server.address!r})\n"
              "print(c.enqueue('t', 'from a script'))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    tid = int(done.stdout)
    with SyncClient(threaded_server.address) as c:
        assert c.get(tid)["payload"] == "from a script"


def test_a_sync_client_that_cannot_connect_leaves_no_thread_behind() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    before = {t.ident for t in threading.enumerate()}
    with pytest.raises(OSError, match=f"cannot connect to 127.0.0.1:{port}"):  # (it says where to)
        SyncClient(f"127.0.0.1:{port}", connect_timeout=2)
    assert {t.ident for t in threading.enumerate() if t.is_alive()} <= before
