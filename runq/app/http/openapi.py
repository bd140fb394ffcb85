"""The OpenAPI document of the HTTP API, written as data, and the ``/docs`` page rendered from it.

``SPEC`` is served at ``/openapi.json``; a test checks that its paths and methods
are exactly the routes the app serves, and schemathesis checks that every answer
matches it. ``docs_html()`` renders it as one self-contained HTML page (no script,
no CDN, no network access needed).
"""

from __future__ import annotations

import copy
import functools
import html
import json
from typing import Any

from ...protocol.errors import ERROR_CODES
from ..ops import AUDIT_KINDS, VERSION
from .encoding import IDS_PATTERN, MAX_ID, NAMES_PATTERN, SCHEDULE_FIELDS, SPEC_FIELDS

__all__ = ["SPEC", "build_spec", "docs_html", "spec_routes"]

_NUM = {"type": "number"}
_NNUM = {"type": "number", "nullable": True}
_INT = {"type": "integer"}
_STR = {"type": "string"}
_NSTR = {"type": "string", "nullable": True}
_ANY: dict[str, Any] = {"description": "any JSON value", "nullable": True}
_STATES = ["scheduled", "ready", "running", "succeeded", "failed", "dead", "cancelled"]
#: the states ``GET /api/tasks?state=`` (or ``?status=``) accepts (``runq.app.ops.inputs.LISTABLE_STATES``)
_LISTABLE = [s for s in _STATES if s != "failed"]


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(props: dict[str, Any], required: list[str] | None = None, extra: bool = False) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(props) if required is None else required,
            "additionalProperties": extra}


_TASK_SPEC_PROPS: dict[str, Any] = {
    "type": {"type": "string", "minLength": 1, "maxLength": 200, "description": "handler name"},
    "payload": {**_ANY, "description": "the task's argument, any JSON value (msgpack-encoded for the worker)"},
    "data": {**_ANY, "description": "alias of `payload` (the seed's REST name); both given with different values: "
                                    "400"},
    "queue": {"type": "string", "minLength": 1, "maxLength": 200, "default": "default"},
    "priority": {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1, "default": 0,
                 "description": "higher runs first; FIFO within one priority"},
    "delay": {"type": "number", "minimum": 0, "exclusiveMaximum": True, "maximum": 10 * 365 * 86400,
              "description": "seconds before it may run (not with run_at)"},
    "run_at": {"type": "number", "minimum": -1e11, "maximum": 1e11, "exclusiveMinimum": True,
               "exclusiveMaximum": True, "description": "unix time before which it may not run (not with delay)"},
    "timeout": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 7 * 86400,
                "description": "seconds an attempt may run"},
    "retries": {"type": "integer", "minimum": 0, "maximum": 1000, "description": "retries after a failed attempt"},
    "key": {"type": "string", "minLength": 1, "maxLength": 1000,
            "description": "unique key: while a task with this key is not final, enqueue returns that task"},
    "requires": {"type": "object", "maxProperties": 32,
                 "additionalProperties": {"type": "string", "pattern": "^[A-Za-z0-9_.:/-]{1,64}$"},
                 "description": "labels a worker must have to be given it (names as the values: 1 to 64 of "
                                "A-Z a-z 0-9 _ . - : /); docs/routing.md"},
    "retry_policy": {
        "type": "object", "additionalProperties": False,
        "properties": {
            "delays": {"type": "array", "minItems": 1, "maxItems": 100,
                       "items": {"type": "number", "minimum": 0, "maximum": 10 * 365 * 86400,
                                 "exclusiveMaximum": True},
                       "description": "seconds before each retry, in order (the last one repeats)"},
            "base": {"type": "number", "minimum": 0, "maximum": 10 * 365 * 86400, "exclusiveMaximum": True,
                     "description": "seconds before the first retry, doubling per retry"},
            "max": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 10 * 365 * 86400,
                    "exclusiveMaximum": True, "description": "the cap of a backoff delay (not below base)"},
            "jitter": {"type": "number", "minimum": 0, "maximum": 1,
                       "description": "the delay times a uniform factor in [1 - jitter, 1 + jitter]"},
            "retry_on": {"type": "array", "maxItems": 64, "items": {"type": "string", "minLength": 1, "maxLength": 300},
                         "description": "exception type names that are retried (empty: any)"},
            "never_retry": {"type": "array", "maxItems": 64,
                            "items": {"type": "string", "minLength": 1, "maxLength": 300},
                            "description": "exception type names that go dead at once"},
        },
        "not": {"anyOf": [{"required": ["delays", "base"]}, {"required": ["delays", "max"]},
                          {"required": ["delays", "jitter"]}]},
        "description": "this task's retry policy, over its type's and the server's (docs/tasks.md); delays or "
                       "base/max/jitter, not both"},
    "coalesce_key": {"type": "string", "minLength": 1, "maxLength": 1000,
                     "description": "while a task enqueued with this key waits (ready or scheduled), this enqueue "
                                    "merges into it: its id is answered, created false (docs/tasks.md, Coalescing)"},
    "coalesce": {"type": "string", "enum": ["replace", "keep"], "default": "replace",
                 "description": "how it merges (only with coalesce_key): replace = the newest payload wins, keep = "
                                "the first stays"},
    "limit_key": {"type": "string", "minLength": 1, "maxLength": 200,
                  "description": "the key value of the per-key limits it is subject to, instead of the payload field "
                                 "the limit names (docs/limits.md)"},
}
assert tuple(_TASK_SPEC_PROPS) == SPEC_FIELDS

