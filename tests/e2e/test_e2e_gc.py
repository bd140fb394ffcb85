"""``runq serve`` runs the cyclic garbage collector rarely (runq/cli/serve.py ``GC_THRESHOLDS``): the young
collections that Python's default threshold of 700 would run every few hundred tasks handled show in
/metrics, counted by generation."""

from __future__ import annotations

import re
import urllib.request

from e2e_cluster import Cluster, free_port

from runq.protocol.sync_client import SyncClient

TASKS = 20_000


def _young_collections(url: str) -> int:
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    m = re.search(r'^runq_gc_collections_total\{generation="0"\} (\S+)$', text, re.MULTILINE)
    assert m, "no runq_gc_collections_total in /metrics"
    return int(float(m.group(1)))


def test_the_server_collects_its_young_generation_rarely(cluster: Cluster) -> None:
    http_port = free_port()
    cluster.start_server("--http-port", str(http_port))
    url = f"http://127.0.0.1:{http_port}"
    before = _young_collections(url)
    with SyncClient(cluster.address) as c:
        for i in range(0, TASKS, 1000):
            c.enqueue_many([{"type": "noop", "payload": {"n": i}}] * 1000)
    young = _young_collections(url) - before
    # each task leaves several tracked objects behind it (the task, its rows and events): with Python's
    # default threshold that is a young collection every few hundred tasks: 99 here when measured
    assert young <= 10, f"{young} young collections while enqueuing {TASKS} tasks"
