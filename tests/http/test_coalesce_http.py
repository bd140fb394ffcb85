"""Coalescing and the limit key over HTTP (docs/tasks.md, docs/limits.md): POST bodies take coalesce_key,
coalesce and limit_key, the task JSON shows them, bad ones are 400, and /metrics counts coalesced enqueues."""

from __future__ import annotations

import pytest
from http_helpers import Api
from test_operations import metrics
from test_tasks import error_of

pytestmark = [pytest.mark.http, pytest.mark.trio]


async def test_enqueues_with_one_coalesce_key_merge_into_the_waiting_task(api: Api) -> None:
    r = await api.client.post("/api/tasks", json={"type": "reindex", "payload": {"user": 7, "n": 0},
                                                  "coalesce_key": "user:7", "limit_key": "acme"})
    assert r.status_code == 201, r.text
    first = r.json()["task_id"]
    r = await api.client.post("/api/tasks/batch", json={"tasks": [
        {"type": "reindex", "payload": {"user": 7, "n": 1}, "coalesce_key": "user:7"},
        {"type": "reindex", "payload": {"user": 7, "n": 2}, "coalesce_key": "user:7", "coalesce": "keep"}]})
    assert r.status_code in (200, 201), r.text
    assert r.json()["task_ids"] == [first, first]
    task = (await api.client.get(f"/api/tasks/{first}")).json()
    assert task["payload"] == {"user": 7, "n": 1} and task["coalesce_key"] == "user:7" and task["limit_key"] == "acme"
    kinds = [e["kind"] for e in (await api.client.get(f"/api/tasks/{first}/events")).json()["events"]]
    assert kinds.count("coalesced") == 2
    m = metrics((await api.client.get("/metrics")).text)
    assert m[("runq_coalesced_total", ())] == 2
    stats = (await api.client.get("/api/stats")).json()
    assert stats["totals"]["coalesced"] == 2


async def test_bad_coalesce_fields_are_refused(api: Api) -> None:
    for body, word in (({"type": "t", "coalesce": "keep"}, "coalesce"),
                       ({"type": "t", "coalesce_key": "k", "coalesce": "merge"}, "coalesce"),
                       ({"type": "t", "coalesce_key": ""}, "coalesce_key"),
                       ({"type": "t", "limit_key": "x" * 201}, "limit_key")):
        r = await api.client.post("/api/tasks", json=body)
        assert word in error_of(r, 400, "bad_request")
    assert (await api.client.get("/api/tasks")).json()["tasks"] == []