_TASK_PROPS: dict[str, Any] = {
    "id": _INT, "type": _STR, "queue": _STR, "state": {"type": "string", "enum": _STATES},
    "status": {"type": "string", "enum": _STATES, "description": "alias of `state` (the seed's REST name)"},
    "priority": _INT,
    "payload": {**_ANY, "description": "the task's argument, as enqueued"},
    "data": {**_ANY, "description": "alias of `payload` (the seed's REST name)"},
    "result": _ANY, "error": _NSTR, "progress": _ANY,
    "attempt": {"type": "integer", "minimum": 0, "description": "attempts started so far"},
    "attempts": {"type": "integer", "minimum": 0, "description": "alias of `attempt` (the seed's REST name)"},
    "max_retries": _INT, "timeout": _NUM, "key": _NSTR, "worker": {**_NSTR, "description": "worker holding it"},
    "requires": {**_NSTR, "description": "the labels it requires, as compact JSON sorted by name; null: any worker"},
    "retry_policy": {**_NSTR, "description": "its own retry policy, as compact JSON sorted by field; null: its "
                                            "type's and the server's"},
    "coalesce_key": {**_NSTR, "description": "its coalesce key (docs/tasks.md)"},
    "limit_key": {**_NSTR, "description": "its limit key, given at enqueue (docs/limits.md)"},
    "owner": {**_NSTR, "description": "who enqueued it (docs/security.md); null: enqueued without users"},
    "created_at": _NUM, "run_at": _NNUM, "started_at": _NNUM, "finished_at": _NNUM,
}

_WORKER = _obj({
    "id": _STR, "name": _NSTR, "host": _NSTR, "pid": {"type": "integer", "nullable": True},
    "queues": {"type": "array", "items": _STR},
    "types": {"type": "array", "items": _STR, "description": "task types it handles (announced when it joined)"},
    "labels": {"type": "object", "additionalProperties": _STR, "description": "the labels it offers for routing"},
    "concurrency": _INT, "in_flight": _INT,
    "running": {"type": "array", "items": _INT, "description": "ids of the tasks it runs"},
    "credit": _INT, "connected_at": {**_NUM, "description": "connected since (unix time)"},
    "last_heartbeat": {**_NUM, "description": "last message from it (unix time)"},
    "state": {"type": "string", "enum": ["active", "draining"]}, "completed": _INT, "failed": _INT,
})

_RATE_KEYS = ("enqueued", "succeeded", "failed", "dead")

_BOOL = {"type": "boolean"}
_SCHEDULE_SPEC_PROPS: dict[str, Any] = {
    "type": _TASK_SPEC_PROPS["type"],
    "data": {**_ANY, "description": "the tasks' argument, any JSON value (at most 8 KiB as msgpack)"},
    "queue": _TASK_SPEC_PROPS["queue"], "priority": _TASK_SPEC_PROPS["priority"],
    "timeout": _TASK_SPEC_PROPS["timeout"], "retries": _TASK_SPEC_PROPS["retries"],
    "cron": {"type": "string", "description": "a cron expression (5 fields, or 6 with seconds first), read on the "
                                              "wall clock of tz; exactly one of cron and every"},
    "tz": {"type": "string", "default": "UTC", "description": "an IANA time zone (Europe/Berlin)"},
    "every": {"type": "number", "minimum": 1, "maximum": 10 * 365 * 86400, "description": "seconds between fire times"},
    "missed": {"type": "string", "enum": ["skip", "once", "all"], "default": "skip",
               "description": "what fire times missed while the server was down get"},
    "max_missed": {"type": "integer", "minimum": 1, "maximum": 10_000, "default": 10,
                   "description": "with missed=all, at most this many missed fire times get a task"},
    "paused": {**_BOOL, "default": False},
}
assert tuple(_SCHEDULE_SPEC_PROPS) == SCHEDULE_FIELDS
_SCHEDULE = _obj({
    "name": _STR, "type": _STR, "data": _ANY, "queue": _NSTR, "priority": {"type": "integer", "nullable": True},
    "timeout": _NNUM, "retries": {"type": "integer", "nullable": True}, "cron": _NSTR, "tz": _STR, "every": _NNUM,
    "missed": _STR, "max_missed": _INT, "paused": _BOOL,
    "next_fire": {**_NNUM, "description": "the next fire time (unix time); null while paused"},
    "last_fire": {**_NNUM, "description": "the latest fire time that enqueued a task"},
    "created_at": _NUM,
})

