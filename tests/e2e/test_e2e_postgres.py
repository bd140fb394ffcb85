"""End to end on PostgreSQL: a real ``runq serve`` on the session's real PostgreSQL server (tests/pg_server.py),
given its database as ``--db postgresql://...``, a real worker; the server killed with
``kill -9`` while tasks are queued and started again (it waits as a standby until the killed one's lease
expired, then takes over): every acknowledged task is there and completes, and what finished before keeps its
result."""

from __future__ import annotations

import pg_server
import psycopg
from e2e_cluster import Cluster, wait_until

from runq import SyncClient


def test_a_server_on_postgresql_keeps_its_tasks_across_a_kill_9(cluster: Cluster) -> None:
    url = pg_server.server().database("e2e")
    cluster.db = url  # (start_server passes it as --db)
    server = cluster.start_server()
    worker = cluster.start_worker()
    with SyncClient(cluster.address) as c:
        cluster.wait_joined(c, worker)
        done = [c.enqueue("compute", i) for i in range(20)]
        assert [c.result(tid, timeout=30) for tid in done] == [i * 2 + 1 for i in range(20)]
        worker.kill9()
        queued = [c.enqueue("compute", 100 + i, priority=i % 3) for i in range(30)]  # acknowledged, no worker
    server.kill9()

    again = cluster.start_server()  # (a standby until the killed server's lease expired: docs/operations.md)
    wait_until(lambda: "runq serving on" in again.output() or "took over the database" in again.output(), 30)
    worker = cluster.start_worker()
    with SyncClient(cluster.address) as c:
        assert [c.get(tid)["result"] for tid in done] == [i * 2 + 1 for i in range(20)]  # kept
        assert [c.result(tid, timeout=30) for tid in queued] == [(100 + i) * 2 + 1 for i in range(30)]
        last = c.enqueue("compute", 0)
        assert max(done + queued) < last  # ids go on after the restart
        c.result(last, timeout=30)
    with psycopg.connect(url, autocommit=True) as conn:  # (and they are in PostgreSQL, not in some file)
        # (a result is answered from memory once the worker reported it; its commit may land a moment later)
        wait_until(lambda: conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE state = 'succeeded') FROM tasks").fetchone() == (51, 51), 10)
