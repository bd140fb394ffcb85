"""Schedules over the HTTP API (issue 11): list with next fire times, PUT, DELETE, pause, resume, run, against
the real Hypercorn app; the same validation as the TCP protocol; the documents agree with the routes."""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import trio
from http_helpers import Api
from test_tasks import error_of

from runq.app.http import SPEC, spec_routes

pytestmark = [pytest.mark.http, pytest.mark.trio]


def _stored(api: Api) -> dict[str, tuple[Any, ...]]:
    conn = sqlite3.connect(api.server.config.db)
    try:
        return {r[0]: r[1:] for r in conn.execute("SELECT name, paused, next_fire FROM schedules")}
    finally:
        conn.close()


async def test_put_list_pause_resume_run_delete(api: Api) -> None:
    with trio.fail_after(20):
        c = api.client
        r = await c.put("/api/schedules/morning", json={"type": "report", "data": {"to": "team"},
                                                       "cron": "0 9 * * MON-FRI", "tz": "Europe/Berlin",
                                                       "missed": "once", "queue": "reports"})
        assert r.status_code == 200, r.text
        s = r.json()
        at = datetime.fromtimestamp(s["next_fire"], ZoneInfo("Europe/Berlin"))
        assert (at.hour, at.minute, at.weekday() < 5) == (9, 0, True)
        assert {k: s[k] for k in ("name", "type", "data", "queue", "cron", "tz", "every", "missed", "paused",
                                  "last_fire")} == {
            "name": "morning", "type": "report", "data": {"to": "team"}, "queue": "reports",
            "cron": "0 9 * * MON-FRI", "tz": "Europe/Berlin", "every": None, "missed": "once", "paused": False,
            "last_fire": None}
        assert _stored(api) == {"morning": (0, s["next_fire"])}  # committed before the answer

        r = await c.put("/api/schedules/every%20minute", json={"type": "tick", "every": 60})
        assert r.status_code == 200 and r.json()["every"] == 60.0
        listed = (await c.get("/api/schedules")).json()["schedules"]
        assert [x["name"] for x in listed] == ["every minute", "morning"] and listed[1]["next_fire"] == s["next_fire"]

        r = await c.post("/api/schedules/morning/pause")
        assert r.status_code == 200 and r.json()["schedule"]["paused"] is True
        assert r.json()["schedule"]["next_fire"] is None and _stored(api)["morning"] == (1, None)
        r = await c.post("/api/schedules/morning/resume")
        assert r.status_code == 200 and r.json()["schedule"]["next_fire"] == s["next_fire"]

        r = await c.post("/api/schedules/morning/run")
        assert r.status_code == 201
        task = (await c.get(f"/api/tasks/{r.json()['task_id']}")).json()
        assert (task["type"], task["data"], task["queue"]) == ("report", {"to": "team"}, "reports")

        r = await c.delete("/api/schedules/morning")
        assert r.status_code == 200 and r.json()["name"] == "morning"
        assert set(_stored(api)) == {"every minute"}
        for method, path in (("DELETE", "/api/schedules/morning"), ("POST", "/api/schedules/morning/pause"),
                             ("POST", "/api/schedules/morning/resume"), ("POST", "/api/schedules/morning/run")):
            assert "no schedule 'morning'" in error_of(await c.request(method, path), 404, "not_found")


@pytest.mark.parametrize(("body", "message"), [
    ({"type": "t", "cron": "0 9 * *"}, "bad cron expression '0 9 * *'"),
    ({"type": "t", "cron": "0 9 * * *", "tz": "Nowhere/Town"}, "unknown time zone 'Nowhere/Town'"),
    ({"type": "t", "every": 0.1}, "'every' must be from 1 to"),
    ({"type": "t"}, "give exactly one of 'cron' and 'every'"),
    ({"type": "t", "every": 5, "missed": "maybe"}, "'missed' must be one of skip, once, all"),
    ({"type": "t", "every": 5, "max_missed": 0}, "'max_missed' must be an int from 1 to 10000"),
    ({"type": "t", "every": 5, "data": "x" * 9000}, "'payload' must be at most 8192 bytes"),
    ({"type": "t", "every": 5, "when": "now"}, "unknown field(s) ['when']"),
    ({"type": "t", "every": "5"}, "'every' must be int or float"),
    ({"type": "t", "every": 5, "queue": None}, "['queue'] must not be null"),
    ([1, 2], "the body must be a JSON object"),
])
async def test_a_bad_schedule_is_a_400_naming_the_field(api: Api, body: Any, message: str) -> None:
    with trio.fail_after(20):
        r = await api.client.put("/api/schedules/x", json=body)
        assert message in error_of(r, 400, "bad_request")
        assert (await api.client.get("/api/schedules")).json() == {"schedules": []}


async def test_the_schedule_routes_are_in_the_openapi_document(api: Api) -> None:
    routes = {(m, p) for m, p in spec_routes() if p.startswith("/api/schedules")}
    assert routes == {("GET", "/api/schedules"), ("PUT", "/api/schedules/{name}"),
                      ("DELETE", "/api/schedules/{name}"), ("POST", "/api/schedules/{name}/pause"),
                      ("POST", "/api/schedules/{name}/resume"), ("POST", "/api/schedules/{name}/run")}
    served = (await api.client.get("/openapi.json")).json()
    assert {(m.upper(), p) for p, ops in served["paths"].items() for m in ops if p.startswith("/api/schedules")} \
        == routes
    assert SPEC["components"]["schemas"]["Schedule"]["required"] == [
        "name", "type", "data", "queue", "priority", "timeout", "retries", "cron", "tz", "every", "missed",
        "max_missed", "paused", "next_fire", "last_fire", "created_at"]
