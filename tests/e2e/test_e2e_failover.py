"""Failover end to end (docs/operations.md, "Failover"): two real ``runq serve`` processes on one real PostgreSQL
(tests/pg_server.py), a real ``runq worker`` and a producer given both addresses; the active server is killed
with ``kill -9``, or cut off from PostgreSQL (tcp_proxy.py: its packets go unanswered), and the standby takes
over. Checked from outside only: what the clients were told, the worker's run log, the database."""

from __future__ import annotations

import itertools
import socket
import threading
import time
from typing import Any

import pg_server
import psycopg
import pytest
from e2e_cluster import Cluster, Proc, wait_until
from tcp_proxy import TcpProxy
from test_e2e import kinds, spans, wait_all

from runq import SyncClient
from runq.protocol.address import parse_address
from runq.protocol.calls import hello_message
from runq.protocol.errors import ConnectionClosed, RunqError
from runq.protocol.frames import Connection

LEASE = "2"  # (seconds: the shortest that leaves a loaded machine room; the default is 5)


def start(cluster: Cluster, db: str, *extra: str) -> tuple[Proc, str]:
    """Start ``runq serve`` on ``db``; return it and its address once it listens (serving or standing by)."""
    cluster.db = db
    proc = cluster.start_server(*extra)
    wait_until(lambda: "runq serving on" in proc.output() or "runq standby on" in proc.output(), 20)
    return proc, cluster.address


class Producer:
    """Enqueues ``sleep`` tasks one by one from a thread, through a client given ``addresses``, and keeps what
    each acknowledgement said: (tag, task id, the server that answered)."""

    def __init__(self, addresses: str, long_every: int = 5) -> None:
        self.addresses = addresses
        self.acked: list[tuple[int, int, str]] = []
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.long_every = long_every
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            with SyncClient(self.addresses, retry_for=30) as c:
                i = 0
                while not self.stop.is_set():
                    tid = c.enqueue("sleep", {"s": 0.3 if i % self.long_every == 0 else 0.01, "tag": i})
                    self.acked.append((i, tid, c.address))
                    i += 1
                    time.sleep(0.005)
        except BaseException as exc:  # noqa: BLE001 - reported by join()
            self.error = exc

    def acked_by(self, address: str) -> int:
        return sum(1 for a in self.acked if a[2] == address)

    def join(self) -> list[tuple[int, int, str]]:
        self.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "the producer did not stop"
        assert self.error is None, f"the producer failed: {self.error!r}"
        return list(self.acked)


def check_every_acknowledged_task_ran_to_completion_never_twice_at_once(cluster: Cluster, addresses: str,
                                                                        acked: list[tuple[int, int, str]]) -> None:
    with SyncClient(addresses) as c:
        tasks = wait_all(c, [tid for _, tid, _ in acked], timeout=60)
    assert [(t["state"], t["result"]) for t in tasks] == [("succeeded", tag) for tag, _, _ in acked]
    for tid, runs in spans(cluster.runs()).items():
        for before, after in itertools.pairwise(runs):  # (each run of a task ended before the next one began)
            assert before.end is not None and before.end <= after.start, (tid, runs)


