"""Retry policies and the dead-letter queue on a real server (issue 11): a policy given at enqueue is stored with
its task and applies after a restart; a bulk retry or delete of dead tasks is one commit with an event per task
and one server event naming the caller, and never takes more than its limit."""

from __future__ import annotations

import functools
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio
from test_server import start

from runq import Client, RetryPolicy, Worker
from runq.app.ops import DeadQuery, authenticate
from runq.app.server import Server


async def _worker(n: trio.Nursery, srv: Server, **handlers: Any) -> Worker:
    w = Worker(concurrency=4, grace=2.0)
    for name, fn in handlers.items():
        w.register(name, fn)
    n.start_soon(functools.partial(w.run, f"127.0.0.1:{srv.port}"))
    while w.worker_id is None or w.worker_id not in srv.core.workers:
        await trio.sleep(0.01)
    return w


async def _until(pred: Any) -> None:
    while not pred():
        await trio.sleep(0.01)


@pytest.mark.trio
async def test_a_per_enqueue_policy_survives_a_restart(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            srv = await start(n, tmp_path)
            async with Client(f"127.0.0.1:{srv.port}") as c:
                later = await c.enqueue("fails", retry_policy=RetryPolicy(delays=(700,)))
                never = await c.enqueue("fails", retry_policy=RetryPolicy(never_retry=[ValueError]))
                plain = await c.enqueue("fails")
            srv.stopping.set()
        db = sqlite3.connect(tmp_path / "runq.db")
        try:  # the file holds each task's own policy, read without runq
            assert db.execute("SELECT id, retry_policy FROM tasks ORDER BY id").fetchall() == [
                (later, '{"delays":[700.0]}'), (never, '{"never_retry":["builtins.ValueError"]}'), (plain, None)]
        finally:
            db.close()

        async def fails(payload: Any) -> None:
            raise ValueError("no")

        async with trio.open_nursery() as n:
            srv2 = await start(n, tmp_path, core={"backoff_base": 3.0, "jitter": 0.0})
            await _worker(n, srv2, fails=fails)
            core = srv2.core
            await _until(lambda: never in core.finished and core.tasks.get(later) is not None
                         and core.tasks[later].attempt == 1 and core.tasks[later].run_at is not None
                         and core.tasks.get(plain) is not None and core.tasks[plain].run_at is not None)
            assert (core.finished[never].state.value, core.finished[never].attempt) == ("dead", 1)
            t = core.tasks[later]
            assert t.state.value == "scheduled" and 699 < t.run_at - (t.started_at or 0) <= 700.1  # type: ignore[operator]
            p = core.tasks[plain]  # no policy of its own: the server's default backoff (3 s, no jitter)
            assert 2.9 < p.run_at - (p.started_at or 0) <= 3.1  # type: ignore[operator]
            srv2.stopping.set()
            n.cancel_scope.cancel()  # (the worker too)


@pytest.mark.trio
async def test_a_bulk_retry_is_one_commit_bounded_by_its_limit(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            srv = await start(n, tmp_path)
            runs: list[int] = []

            async def fails(payload: Any) -> None:
                runs.append(payload)
                raise ValueError(f"no {payload}")

            await _worker(n, srv, fails=fails)
            async with Client(f"127.0.0.1:{srv.port}") as c:
                ids = [await c.enqueue("fails", i, retries=0) for i in range(5)]
                for tid in ids:
                    assert (await c.wait(tid, timeout=10))["state"] == "dead"
                store = srv.store
                assert store is not None
                await srv.wait_committed()
                before = store.stats.commits
                ops, me = srv.ops, authenticate(None, None, "client", "ops-test")
                out = await ops.dead_retry(me, DeadQuery(limit=3))
                assert out == {"ids": ids[:3], "skipped": [], "more": True}
                assert store.stats.commits - before == 1  # the three retries and the server event together
                for tid in ids[:3]:
                    assert [e["kind"] for e in await c.events(tid)][:5] == [
                        "enqueued", "started", "failed", "dead", "retried"]
                events = [e for e in await c.server_events() if e["kind"] == "dead_retried"]
                assert [(e["scope"], e["actor"]) for e in events] == [("dead", "ops-test")]
                for tid in ids[:3]:
                    assert (await c.wait(tid, timeout=10))["state"] == "dead"  # (it fails again)
                out = await ops.dead_delete(me, DeadQuery(limit=1000))
                assert out["ids"] == ids and out["more"] is False
                assert {t["state"] for t in [await c.get(i) for i in ids]} == {"cancelled"}
                assert (await c.dead_list())[0] == []
            srv.stopping.set()
            n.cancel_scope.cancel()  # (the worker too)


@pytest.mark.trio
async def test_a_bulk_retry_skips_a_task_whose_unique_key_a_live_task_holds(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            srv = await start(n, tmp_path)

            async def fails(payload: Any) -> None:
                raise ValueError("no")

            await _worker(n, srv, fails=fails)
            async with Client(f"127.0.0.1:{srv.port}") as c:
                first = await c.enqueue("fails", key="order-7", retries=0)
                other = await c.enqueue("fails", retries=0)
                for tid in (first, other):
                    assert (await c.wait(tid, timeout=10))["state"] == "dead"
                holder = await c.enqueue("later", key="order-7", delay=3600)  # live, holds the key now
                me = authenticate(None, None, "client", "ops-test")
                out = await srv.ops.dead_retry(me, DeadQuery())
                assert out == {"ids": [other], "skipped": [first], "more": False}
                assert (await c.get(first))["state"] == "dead" and (await c.get(holder))["state"] == "scheduled"
                (event,) = [e for e in await c.server_events() if e["kind"] == "dead_retried"]
                assert event["detail"] == f"1 dead task(s) retried, 1 skipped: ids {other}"
            srv.stopping.set()
            n.cancel_scope.cancel()