SCHEMAS: dict[str, Any] = {
    "Error": _obj({"error": _obj({"code": {"type": "string", "enum": sorted(ERROR_CODES)}, "message": _STR})}),
    "TaskSpec": {**_obj(_TASK_SPEC_PROPS, ["type"]),
                 "not": {"anyOf": [{"required": ["delay", "run_at"]}, {"required": ["payload", "data"]},
                                   {"required": ["coalesce"], "not": {"required": ["coalesce_key"]}}]},
                 "description": "a task to enqueue; give delay or run_at, not both; payload or its alias data, "
                                "not both (the same value in both is accepted); coalesce only with coalesce_key"},
    "Task": _obj(_TASK_PROPS),
    "Enqueued": _obj({"task_id": _INT, "created": {"type": "boolean"}, **_TASK_PROPS}),
    "Batch": _obj({"tasks": {"type": "array", "items": _ref("TaskSpec"), "minItems": 1, "maxItems": 10_000}}),
    "BatchEnqueued": _obj({"task_ids": {"type": "array", "items": _INT},
                           "created": {"type": "array", "items": {"type": "boolean"}}}),
    "TaskPage": _obj({"tasks": {"type": "array", "items": _ref("Task")},
                      "cursor": {"type": "integer", "nullable": True,
                                 "description": "pass as ?cursor= for the next page; null on the last"}}),
    "TaskAction": _obj({"message": _STR, "task": _ref("Task")}),
    "Event": _obj({"task_id": _INT, "at": _NUM, "kind": _STR, "state": _STR, "worker": _NSTR, "attempt": _INT,
                   "detail": _NSTR}),
    "Timeline": _obj({"task_id": _INT, "events": {"type": "array", "items": _ref("Event")}}),
    "Queue": _obj({
        "name": _STR, "paused": {"type": "boolean"},
        "counts": _obj({"scheduled": _INT, "ready": _INT, "running": _INT}),
        "workers": _INT, "enqueued": _INT, "succeeded": _INT, "failed": _INT, "dead": _INT, "cancelled": _INT,
        "enqueue_rate": {**_NUM, "description": "tasks enqueued per second over the last minute"},
        "completion_rate": {**_NUM, "description": "tasks finished per second over the last minute"},
    }),
    "Queues": _obj({"queues": {"type": "array", "items": _ref("Queue")}}),
    "QueueAction": _obj({"message": _STR, "queue": _STR, "paused": {"type": "boolean"}}),
    "Worker": _WORKER,
    "Workers": _obj({"workers": {"type": "array", "items": _ref("Worker")}}),
    "WorkerAction": _obj({"message": _STR, "worker": _ref("Worker")}),
    "TaskTypes": _obj({"types": {"type": "array", "items": _obj({
        "type": _STR, "workers": {**_INT, "description": "connected workers that handle it"},
        "queues": {"type": "array", "items": _STR, "description": "queues those workers take tasks from"},
        "batch": {**_obj({"max_size": _INT, "max_wait": _NUM}), "nullable": True,
                  "description": "the type is batched (docs/batching.md); null: it is not"},
        "requires": {"type": "object", "additionalProperties": _STR, "nullable": True,
                     "description": "labels its definition requires of a worker (docs/routing.md); null: none"}})}}),
    "Stats": _obj({
        "version": _STR, "uptime": _NUM, "workers": _INT,
        "queues": {"type": "object", "additionalProperties": _obj(
            {"scheduled": _INT, "ready": _INT, "running": _INT, "paused": {"type": "boolean"}})},
        "processing_time": {"type": "object", "description": "per task type, over its last 1000 attempts",
                            "additionalProperties": _obj({"count": _INT, "p50": _NUM, "p90": _NUM, "p99": _NUM,
                                                          "mean": _NUM, "max": _NUM})},
        "rates": _obj({"window": _NUM, **{k: _NUM for k in _RATE_KEYS}}),
        "success_ratio": {**_NNUM, "description": "succeeded / (succeeded + dead) since start"},
        "totals": _obj({k: _INT for k in ("enqueued", "succeeded", "failed", "dead", "cancelled",
                                          "lease_expiries", "late_results", "coalesced")}),
        "tasks_live": _INT, "connections": _INT, "protocol_errors": _INT, "internal_errors": _INT, "store_errors": _INT,
        "commits": _INT,
        "commit_batches": _INT, "recovered": _INT,
    }),
    "Status": _obj({"status": _STR}),
    "ScheduleSpec": {**_obj(_SCHEDULE_SPEC_PROPS, ["type"]), "oneOf": [{"required": ["cron"]}, {"required": ["every"]}],
                     "description": "a periodic task: the task to enqueue and when (cron + tz, or every)"},
    "Schedule": _SCHEDULE,
    "Schedules": _obj({"schedules": {"type": "array", "items": _ref("Schedule")}}),
    "ScheduleAction": _obj({"message": _STR, "schedule": _ref("Schedule")}),
    "ScheduleRemoved": _obj({"message": _STR, "name": _STR}),
    "ScheduleRan": _obj({"message": _STR, "task_id": _INT}),
}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


_ERR_TEXT = {
    400: "bad input (invalid JSON, wrong type, unknown field, value out of range, unknown query parameter)",
    401: "missing, invalid, expired or revoked credential (one answer for every reason: docs/security.md)",
    403: "the caller's role may not do this (docs/security.md, the permission table)",
    429: "too many failed logins for this user name or address lately (Retry-After says when to try again)",
    404: "no such task, worker, schedule or route",
    409: "not legal in the task's current state",
    413: "body larger than the server's limit",
    503: "the database could not commit, the server is stopping, or (live streams) max_subscribers streams are"
         " open already (busy, with Retry-After)",
}


def _op(summary: str, ok: dict[int, tuple[str, dict[str, Any]]], errors: tuple[int, ...], *,
        description: str = "", params: list[dict[str, Any]] | None = None,
        body: dict[str, Any] | None = None, auth: bool = True, tag: str = "tasks") -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, (text, schema) in ok.items():
        resp: dict[str, Any] = {"description": text}
        if schema:
            resp["content"] = _json_content(schema) if "$ref" in schema or schema.get("type") else schema
        responses[str(status)] = resp
    for status in sorted(set(errors) | {400} | ({401, 403} if auth else set())):  # 400: every route refuses
        # an unknown or repeated query parameter
        responses[str(status)] = {"description": _ERR_TEXT[status], "content": _json_content(_ref("Error"))}
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses}
    if description:
        op["description"] = description
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {"required": True, "content": _json_content(body)}
    if not auth:
        op["security"] = []
    return op


