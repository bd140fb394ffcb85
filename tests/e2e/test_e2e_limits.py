"""End to end, the limits of docs/limits.md across real worker processes (issue 11): a type's rate limit and
a type's concurrency cap shared by two ``runq worker`` processes, and a circuit breaker opening, holding its
tasks, probing after its cool-down and closing. Real ``runq serve`` and ``runq worker`` processes."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from e2e_cluster import Cluster, wait_until

from runq import SyncClient

pytestmark = pytest.mark.e2e

RATE = 5.0  # tasks per second
BURST = 1
N_RATED = 15


def two_workers(cluster: Cluster, c: SyncClient, concurrency: int) -> set[str]:
    """Start two worker processes; return their worker ids once both are connected."""
    a = cluster.start_worker("--concurrency", str(concurrency))
    b = cluster.start_worker("--concurrency", str(concurrency))
    return set(cluster.wait_joined(c, a, b).values())


def finished(c: SyncClient, ids: list[int], timeout: float = 30) -> list[dict[str, Any]]:
    """Wait for every task of ``ids``; return their maps, each checked to have succeeded."""
    tasks = [c.wait(tid, timeout=timeout) for tid in ids]
    for t in tasks:
        assert t["state"] == "succeeded", t
    return tasks


def test_a_type_rate_limit_holds_across_two_workers(cluster: Cluster) -> None:
    """5 tasks/s with a burst of 1, 15 tasks, two workers of 4 slots each: the starts (the server's dispatch
    times) are spaced by the rate whoever runs them, so the run lasts at least (15 - 1) / 5 s. Without the
    limit the 8 free slots would start them all at once."""
    cluster.start_server()
    with SyncClient(cluster.address) as c:
        workers = two_workers(cluster, c, 4)
        c.set_limit("type", "sleep", rate=f"{RATE:g}/s", burst=BURST)
        ids = [c.enqueue("sleep", {"s": 0.1, "tag": n}) for n in range(N_RATED)]
        tasks = finished(c, ids)
    starts = sorted(t["started_at"] for t in tasks)
    most_in_a_second = max(sum(1 for s in starts if first <= s < first + 1.0) for first in starts)
    assert most_in_a_second <= RATE + BURST, starts
    assert starts[-1] - starts[0] >= (N_RATED - BURST) / RATE - 0.05, starts
    # GCRA with a burst of 1: one start every 1/rate seconds at most (a late dispatch only widens the gap)
    gaps = [b - a for a, b in pairwise(starts)]
    assert min(gaps) >= 1 / RATE - 0.02, gaps
    assert {t["worker"] for t in tasks} == workers  # both processes ran some of them


def test_a_concurrency_cap_of_one_across_two_workers(cluster: Cluster) -> None:
    """A cap of 1 on a type: two workers of 4 slots each never run two of its tasks at once (the handlers' own
    start and end times, on one monotonic clock, do not overlap), and both workers run some."""
    cluster.start_server()
    with SyncClient(cluster.address) as c:
        workers = two_workers(cluster, c, 4)
        c.set_limit("type", "sleep", concurrency=1)
        ids = [c.enqueue("sleep", {"s": 0.3, "tag": n}) for n in range(8)]
        tasks = finished(c, ids)
    assert {t["worker"] for t in tasks} == workers
    runs = cluster.runs()
    start = {r.id: r.mono for r in runs if r.what == "start"}
    end = {r.id: r.mono for r in runs if r.what == "end"}
    assert set(start) == set(end) == set(ids)
    spans = sorted((start[i], end[i]) for i in ids)
    for (_, end_a), (start_b, _) in pairwise(spans):
        assert start_b >= end_a, spans  # the next one starts only after the previous one ended
    # the server's view agrees: each dispatch comes after the previous task was final
    by_start = sorted(tasks, key=lambda t: t["started_at"])
    for a, b in pairwise(by_start):
        assert b["started_at"] >= a["finished_at"], (a, b)


def test_a_breaker_opens_holds_its_tasks_then_probes_and_closes(cluster: Cluster, tmp_path: Path) -> None:
    """``fail_until`` fails while its marker file is absent. Its breaker opens on the failures; a task enqueued
    then waits (``why``: breaker_open) and runs no attempt; once the marker exists, the probe after the
    cool-down succeeds, the breaker closes and the held tasks run and succeed, each at its first attempt."""
    cooldown = 2.0
    marker = tmp_path / "healthy"
    cluster.start_server()
    with SyncClient(cluster.address) as c:
        workers = two_workers(cluster, c, 4)
        c.set_breaker("fail_until", threshold=0.5, min_calls=2, window=10.0, cooldown=cooldown)
        failed = []
        for _ in range(6):
            t = c.wait(c.enqueue("fail_until", {"marker": str(marker)}, retries=0), timeout=20)
            assert t["state"] == "dead" and "absent" in t["error"], t
            failed.append(t)
            if c.breakers()[0]["state"] == "open":
                break
        (breaker,) = c.breakers()
        assert breaker["type"] == "fail_until" and breaker["state"] == "open", breaker
        assert len(failed) == 2  # min_calls outcomes, all failures: open at once
        held = [c.enqueue("fail_until", {"marker": str(marker)}, retries=0) for _ in range(3)]
        for tid in held:
            why = c.why(tid)
            assert why is not None and why["reason"] == "breaker_open", why
            assert c.get(tid)["state"] == "ready" and c.get(tid)["attempt"] == 0
        marker.touch()  # the failing dependency is healthy again (well within the cool-down)
        wait_until(lambda: c.breakers()[0]["state"] == "closed", timeout=20)
        tasks = finished(c, held)
        events = [e for e in c.server_events() if e["scope"] == "type:fail_until"]
    assert all(t["attempt"] == 1 and t["result"] == "passed" for t in tasks), tasks
    assert {t["worker"] for t in tasks} <= workers
    kinds = [e["kind"] for e in events]
    assert kinds == ["breaker_set", "breaker_open", "breaker_half_open", "breaker_closed"], events
    opened = events[1]["at"]
    assert events[2]["at"] >= opened + cooldown - 0.05, events  # half-open only after the cool-down
    # no held task started while the breaker was open
    assert min(t["started_at"] for t in tasks) >= opened + cooldown - 0.05, (events, tasks)
