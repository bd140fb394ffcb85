"""The HTTP routes of the dead-letter queue (docs/dead-letters.md, docs/http.md).

Rules of this file
------------------
* As in ``routes``: each handler decodes (query strings, JSON bodies), calls one operation of
  ``runq.app.ops.Operations`` (which authorises and validates the ranges) and answers JSON; errors are raised and
  turned into ``{"error": ...}`` bodies by the app's one error handler.
* A body's field of the wrong JSON type or an unknown field is ``bad_request`` here. ``openapi.DEAD_PATHS``
  describes these routes; a test compares the served routes with it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from quart import Response, request
from quart_trio import QuartTrio

from ..ops import DeadQuery, Identity, Operations
from .encoding import MAX_ID, dumps, parse_json, query_float, query_int, query_str, task_json
from .errors import ApiError

__all__ = ["DEAD_FILTER_FIELDS", "DEAD_QUERY_PARAMS", "add_dead_routes"]

#: the fields of a bulk action's body (all optional), and the JSON types each takes (bool is never a number)
DEAD_FILTER_FIELDS: dict[str, tuple[type, ...]] = {
    "queue": (str,), "type": (str,), "error": (str,), "since": (int, float), "until": (int, float), "limit": (int,)}
#: Query parameters each endpoint of this module accepts (merged into ``routes.QUERY_PARAMS``).
DEAD_QUERY_PARAMS: dict[str, frozenset[str]] = {
    "dead_list": frozenset({"queue", "type", "error", "since", "until", "limit", "cursor"}),
}
_TIME = 1e11


def _json(body: Any, status: int = 200) -> Response:
    return Response(dumps(body), status=status, content_type="application/json")


def _filter(data: bytes | str, where: str) -> DeadQuery:
    """A bulk action's body: a JSON object with only ``DEAD_FILTER_FIELDS`` (``{}``: every dead task)."""
    if not data.strip():
        raise ApiError("bad_request", f"{where}: the body must be a JSON object ({{}} for every dead task, "
                                      "at most 'limit' of them)")
    obj = parse_json(data)
    if not isinstance(obj, dict):
        raise ApiError("bad_request", f"{where}: the body must be a JSON object")
    unknown = set(obj) - set(DEAD_FILTER_FIELDS)
    if unknown:
        raise ApiError("bad_request", f"{where}: unknown field(s) {sorted(unknown)[:10]}; known: "
                                      f"{sorted(DEAD_FILTER_FIELDS)}")
    for name, v in obj.items():
        kinds = DEAD_FILTER_FIELDS[name]
        if isinstance(v, bool) or not isinstance(v, kinds):
            kind = "a string" if kinds == (str,) else "an integer" if kinds == (int,) else "a number"
            raise ApiError("bad_request", f"{where}: {name!r} must be {kind}")
    since, until = obj.get("since"), obj.get("until")
    return DeadQuery(obj.get("queue"), obj.get("type"), obj.get("error"), None if since is None else float(since),
                     None if until is None else float(until), obj.get("limit", 100))


def add_dead_routes(app: QuartTrio, ops: Operations, me: Callable[[], Identity]) -> None:
    """Add the dead-letter routes to ``app`` (``me()``: the request's identity)."""

    @app.get("/api/dead")
    async def dead_list() -> Response:
        args = request.args
        tasks, cursor = await ops.dead_list(me(), DeadQuery(
            query_str(args, "queue"), query_str(args, "type"), query_str(args, "error", 1000),
            query_float(args, "since", -_TIME, _TIME), query_float(args, "until", -_TIME, _TIME),
            query_int(args, "limit", 100, 1, 1000) or 100, query_int(args, "cursor", None, 1, MAX_ID)))
        return _json({"tasks": [task_json(t) for t in tasks], "cursor": cursor})

    @app.post("/api/dead/retry")
    async def dead_retry() -> Response:
        out = await ops.dead_retry(me(), _filter(await request.get_data(), "dead retry"))
        return _json({"message": f"{len(out['ids'])} dead task(s) retried", **out})

    @app.post("/api/dead/delete")
    async def dead_delete() -> Response:
        out = await ops.dead_delete(me(), _filter(await request.get_data(), "dead delete"))
        return _json({"message": f"{len(out['ids'])} dead task(s) deleted", **out})
