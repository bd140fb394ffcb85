"""The dead-letter queue over HTTP (issue 11): list by filter, retry and delete in bulk, on the real Hypercorn app
with a real SDK worker making the dead tasks; the per-enqueue retry policy in a task's JSON."""

from __future__ import annotations

from typing import Any

import pytest
from http_helpers import Api
from test_operations import metrics, wait_until
from test_tasks import error_of

from runq import Worker

pytestmark = [pytest.mark.http, pytest.mark.trio]


async def _dead(api: Api, specs: list[dict[str, Any]]) -> list[int]:
    """Enqueue ``specs`` (retries 0) and wait until they are all dead; return their ids."""
    ids = [(await api.client.post("/api/tasks", json={"retries": 0, **s})).json()["task_id"] for s in specs]

    async def all_dead() -> bool:
        states = [(await api.client.get(f"/api/tasks/{i}")).json()["state"] for i in ids]
        return all(s == "dead" for s in states)

    await wait_until(all_dead)
    return ids


async def test_dead_tasks_are_listed_by_filter_and_retried_and_deleted_in_bulk(api: Api) -> None:
    fixed: set[int] = set()

    async def boom(payload: Any) -> None:
        if payload in fixed:
            return
        raise ValueError(f"bad value {payload}")

    async def flaky(payload: Any) -> None:
        raise ConnectionError("connection refused by the mail server")

    w = Worker(queues=["q1", "q2"], concurrency=4, grace=2.0)
    w.register("boom", boom)
    w.register("flaky", flaky)
    await api.start_worker(w)
    a = await _dead(api, [{"type": "boom", "payload": i, "queue": "q1"} for i in range(3)])
    b = await _dead(api, [{"type": "flaky", "queue": "q2"}, {"type": "boom", "payload": 9, "queue": "q2"}])

    async def ids(**params: Any) -> list[int]:
        r = await api.client.get("/api/dead", params=params)
        assert r.status_code == 200, r.text
        return [t["id"] for t in r.json()["tasks"]]

    assert await ids() == [*b[::-1], *a[::-1]]  # newest first
    assert await ids(queue="q1") == a[::-1]
    assert await ids(type="flaky") == [b[0]]
    assert await ids(error="valueerror: BAD VALUE") == [b[1], *a[::-1]]
    assert await ids(error="mail server", queue="q2") == [b[0]]
    page = (await api.client.get("/api/dead", params={"limit": 2})).json()
    assert [t["id"] for t in page["tasks"]] == b[::-1] and page["cursor"] == b[0]
    assert await ids(cursor=page["cursor"]) == a[::-1]
    finished = [(await api.client.get(f"/api/tasks/{i}")).json()["finished_at"] for i in a]
    assert await ids(since=finished[1], queue="q1") == [a[2], a[1]]
    assert await ids(until=finished[1], queue="q1") == [a[0]]

    # retry in bulk: at most limit, the oldest first; each gets its event, one server event names the caller
    fixed.update({0, 1, 2})
    r = await api.client.post("/api/dead/retry", json={"queue": "q1", "limit": 2})
    assert r.status_code == 200, r.text
    assert r.json() == {"message": "2 dead task(s) retried", "ids": a[:2], "skipped": [], "more": True}

    async def succeeded(tid: int) -> bool:
        return bool((await api.client.get(f"/api/tasks/{tid}")).json()["state"] == "succeeded")

    for tid in a[:2]:
        await wait_until(lambda tid=tid: succeeded(tid))  # type: ignore[misc]
    events = (await api.client.get(f"/api/tasks/{a[0]}/events")).json()["events"]
    assert [e["kind"] for e in events][-3:] == ["retried", "started", "succeeded"]
    assert events[-3]["detail"] == "retried from the dead-letter queue by http"
    assert await ids(queue="q1") == [a[2]]

    # delete in bulk: a state change, the timeline kept
    r = await api.client.post("/api/dead/delete", json={"error": "bad value"})
    assert r.json() == {"message": "2 dead task(s) deleted", "ids": [a[2], b[1]], "skipped": [], "more": False}
    task = (await api.client.get(f"/api/tasks/{a[2]}")).json()
    assert task["state"] == "cancelled" and task["error"].startswith("Traceback")
    kinds = [e["kind"] for e in (await api.client.get(f"/api/tasks/{a[2]}/events")).json()["events"]]
    assert kinds[-2:] == ["dead", "deleted"]
    assert await ids() == [b[0]]
    r = await api.client.post("/api/dead/delete", json={"error": "bad value"})
    assert r.json() == {"message": "0 dead task(s) deleted", "ids": [], "skipped": [], "more": False}

    m = metrics((await api.client.get("/metrics")).text)
    assert m[("runq_tasks_retried_by_hand_total", (("queue", "q1"),))] == 2
    assert m[("runq_dead_tasks_deleted_total", (("queue", "q1"),))] == 1
    assert m[("runq_dead_tasks_deleted_total", (("queue", "q2"),))] == 1

    audit = [(e["scope"], e["kind"], e["actor"], e["detail"])
             for e in (await api.client.get("/api/server-events")).json()["events"]]
    assert audit == [
        ("dead[queue=q1]", "dead_retried", "http", f"2 dead task(s) retried (more remain): ids {a[0]},{a[1]}"),
        ("dead[error='bad value']", "dead_deleted", "http", f"2 dead task(s) deleted: ids {a[2]},{b[1]}"),
    ]


async def test_bad_dead_letter_requests_are_refused(api: Api) -> None:
    c = api.client
    assert "'limit' must be an integer from 1 to 1000" in error_of(
        await c.post("/api/dead/retry", json={"limit": 0}), 400, "bad_request")
    assert "unknown field(s) ['state']" in error_of(
        await c.post("/api/dead/delete", json={"state": "dead"}), 400, "bad_request")
    assert "'since' must be a number" in error_of(
        await c.post("/api/dead/retry", json={"since": "yesterday"}), 400, "bad_request")
    assert "the body must be a JSON object" in error_of(await c.post("/api/dead/retry"), 400, "bad_request")
    assert "'error'" in error_of(await c.post("/api/dead/retry", json={"error": ""}), 400, "bad_request")
    assert "limit" in error_of(await c.get("/api/dead", params={"limit": 5000}), 400, "bad_request")
    assert "unknown query parameter" in error_of(await c.get("/api/dead", params={"state": "x"}), 400,
                                                 "bad_request")


async def test_a_tasks_retry_policy_is_taken_checked_and_shown(api: Api) -> None:
    r = await api.client.post("/api/tasks", json={"type": "t", "retry_policy": {"delays": [1, 5],
                                                                               "never_retry": ["ValueError"]}})
    assert r.status_code == 201, r.text
    assert r.json()["retry_policy"] == '{"delays":[1.0,5.0],"never_retry":["ValueError"]}'
    assert "'jitter' must be a number from 0 to 1" in error_of(
        await api.client.post("/api/tasks", json={"type": "t", "retry_policy": {"jitter": 2}}), 400, "bad_request")
