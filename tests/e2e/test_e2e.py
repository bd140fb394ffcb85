"""End to end: real ``runq serve`` and ``runq worker`` processes, driven only through the SDK and the CLI.

The handlers (``e2e_tasks``) log every run to a shared file, with the worker's pid
and ``time.monotonic()`` (one clock for all processes of the machine); the checks of
"exactly once" and "never twice at once" read that log, the checks of state and
history read the server through ``SyncClient``.
"""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from e2e_cluster import Cluster, Run

from runq import ConnectionClosed, InvalidState, SyncClient

pytestmark = pytest.mark.e2e


class Span(NamedTuple):
    """One run of a multi-step handler: from its ``start`` line to its last line (``end=None``: none)."""

    id: int
    attempt: int
    pid: int
    start: float
    end: float | None
    how: str | None  # 'end', 'cancelled', 'error' or None


def spans(runs: Iterable[Run]) -> dict[int, list[Span]]:
    """Per task id, its runs in start order."""
    out: dict[int, list[Span]] = defaultdict(list)
    open_: dict[tuple[int, int, int], Span] = {}
    for r in runs:
        k = (r.id, r.attempt, r.pid)
        if r.what == "start":
            assert k not in open_, f"task {r.id} attempt {r.attempt} started twice on pid {r.pid}"
            open_[k] = Span(r.id, r.attempt, r.pid, r.mono, None, None)
        elif r.what in ("end", "cancelled", "error"):
            s = open_.pop(k)
            out[r.id].append(s._replace(end=r.mono, how=r.what))
    for s in open_.values():
        out[s.id].append(s)
    for lst in out.values():
        lst.sort(key=lambda s: s.start)
    return out


def kinds(c: SyncClient, tid: int) -> list[str]:
    return [e["kind"] for e in c.events(tid)]


def wait_all(c: SyncClient, ids: Iterable[int], timeout: float) -> list[dict[str, Any]]:
    """Wait until every task is final (one deadline for all); return them in order."""
    deadline = time.monotonic() + timeout
    return [c.wait(tid, timeout=max(0.0, deadline - time.monotonic())) for tid in ids]


# --------------------------------------------------------------------------- 1
def test_a_thousand_tasks_through_two_workers_run_exactly_once(cluster: Cluster) -> None:
    cluster.start_server()
    w1 = cluster.start_worker("--concurrency", "8")
    w2 = cluster.start_worker("--concurrency", "8", "--backend", "asyncio")  # the SDK runs on both loops
    with SyncClient(cluster.address) as c:
        cluster.wait_joined(c, w1, w2)
        ids = c.enqueue_many([{"type": "compute", "payload": i} for i in range(1000)])
        assert len(set(ids)) == 1000 and ids == sorted(ids)
        for i, task in enumerate(wait_all(c, ids, timeout=30)):
            assert (task["id"], task["state"], task["attempt"], task["result"]) == (ids[i], "succeeded", 1, 2 * i + 1)
        listed: list[int] = []
        cursor = None
        while True:
            page, cursor = c.list_tasks(state="succeeded", limit=1000, cursor=cursor)
            listed += [t["id"] for t in page]
            if cursor is None or not page:
                break
        assert sorted(listed) == ids
    runs = [r for r in cluster.runs() if r.what == "run"]
    per_task = Counter(r.id for r in runs)
    assert set(per_task) == set(ids)
    assert set(per_task.values()) == {1}, [t for t, n in per_task.items() if n != 1][:10]
    assert {r.pid for r in runs} == {w1.pid, w2.pid}  # both workers took part


