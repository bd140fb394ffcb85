"""End to end, retry policies (issue 11) with a real ``runq serve`` and a real ``runq worker`` process: the
``picky`` type (e2e_tasks.py) declares ``retries=5`` and ``RetryPolicy(delays=(0.6, 1.2), retry_on=[Flaky],
never_retry=[Permanent])``, sent in the worker's hello; the server decides from the exception types the worker
reports. A per-enqueue policy overrides the type's."""

from __future__ import annotations

from itertools import pairwise

import pytest
from e2e_cluster import Cluster
from e2e_tasks import PICKY_DELAYS

from runq import RetryPolicy, SyncClient

pytestmark = pytest.mark.e2e

#: how late a retry may start after its delay on a loaded machine (the timer, a commit, a dispatch): a bound that
#: only catches a delay far off the declared one (the events say the exact delay chosen); never early is the rule
SLACK = 5.0


def runs_of(cluster: Cluster, tid: int) -> list[float]:
    """The monotonic start times of the task's attempts, from the handlers' run log."""
    return [r.mono for r in cluster.runs() if r.id == tid and r.what == "run"]


def test_never_retry_goes_dead_after_one_attempt_and_retry_on_follows_the_declared_delays(cluster: Cluster) -> None:
    cluster.start_server()
    with SyncClient(cluster.address) as c:
        cluster.wait_joined(c, cluster.start_worker())
        permanent = c.enqueue("picky", "permanent")
        other = c.enqueue("picky", "other")
        flaky = c.enqueue("picky", "3")  # fails twice with Flaky, then succeeds
        gives_up = c.enqueue("picky", "flaky")  # Flaky every time: 1 + 5 attempts (the type's retries), then dead

        t = c.wait(permanent, timeout=30)
        assert (t["state"], t["attempt"]) == ("dead", 1)
        assert "Permanent: this input can never work" in t["error"]
        assert c.events(permanent)[-1]["detail"] == "e2e_tasks.Permanent is in never_retry (1 attempt)"

        t = c.wait(other, timeout=30)
        assert (t["state"], t["attempt"]) == ("dead", 1)  # a KeyError is not in retry_on
        assert c.events(other)[-1]["detail"] == "builtins.KeyError is not in retry_on (1 attempt)"

        t = c.wait(flaky, timeout=30)
        assert (t["state"], t["attempt"]) == ("succeeded", 3)
        scheduled = [e["detail"] for e in c.events(flaky) if e["kind"] == "retry_scheduled"]
        assert scheduled == [f"in {d:.3f}s" for d in PICKY_DELAYS]
        gaps = [b - a for a, b in pairwise(runs_of(cluster, flaky))]
        assert len(gaps) == 2
        for gap, delay in zip(gaps, PICKY_DELAYS, strict=True):
            assert delay <= gap < delay + SLACK, gaps

        t = c.wait(gives_up, timeout=30)
        assert (t["state"], t["attempt"]) == ("dead", 6)
        scheduled = [e["detail"] for e in c.events(gives_up) if e["kind"] == "retry_scheduled"]
        assert scheduled == ["in 0.600s"] + ["in 1.200s"] * 4  # (the last delay repeats)
        assert c.events(gives_up)[-1]["detail"] == "6 attempts, retries spent"


def test_a_policy_given_at_enqueue_overrides_the_types(cluster: Cluster) -> None:
    cluster.start_server()
    with SyncClient(cluster.address) as c:
        cluster.wait_joined(c, cluster.start_worker())
        # its own delays, and its own never_retry (empty: none) over the type's: Permanent is retried now
        # (the definition's retries=5 still bound the attempts: the worker reports them with each failure)
        tid = c.enqueue("picky", "permanent", retry_policy=RetryPolicy(delays=(0.2,), never_retry=(), retry_on=()))
        t = c.wait(tid, timeout=30)
        assert (t["state"], t["attempt"]) == ("dead", 6)
        assert t["retry_policy"] == '{"delays":[0.2],"never_retry":[],"retry_on":[]}'
        assert [e["detail"] for e in c.events(tid) if e["kind"] == "retry_scheduled"] == ["in 0.200s"] * 5