def test_kill9_of_the_active_server_the_standby_takes_over_and_every_acknowledged_task_completes_once(
        cluster: Cluster) -> None:
    cluster.extend_watchdog(150)
    url = pg_server.server().database("failover")
    a, a_addr = start(cluster, url, "--lease", LEASE)
    b, b_addr = start(cluster, url, "--lease", LEASE)
    assert "runq serving on" in a.output() and "runq standby on" in b.output()
    assert f"the active server is {a_addr}" in b.output()  # (what the lease row says: A's advertised address)
    both = f"{a_addr},{b_addr}"
    worker = cluster._spawn("worker", ["worker", "e2e_tasks:worker", "--server", both, "--concurrency", "8"])
    producer = Producer(both)
    wait_until(lambda: len(producer.acked) >= 100 and any(r.what == "start" for r in cluster.runs()), 30)
    a.kill9()
    wait_until(lambda: producer.acked_by(b_addr) >= 50, 60)  # the producer followed the failover by itself
    acked = producer.join()
    assert producer.acked_by(a_addr) >= 100 and [t for t, _, _ in acked] == list(range(len(acked)))
    check_every_acknowledged_task_ran_to_completion_never_twice_at_once(cluster, both, acked)
    assert worker.alive()
    # the runs the kill interrupted went on in the worker, and B took them back (it recovered them held for
    # that worker: --reclaim is --lease-timeout on PostgreSQL): their results count, they did not run again
    runs = spans(cluster.runs())
    with SyncClient(b_addr) as c:
        taken = {tid: c.get(tid) for _, tid, _ in acked if "reclaimed" in kinds(c, tid)}
        assert taken, "no run was taken back by the new server"
        for tid, task in taken.items():
            assert kinds(c, tid) == ["enqueued", "started", "reclaimed", "succeeded"], kinds(c, tid)
            assert task["attempt"] == 1 and len(runs[tid]) == 1, (task, runs[tid])
    with psycopg.connect(url) as conn:
        (term, holder) = conn.execute("SELECT term, holder FROM runq_writer").fetchone() or (0, "")
    assert term == 2 and f"pid {b.pid} " in holder

    # the old server, started again, waits as a standby: B holds the lease
    a2, a2_addr = start(cluster, url, "--lease", LEASE)
    assert "runq standby on" in a2.output() and f"the active server is {b_addr}" in a2.output()
    with pytest.raises(RunqError, match="standby"), SyncClient(a2_addr, retry_for=0):
        pass
    with SyncClient(f"{a2_addr},{b_addr}") as c:
        assert c.address == b_addr and c.wait(c.enqueue("compute", 1), timeout=30)["result"] == 3
    assert a2.alive() and b.alive()


def test_a_server_cut_off_from_postgresql_stops_accepting_before_the_standby_takes_over(cluster: Cluster) -> None:
    """A partition: server A reaches PostgreSQL through a proxy that stops answering (its calls hang, nothing
    fails). A steps down by its own clock (closing every connection, exiting with status 1) before B takes the
    lease; what A acknowledged is in the database and completes; nothing runs twice at once."""
    cluster.extend_watchdog(150)
    lease = "4"
    pg = pg_server.server()
    url = pg.database("partition")
    proxy = TcpProxy(pg.port)
    try:
        a, a_addr = start(cluster, url.replace(f":{pg.port}/", f":{proxy.port}/"), "--lease", lease)
        b, b_addr = start(cluster, url, "--lease", lease)
        assert "runq standby on" in b.output()
        both = f"{a_addr},{b_addr}"
        cluster._spawn("worker", ["worker", "e2e_tasks:worker", "--server", both, "--concurrency", "8"])
        producer = Producer(both)
        watched: dict[str, Any] = {}
        ready = threading.Event()

        def watch_a() -> None:  # a connection to A, welcomed, then read: when does A close it?
            conn = Connection(1 << 20)
            with socket.create_connection(parse_address(a_addr)) as sock:
                sock.sendall(conn.send(hello_message("client", None)))
                while (welcome := conn.next_message()) is None:
                    conn.receive_data(sock.recv(65536))
                assert welcome["op"] == "welcome", welcome
                ready.set()
                while (closing := conn.next_message()) is None:
                    data = sock.recv(65536)
                    if not data:
                        break
                    conn.receive_data(data)
            watched["a_closed"] = time.monotonic()
            watched["a_said"] = closing or {}

        def watch_lease() -> None:  # the database: when does the term move on?
            with psycopg.connect(url, autocommit=True) as conn:
                while True:
                    row: Any = conn.execute("SELECT term FROM runq_writer").fetchone()
                    if row[0] > 1:
                        watched["b_took"] = time.monotonic()
                        return
                    time.sleep(0.002)

        wait_until(lambda: len(producer.acked) >= 100, 30)
        watchers = [threading.Thread(target=f, daemon=True) for f in (watch_a, watch_lease)]
        for t in watchers:
            t.start()
        assert ready.wait(10)
        proxy.cut()
        cut_at = time.monotonic()
        assert a.wait(60) == 1
        for t in watchers:
            t.join(60)
        wait_until(lambda: producer.acked_by(b_addr) >= 50, 60)
        acked = producer.join()
        assert cut_at < watched["a_closed"] < watched["b_took"], watched
        assert watched["a_said"]["code"] == "shutting_down" and "lost its lease" in watched["a_said"]["message"]
        out = a.output()
        assert "lost the lease" in out and "stepped down without writing" in out and "Traceback" not in out
        check_every_acknowledged_task_ran_to_completion_never_twice_at_once(cluster, both, acked)
        with pytest.raises((ConnectionClosed, OSError)), SyncClient(a_addr, retry_for=0):
            pass
    finally:
        proxy.close()