# --------------------------------------------------------------------------- 2
def test_kill9_of_a_worker_mid_task_loses_nothing(cluster: Cluster) -> None:
    cluster.start_server("--lease-timeout", "2")
    victim = cluster.start_worker("--concurrency", "2")
    survivor = cluster.start_worker("--concurrency", "2")
    with SyncClient(cluster.address) as c:
        wids = cluster.wait_joined(c, victim, survivor)
        ids = c.enqueue_many([{"type": "sleep", "payload": {"s": 0.4, "tag": i}} for i in range(12)])

        def victim_is_busy(runs: list[Run]) -> bool:
            mine = [s for ss in spans(runs).values() for s in ss if s.pid == victim.pid]
            return any(s.how == "end" for s in mine) and any(s.end is None for s in mine)

        cluster.wait_runs(victim_is_busy, timeout=20)  # it finished one task and runs another
        victim.kill9()
        tasks = wait_all(c, ids, timeout=30)
        assert [(t["state"], t["result"]) for t in tasks] == [("succeeded", i) for i in range(len(ids))]
        cut = {tid for tid, ss in spans(cluster.runs()).items() if any(s.end is None for s in ss)}
        assert cut, "the victim was killed while it ran tasks"
        events = {tid: c.events(tid) for tid in ids}
        tasks_by_id = {t["id"]: t for t in tasks}
    for tid in cut:
        lost = [e for e in events[tid] if e["kind"] == "lost"]
        assert len(lost) == 1 and lost[0]["worker"] == wids[victim.pid], events[tid]
        assert tasks_by_id[tid]["attempt"] == 2 and tasks_by_id[tid]["worker"] == wids[survivor.pid]
    for tid in ids:  # only the victim's tasks were lost
        assert all(e["worker"] == wids[victim.pid] for e in events[tid] if e["kind"] == "lost")
    by_task = spans(cluster.runs())
    assert set(by_task) == set(ids)
    for tid, ss in by_task.items():
        finished = [s for s in ss if s.end is not None]
        assert [s.how for s in finished] == ["end"], f"task {tid} completed {len(finished)} times: {ss}"
        for s in ss:
            if s.end is None:
                assert s.pid == victim.pid, f"a run of task {tid} on a live worker never ended: {s}"
        # never twice at once, unless the earlier run belongs to the killed worker (it never ended)
        for i, a in enumerate(ss):
            for b in ss[i + 1:]:
                a_end = a.end if a.end is not None else float("inf")
                b_end = b.end if b.end is not None else float("inf")
                if a.start < b_end and b.start < a_end:
                    assert victim.pid in (a.pid, b.pid) and None in (a.end, b.end), f"task {tid}: {a} and {b}"


# --------------------------------------------------------------------------- 2, by lease expiry
def test_a_frozen_worker_loses_its_leases_after_the_lease_timeout(cluster: Cluster) -> None:
    cluster.start_server("--lease-timeout", "2")
    frozen = cluster.start_worker("--concurrency", "2")  # credit 4: it leases all four tasks
    with SyncClient(cluster.address) as c:
        wids = cluster.wait_joined(c, frozen)
        ids = c.enqueue_many([{"type": "sleep", "payload": {"s": 0.5, "tag": i}} for i in range(4)])
        cluster.wait_runs(lambda r: sum(1 for x in r if x.what == "start") == 2)
        frozen.signal(signal.SIGSTOP)  # its socket stays open: only the missing heartbeats tell
        time.sleep(0.2)  # what it wrote before it stopped has been read
        (last_seen,) = [w["last_heartbeat"] for w in c.workers() if w["pid"] == frozen.pid]
        survivor = cluster.start_worker("--concurrency", "4")
        wids.update(cluster.wait_joined(c, survivor))
        tasks = wait_all(c, ids, timeout=20)
        assert [(t["state"], t["result"], t["attempt"], t["worker"]) for t in tasks] == [
            ("succeeded", i, 2, wids[survivor.pid]) for i in range(len(ids))]
        for tid in ids:
            lost = [e for e in c.events(tid) if e["kind"] == "lost"]
            assert len(lost) == 1 and lost[0]["worker"] == wids[frozen.pid], lost
            assert "lease expired" in lost[0]["detail"]
            assert 2.0 <= lost[0]["at"] - last_seen <= 3.0  # the lease lasted lease_timeout, and not much longer
        assert c.stats()["lease_expiries"] == 1

        frozen.signal(signal.SIGCONT)  # it wakes up late, learns its leases are gone and joins again
        rejoined = cluster.wait_joined(c, frozen)
        assert rejoined[frozen.pid] != wids[frozen.pid]
        cluster.wait_runs(lambda r: all(s.end is not None for ss in spans(r).values() for s in ss), timeout=10)
        after = wait_all(c, ids, timeout=10)
        assert after == tasks, "a late report from the frozen worker changed a finished task"
        for tid in ids:
            assert kinds(c, tid).count("succeeded") == 1
    for tid, ss in spans(cluster.runs()).items():
        assert tid in ids
        assert [(s.attempt, s.how) for s in ss if s.pid == survivor.pid] == [(2, "end")]
        assert all(s.attempt == 1 for s in ss if s.pid == frozen.pid)


