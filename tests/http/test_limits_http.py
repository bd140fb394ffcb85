"""Limits and breakers over HTTP (issue 11): the routes on the real Hypercorn app, with a real worker, and
their figures in /metrics."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from http_helpers import Api, make_worker
from test_operations import metrics, wait_until
from test_tasks import error_of

pytestmark = [pytest.mark.http, pytest.mark.trio]


async def test_a_cap_of_one_set_over_http_keeps_the_second_task_ready(api: Api) -> None:
    release = trio.Event()

    async def slow(payload: Any) -> None:
        await release.wait()

    r = await api.client.put("/api/limits/type/slow", json={"concurrency": 1})
    assert r.status_code == 200, r.text
    assert r.json()["limit"] == {"scope": "type", "name": "slow", "key": "", "rate": None, "period": 1.0,
                                 "burst": 1, "concurrency": 1, "status": [
                                     {"value": None, "running": 0, "waiting": 0, "blocked": False, "next_at": None,
                                      "admitted": 0, "deferred": 0}]}
    await api.start_worker(make_worker(slow=slow))
    first = (await api.client.post("/api/tasks", json={"type": "slow"})).json()["task_id"]
    second = (await api.client.post("/api/tasks", json={"type": "slow"})).json()["task_id"]

    async def first_runs() -> bool:
        return bool((await api.client.get(f"/api/tasks/{first}")).json()["status"] == "running")

    await wait_until(first_runs)
    assert (await api.client.get(f"/api/tasks/{second}")).json()["status"] == "ready"
    why = (await api.client.get(f"/api/tasks/{second}/why")).json()
    assert why["task_id"] == second and why["why"]["reason"] == "concurrency_cap"
    assert why["why"]["scope"] == {"scope": "type", "name": "slow", "key": ""}
    assert (await api.client.get(f"/api/tasks/{first}/why")).json() == {"task_id": first, "why": None}
    (lim,) = (await api.client.get("/api/limits")).json()["limits"]
    assert [(s["running"], s["waiting"]) for s in lim["status"]] == [(1, 1)]
    m = metrics((await api.client.get("/metrics")).text)
    assert m[("runq_limit_waiting", (("scope", "type:slow"),))] == 1
    assert m[("runq_limit_running", (("scope", "type:slow"),))] == 1
    r = await api.client.delete("/api/limits/type/slow")
    assert r.status_code == 200 and r.json()["removed"] is True

    async def second_runs() -> bool:
        return bool((await api.client.get(f"/api/tasks/{second}")).json()["status"] == "running")

    await wait_until(second_runs)
    release.set()
    assert (await api.client.delete("/api/limits/type/slow")).json()["removed"] is False
    r = await api.client.put("/api/limits/queue/mail", params={"key": "customer"},
                             json={"rate": 10, "period": 60, "burst": 5})
    assert (r.json()["limit"]["key"], r.json()["limit"]["rate"]) == ("customer", 10.0)
    kinds = [(e["scope"], e["kind"]) for e in (await api.client.get("/api/server-events")).json()["events"]]
    assert kinds == [("type:slow", "limit_set"), ("type:slow", "limit_removed"), ("queue:mail[customer]", "limit_set")]


async def test_a_breaker_opened_over_http_holds_its_type_and_shows_in_metrics(api: Api) -> None:
    async def job(payload: Any) -> None:
        return None

    r = await api.client.post("/api/breakers/job/open", params={"reason": "upstream down"})
    assert r.status_code == 200 and r.json()["breaker"]["state"] == "open" and r.json()["breaker"]["manual"] is True
    await api.start_worker(make_worker(job=job))
    tid = (await api.client.post("/api/tasks", json={"type": "job"})).json()["task_id"]
    why = (await api.client.get(f"/api/tasks/{tid}/why")).json()["why"]
    assert why["reason"] == "breaker_open"
    m = metrics((await api.client.get("/metrics")).text)
    assert m[("runq_breaker_state", (("state", "open"), ("type", "job")))] == 1
    assert m[("runq_breaker_state", (("state", "closed"), ("type", "job")))] == 0
    assert m[("runq_breaker_transitions_total", (("state", "open"), ("type", "job")))] == 1
    assert m[("runq_breaker_waiting", (("type", "job"),))] == 1
    assert (await api.client.get(f"/api/tasks/{tid}")).json()["status"] == "ready"
    r = await api.client.post("/api/breakers/job/close")
    assert r.status_code == 200 and r.json()["breaker"]["state"] == "closed"
    done = (await api.client.get(f"/api/tasks/{tid}", params={"wait": 10})).json()
    assert done["status"] == "succeeded"
    r = await api.client.put("/api/breakers/job", json={"threshold": 0.5, "min_calls": 3})
    assert r.status_code == 200 and (r.json()["breaker"]["min_calls"], r.json()["breaker"]["threshold"]) == (3, 0.5)
    (listed,) = (await api.client.get("/api/breakers")).json()["breakers"]
    assert listed["type"] == "job" and listed["changes"]["open"] == 1 and listed["changes"]["closed"] == 1
    assert (await api.client.delete("/api/breakers/job")).json()["removed"] is True
    m = metrics((await api.client.get("/metrics")).text)
    assert not [k for k in m if k[0] == "runq_breaker_state"]


async def test_bad_limits_and_breakers_are_refused(api: Api) -> None:
    c = api.client
    assert "scope must be 'queue' or 'type'" in error_of(await c.put("/api/limits/bucket/q", json={"rate": 1}),
                                                        400, "bad_request")
    assert "give a 'rate'" in error_of(await c.put("/api/limits/queue/q", json={}), 400, "bad_request")
    assert "must be a JSON object" in error_of(await c.put("/api/limits/queue/q"), 400, "bad_request")
    assert "'burst' must be an integer" in error_of(await c.put("/api/limits/queue/q", json={"rate": 1, "burst": 1.5}),
                                                    400, "bad_request")
    assert "'rate' must be a number" in error_of(await c.put("/api/limits/queue/q", json={"rate": True}),
                                                 400, "bad_request")
    assert "unknown field" in error_of(await c.put("/api/limits/queue/q", json={"rate": 1, "per": 2}),
                                       400, "bad_request")
    assert "'threshold'" in error_of(await c.put("/api/breakers/t", json={"threshold": 2}), 400, "bad_request")
    error_of(await c.post("/api/breakers/nobody/close"), 404, "not_found")
    error_of(await c.get("/api/tasks/999/why"), 404, "not_found")
    error_of(await c.get("/api/server-events", params={"limit": 0}), 400, "bad_request")
    assert (await c.get("/api/limits")).json() == {"limits": []}
    assert (await c.get("/api/breakers")).json() == {"breakers": []}