def _path_id() -> dict[str, Any]:
    return {"name": "task_id", "in": "path", "required": True,
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID}}


def _query(name: str, schema: dict[str, Any], text: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": text}


_FILTERS = [
    _query("queue", {"type": "string", "pattern": NAMES_PATTERN}, "only these queues (comma-separated)"),
    _query("type", {"type": "string", "pattern": NAMES_PATTERN}, "only these task types (comma-separated)"),
    _query("id", {"type": "string", "pattern": IDS_PATTERN}, "only these task ids (comma-separated)"),
]
_TEXT = {"text/plain": {"schema": {"type": "string"}}}
_SCHEDULE_NAME = {"name": "name", "in": "path", "required": True,
                  "schema": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[^/]+$"},
                  "description": "the schedule's name (printable characters, no '/')"}
_QUEUE_NAME = {"name": "name", "in": "path", "required": True,
               "schema": {"type": "string", "minLength": 1, "maxLength": 200},
               "description": "the queue's name, percent-encoded ('/' as %2F)"}

SPEC: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "runq HTTP API", "version": VERSION,
        "description": (
            "The HTTP API of a runq server, served by `runq serve` (default port 7701) in the same process "
            "as the queue. JSON in and out; every error is `{\"error\": {\"code\", \"message\"}}` with a "
            "stable code. When the server has a token, send `Authorization: Bearer <token>` (all routes "
            "except /healthz, /readyz, /openapi.json and /docs)."),
    },
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                       "description": "the server's token (runq serve --token / RUNQ_TOKEN)"}},
    },
    "security": [{"bearer": []}],
    "paths": {
        "/api/tasks": {
            "post": _op("Enqueue one task", {201: ("enqueued", _ref("Enqueued")),
                                             200: ("a live task already holds the key: that task",
                                                   _ref("Enqueued"))},
                        (400, 413, 503), body=_ref("TaskSpec"),
                        description="Answers once the task is committed to the database."),
            "get": _op("List tasks, newest first", {200: ("a page of tasks", _ref("TaskPage"))}, (400,), params=[
                _query("state", {"type": "string", "enum": _LISTABLE}, "only tasks in this state (never 'failed': a "
                       "failed attempt leaves its task scheduled for a retry, or dead)"),
                _query("status", {"type": "string", "enum": _LISTABLE}, "alias of `state` (the seed's REST name); "
                       "both given with different values: 400"),
                _query("queue", {"type": "string", "minLength": 1, "maxLength": 200}, "only this queue"),
                _query("type", {"type": "string", "minLength": 1, "maxLength": 200}, "only this task type"),
                _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}, "page size"),
                _query("cursor", {"type": "integer", "minimum": 1, "maximum": MAX_ID},
                       "the cursor of the previous page"),
            ]),
        },
        "/api/tasks/batch": {
            "post": _op("Enqueue many tasks at once (one commit)", {201: ("enqueued", _ref("BatchEnqueued"))},
                        (400, 413, 503), body=_ref("Batch")),
        },
        "/api/tasks/{task_id}": {
            "get": _op("Read a task", {200: ("the task", _ref("Task"))}, (400, 404), params=[
                _path_id(),
                _query("wait", {"type": "number", "minimum": 0, "maximum": 300},
                       "long poll: answer once the task is final or after this many seconds"),
            ]),
            "delete": _op("Cancel a queued or running task", {200: ("cancelled", _ref("TaskAction"))},
                          (400, 404, 409), params=[_path_id()]),
        },
        "/api/tasks/{task_id}/retry": {
            "post": _op("Run a dead, cancelled or retry-waiting task again now",
                        {200: ("back to ready", _ref("TaskAction"))}, (400, 404, 409), params=[_path_id()]),
        },
        "/api/tasks/{task_id}/events": {
            "get": _op("The task's timeline, oldest first", {200: ("its events", _ref("Timeline"))}, (400, 404),
                       params=[_path_id()]),
        },
        "/api/queues": {
            "get": _op("Queues: counts by state, rates, paused", {200: ("every known queue", _ref("Queues"))}, (),
                       tag="queues"),
        },
        "/api/queues/{name}/pause": {
            "post": _op("Stop dispatching from a queue (enqueue still works)",
                        {200: ("paused", _ref("QueueAction"))}, (400, 503), tag="queues", params=[_QUEUE_NAME]),
        },
        "/api/queues/{name}/resume": {
            "post": _op("Dispatch from a queue again", {200: ("resumed", _ref("QueueAction"))}, (400, 503),
                        tag="queues", params=[_QUEUE_NAME]),
        },
        "/api/schedules": {
            "get": _op("Schedules (periodic tasks) with their next fire times", {200: ("by name", _ref("Schedules"))},
                       (), tag="schedules"),
        },
        "/api/schedules/{name}": {
            "put": _op("Add a schedule, or replace the one of this name", {200: ("as kept", _ref("Schedule"))},
                       (400, 413, 503), tag="schedules", params=[_SCHEDULE_NAME], body=_ref("ScheduleSpec"),
                       description="Answers once committed. Replacing with the same timing (cron and tz, or "
                                   "every) keeps its next fire time and paused flag; a new timing starts from now."),
            "delete": _op("Remove a schedule (its tasks stay)", {200: ("removed", _ref("ScheduleRemoved"))},
                          (400, 404, 503), tag="schedules", params=[_SCHEDULE_NAME]),
        },
        "/api/schedules/{name}/pause": {
            "post": _op("Stop a schedule firing", {200: ("paused", _ref("ScheduleAction"))}, (400, 404, 503),
                        tag="schedules", params=[_SCHEDULE_NAME]),
        },
        "/api/schedules/{name}/resume": {
            "post": _op("Fire again, from the first fire time after now", {200: ("resumed", _ref("ScheduleAction"))},
                        (400, 404, 503), tag="schedules", params=[_SCHEDULE_NAME]),
        },
        "/api/schedules/{name}/run": {
            "post": _op("Enqueue the schedule's task now, once (its fire times do not move)",
                        {201: ("enqueued", _ref("ScheduleRan"))}, (400, 404, 503), tag="schedules",
                        params=[_SCHEDULE_NAME]),
        },
        "/api/workers": {
            "get": _op("Connected workers", {200: ("every connected worker", _ref("Workers"))}, (), tag="workers"),
        },
        "/api/types": {
            "get": _op("Task types the connected workers handle", {200: ("by type name", _ref("TaskTypes"))}, (),
                       tag="workers"),
        },
        "/api/workers/{worker_id}": {
            "delete": _op("Ask a worker to drain: finish running tasks, hand back the rest, leave",
                          {202: ("draining", _ref("WorkerAction"))}, (404,), tag="workers",
                          params=[{"name": "worker_id", "in": "path", "required": True, "schema": _STR}]),
        },
        "/api/stats": {
            "get": _op("Queue lengths, processing-time percentiles per type, rates, workers, uptime",
                       {200: ("statistics", _ref("Stats"))}, (), tag="stats"),
        },
        "/api/events": {
            "get": _op("Live events (server-sent events)", {200: ("an endless text/event-stream", {
                "text/event-stream": {"schema": {"type": "string"}}})}, (400, 503), tag="live", params=_FILTERS,
                description=(
                    "Each event is one `data:` line of JSON. First `{\"op\": \"subscribed\"}`, then task updates "
                    "(`{\"op\": \"event\", \"id\", \"kind\", \"status\", \"queue\", \"type\", \"result\", "
                    "\"error\", ...}`), worker changes (`{\"op\": \"worker\", \"kind\": \"joined\"|\"left\"|"
                    "\"draining\"}`) and queue changes (`{\"op\": \"queue\", \"kind\": \"paused\"|\"resumed\"}`). "
                    "A consumer that falls behind skips events and is told with `{\"op\": \"event\", "
                    "\"kind\": \"dropped\", \"count\": N}`.")),
        },
        "/api/ws": {
            "get": _op("Live events (WebSocket)", {101: ("switching to the WebSocket protocol", {})}, (400, 503),
                       tag="live", params=_FILTERS,
                       description="The same messages as /api/events, one JSON text message each. "
                                   "Send `ping` to get `{\"op\": \"pong\"}`."),
        },
        "/metrics": {
            "get": _op("Prometheus metrics", {200: ("text exposition format", _TEXT)}, (), tag="operations"),
        },
        "/healthz": {
            "get": _op("The process is alive", {200: ("alive", _ref("Status"))}, (), auth=False, tag="operations"),
        },
        "/readyz": {
            "get": _op("The core is running and the database accepts writes", {200: ("ready", _ref("Status"))},
                       (503,), auth=False, tag="operations"),
        },
        "/openapi.json": {
            "get": _op("This document", {200: ("OpenAPI 3.0", {"application/json": {"schema": {"type": "object"}}})},
                       (), auth=False, tag="operations"),
        },
        "/docs": {
            "get": _op("This document for a person", {200: ("HTML", {"text/html": {"schema": {"type": "string"}}})},
                       (), auth=False, tag="operations"),
        },
    },
}