# --------------------------------------------------------------------------- 3
def test_kill9_of_the_server_keeps_every_acknowledged_task(cluster: Cluster) -> None:
    server = cluster.start_server()
    w1 = cluster.start_worker("--concurrency", "2")
    acked: list[tuple[float, int, int]] = []  # (time the enqueue call began, tag, id), once it returned
    kill_at: list[float] = []

    def killer() -> None:
        """SIGKILL the server mid-stream, while a recent run is going whose start is known committed."""
        try:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                if len(acked) >= 200:
                    now, last_begin = time.monotonic(), acked[-1][0]
                    if any(s.end is None and s.pid == w1.pid and now - 0.25 < s.start < last_begin
                           for ss in spans(cluster.runs()).values() for s in ss):
                        break
                time.sleep(0.005)
        finally:
            server.kill9()
            kill_at.append(time.monotonic())  # after the reap: nothing happened in the server later

    with SyncClient(cluster.address, retry_for=0.5) as c:  # (the server stays down: give up soon)
        cluster.wait_joined(c, w1)
        t = threading.Thread(target=killer, daemon=True)
        t.start()
        try:
            for i in range(100_000):
                begin = time.monotonic()
                tid = c.enqueue("sleep", {"s": 0.3 if i % 10 == 0 else 0.0, "tag": i})
                acked.append((begin, i, tid))
        except ConnectionClosed:
            pass
        t.join(20)
        assert kill_at, "the killer thread did not finish"
    assert len(acked) >= 200
    w1.kill9()  # the whole machine "crashed": the new worker does everything that is left

    # A run of w1 whose start was logged before an acknowledged enqueue began had its 'started'
    # committed (batches commit in order); if it did not end before the kill, it was running then.
    last_begin = acked[-1][0]
    running_at_kill = {s.id: s for ss in spans(cluster.runs()).values() for s in ss if s.pid == w1.pid
                       and s.start < last_begin and (s.end is None or s.how != "end" or s.end > kill_at[0])}
    assert running_at_kill, "some task was running when the server was killed"

    cluster.start_server()
    with SyncClient(cluster.address) as c:
        stored: dict[int, dict[str, Any]] = {}
        cursor = None
        while True:
            page, cursor = c.list_tasks(limit=1000, cursor=cursor)
            stored.update({t["id"]: t for t in page})
            if cursor is None or not page:
                break
        missing = [tid for _, _, tid in acked if tid not in stored]
        assert not missing, f"{len(missing)} acknowledged task(s) lost: {missing[:10]}"
        assert {stored[tid]["state"] for _, _, tid in acked} <= {"succeeded", "ready"}
        for tid in running_at_kill:
            assert stored[tid]["state"] == "ready"
        w2 = cluster.start_worker("--concurrency", "16")
        tasks = wait_all(c, [tid for _, _, tid in acked], timeout=30)
        assert [(t["state"], t["result"]) for t in tasks] == [("succeeded", tag) for _, tag, _ in acked]
        timelines = {tid: kinds(c, tid) for _, _, tid in acked}
        for tid, s in running_at_kill.items():
            k = timelines[tid]
            assert "recovered" in k, f"task {tid} ran at the kill; its timeline: {k}"
            assert k.index("started") < k.index("recovered") < len(k) - 1 - k[::-1].index("started"), k
            assert c.get(tid)["attempt"] == s.attempt + 1  # the interrupted attempt stays counted
        for tid, k in timelines.items():  # only a task that had been dispatched is recovered
            assert "recovered" not in k or k.index("started") < k.index("recovered"), k
    assert any(r.pid == w2.pid for r in cluster.runs())


