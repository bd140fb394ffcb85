"""Queues, workers, stats, /metrics, health, auth, and the OpenAPI document against the served routes."""

from __future__ import annotations

import os
import re
import urllib.parse
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from http_helpers import TOKEN, Api, make_worker, start_api
from prometheus_client.parser import text_string_to_metric_families
from test_tasks import error_of

from runq import Retry, TaskContext
from runq.app.http import SPEC, spec_routes
from runq.app.http.openapi import build_spec

pytestmark = [pytest.mark.http, pytest.mark.trio]


async def wait_until(pred: Any, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not await pred():
            await trio.sleep(0.02)


async def test_pause_and_resume_a_queue(api: Api) -> None:
    ran: list[int] = []

    async def job(payload: int) -> int:
        ran.append(payload)
        return payload

    r = await api.client.post("/api/queues/default/pause")
    assert r.status_code == 200 and r.json()["paused"] is True
    worker = await api.start_worker(make_worker(job=job))
    tid = (await api.client.post("/api/tasks", json={"type": "job", "data": 1})).json()["task_id"]
    with trio.fail_after(10):
        while worker.worker_id not in api.server.core.hungry:  # it asks for tasks (dispatch is in that flush)
            await trio.sleep(0.01)
    assert api.server.task_now(tid)["state"] == "ready" and ran == []  # type: ignore[index]
    q = {x["name"]: x for x in (await api.client.get("/api/queues")).json()["queues"]}["default"]
    assert q["paused"] is True and q["counts"]["ready"] == 1 and q["workers"] == 1
    r = await api.client.post("/api/queues/default/resume")
    assert r.status_code == 200 and r.json()["paused"] is False
    r = await api.client.get(f"/api/tasks/{tid}", params={"wait": 10})
    assert r.json()["status"] == "succeeded" and ran == [1]
    # the pause is stored: a new queue can be paused before it has tasks
    r = await api.client.post("/api/queues/later%20one/pause")
    assert r.status_code == 200 and r.json()["queue"] == "later one"
    names = {x["name"]: x["paused"] for x in (await api.client.get("/api/queues")).json()["queues"]}
    assert names["later one"] is True and names["default"] is False


@pytest.mark.parametrize("name", ["emails/high", "a/b/pause", "ünï cødé", "%2F", "two\nlines", "/", "a//b/", " "])
async def test_any_queue_name_can_be_paused_and_resumed(api: Api, name: str) -> None:
    """Queue names are any 1 to 200 characters (as over TCP), '/' included: percent-encoded in the path."""
    await api.client.post("/api/tasks", json={"type": "x", "queue": name})
    quoted = urllib.parse.quote(name, safe="")
    r = await api.client.post(f"/api/queues/{quoted}/pause")
    assert r.status_code == 200, r.text
    assert r.json() == {"message": f"queue {name!r} paused", "queue": name, "paused": True}
    queues = {q["name"]: q for q in (await api.client.get("/api/queues")).json()["queues"]}
    assert queues[name]["paused"] is True and queues[name]["counts"]["ready"] == 1
    assert {q["queue"]: q["paused"] for q in api.server.core.queue_stats()}[name] is True
    r = await api.client.post(f"/api/queues/{quoted}/resume")
    assert r.status_code == 200 and r.json()["paused"] is False
    assert {q["queue"]: q["paused"] for q in api.server.core.queue_stats()}[name] is False


async def test_queue_counts_and_rates(api: Api) -> None:
    async def job(payload: int) -> int:
        return payload

    await api.client.post("/api/tasks/batch", json={"tasks": [{"type": "job", "data": i, "queue": "q"}
                                                              for i in range(20)]})
    await api.client.post("/api/tasks", json={"type": "job", "queue": "q", "delay": 3600})
    q = {x["name"]: x for x in (await api.client.get("/api/queues")).json()["queues"]}["q"]
    assert q["counts"] == {"scheduled": 1, "ready": 20, "running": 0}
    assert q["enqueued"] == 21 and q["enqueue_rate"] > 0 and q["completion_rate"] == 0
    w = make_worker(job=job)
    w.queues = ["q"]
    await api.start_worker(w)

    async def all_done() -> bool:
        q = {x["name"]: x for x in (await api.client.get("/api/queues")).json()["queues"]}["q"]
        return bool(q["succeeded"] == 20)

    await wait_until(all_done)
    q = {x["name"]: x for x in (await api.client.get("/api/queues")).json()["queues"]}["q"]
    assert q["completion_rate"] > 0 and q["counts"]["ready"] == 0 and q["counts"]["scheduled"] == 1


async def test_workers_list_and_drain(api: Api) -> None:
    async def job(payload: Any) -> None:
        await trio.sleep(0.5)

    w = make_worker(job=job)
    w.name = "drain-me"
    await api.start_worker(w)
    r = await api.client.get("/api/workers")
    [info] = r.json()["workers"]
    assert info["id"] == w.worker_id and info["name"] == "drain-me" and info["pid"] == os.getpid()
    assert info["host"] and info["queues"] == ["default"] and info["concurrency"] == 4 and info["types"] == ["job"]
    assert (await api.client.get("/api/types")).json() == {"types": [{"type": "job", "workers": 1,
                                                                      "queues": ["default"], "batch": None,
                                                                      "requires": None}]}
    assert info["state"] == "active" and info["connected_at"] <= info["last_heartbeat"]
    await api.client.post("/api/tasks", json={"type": "job"})

    async def running() -> bool:
        return bool((await api.client.get("/api/workers")).json()["workers"][0]["in_flight"] == 1)

    await wait_until(running)
    r = await api.client.delete(f"/api/workers/{w.worker_id}")
    assert r.status_code == 202 and r.json()["worker"]["state"] == "draining"

    async def gone() -> bool:
        return not (await api.client.get("/api/workers")).json()["workers"]

    await wait_until(gone)
    tasks = (await api.client.get("/api/tasks")).json()["tasks"]
    assert tasks[0]["status"] == "succeeded"  # it finished its running task before leaving
    error_of(await api.client.delete(f"/api/workers/{w.worker_id}"), 404, "not_found")


async def test_stats_percentiles_and_rates(api: Api) -> None:
    async def quick(payload: Any) -> None:
        await trio.sleep(0.01)

    def flaky(payload: Any, ctx: TaskContext) -> None:
        raise Retry(0.01) if ctx.attempt < 2 else ValueError("no")

    await api.start_worker(make_worker(quick=quick, flaky=flaky))
    await api.client.post("/api/tasks/batch", json={"tasks": [{"type": "quick"}] * 10
                                                    + [{"type": "flaky", "retries": 1}]})

    async def done() -> bool:
        s = (await api.client.get("/api/stats")).json()
        return bool(s["totals"]["succeeded"] == 10 and s["totals"]["dead"] == 1)

    await wait_until(done)
    s = (await api.client.get("/api/stats")).json()
    assert s["workers"] == 1 and s["uptime"] > 0 and s["version"]
    assert s["queues"]["default"] == {"scheduled": 0, "ready": 0, "running": 0, "paused": False}
    p = s["processing_time"]["quick"]
    assert p["count"] == 10 and 0.005 < p["p50"] <= p["p90"] <= p["p99"] <= p["max"] < 5
    assert s["processing_time"]["flaky"]["count"] == 2
    assert s["rates"]["enqueued"] > 0 and s["rates"]["succeeded"] > 0 and s["rates"]["failed"] > 0
    assert s["success_ratio"] == pytest.approx(10 / 11)
    assert s["totals"]["failed"] == 2


def metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_metrics_read_the_live_core(api: Api) -> None:
    async def work(payload: Any) -> None:
        if payload == "fail":
            raise ValueError("bad")

    await api.start_worker(make_worker(work=work))
    r = await api.client.post("/api/tasks/batch", json={"tasks": [{"type": "work"}] * 5
                                                        + [{"type": "work", "data": "fail", "retries": 0}]})
    ids = r.json()["task_ids"]
    await api.client.get(f"/api/tasks/{ids[-1]}", params={"wait": 10})
    await api.client.get(f"/api/tasks/{ids[-2]}", params={"wait": 10})
    await api.client.post("/api/tasks", json={"type": "later", "queue": "q2", "delay": 999})
    r = await api.client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    m = metrics(r.text)
    assert m[("runq_tasks", (("queue", "q2"), ("state", "scheduled")))] == 1
    assert m[("runq_tasks_enqueued_total", (("queue", "default"),))] == 6
    assert m[("runq_tasks_completed_total", (("queue", "default"), ("state", "succeeded")))] == 5
    assert m[("runq_tasks_completed_total", (("queue", "default"), ("state", "dead")))] == 1
    assert m[("runq_task_failures_total", (("queue", "default"),))] == 1
    assert m[("runq_task_run_seconds_count", (("outcome", "succeeded"), ("type", "work")))] == 5
    assert m[("runq_task_run_seconds_count", (("outcome", "failed"), ("type", "work")))] == 1
    assert m[("runq_task_run_seconds_bucket", (("le", "+Inf"), ("outcome", "succeeded"), ("type", "work")))] == 5
    assert m[("runq_workers", (("state", "active"),))] == 1
    assert m[("runq_lease_expiries_total", ())] == 0
    assert m[("runq_protocol_errors_total", ())] == 0 and m[("runq_internal_errors_total", ())] == 0
    assert m[("runq_store_commits_total", ())] >= 1
    assert m[("runq_store_batch_rows_count", ())] >= 1 and m[("runq_store_batch_rows_sum", ())] >= 7
    assert m[("runq_store_commit_latency_seconds_count", ())] >= 1
    assert m[("runq_store_commit_latency_seconds_sum", ())] > 0
    # counted from the live server: a TCP peer that breaks the protocol shows up at the next scrape
    s = await trio.open_tcp_stream("127.0.0.1", api.server.port)  # type: ignore[arg-type]
    await s.send_all(b"\x00\x00\x00\x01\xc1")
    with trio.fail_after(5):
        while api.server.stats.protocol_errors == 0:
            await trio.sleep(0.01)
    await s.aclose()
    assert metrics((await api.client.get("/metrics")).text)[("runq_protocol_errors_total", ())] == 1


async def test_every_server_has_its_own_registry(nursery: trio.Nursery, tmp_path: Path, api: Api) -> None:
    (tmp_path / "other").mkdir()
    other = await start_api(nursery, tmp_path / "other")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{other.http_port}") as c:
        await c.post("/api/tasks", json={"type": "x"})
        mine = metrics((await api.client.get("/metrics")).text)
        theirs = metrics((await c.get("/metrics")).text)
    assert ("runq_tasks_enqueued_total", (("queue", "default"),)) not in mine
    assert theirs[("runq_tasks_enqueued_total", (("queue", "default"),))] == 1
    other.stopping.set()


async def test_health_and_readiness(api: Api) -> None:
    assert (await api.client.get("/healthz")).json() == {"status": "ok"}
    assert (await api.client.get("/readyz")).json() == {"status": "ready"}


async def test_readyz_says_when_the_database_is_not_writable(api: Api) -> None:
    import sqlite3

    blocker = sqlite3.connect(api.server.config.db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        r = await api.client.get("/readyz")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    error_of(r, 503, "store_error")
    assert (await api.client.get("/readyz")).status_code == 200


# ---------------------------------------------------------------------- auth
@pytest.mark.parametrize("server_config", [{"token": TOKEN}])
async def test_token_required_when_configured(api: Api) -> None:
    async with httpx.AsyncClient(base_url=api.url) as anon:
        for method, url in [("GET", "/api/tasks"), ("POST", "/api/tasks"), ("GET", "/api/tasks/1"),
                            ("GET", "/api/stats"), ("GET", "/metrics"), ("GET", "/api/events"),
                            ("DELETE", "/api/workers/x"), ("POST", "/api/queues/q/pause")]:
            r = await anon.request(method, url)
            error_of(r, 401, "unauthorized")
            assert r.headers["www-authenticate"].startswith("Bearer")
        r = await anon.get("/api/tasks", headers={"Authorization": "Bearer wrong"})
        error_of(r, 401, "unauthorized")
        r = await anon.get("/api/tasks", headers={"Authorization": f"Basic {TOKEN}"})
        error_of(r, 401, "unauthorized")
        # open: liveness, readiness and the API description
        for url in ("/healthz", "/readyz", "/openapi.json", "/docs"):
            assert (await anon.get(url)).status_code == 200, url
        assert (await anon.get("/openapi.json")).json() == SPEC  # which says where a token is needed
        assert api.server.core.stats.enqueued == 0
    # with the token (the fixture's client sends it)
    r = await api.client.post("/api/tasks", json={"type": "x"})
    assert r.status_code == 201
    assert (await api.client.get("/metrics")).status_code == 200


@pytest.mark.parametrize("server_config", [{"token": "clé-secrète-🔑"}])
async def test_a_token_beyond_ascii_works_as_over_tcp(api: Api) -> None:
    """Header bytes are the token's UTF-8 bytes (HTTP headers are bytes; Quart decodes them as Latin-1)."""
    right = "Bearer clé-secrète-🔑".encode()
    async with httpx.AsyncClient(base_url=api.url) as c:
        r = await c.get("/api/stats", headers={"Authorization": right})
        assert r.status_code == 200, r.text
        error_of(await c.get("/api/stats", headers={"Authorization": "Bearer clé-secrète-".encode("latin-1") + "🔑".encode()}),
                 401, "unauthorized")
        error_of(await c.get("/api/stats", headers={"Authorization": "Bearer clé-secrète-".encode()}),
                 401, "unauthorized")


async def test_no_token_configured_means_open(api: Api) -> None:
    async with httpx.AsyncClient(base_url=api.url) as anon:
        assert (await anon.get("/api/tasks")).status_code == 200
        assert (await anon.get("/api/tasks", headers={"Authorization": "Bearer anything"})).status_code == 200


# ---------------------------------------------------------------------- OpenAPI and /docs
def _served_routes(app: Any) -> set[tuple[str, str]]:
    out = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[^:>]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        methods = {"GET"} if getattr(rule, "websocket", False) else set(rule.methods) - {"HEAD", "OPTIONS"}
        out |= {(m, path) for m in methods}
    return out


async def test_openapi_describes_exactly_the_served_routes(api: Api) -> None:
    from runq.app.http import Meter, StreamHub, create_app

    meter, hub = Meter(api.server), StreamHub(api.server)
    served = _served_routes(create_app(api.server, meter, hub))
    hub.detach()
    meter.detach()
    assert len(served) >= 20
    assert served == spec_routes()
    r = await api.client.get("/openapi.json")
    assert r.json() == build_spec(auth=False)  # no token: nothing in the document asks for one
    assert "security" in SPEC and "401" in SPEC["paths"]["/api/tasks"]["post"]["responses"]
    assert "401" not in r.json()["paths"]["/api/tasks"]["post"]["responses"]
    for path, ops in SPEC["paths"].items():
        for method, op in ops.items():
            assert op["responses"], (method, path)
            names = re.findall(r"{([a-z_]+)}", path)
            assert sorted(p["name"] for p in op.get("parameters", []) if p["in"] == "path") == sorted(names)


UPGRADE = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


async def test_every_route_refuses_an_unknown_query_parameter_as_documented(api: Api) -> None:
    spec = (await api.client.get("/openapi.json")).json()
    for path, ops in spec["paths"].items():
        url = path.replace("{task_id}", "1").replace("{name}", "q").replace("{worker_id}", "w")
        for method, op in ops.items():
            headers = UPGRADE if path == "/api/ws" else {}
            r = await api.client.request(method, url, params={"colour": "red"}, headers=headers)
            assert "unknown query parameter" in error_of(r, 400, "bad_request"), (method, path)
            assert "400" in op["responses"], (method, path)


async def test_docs_render_the_spec_without_network(api: Api) -> None:
    r = await api.client.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    for path in SPEC["paths"]:
        assert f"<code>{path}</code>" in page
    for name in SPEC["components"]["schemas"]:
        assert f'id="schema-{name}"' in page
    # nothing to fetch: no scripts, stylesheets, images or fonts from anywhere
    assert "<script" not in page and "<link" not in page and "<img" not in page and "@import" not in page
    assert not re.findall(r"(?:src|href)=[\"']?(?:https?:)?//", page)


async def test_a_database_that_cannot_commit_is_503_and_nothing_is_enqueued(api: Api) -> None:
    import sqlite3

    blocker = sqlite3.connect(api.server.config.db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # the writer's BEGIN IMMEDIATE waits its busy timeout, then fails
    try:
        with trio.fail_after(30):
            r = await api.client.post("/api/tasks", json={"type": "x"})
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    error_of(r, 503, "store_error")
    assert api.server.core.stats.enqueued == 0 and not api.server.core.tasks
    r = await api.client.post("/api/tasks", json={"type": "x"})
    assert r.status_code == 201