def build_spec(auth: bool) -> dict[str, Any]:
    """The document as served: with ``auth`` False (no token configured) nothing asks for a token."""
    if auth:
        return SPEC
    spec = copy.deepcopy(SPEC)
    del spec["security"]
    del spec["components"]["securitySchemes"]
    for ops in spec["paths"].values():
        for op in ops.values():
            op.pop("security", None)
            op["responses"].pop("401", None)
            op["responses"].pop("403", None)
    return spec


def spec_routes() -> set[tuple[str, str]]:
    """``(METHOD, path)`` of every operation in ``SPEC`` (paths in OpenAPI's ``{param}`` form)."""
    return {(m.upper(), p) for p, ops in SPEC["paths"].items() for m in ops}


# ---------------------------------------------------------------------- /docs
_CSS = """
body{font:15px/1.45 system-ui,sans-serif;max-width:70rem;margin:2rem auto;padding:0 1rem;color:#222}
h1{margin-bottom:.2rem}h2{margin-top:2.2rem;border-bottom:1px solid #ddd}
.op{border:1px solid #ddd;border-radius:6px;margin:1rem 0;padding:.6rem 1rem}
.m{display:inline-block;min-width:4.5rem;font-weight:bold;font-family:monospace}
.get{color:#0a6}.post{color:#06c}.delete{color:#c22}
code,pre{font-family:ui-monospace,monospace;font-size:13px}pre{background:#f6f6f6;padding:.5rem;overflow:auto}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:.2rem .5rem;text-align:left;vertical-align:top}
nav a{margin-right:1rem}
"""