# --------------------------------------------------------------------------- 4
def test_sigterm_drains_a_worker_gracefully(cluster: Cluster) -> None:
    cluster.start_server()
    a = cluster.start_worker("--concurrency", "2", "--grace", "5")  # credit 4: 2 run, 2 wait in its buffer
    with SyncClient(cluster.address) as c:
        wids = cluster.wait_joined(c, a)
        ids = c.enqueue_many([{"type": "sleep", "payload": {"s": 1.0, "tag": i}} for i in range(4)])
        cluster.wait_runs(lambda r: sum(1 for x in r if x.what == "start") == 2)
        assert [c.get(tid)["state"] for tid in ids] == ["running"] * 4
        t0 = time.monotonic()
        a.signal(signal.SIGTERM)
        assert a.wait(10) == 0
        assert time.monotonic() - t0 < 5, "the worker exits within its grace period"
        started_on_a = {r.id for r in cluster.runs() if r.what == "start"}
        handed_back = [tid for tid in ids if tid not in started_on_a]
        assert len(started_on_a) == 2 and len(handed_back) == 2
        for tid in started_on_a:  # they ran to the end before the worker left
            task = c.get(tid)
            assert (task["state"], task["attempt"], task["worker"]) == ("succeeded", 1, wids[a.pid])
            assert "released" not in kinds(c, tid)
        for tid in handed_back:
            task = c.get(tid)
            assert (task["state"], task["attempt"]) == ("ready", 0)
            released = [e for e in c.events(tid) if e["kind"] == "released"]
            assert len(released) == 1 and released[0]["worker"] == wids[a.pid]
        b = cluster.start_worker("--concurrency", "2")
        wids.update(cluster.wait_joined(c, b))
        for tid, task in zip(handed_back, wait_all(c, handed_back, timeout=15), strict=True):
            assert (task["state"], task["attempt"], task["worker"]) == ("succeeded", 1, wids[b.pid])
            assert kinds(c, tid)[-3:] == ["released", "started", "succeeded"]
    runs = cluster.runs()
    assert not [r for r in runs if r.what == "cancelled"]
    assert {(r.id, r.pid) for r in runs if r.what == "end"} == (
        {(tid, a.pid) for tid in started_on_a} | {(tid, b.pid) for tid in handed_back})


# --------------------------------------------------------------------------- 4, a task enqueued meanwhile
def test_a_stopping_worker_is_given_no_new_task(cluster: Cluster) -> None:
    cluster.start_server()
    a = cluster.start_worker("--concurrency", "2", "--grace", "5")  # credit 4, one used below
    with SyncClient(cluster.address) as c:
        wids = cluster.wait_joined(c, a)
        long = c.enqueue("sleep", {"s": 2.0, "tag": "long"})
        cluster.wait_runs(lambda r: any(x.what == "start" for x in r))
        b = cluster.start_worker("--concurrency", "2")
        wids.update(cluster.wait_joined(c, b))
        a.signal(signal.SIGTERM)
        time.sleep(0.2)
        assert a.alive() and c.get(long)["state"] == "running"  # a is in its grace period
        late = c.enqueue("compute", 1)
        task = c.wait(late, timeout=10)
        assert (task["state"], task["worker"], task["attempt"]) == ("succeeded", wids[b.pid], 1)
        assert a.wait(10) == 0
        assert c.get(long)["state"] == "succeeded"
        assert [(e["kind"], e["worker"]) for e in c.events(late)] == [
            ("enqueued", None), ("started", wids[b.pid]), ("succeeded", wids[b.pid])]


