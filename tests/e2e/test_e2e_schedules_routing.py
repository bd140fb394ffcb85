"""End to end with real ``runq serve`` and ``runq worker`` processes (issue 11): a cron schedule fires once per
fire time, across a ``kill -9`` of the server; tasks that require labels run only on the worker that has them."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from e2e_cluster import Cluster, wait_until

from runq import SyncClient

pytestmark = pytest.mark.e2e


def fired(c: SyncClient) -> list[dict[str, object]]:
    """The tasks the schedule ``tick`` enqueued (their unique key names the fire time)."""
    tasks, _ = c.list_tasks(type="compute", limit=1000)
    return [t for t in tasks if str(t.get("key") or "").startswith("schedule:tick:")]


def test_a_cron_schedule_fires_once_per_fire_time_across_a_kill9_of_the_server(cluster: Cluster) -> None:
    cluster.start_server()
    worker = cluster.start_worker()
    with SyncClient(cluster.address) as c:
        cluster.wait_joined(c, worker)
        # every second (six fields: seconds first), managed at run time from the CLI
        r = cluster.cli("schedules", "add", "tick", "compute", "--cron", "* * * * * *", "--payload", "20")
        assert r.returncode == 0, r.stderr
        (sched,) = [s for s in c.schedules() if s["name"] == "tick"]
        assert sched["next_fire"] is not None
        wait_until(lambda: len(fired(c)) >= 3, timeout=20)
    port = cluster.port
    cluster.server.kill9()  # type: ignore[union-attr]
    cluster.start_server("--port", str(port))  # (on the same port: the worker reconnects by itself)
    with SyncClient(cluster.address) as c:
        before = len(fired(c))
        wait_until(lambda: len(fired(c)) >= before + 3, timeout=30)
        r = cluster.cli("schedules", "pause", "tick")
        assert r.returncode == 0, r.stderr
        tasks = fired(c)
        for t in tasks:
            if t["state"] != "succeeded":
                assert c.wait(int(t["id"]), timeout=20)["state"] == "succeeded"  # type: ignore[arg-type]
        fire_times = [float(str(t["key"]).rsplit(":", 1)[1]) for t in tasks]
        # each fire time got one task, whole seconds, none twice (the restart included)
        assert len(set(fire_times)) == len(fire_times) and all(f == int(f) for f in fire_times)
        assert max(Counter(int(f) for f in fire_times).values()) == 1
        # each task ran once (the run log: one run per task)
        runs = Counter(r.id for r in cluster.runs() if r.what == "run")
        assert all(runs[int(t["id"])] == 1 for t in tasks), runs  # type: ignore[arg-type]
        listed = json.loads(cluster.cli("schedules", "--json").stdout)
        (tick,) = [s for s in listed if s["name"] == "tick"]
        assert tick["paused"] is True and tick["last_fire"] == max(fire_times)


def test_tasks_that_require_a_label_run_only_on_the_worker_that_has_it(cluster: Cluster) -> None:
    cluster.start_server()
    eu = cluster.start_worker("--label", "region=eu")
    us = cluster.start_worker("--label", "region=us")
    with SyncClient(cluster.address) as c:
        cluster.wait_joined(c, eu, us)
        eu_ids = [c.enqueue("compute", i, requires={"region": "eu"}) for i in range(20)]
        us_ids = [c.enqueue("compute", i, requires={"region": "us"}) for i in range(20)]
        nowhere = c.enqueue("compute", 0, requires={"region": "ap"})
        for tid in eu_ids + us_ids:
            assert c.wait(tid, timeout=30)["state"] == "succeeded"
        ran_on = {r.id: r.pid for r in cluster.runs() if r.what == "run"}
        assert {ran_on[t] for t in eu_ids} == {eu.pid} and {ran_on[t] for t in us_ids} == {us.pid}
        # no connected worker has region=ap: the task waits, and says why
        assert c.get(nowhere)["state"] == "ready" and nowhere not in ran_on
        why = json.loads(cluster.cli("why", str(nowhere), "--json").stdout)
        assert "no_worker_with_labels" in json.dumps(why), why