def _schema_text(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return f'<a href="#schema-{name}">{html.escape(name)}</a>'
    return f"<code>{html.escape(json.dumps(schema))}</code>"


@functools.cache
def docs_html() -> str:
    """The API reference as one HTML page with no external resources."""
    e = html.escape
    out = [(f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{e(SPEC['info']['title'])}</title>"
           f"<style>{_CSS}</style></head><body>"),
           f"<h1>{e(SPEC['info']['title'])} <small>{e(SPEC['info']['version'])}</small></h1>",
           f"<p>{e(SPEC['info']['description'])}</p>",
           ('<nav><a href="/openapi.json">openapi.json</a><a href="#schemas">schemas</a>'
           '<a href="#errors">error codes</a></nav>')]
    by_tag: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path, ops in SPEC["paths"].items():
        for method, op in ops.items():
            by_tag.setdefault(op["tags"][0], []).append((path, method, op))
    for tag, ops in by_tag.items():
        out.append(f"<h2>{e(tag)}</h2>")
        for path, method, op in ops:
            anchor = f"{method}-{path}".replace("/", "-").replace("{", "").replace("}", "")
            out.append(f'<div class=op id="{e(anchor)}"><span class="m {method}">{method.upper()}</span>'
                       f"<code>{e(path)}</code> — {e(op['summary'])}")
            if op.get("security") == []:
                out.append(" <em>(no token needed)</em>")
            if op.get("description"):
                out.append(f"<p>{e(op['description'])}</p>")
            params = op.get("parameters", [])
            if params:
                out.append("<table><tr><th>parameter</th><th>in</th><th>schema</th><th></th></tr>")
                for p in params:
                    out.append(f"<tr><td><code>{e(p['name'])}</code></td><td>{e(p['in'])}</td>"
                               f"<td>{_schema_text(p['schema'])}</td><td>{e(p.get('description', ''))}</td></tr>")
                out.append("</table>")
            if "requestBody" in op:
                schema = op["requestBody"]["content"]["application/json"]["schema"]
                out.append(f"<p>body (JSON): {_schema_text(schema)}</p>")
            out.append("<table><tr><th>status</th><th>meaning</th><th>body</th></tr>")
            for status, resp in op["responses"].items():
                bodies = ", ".join(f"{e(ct)} {_schema_text(c['schema'])}" for ct, c in resp.get("content", {}).items())
                out.append(f"<tr><td>{e(status)}</td><td>{e(resp['description'])}</td><td>{bodies}</td></tr>")
            out.append("</table></div>")
    out.append('<h2 id=errors>error codes</h2><table><tr><th>code</th><th>meaning</th></tr>')
    for code, text in ERROR_CODES.items():
        out.append(f"<tr><td><code>{e(code)}</code></td><td>{e(text)}</td></tr>")
    out.append('</table><h2 id=schemas>schemas</h2>')
    for name, schema in SCHEMAS.items():
        out.append(f'<h3 id="schema-{e(name)}">{e(name)}</h3><pre>{e(json.dumps(schema, indent=2))}</pre>')
    out.append("</body></html>")
    return "".join(out)


# ---------------------------------------------------------------------- limits and breakers (http/limits.py)
_SECONDS = {"type": "number", "minimum": 0.001, "maximum": 10 * 365 * 86400,
            "exclusiveMaximum": True}
_NAME = {"type": "string", "minLength": 1, "maxLength": 200}
_NINT = {"type": "integer", "nullable": True}
_BIG = 1_000_000_000
SCHEMAS.update({
    "LimitSettings": {
        "type": "object", "additionalProperties": False,
        "properties": {
            "rate": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": _BIG,
                     "description": "tasks per period"},
            "period": {**_SECONDS, "default": 1, "description": "seconds"},
            "burst": {"type": "integer", "minimum": 1, "maximum": _BIG, "default": 1,
                      "description": "tasks that may go at once after a quiet stretch"},
            "concurrency": {"type": "integer", "minimum": 1, "maximum": _BIG,
                            "description": "the most of its tasks running at once"},
        },
        "anyOf": [{"required": ["rate"]}, {"required": ["concurrency"]}],
        "description": "a rate limit (GCRA), a concurrency cap, or both (docs/limits.md)"},
    "Limit": _obj({
        "scope": {"type": "string", "enum": ["queue", "type"]}, "name": _STR,
        "key": {**_STR, "description": "the payload field of a per-key limit; empty for the whole scope"},
        "rate": _NNUM, "period": _NUM, "burst": _INT, "concurrency": _NINT,
        "status": {"type": "array", "items": _obj({
            "value": {**_NSTR, "description": "the key's value (null: the whole scope)"}, "running": _INT,
            "waiting": {**_INT, "description": "ready tasks held aside for it"},
            "blocked": {"type": "boolean", "description": "its queue waits for it"},
            "next_at": {**_NNUM, "description": "with a rate: when its next task may go (unix time)"},
            "admitted": _INT, "deferred": _INT})},
    }),
    "Limits": _obj({"limits": {"type": "array", "items": _ref("Limit")}}),
    "LimitAction": _obj({"message": _STR, "limit": _ref("Limit")}),
    "Removed": _obj({"message": _STR, "removed": {"type": "boolean"}}),
    "BreakerSettings": _obj({
        "threshold": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 1, "default": 0.5,
                      "description": "the failure rate over the window that opens it"},
        "window": {**_SECONDS, "default": 60}, "min_calls": {"type": "integer", "minimum": 1, "maximum": 1_000_000,
                                                              "default": 10},
        "cooldown": {**_SECONDS, "default": 30}, "probes": {"type": "integer", "minimum": 1, "maximum": 1_000_000,
                                                             "default": 1},
    }, required=[]),
    "Breaker": _obj({
        "type": _STR, "state": {"type": "string", "enum": ["closed", "open", "half_open"]}, "until": _NNUM,
        "manual": {"type": "boolean"}, "threshold": _NNUM, "window": _NNUM, "min_calls": _NINT, "cooldown": _NNUM,
        "probes": _NINT, "window_calls": _INT, "window_failures": _INT, "calls": _INT, "failures": _INT,
        "waiting": _INT, "changes": {"type": "object", "additionalProperties": _INT},
    }),
    "Breakers": _obj({"breakers": {"type": "array", "items": _ref("Breaker")}}),
    "BreakerAction": _obj({"message": _STR, "breaker": _ref("Breaker")}),
    "Why": _obj({"task_id": _INT, "why": {**_obj({
        "reason": {"type": "string", "enum": ["rate_limit", "concurrency_cap", "breaker_open", "paused", "no_worker",
                                              "no_worker_with_labels", "scheduled", "batch"]},
        "scope": {**_obj({"scope": _STR, "name": _STR, "key": _STR}), "nullable": True},
        "value": _NSTR, "until": _NNUM, "detail": _STR}), "nullable": True,
        "description": "null: nothing holds it (it waits for its turn and a worker's credit, or it is not waiting)"}}),
    "ServerEvents": _obj({"events": {"type": "array", "items": _obj({
        "id": _INT, "at": _NUM, "scope": _STR,
        "kind": {"type": "string", "enum": ["limit_set", "limit_removed", "breaker_set", "breaker_removed",
                                           "breaker_open", "breaker_half_open", "breaker_closed",
                                           # the audit log (docs/security.md)
                                           *AUDIT_KINDS]},
        "detail": _STR, "actor": _NSTR})}}),
})
_SCOPE_PARAMS = [
    {"name": "scope", "in": "path", "required": True, "schema": {"type": "string", "enum": ["queue", "type"]}},
    {**_QUEUE_NAME, "description": "the queue's or the task type's name, percent-encoded"},
    _query("key", {"type": "string", "minLength": 1, "maxLength": 200},
           "a payload field: one limit per value of it"),
]
_TYPE_PARAM = {"name": "name", "in": "path", "required": True, "schema": _NAME,
               "description": "the task type, percent-encoded"}
