"""End to end: real `runq serve` and `runq worker` processes, driven only through the SDK and the CLI."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from runq import ConnectionClosed, SyncClient

pytestmark = pytest.mark.e2e


def wait_until(pred: Callable[[], bool], timeout: float = 20, step: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(step)


def kinds(client: SyncClient, tid: int) -> list[str]:
    return [e["kind"] for e in client.events(tid)]


def spans(runs: list[tuple[str, int, int, float, str]]) -> dict[int, list[tuple[int, float, float | None]]]:
    """Per task: (pid, start, end or None) of every run of a `sleep` task."""
    out: dict[int, list[tuple[int, float, float | None]]] = defaultdict(list)
    open_runs: dict[tuple[int, int], int] = {}
    for what, tid, pid, t, _ in runs:
        if what == "start":
            open_runs[(tid, pid)] = len(out[tid])
            out[tid].append((pid, t, None))
        elif what == "end":
            i = open_runs.pop((tid, pid))
            out[tid][i] = (pid, out[tid][i][1], t)
    return out


def test_a_thousand_tasks_succeed_exactly_once(cluster: Any) -> None:
    cluster.start_server()
    cluster.start_worker("--concurrency", "8")
    cluster.start_worker("--concurrency", "8")
    with SyncClient(cluster.address) as c:
        ids = c.enqueue_many([{"type": "noop", "payload": i} for i in range(1000)])
        for i, tid in enumerate(ids):
            task = c.wait(tid, timeout=30)
            assert task["state"] == "succeeded" and task["result"] == i and task["attempt"] == 1
    runs = Counter(tid for what, tid, *_ in cluster.runs() if what == "run")
    assert set(runs) == set(ids) and set(runs.values()) == {1}
    assert len({pid for _, _, pid, *_ in cluster.runs()}) == 2  # both workers took part


def test_kill9_of_a_worker_mid_task(cluster: Any) -> None:
    cluster.start_server("--lease-timeout", "2")
    victim = cluster.start_worker("--concurrency", "2")
    with SyncClient(cluster.address) as c:
        wait_until(lambda: len(c.workers()) == 1)
        ids = c.enqueue_many([{"type": "sleep", "payload": {"s": 0.4, "tag": i}} for i in range(8)])
        cluster.wait_runs(lambda r: sum(1 for w, *_ in r if w == "start") >= 2)
        victim.kill(signal.SIGKILL)
        victim.wait()
        cluster.start_worker("--concurrency", "4")
        for i, tid in enumerate(ids):
            task = c.wait(tid, timeout=30)
            assert task["state"] == "succeeded" and task["result"] == i
        lost = [tid for tid in ids if "lost" in kinds(c, tid)]
        assert lost, "the killed worker's tasks must say they were lost"
        for tid in lost:
            assert c.get(tid)["attempt"] == 2
    # no task ran twice at once: overlapping runs only where the first one never ended (killed)
    for tid, rs in spans(cluster.runs()).items():
        finished = [(s, e) for pid, s, e in rs if e is not None]
        assert len(finished) == 1, f"task {tid} finished {len(finished)} times"
        for pid, s, e in rs:
            if e is None:
                assert pid == victim.pid
        (s1, e1), = finished
        for pid, s, e in rs:
            if e is not None and (s, e) != (s1, e1):
                assert e <= s1 or s >= e1


def test_kill9_of_the_server_loses_no_acknowledged_task(cluster: Any) -> None:
    cluster.start_server()
    port = cluster.port
    cluster.start_worker("--concurrency", "2")
    acked: list[int] = []
    c = SyncClient(cluster.address)
    try:
        for i in range(2000):
            if i == 300:
                cluster.server.kill(signal.SIGKILL)
            try:
                acked.append(c.enqueue("sleep", {"s": 0.05, "tag": i}))
            except ConnectionClosed:
                break
    finally:
        try:
            c.close()
        except Exception:
            pass
    assert 250 <= len(acked) < 2000
    cluster.server.wait()
    cluster.start_server(port=port)  # same port: the worker reconnects by itself
    with SyncClient(cluster.address) as c:
        for tid in acked:
            assert c.wait(tid, timeout=60)["state"] == "succeeded"
        recovered = [tid for tid in acked[:20] if "recovered" in kinds(c, tid)]
        assert recovered, "tasks running at the kill come back with a 'recovered' event"


def test_sigterm_drains_a_worker_gracefully(cluster: Any) -> None:
    cluster.start_server()
    first = cluster.start_worker("--concurrency", "2")  # credit 4: 2 running + 2 buffered
    with SyncClient(cluster.address) as c:
        wait_until(lambda: len(c.workers()) == 1)
        ids = c.enqueue_many([{"type": "sleep", "payload": {"s": 1.0, "tag": i}} for i in range(6)])
        cluster.wait_runs(lambda r: sum(1 for w, *_ in r if w == "start") >= 2)
        t0 = time.monotonic()
        first.kill(signal.SIGTERM)
        assert first.wait(15) == 0
        assert time.monotonic() - t0 < 5
        running_at_stop = [tid for what, tid, pid, *_ in cluster.runs() if what == "start"]
        for tid in running_at_stop:
            task = c.get(tid)
            assert task["state"] == "succeeded" and task["attempt"] == 1
        released = [tid for tid in ids if "released" in kinds(c, tid)]
        assert len(released) == 2
        cluster.start_worker("--concurrency", "4")
        for tid in ids:
            assert c.wait(tid, timeout=30)["state"] == "succeeded"
        for tid in released:
            assert c.get(tid)["attempt"] == 1  # the hand-back did not count an attempt


def test_retries_backoff_dead_and_manual_retry(cluster: Any, tmp_path: Path) -> None:
    cluster.start_server()
    cluster.start_worker()
    marker = tmp_path / "marker"
    with SyncClient(cluster.address) as c:
        tid = c.enqueue("fail_until", {"marker": str(marker)}, retries=2)
        task = c.wait(tid, timeout=30)
        assert task["state"] == "dead" and task["attempt"] == 3
        assert "RuntimeError: marker" in task["error"] and "Traceback" in task["error"]
        starts = [e["at"] for e in c.events(tid) if e["kind"] == "started"]
        gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
        assert len(gaps) == 2 and 0.7 <= gaps[0] < gaps[1]  # 1 s then 2 s, each +-25 %
        marker.write_text("now")
        assert c.retry(tid)["state"] == "ready"
        task = c.wait(tid, timeout=30)
        assert task["state"] == "succeeded" and task["result"] == "passed"
        assert kinds(c, tid).count("retried") == 1


def test_delays_and_run_at(cluster: Any) -> None:
    cluster.start_server()
    cluster.start_worker()
    with SyncClient(cluster.address) as c:
        t0 = time.time()
        delayed = c.enqueue("noop", "d", delay=1.0)
        at = c.enqueue("noop", "a", run_at=t0 + 1.2)
        assert c.get(delayed)["state"] == "scheduled"
        for tid, wait in ((delayed, 1.0), (at, 1.2)):
            task = c.wait(tid, timeout=10)
            assert task["state"] == "succeeded"
            assert task["started_at"] >= t0 + wait


def test_priority_order(cluster: Any) -> None:
    cluster.start_server()
    with SyncClient(cluster.address) as c:
        c.pause("default")
        prios = [0, 5, 1, 5, 0, 9, 1]
        ids = [c.enqueue("noop", i, priority=p) for i, p in enumerate(prios)]
        cluster.start_worker("--concurrency", "1")
        wait_until(lambda: len(c.workers()) == 1)
        c.resume("default")
        for tid in ids:
            c.wait(tid, timeout=10)
    order = [tid for what, tid, *_ in cluster.runs() if what == "run"]
    expected = [tid for _, _, tid in sorted(zip([-p for p in prios], ids, ids, strict=True))]
    assert order == expected


def test_cancel_queued_and_running(cluster: Any) -> None:
    cluster.start_server()
    cluster.start_worker()
    with SyncClient(cluster.address) as c:
        queued = c.enqueue("noop", delay=30)
        assert c.cancel(queued)["state"] == "cancelled"
        running = c.enqueue("sleep", {"s": 30})
        cluster.wait_runs(lambda r: any(w == "start" and t == running for w, t, *_ in r))
        assert c.cancel(running)["state"] == "cancelled"
        cluster.wait_runs(lambda r: any(w == "cancelled" and t == running for w, t, *_ in r), timeout=10)
        assert c.get(running)["state"] == "cancelled"
        assert kinds(c, running)[-1] == "cancelled"
        # the worker's slot came back: it still runs new work
        assert c.wait(c.enqueue("noop", "after"), timeout=10)["result"] == "after"
    assert all(tid != queued for _, tid, *_ in cluster.runs())


def test_unique_keys_and_pause(cluster: Any) -> None:
    cluster.start_server()
    cluster.start_worker()
    with SyncClient(cluster.address) as c:
        wait_until(lambda: len(c.workers()) == 1)
        c.pause("default")
        a = c.enqueue("noop", 1, key="invoice-7")
        assert c.enqueue("noop", 2, key="invoice-7") == a
        time.sleep(0.3)
        assert c.get(a)["state"] == "ready"  # paused: a waiting worker gets nothing
        c.resume("default")
        assert c.wait(a, timeout=10)["result"] == 1
        b = c.enqueue("noop", 3, key="invoice-7")
        assert b != a and c.wait(b, timeout=10)["result"] == 3


def test_timeouts_fail_then_dead(cluster: Any) -> None:
    cluster.start_server()
    cluster.start_worker()
    with SyncClient(cluster.address) as c:
        tid = c.enqueue("sleep", {"s": 5}, timeout=0.3, retries=1)
        task = c.wait(tid, timeout=20)
        assert task["state"] == "dead" and task["attempt"] == 2 and "timeout" in task["error"]
    assert sum(1 for what, t, *_ in cluster.runs() if what == "cancelled" and t == tid) == 2


def test_cli(cluster: Any) -> None:
    cluster.start_server()
    out = cluster.cli("enqueue", "noop", "--payload", '{"x": 1}', "--priority", "3")
    assert out.returncode == 0, out.stderr
    tid = int(out.stdout)
    status = json.loads(cluster.cli("status", str(tid)).stdout)
    assert status["state"] == "ready" and status["payload"] == {"x": 1} and status["priority"] == 3
    assert cluster.cli("pause", "default").returncode == 0
    cluster.start_worker()
    time.sleep(0.3)
    assert json.loads(cluster.cli("status", str(tid)).stdout)["state"] == "ready"
    assert cluster.cli("resume", "default").returncode == 0
    done = cluster.cli("wait", str(tid), "--timeout", "10")
    assert done.returncode == 0 and json.loads(done.stdout)["result"] == {"x": 1}
    events = cluster.cli("events", str(tid)).stdout
    assert "enqueued" in events and "started" in events and "succeeded" in events
    assert str(tid) in cluster.cli("tasks", "--state", "succeeded").stdout
    later = int(cluster.cli("enqueue", "noop", "--delay", "60").stdout)
    assert "cancelled" in cluster.cli("cancel", str(later)).stdout
    assert "ready" in cluster.cli("retry", str(later)).stdout
    bad = cluster.cli("enqueue", "noop", "--payload", "{not json")
    assert bad.returncode == 2 and "not JSON" in bad.stderr
    missing = cluster.cli("status", "999999")
    assert missing.returncode == 1 and "not_found" in missing.stderr
