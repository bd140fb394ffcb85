"""The HTTP routes of rate limits, concurrency caps and circuit breakers (docs/limits.md, docs/http.md).

Rules of this file
------------------
* As in ``routes``: each handler decodes (JSON bodies, paths, query strings), calls one operation of
  ``runq.app.ops.Operations`` (which authorises and validates) and answers JSON; errors are raised and turned
  into ``{"error": ...}`` bodies by the app's one error handler.
* A body's field of the wrong JSON type or an unknown field is ``bad_request`` here (the operations check
  ranges). ``openapi.LIMIT_PATHS`` describes these routes; a test compares the served routes with it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.routing import BaseConverter

from ..ops import BreakerSettings, EventsQuery, Identity, LimitScope, LimitSettings, Operations
from .encoding import MAX_ID, check_id, dumps, parse_json, query_int, query_str
from .errors import ApiError

__all__ = ["LIMIT_QUERY_PARAMS", "add_limit_routes"]

#: Query parameters each endpoint of this module accepts (merged into ``routes.QUERY_PARAMS``).
LIMIT_QUERY_PARAMS: dict[str, frozenset[str]] = {
    "set_limit": frozenset({"key"}),
    "remove_limit": frozenset({"key"}),
    "open_breaker": frozenset({"reason"}),
    "close_breaker": frozenset({"reason"}),
    "server_events": frozenset({"since", "limit"}),
}
_NUMBER = (int, float)


def _json(body: Any, status: int = 200) -> Response:
    return Response(dumps(body), status=status, content_type="application/json")


def _body(data: bytes | str, fields: dict[str, tuple[type, ...]], where: str) -> dict[str, Any]:
    """A JSON object body with only ``fields`` (name -> accepted types; bool is never a number)."""
    if not data.strip():
        raise ApiError("bad_request", f"{where}: the body must be a JSON object ({{}} for the defaults)")
    obj = parse_json(data)
    if not isinstance(obj, dict):
        raise ApiError("bad_request", f"{where}: the body must be a JSON object")
    unknown = set(obj) - set(fields)
    if unknown:
        raise ApiError("bad_request", f"{where}: unknown field(s) {sorted(unknown)[:10]}; known: {sorted(fields)}")
    for name, v in obj.items():
        if isinstance(v, bool) or not isinstance(v, fields[name]):
            kind = "an integer" if fields[name] == (int,) else "a number"
            raise ApiError("bad_request", f"{where}: {name!r} must be {kind}")
    return obj


class BreakerTypeConverter(BaseConverter):
    """A task type in a breaker's path: any characters, '/' included (percent-encoded), but not ending in
    ``/open`` or ``/close``, so that ``PUT /api/breakers/x/open`` is a wrong method (405) of the open route, not
    the breaker of a type named ``x/open``."""

    regex = r"[\s\S]+?(?<!/open)(?<!/close)"
    part_isolating = False


def _key() -> str:
    return query_str(request.args, "key") or ""


def add_limit_routes(app: QuartTrio, ops: Operations, me: Callable[[], Identity]) -> None:
    """Add the limits and breakers routes to ``app`` (``me()``: the request's identity)."""
    app.url_map.converters["breaker_type"] = BreakerTypeConverter

    @app.get("/api/limits")
    async def limits() -> Response:
        return _json({"limits": ops.limits(me())})

    @app.put("/api/limits/<scope>/<queue:name>")
    async def set_limit(scope: str, name: str) -> Response:
        b = _body(await request.get_data(), {"rate": _NUMBER, "period": _NUMBER, "burst": (int,),
                                             "concurrency": (int,)}, "limit")
        rate = b.get("rate")
        lim = await ops.set_limit(me(), LimitSettings(
            LimitScope(scope, name, _key()), None if rate is None else float(rate), float(b.get("period", 1.0)),
            b.get("burst", 1), b.get("concurrency")))
        return _json({"message": f"limit on {scope} {name!r} set", "limit": lim})

    @app.delete("/api/limits/<scope>/<queue:name>")
    async def remove_limit(scope: str, name: str) -> Response:
        removed = await ops.remove_limit(me(), LimitScope(scope, name, _key()))
        return _json({"message": f"limit on {scope} {name!r} " + ("removed" if removed else "was not set"),
                      "removed": removed})

    @app.get("/api/breakers")
    async def breakers() -> Response:
        return _json({"breakers": ops.breakers(me())})

    @app.put("/api/breakers/<breaker_type:name>")
    async def set_breaker(name: str) -> Response:
        b = _body(await request.get_data(), {"threshold": _NUMBER, "window": _NUMBER, "min_calls": (int,),
                                             "cooldown": _NUMBER, "probes": (int,)}, "breaker")
        d = BreakerSettings(name)
        br = await ops.set_breaker(me(), BreakerSettings(
            name, float(b.get("threshold", d.threshold)), float(b.get("window", d.window)),
            b.get("min_calls", d.min_calls), float(b.get("cooldown", d.cooldown)), b.get("probes", d.probes)))
        return _json({"message": f"breaker of {name!r} set", "breaker": br})

    @app.delete("/api/breakers/<breaker_type:name>")
    async def remove_breaker(name: str) -> Response:
        removed = await ops.remove_breaker(me(), name)
        return _json({"message": f"breaker of {name!r} " + ("removed" if removed else "was not set"),
                      "removed": removed})

    @app.post("/api/breakers/<queue:name>/open")
    async def open_breaker(name: str) -> Response:
        br = await ops.open_breaker(me(), name, query_str(request.args, "reason") or "")
        return _json({"message": f"breaker of {name!r} opened", "breaker": br})

    @app.post("/api/breakers/<queue:name>/close")
    async def close_breaker(name: str) -> Response:
        br = await ops.close_breaker(me(), name, query_str(request.args, "reason") or "")
        return _json({"message": f"breaker of {name!r} closed", "breaker": br})

    @app.get("/api/tasks/<int(signed=True):task_id>/why")
    async def why(task_id: int) -> Response:
        tid = check_id(task_id)
        return _json({"task_id": tid, "why": ops.why(me(), tid)})

    @app.get("/api/server-events")
    async def server_events() -> Response:
        args = request.args
        events = await ops.server_events(me(), EventsQuery(query_int(args, "since", None, 0, MAX_ID),
                                                           query_int(args, "limit", 100, 1, 1000) or 100))
        return _json({"events": events})
