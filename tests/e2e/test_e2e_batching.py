"""End to end, a batched handler (docs/batching.md, issue 11): real ``runq serve`` and ``runq worker``
processes; the worker's handler gets lists of at most ``max_size`` tasks, reports each, and a batch whose
worker is killed comes back task by task and runs on another worker."""

from __future__ import annotations

from collections import defaultdict

import pytest
from e2e_cluster import Cluster

from runq import SyncClient

pytestmark = pytest.mark.e2e

MAX_SIZE = 5  # e2e_tasks.batch_sum's


def calls(cluster: Cluster) -> list[list[int]]:
    """The handler's calls, each the task ids it got (one ``batched`` line per task, sharing the call's time)."""
    by_call: dict[tuple[int, float], list[int]] = defaultdict(list)
    for r in cluster.runs():
        if r.what == "batched":
            by_call[(r.pid, r.mono)].append(r.id)
    return list(by_call.values())


def test_a_batched_handler_runs_batches_and_a_killed_workers_batch_comes_back_task_by_task(cluster: Cluster) -> None:
    cluster.start_server()
    with SyncClient(cluster.address) as c:
        first = cluster.start_worker("--concurrency", "2")
        cluster.wait_joined(c, first)
        assert next(x for x in c.task_types() if x["type"] == "batch_sum")["batch"] == {"max_size": 5, "max_wait": 0.3}
        ids = c.enqueue_many([{"type": "batch_sum", "payload": {"n": n}} for n in range(12)])
        done = [c.wait(tid, timeout=30) for tid in ids]
        assert [d["state"] for d in done] == ["succeeded"] * 12
        assert [d["result"] for d in done] == [2 * n for n in range(12)]
        got = calls(cluster)
        assert sorted(i for call in got for i in call) == sorted(ids)  # each task ran once
        assert all(1 <= len(call) <= MAX_SIZE for call in got) and len(got) < 12, got  # batched, never above 5

        # a batch whose worker dies: its tasks come back one by one (lost, attempt counted) and run elsewhere
        held = c.enqueue_many([{"type": "batch_sum", "payload": {"n": n, "hold": True}} for n in range(3)])
        cluster.wait_runs(lambda runs: {r.id for r in runs if r.what == "batched"} >= set(held))
        assert all(c.get(tid)["state"] == "running" for tid in held)
        first.kill9()
        second = cluster.start_worker("--concurrency", "2")
        cluster.wait_joined(c, second)
        done = [c.wait(tid, timeout=30) for tid in held]
        assert [(d["state"], d["result"], d["attempt"]) for d in done] == [("succeeded", 2 * n, 2) for n in range(3)]
        for tid in held:
            assert "lost" in [e["kind"] for e in c.events(tid)]