_REASON = _query("reason", {"type": "string", "minLength": 1, "maxLength": 200}, "why, for the server events")
#: The paths of http/limits.py.
LIMIT_PATHS: dict[str, Any] = {
    "/api/limits": {
        "get": _op("Rate limits and concurrency caps, with their live status", {200: ("by scope", _ref("Limits"))},
                   (), tag="limits"),
    },
    "/api/limits/{scope}/{name}": {
        "put": _op("Set (or replace) a queue's or task type's limit", {200: ("set, and committed",
                                                                             _ref("LimitAction"))},
                   (400, 503), tag="limits", params=_SCOPE_PARAMS, body=_ref("LimitSettings"),
                   description="Applies at once, to the tasks already ready too (docs/limits.md)."),
        "delete": _op("Remove a limit", {200: ("removed (or was not set), and committed", _ref("Removed"))},
                      (400, 503), tag="limits", params=_SCOPE_PARAMS),
    },
    "/api/breakers": {
        "get": _op("Circuit breakers per task type", {200: ("by type", _ref("Breakers"))}, (), tag="limits"),
    },
    "/api/breakers/{name}": {
        "put": _op("Set (or replace) a task type's circuit breaker", {200: ("set", _ref("BreakerAction"))},
                   (400, 503), tag="limits", params=[_TYPE_PARAM], body=_ref("BreakerSettings")),
        "delete": _op("Remove a task type's circuit breaker", {200: ("removed (or was not set)", _ref("Removed"))},
                      (400, 503), tag="limits", params=[_TYPE_PARAM]),
    },
    "/api/breakers/{name}/open": {
        "post": _op("Open a task type's breaker by hand (until closed by hand)",
                    {200: ("open", _ref("BreakerAction"))}, (400, 503), tag="limits", params=[_TYPE_PARAM, _REASON]),
    },
    "/api/breakers/{name}/close": {
        "post": _op("Close a task type's breaker by hand", {200: ("closed", _ref("BreakerAction"))},
                    (400, 404, 503), tag="limits", params=[_TYPE_PARAM, _REASON]),
    },
    "/api/tasks/{task_id}/why": {
        "get": _op("Why a ready task does not run yet", {200: ("the reason, or null", _ref("Why"))}, (400, 404),
                   params=[_path_id()]),
    },
    "/api/server-events": {
        "get": _op("Events of no task (limits and breakers changed), oldest first",
                   {200: ("the events", _ref("ServerEvents"))}, (400,), tag="limits", params=[
                       _query("since", {"type": "integer", "minimum": 0, "maximum": MAX_ID},
                              "only events after this id"),
                       _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                              "the most events")]),
    },
}
SPEC["paths"].update(LIMIT_PATHS)