# --------------------------------------------------------------------------- 5
def test_retries_with_growing_backoff_then_dead_then_manual_retry(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_server()
    w = cluster.start_worker()
    marker = tmp_path / "marker"
    with SyncClient(cluster.address) as c:
        cluster.wait_joined(c, w)
        tid = c.enqueue("fail_until", {"marker": str(marker)}, retries=2)
        task = c.wait(tid, timeout=15)
        assert (task["state"], task["attempt"]) == ("dead", 3)
        assert "RuntimeError: marker" in task["error"] and "Traceback" in task["error"]
        ev = c.events(tid)
        assert [e["kind"] for e in ev] == ["enqueued", "started", "failed", "retry_scheduled", "due", "started",
                                           "failed", "retry_scheduled", "due", "started", "failed", "dead"]
        failed = [e["at"] for e in ev if e["kind"] == "failed"]
        started = [e["at"] for e in ev if e["kind"] == "started"]
        gaps = [started[1] - failed[0], started[2] - failed[1]]
        # backoff 1 s then 2 s, each times U(0.75, 1.25); a start is never early, and late by little
        assert 0.75 <= gaps[0] <= 1.25 + 0.5, gaps
        assert 1.5 <= gaps[1] <= 2.5 + 0.5, gaps
        assert gaps[1] > gaps[0]
        marker.write_text("present")
        assert c.retry(tid)["state"] == "ready"
        task = c.wait(tid, timeout=15)
        assert (task["state"], task["result"], task["attempt"]) == ("succeeded", "passed", 1)
        assert kinds(c, tid)[-4:] == ["dead", "retried", "started", "succeeded"]
    runs = [r for r in cluster.runs() if r.id == tid]
    assert [r.what for r in runs] == ["start", "error"] * 3 + ["start", "end"]


# --------------------------------------------------------------------------- 6
def test_a_delayed_task_does_not_start_early(cluster: Cluster) -> None:
    cluster.start_server()
    w = cluster.start_worker()
    with SyncClient(cluster.address) as c:
        cluster.wait_joined(c, w)
        before = time.monotonic()
        delayed = c.enqueue("compute", 1, delay=1.0)
        at_wall = time.time() + 1.2
        at = c.enqueue("compute", 2, run_at=at_wall)
        now = c.enqueue("compute", 3)  # a control: runs at once on the same worker
        assert c.get(delayed)["state"] == "scheduled" and c.get(at)["state"] == "scheduled"
        assert c.wait(now, timeout=10)["result"] == 7
        assert c.get(delayed)["state"] == "scheduled" and c.get(at)["state"] == "scheduled"
        tasks = wait_all(c, [delayed, at], timeout=10)
        assert [(t["state"], t["result"]) for t in tasks] == [("succeeded", 3), ("succeeded", 5)]
        assert tasks[0]["started_at"] >= tasks[0]["created_at"] + 1.0
        assert kinds(c, delayed) == ["scheduled", "due", "started", "succeeded"]
    ran = {r.id: r for r in cluster.runs()}
    assert before + 1.0 <= ran[delayed].mono <= before + 1.0 + 1.5
    # the server's wall clock is time.time() read once at its start, then advanced by the monotonic clock:
    # allow a few milliseconds between the two processes' wall clocks
    assert at_wall - 0.005 <= ran[at].wall <= at_wall + 1.5
    assert ran[now].mono < ran[delayed].mono


# --------------------------------------------------------------------------- 7
def test_priority_order_then_fifo(cluster: Cluster) -> None:
    cluster.start_server()
    rng = random.Random(1234)
    prios = [rng.choice([-3, 0, 0, 1, 5, 5, 9]) for _ in range(40)]
    with SyncClient(cluster.address) as c:
        ids = [c.enqueue("compute", i, priority=p) for i, p in enumerate(prios)]  # no worker yet
        w = cluster.start_worker("--concurrency", "1")
        tasks = wait_all(c, ids, timeout=20)
        assert all(t["state"] == "succeeded" for t in tasks)
    order = [r.id for r in cluster.runs() if r.what == "run"]
    expected = [tid for _, tid in sorted(zip(prios, ids, strict=True), key=lambda pt: (-pt[0], pt[1]))]
    assert order == expected
    assert {r.pid for r in cluster.runs()} == {w.pid}


# --------------------------------------------------------------------------- 8
def test_cancel_a_queued_and_a_running_task(cluster: Cluster) -> None:
    cluster.start_server()
    w = cluster.start_worker("--concurrency", "1")
    with SyncClient(cluster.address) as c:
        cluster.wait_joined(c, w)
        scheduled = c.enqueue("compute", 1, delay=30)
        assert c.cancel(scheduled)["state"] == "cancelled"
        c.pause("default")
        ready = c.enqueue("compute", 2)
        assert c.cancel(ready)["state"] == "cancelled"
        c.resume("default")

        running = c.enqueue("sleep", {"s": 30, "tag": "never"})
        cluster.wait_runs(lambda r: any(x.what == "start" and x.id == running for x in r), timeout=10)
        assert c.get(running)["state"] == "running"
        assert c.cancel(running)["state"] == "cancelled"
        cluster.wait_runs(lambda r: any(x.what == "cancelled" and x.id == running for x in r), timeout=10)
        # the worker (concurrency 1) got its slot back: it runs new work
        after = c.enqueue("compute", 5)
        assert c.wait(after, timeout=10)["result"] == 11
        task = c.get(running)
        assert task["state"] == "cancelled" and task["result"] is None
        assert kinds(c, running) == ["enqueued", "started", "cancelled"]
        assert kinds(c, scheduled) == ["scheduled", "cancelled"]
        assert kinds(c, ready) == ["enqueued", "cancelled"]
        with pytest.raises(InvalidState):
            c.cancel(running)
    ran = {r.id for r in cluster.runs()}
    assert scheduled not in ran and ready not in ran
    assert [r.what for r in cluster.runs() if r.id == running] == ["start", "cancelled"]


# --------------------------------------------------------------------------- 9
def test_unique_keys(cluster: Cluster) -> None:
    cluster.start_server()
    with SyncClient(cluster.address) as c:
        first = c.enqueue("compute", 1, key="invoice-7")  # no worker yet: it stays ready
        assert c.enqueue("compute", 2, key="invoice-7") == first
        other = c.enqueue("compute", 3, key="invoice-8")
        assert other != first
        w = cluster.start_worker()
        assert c.wait(first, timeout=10)["result"] == 3  # the first payload, not the second
        assert c.wait(other, timeout=10)["result"] == 7
        again = c.enqueue("compute", 4, key="invoice-7")  # the key is free once the task finished
        assert again not in (first, other)
        assert c.wait(again, timeout=10)["result"] == 9
    runs = Counter(r.id for r in cluster.runs())
    assert runs == {first: 1, other: 1, again: 1}
    assert {r.pid for r in cluster.runs()} == {w.pid}


# --------------------------------------------------------------------------- 10
def test_pause_and_resume(cluster: Cluster) -> None:
    cluster.start_server()
    w = cluster.start_worker()
    with SyncClient(cluster.address) as c:
        cluster.wait_joined(c, w)
        c.pause("default")
        assert next(q for q in c.queues() if q["queue"] == "default")["paused"] is True
        ids = c.enqueue_many([{"type": "compute", "payload": i} for i in range(5)])
        time.sleep(0.5)  # a waiting worker with credit gets nothing meanwhile
        assert [c.get(tid)["state"] for tid in ids] == ["ready"] * 5
        assert c.workers()[0]["in_flight"] == 0
        assert cluster.runs() == []
        c.resume("default")
        tasks = wait_all(c, ids, timeout=10)
        assert [(t["state"], t["result"]) for t in tasks] == [("succeeded", 2 * i + 1) for i in range(5)]
        assert next(q for q in c.queues() if q["queue"] == "default")["paused"] is False


# --------------------------------------------------------------------------- 11
def test_a_timeout_fails_the_attempt_then_retries_then_dead(cluster: Cluster) -> None:
    cluster.start_server()
    w = cluster.start_worker()
    with SyncClient(cluster.address) as c:
        cluster.wait_joined(c, w)
        tid = c.enqueue("sleep", {"s": 10, "tag": 1}, timeout=0.3, retries=1)
        task = c.wait(tid, timeout=15)
        assert (task["state"], task["attempt"], task["result"]) == ("dead", 2, None)
        assert "timeout" in task["error"]
        ev = c.events(tid)
        assert [e["kind"] for e in ev] == ["enqueued", "started", "failed", "retry_scheduled", "due", "started",
                                           "failed", "dead"]
        assert [e["detail"] for e in ev if e["kind"] == "failed"] == ["timeout", "timeout"]
    runs = spans(cluster.runs())[tid]
    assert [(s.attempt, s.how) for s in runs] == [(1, "cancelled"), (2, "cancelled")]
    for s in runs:
        assert s.end is not None and 0.3 <= s.end - s.start < 2.0


# --------------------------------------------------------------------------- 12
def test_the_cli_against_a_real_server(cluster: Cluster) -> None:
    cluster.start_server()

    def ok(*args: str) -> str:
        out = cluster.cli(*args)
        assert out.returncode == 0, (args, out.stdout, out.stderr)
        return out.stdout

    tid = int(ok("enqueue", "compute", "--payload", "20", "--priority", "3"))
    status = json.loads(ok("status", str(tid), "--json"))
    assert (status["id"], status["state"], status["payload"], status["priority"]) == (tid, "ready", 20, 3)
    assert "paused" in ok("pause", "default")
    assert next(q for q in json.loads(ok("queues", "--json")) if q["queue"] == "default")["paused"] is True
    w = cluster.start_worker()
    with SyncClient(cluster.address) as c:
        cluster.wait_joined(c, w)
    assert [x["pid"] for x in json.loads(ok("workers", "--json"))] == [w.pid]
    assert json.loads(ok("status", str(tid), "--json"))["state"] == "ready"  # paused: the joined worker got nothing
    assert "resumed" in ok("resume", "default")
    done = json.loads(ok("wait", str(tid), "--timeout", "10", "--json"))
    assert (done["state"], done["result"], done["attempt"]) == ("succeeded", 41, 1)
    timeline = [e["kind"] for e in json.loads(ok("events", str(tid), "--json"))]
    assert timeline == ["enqueued", "started", "succeeded"]
    listed = json.loads(ok("tasks", "--state", "succeeded", "--json"))
    assert [(t["id"], t["state"]) for t in listed["tasks"]] == [(tid, "succeeded")] and listed["cursor"] is None

    later = int(ok("enqueue", "compute", "--payload", "1", "--delay", "60"))
    assert later != tid
    assert json.loads(ok("status", str(later), "--json"))["state"] == "scheduled"
    assert f"task {later} cancelled" in ok("cancel", str(later))
    assert f"task {later} ready" in ok("retry", str(later))
    assert json.loads(ok("wait", str(later), "--timeout", "10", "--json"))["result"] == 3
    ids = {t["id"] for t in json.loads(ok("tasks", "--state", "succeeded", "--json"))["tasks"]}
    assert ids == {tid, later}
    # the human views of the same: a table row per task, the task's fields by name
    rows = ok("tasks", "--state", "succeeded").splitlines()
    assert rows[0].split() == ["ID", "STATE", "QUEUE", "TYPE", "PRIORITY", "ATTEMPT", "CREATED"]
    assert [row.split()[:6] for row in rows[1:]] == [[str(later), "succeeded", "default", "compute", "0", "1"],
                                                      [str(tid), "succeeded", "default", "compute", "3", "1"]]
    view = dict(line.split(None, 1) for line in ok("status", str(tid)).splitlines())
    assert (view["id"], view["state"], view["result"], view["payload"]) == (str(tid), "succeeded", "41", "20")
    events = ok("events", str(tid)).splitlines()
    assert events[0].split() == ["TIME", "SINCE", "EVENT", "STATE", "ATTEMPT", "WORKER", "DETAIL"]
    assert [re.findall(r"  (enqueued|started|succeeded)  ", line) for line in events[1:]] == [
        ["enqueued"], ["started"], ["succeeded"]]

    again = cluster.cli("cancel", str(later))
    assert again.returncode == 1 and "invalid_state" in again.stderr
    bad = cluster.cli("enqueue", "compute", "--payload", "{not json")
    assert bad.returncode == 2 and "not JSON" in bad.stderr
    missing = cluster.cli("status", "999999")
    assert missing.returncode == 1 and "not_found" in missing.stderr
    assert {r.id for r in cluster.runs()} == {tid, later}


def test_a_second_server_on_the_same_database_is_refused_and_changes_nothing(cluster: Cluster) -> None:
    """A second `runq serve --db` on a file a server is using used to start: it took the first one's
    running task for a crashed one (a 'recovered' event) and ran it again, at the same time, and the two
    handed out the same ids. It must exit with a clear error before touching the file."""
    cluster.start_server()
    w = cluster.start_worker("--concurrency", "2")
    with SyncClient(cluster.address) as c:
        cluster.wait_joined(c, w)
        tid = c.enqueue("sleep", {"s": 1.5, "tag": "once"})
        cluster.wait_runs(lambda runs: any(r.what == "start" and r.id == tid for r in runs))
        second = subprocess.run([sys.executable, "-m", "runq.cli", "serve", "--db", cluster.db, "--port", "0"],
                                env=cluster.env, capture_output=True, text=True, timeout=30, check=False,
                                stdin=subprocess.DEVNULL)
        assert second.returncode == 1, second.stderr
        assert "in use by another runq server" in second.stderr and "Traceback" not in second.stderr
        done = c.wait(tid, timeout=10)
        assert (done["state"], done["attempt"], done["result"]) == ("succeeded", 1, "once")
        assert kinds(c, tid) == ["enqueued", "started", "succeeded"]
    assert [r.what for r in cluster.runs() if r.id == tid] == ["start", "end"]


def test_cli_output_into_a_pipe_closed_early_is_no_error(cluster: Cluster) -> None:
    """`runq tasks | head -1`: the reader leaves early; the command ends quietly with 0 (it printed
    '[Errno 32] Broken pipe' and exited 1)."""
    cluster.start_server()
    with SyncClient(cluster.address) as c:
        c.enqueue_many([{"type": "compute", "payload": i} for i in range(1000)])
    for args in (["tasks", "--limit", "1000"], ["tasks", "--limit", "1"]):
        p = subprocess.Popen([sys.executable, "-m", "runq.cli", *args, "--server", cluster.address],
                             env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             stdin=subprocess.DEVNULL)
        assert p.stdout is not None and p.stderr is not None
        p.stdout.close()  # before it writes anything
        err = p.stderr.read()
        p.stderr.close()
        assert p.wait(30) == 0 and err == "", (args, err)