_TIME_Q = {"type": "number", "minimum": -1e11, "maximum": 1e11}
_DEAD_FILTER_PROPS: dict[str, Any] = {
    "queue": {"type": "string", "minLength": 1, "maxLength": 200, "description": "only this queue"},
    "type": {"type": "string", "minLength": 1, "maxLength": 200, "description": "only this task type"},
    "error": {"type": "string", "minLength": 1, "maxLength": 1000,
              "description": "only tasks whose error contains this text (ASCII letters without case)"},
    "since": {**_TIME_Q, "exclusiveMinimum": True, "exclusiveMaximum": True,
              "description": "only tasks dead at or after this unix time"},
    "until": {**_TIME_Q, "exclusiveMinimum": True, "exclusiveMaximum": True,
              "description": "only tasks dead before this unix time"},
    "limit": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100,
              "description": "at most this many tasks (the oldest matching ones)"},
}
SCHEMAS["DeadFilter"] = {**_obj(_DEAD_FILTER_PROPS, []),
                         "description": "which dead tasks (every field optional; {} for any, at most limit)"}
SCHEMAS["DeadAction"] = _obj({
    "message": _STR, "ids": {"type": "array", "items": _INT, "description": "the tasks retried or deleted"},
    "skipped": {"type": "array", "items": _INT,
                "description": "matching tasks left as they were (retried meanwhile, or a unique key held)"},
    "more": {"type": "boolean", "description": "more dead tasks matched than limit: call again for the next"}})
#: The paths of http/dead.py.
DEAD_PATHS: dict[str, Any] = {
    "/api/dead": {
        "get": _op("Dead tasks (the dead-letter queue), newest first", {200: ("a page", _ref("TaskPage"))}, (400,),
                   tag="dead letters", params=[
                       _query(name, schema, schema["description"]) for name, schema in _DEAD_FILTER_PROPS.items()
                       if name != "limit"] + [
                       _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                              "page size"),
                       _query("cursor", {"type": "integer", "minimum": 1, "maximum": MAX_ID},
                              "the cursor of the previous page")]),
    },
    "/api/dead/retry": {
        "post": _op("Retry dead tasks in bulk (at most limit, the oldest first)",
                    {200: ("retried, and committed", _ref("DeadAction"))}, (400, 503), tag="dead letters",
                    body=_ref("DeadFilter"),
                    description="Each task goes back to ready with a fresh set of retries and a `retried` event; "
                                "one server event names the caller. One commit."),
    },
    "/api/dead/delete": {
        "post": _op("Delete dead tasks in bulk (at most limit, the oldest first)",
                    {200: ("deleted, and committed", _ref("DeadAction"))}, (400, 503), tag="dead letters",
                    body=_ref("DeadFilter"),
                    description="Each task takes the `deleted` step to `cancelled` (its timeline is kept; "
                                "pruned with the other finished tasks); one server event names the caller."),
    },
}
SPEC["paths"].update(DEAD_PATHS)
_TOKENS = _obj({
    "access_token": {**_STR, "description": "a JWT: send it as `Authorization: Bearer <access_token>`"},
    "token_type": {"type": "string", "enum": ["bearer"]},
    "expires_in": {**_NUM, "description": "seconds the access token is valid"},
    "refresh_token": {**_STR, "description": "trade it for new tokens at /api/auth/refresh (once)"},
    "refresh_expires_in": _NUM, "user": _STR, "role": {"type": "string", "enum": ["admin", "user", "viewer",
                                                                                   "worker"]}})
SCHEMAS.update({
    "Login": _obj({"username": {"type": "string", "maxLength": 4096},
                   "password": {"type": "string", "maxLength": 4096}}),
    "RefreshToken": _obj({"refresh_token": {"type": "string", "maxLength": 4096}}),
    "Tokens": _TOKENS,
    "Me": _obj({"name": _STR, "role": {"type": "string", "enum": ["admin", "user", "viewer", "worker"]},
                "owner": _NSTR, "sees_all": {"type": "boolean"},
                "queues": {"type": "array", "items": _STR, "nullable": True},
                "ops": {"type": "array", "items": _STR}, "expires_at": _NNUM}),
    "Message": _obj({"message": _STR}),
})
#: The logins' paths (docs/security.md).
AUTH_PATHS: dict[str, Any] = {
    "/api/auth/login": {
        "post": _op("Log in with a user name and password: an access token and a refresh token",
                    {200: ("logged in", _ref("Tokens"))}, (400, 401, 429), auth=False, tag="auth", body=_ref("Login"),
                    description="An unknown user, a disabled one and a wrong password get the same 401. Failed "
                                "logins are limited per user name and per address (429 with Retry-After)."),
    },
    "/api/auth/refresh": {
        "post": _op("Trade a refresh token (once) for new tokens", {200: ("new tokens", _ref("Tokens"))},
                    (400, 401), auth=False, tag="auth", body=_ref("RefreshToken")),
    },
    "/api/auth/logout": {
        "post": _op("Revoke a refresh token", {200: ("revoked (or was not valid)", _ref("Message"))}, (400,),
                    auth=False, tag="auth", body=_ref("RefreshToken")),
    },
    "/api/auth/me": {
        "get": _op("Who the caller is and what it may do", {200: ("the caller", _ref("Me"))}, (), tag="auth"),
    },
}
SPEC["paths"].update(AUTH_PATHS)
