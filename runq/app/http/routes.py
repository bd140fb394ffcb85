"""The HTTP API's routes: a Quart-Trio app that calls the running server's operations.

Every handler decodes its input (``encoding``: JSON bodies, paths and query
strings; the canonical names ``payload``, ``state``, ``attempt``, and the seed's REST names ``data``,
``status``, ``attempts`` as aliases: docs/http.md), calls one
operation of ``runq.app.ops.Operations`` (the same ones the TCP frontend calls,
which authorise and validate) and answers JSON. Errors are raised and turned into
``{"error": {"code", "message"}}`` bodies by one error handler (``errors``). The
list of routes here and ``openapi.SPEC`` must agree; a test compares them.

Auth: when the server has a token, every route except ``/healthz``, ``/readyz``,
``/openapi.json`` and ``/docs`` requires ``Authorization: Bearer <token>``
(the WebSocket too, on its opening request); those four tell nothing about the
tasks and must answer load balancers and people without the secret. The token
is checked by ``Operations.authenticate``, once per request, into the request's
``Identity`` (``g.identity``) that every operation is authorised against.
"""

from __future__ import annotations

from contextlib import aclosing
from typing import TYPE_CHECKING, Any

import h11
import trio
from quart import Response, g, request, websocket
from quart.typing import ResponseTypes
from quart_trio import QuartTrio
from werkzeug.routing import BaseConverter

from ...protocol.errors import RunqError
from ..auth.access import BAD_TOKEN
from ..ops import Identity, ListQuery, Subscription, Unauthenticated, WaitRequest
from ..ops.inputs import MAX_WAIT
from .dead import DEAD_QUERY_PARAMS, add_dead_routes
from .encoding import (
    IDS_RE,
    MAX_ID,
    check_id,
    dumps,
    parse_json,
    pick,
    query_float,
    query_int,
    query_set,
    query_str,
    schedule_from_json,
    schedule_json,
    spec_from_json,
    task_json,
)
from .errors import ApiError, error_for_exception, error_response
from .events import KEEPALIVE, StreamHub, sse_frame, subscribed_message
from .limits import LIMIT_QUERY_PARAMS, add_limit_routes
from .metrics import CONTENT_TYPE_LATEST, Meter
from .openapi import build_spec, docs_html

if TYPE_CHECKING:
    from ..server import Server

__all__ = ["MAX_BATCH", "MAX_WAIT", "OPEN_PATHS", "create_app"]

#: Paths answered without a credential (the logins' own: they take a password or a refresh token).
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", "/docs", "/api/auth/login", "/api/auth/refresh",
                        "/api/auth/logout"})
#: Verified access tokens (JWTs) kept by connection, so that one is verified once per connection, not per
#: request: at most this many (the oldest half is forgotten beyond).
MAX_CACHED_IDENTITIES = 4096
MAX_BATCH = 10_000
#: Query parameters each endpoint accepts; any other is refused (as unknown body fields are).
QUERY_PARAMS: dict[str, frozenset[str]] = {
    "list_tasks": frozenset({"state", "status", "queue", "type", "limit", "cursor"}),
    "get_task": frozenset({"wait"}),
    "events": frozenset({"queue", "type", "id"}),
    "ws": frozenset({"queue", "type", "id"}),
    **LIMIT_QUERY_PARAMS,
    **DEAD_QUERY_PARAMS,
}


def _check_query(endpoint: str | None, args: Any) -> None:
    if endpoint is None:
        return  # no route matched: routing answers 404 or 405
    unknown = set(args) - QUERY_PARAMS.get(endpoint, frozenset())
    if unknown:
        raise ApiError("bad_request", f"unknown query parameter(s) {sorted(unknown)[:10]}")
    for name in args:
        if len(args.getlist(name)) > 1:
            raise ApiError("bad_request", f"query parameter {name!r} given more than once (use commas)")


def _fields(body: Any, names: set[str]) -> dict[str, str]:
    """A JSON body that is exactly an object of the string fields ``names``."""
    if not isinstance(body, dict) or set(body) != names or not all(isinstance(v, str) for v in body.values()):
        raise ApiError("bad_request", f"the body must be an object of the string fields {sorted(names)}")
    if any(len(v) > 4096 for v in body.values()):
        raise ApiError("bad_request", "a field of over 4096 characters")
    return body


def _json(body: Any, status: int = 200) -> Response:
    return Response(dumps(body), status=status, content_type="application/json")


def _subscription(args: Any) -> Subscription:
    ids = query_set(args, "id", IDS_RE)
    return Subscription(queues=query_set(args, "queue"), types=query_set(args, "type"),
                        ids=frozenset(int(i) for i in ids) if ids is not None else None)


class QueueNameConverter(BaseConverter):
    """A queue's name in a path: any characters, '/' and line breaks included (percent-encoded by the client)."""

    regex = r"[\s\S]+?"
    part_isolating = False


def create_app(server: Server, meter: Meter, hub: StreamHub) -> QuartTrio:
    """Build the Quart-Trio app serving ``server``."""
    app = QuartTrio("runq.http")
    app.url_map.converters["queue"] = QueueNameConverter
    app.config["MAX_CONTENT_LENGTH"] = server.config.max_frame
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    ops = server.ops
    spec = build_spec(auth=not server.authenticator.open)

    cached: dict[tuple[Any, bytes], Identity] = {}
    authenticator = server.authenticator

    def _identity(headers: Any, client: Any) -> Identity | None:
        """The caller's identity from its ``Authorization`` header (None: missing or wrong credential). An access
        token (a JWT) is verified once per connection (``client``: its address and port) and kept while it is
        valid (not expired, its user not disabled since)."""
        scheme, _, given = str(headers.get("Authorization", "")).partition(" ")
        # Quart decodes header bytes as Latin-1: encoding back gives the bytes sent (the token's UTF-8)
        token = given.strip().encode("latin-1", "replace") if scheme.lower() == "bearer" else None
        jwt = token is not None and token.count(b".") == 2
        if jwt:
            assert token is not None
            key = (client, token)
            hit = cached.get(key)
            if hit is not None:
                if authenticator.still_valid(hit, server.clock()):
                    return hit
                del cached[key]
        try:
            identity = ops.authenticate(token, "client", "http")
        except Unauthenticated:
            return None
        if jwt and identity.expires_at is not None:
            if len(cached) >= MAX_CACHED_IDENTITIES:
                for k in list(cached)[:MAX_CACHED_IDENTITIES // 2]:
                    del cached[k]
            cached[key] = identity
        return identity

    def _me() -> Identity:
        identity: Identity = g.identity
        return identity

    @app.before_request
    async def check_token() -> Response | None:
        # Take the whole body before anything is answered: a request answered before its body was read
        # (a 401, a 404, a bad query parameter, /healthz with a body) left its keep-alive connection
        # hanging now and then (quart-trio stops reading the body once the answer is sent)
        await request.get_data()
        identity = _identity(request.headers, request.scope.get("client"))
        if request.path in OPEN_PATHS or identity is not None:
            g.identity = identity
            _check_query(request.endpoint, request.args)
            if server.standby and request.path not in OPEN_PATHS and request.path != "/metrics":
                return _standby()
            return None
        return error_response("unauthorized", f"{BAD_TOKEN} (send 'Authorization: Bearer <token>')")

    def _standby() -> Response:
        """A standby serves health, readiness and metrics only (docs/operations.md, "Failover")."""
        return error_response("standby", f"this server is a standby; the active server is {server.active_server()}")

    @app.before_websocket
    async def check_ws_token() -> Response | None:
        identity = _identity(websocket.headers, websocket.scope.get("client"))
        if identity is not None:
            g.identity = identity
            _check_query(websocket.endpoint, websocket.args)
            return _standby() if server.standby else None
        return error_response("unauthorized", f"{BAD_TOKEN} (send 'Authorization: Bearer <token>')")

    @app.after_websocket
    async def close_after_refusal(response: ResponseTypes | None) -> ResponseTypes | None:
        if response is not None:  # a WebSocket refused with an HTTP answer: Hypercorn cannot take another
            response.headers["Connection"] = "close"  # request on that connection (it would drop it)
        return response

    @app.after_request
    async def close_after_unread_body(response: Response) -> Response:
        if response.status_code == 413:  # its body was refused unread: the connection cannot serve another
            response.headers["Connection"] = "close"  # request (the next one was never answered)
        return response

    @app.errorhandler(Exception)
    async def on_error(exc: Exception) -> Response:
        return error_for_exception(exc)

    # ------------------------------------------------------------------ health, metrics, docs
    @app.get("/healthz")
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        if server.standby:
            return _standby()
        if not server.ready or server.stopping.is_set():
            return error_response("shutting_down", "the server is not running")
        store = server.store
        if store is None:
            return error_response("shutting_down", "the database is not open")
        await trio.to_thread.run_sync(store.check_writable)  # StoreError -> 503 store_error
        return _json({"status": "ready"})

    @app.get("/metrics")
    async def metrics() -> Response:
        ops.stats(_me())  # (authorised as stats: the same figures)
        return Response(meter.exposition(), content_type=CONTENT_TYPE_LATEST)

    @app.get("/openapi.json")
    async def openapi() -> Response:
        return _json(spec)

    @app.get("/docs")
    async def docs() -> Response:
        return Response(docs_html(), content_type="text/html; charset=utf-8")

    # ------------------------------------------------------------------ logins (docs/security.md)
    @app.post("/api/auth/login")
    async def login() -> Response:
        body = _fields(parse_json(await request.get_data(), ints=False), {"username", "password"})
        client = request.scope.get("client")
        address = str(client[0]) if client else "?"
        return _json(await ops.login(body["username"], body["password"], address))

    @app.post("/api/auth/refresh")
    async def refresh() -> Response:
        body = _fields(parse_json(await request.get_data(), ints=False), {"refresh_token"})
        return _json(await ops.refresh(body["refresh_token"]))

    @app.post("/api/auth/logout")
    async def logout() -> Response:
        body = _fields(parse_json(await request.get_data(), ints=False), {"refresh_token"})
        await ops.logout(body["refresh_token"])
        return _json({"message": "logged out"})

    @app.get("/api/auth/me")
    async def whoami() -> Response:
        return _json(ops.whoami(_me()))

    # ------------------------------------------------------------------ tasks
    @app.post("/api/tasks")
    async def enqueue() -> Response:
        spec = spec_from_json(parse_json(await request.get_data(), ints=False))
        [(tid, created)] = await ops.enqueue(_me(), [spec])
        body = task_json(await ops.get(_me(), tid))
        return _json({"task_id": tid, "created": created, **body}, 201 if created else 200)

    @app.post("/api/tasks/batch")
    async def enqueue_batch() -> Response:
        body = parse_json(await request.get_data(), ints=False)
        if not isinstance(body, dict) or set(body) != {"tasks"} or not isinstance(body["tasks"], list):
            raise ApiError("bad_request", 'the body must be {"tasks": [task, ...]}')
        items = body["tasks"]
        if not 0 < len(items) <= MAX_BATCH:
            raise ApiError("bad_request", f"a batch holds 1 to {MAX_BATCH} tasks")
        specs = [spec_from_json(t, f"tasks[{i}]") for i, t in enumerate(items)]
        res = await ops.enqueue(_me(), specs)
        return _json({"task_ids": [r[0] for r in res], "created": [r[1] for r in res]}, 201)

    @app.get("/api/tasks")
    async def list_tasks() -> Response:
        args = request.args
        tasks, cursor = await ops.list_tasks(_me(), ListQuery(
            state=pick({k: query_str(args, k) for k in ("state", "status") if k in args}, "state", "status",
                       "query"), queue=query_str(args, "queue"), type=query_str(args, "type"),
            limit=query_int(args, "limit", 100, 1, 1000) or 100, cursor=query_int(args, "cursor", None, 1, MAX_ID)))
        return _json({"tasks": [task_json(t) for t in tasks], "cursor": cursor})

    @app.get("/api/tasks/<int(signed=True):task_id>")
    async def get_task(task_id: int) -> Response:
        tid = check_id(task_id)
        wait = query_float(request.args, "wait", 0.0, MAX_WAIT)
        task = await (ops.wait(_me(), WaitRequest(tid, wait)) if wait else ops.get(_me(), tid))
        return _json(task_json(task))

    @app.delete("/api/tasks/<int(signed=True):task_id>")
    async def cancel_task(task_id: int) -> Response:
        tid = check_id(task_id)
        task = await ops.cancel(_me(), tid)
        return _json({"message": f"task {tid} cancelled", "task": task_json(task)})

    @app.post("/api/tasks/<int(signed=True):task_id>/retry")
    async def retry_task(task_id: int) -> Response:
        tid = check_id(task_id)
        task = await ops.retry(_me(), tid)
        return _json({"message": f"task {tid} retried", "task": task_json(task)})

    @app.get("/api/tasks/<int(signed=True):task_id>/events")
    async def task_events(task_id: int) -> Response:
        tid = check_id(task_id)
        return _json({"task_id": tid, "events": await ops.events(_me(), tid)})

    # ------------------------------------------------------------------ queues, workers, stats
    @app.get("/api/queues")
    async def queues() -> Response:
        return _json({"queues": meter.queues(ops.queues(_me()))})

    @app.post("/api/queues/<queue:name>/pause")
    async def pause(name: str) -> Response:
        await ops.pause(_me(), name, True)
        return _json({"message": f"queue {name!r} paused", "queue": name, "paused": True})

    @app.post("/api/queues/<queue:name>/resume")
    async def resume(name: str) -> Response:
        await ops.pause(_me(), name, False)
        return _json({"message": f"queue {name!r} resumed", "queue": name, "paused": False})

    @app.get("/api/workers")
    async def workers() -> Response:
        return _json({"workers": ops.workers(_me())})

    @app.get("/api/types")
    async def task_types() -> Response:
        return _json({"types": ops.types(_me())})

    @app.delete("/api/workers/<worker_id>")
    async def drain_worker(worker_id: str) -> Response:
        w = ops.drain(_me(), worker_id)
        return _json({"message": f"worker {worker_id} is draining", "worker": w}, 202)

    @app.get("/api/stats")
    async def stats() -> Response:
        return _json(meter.stats(ops.stats(_me())))

    # ------------------------------------------------------------------ limits and breakers (limits.py)
    add_limit_routes(app, ops, _me)
    add_dead_routes(app, ops, _me)
    # ------------------------------------------------------------------ periodic tasks (docs/schedules.md)
    @app.get("/api/schedules")
    async def schedules() -> Response:
        return _json({"schedules": [schedule_json(x) for x in ops.schedules(_me())]})

    @app.put("/api/schedules/<name>")
    async def put_schedule(name: str) -> Response:
        spec = schedule_from_json(name, parse_json(await request.get_data(), ints=False))
        return _json(schedule_json(await ops.add_schedule(_me(), spec)))

    @app.delete("/api/schedules/<name>")
    async def remove_schedule(name: str) -> Response:
        await ops.remove_schedule(_me(), name)
        return _json({"message": f"schedule {name!r} removed", "name": name})

    @app.post("/api/schedules/<name>/pause")
    async def pause_schedule(name: str) -> Response:
        s = await ops.pause_schedule(_me(), name)
        return _json({"message": f"schedule {name!r} paused", "schedule": schedule_json(s)})

    @app.post("/api/schedules/<name>/resume")
    async def resume_schedule(name: str) -> Response:
        s = await ops.resume_schedule(_me(), name)
        return _json({"message": f"schedule {name!r} resumed", "schedule": schedule_json(s)})

    @app.post("/api/schedules/<name>/run")
    async def run_schedule(name: str) -> Response:
        tid = await ops.run_schedule_now(_me(), name)
        return _json({"message": f"schedule {name!r} ran: task {tid} enqueued", "task_id": tid}, 201)

    # ------------------------------------------------------------------ live events
    @app.get("/api/events")
    async def events() -> Response:
        sub = _subscription(request.args)
        identity = _me()
        ops.subscribe(identity, None, sub)  # authorised, checked; 503 busy at the max_subscribers limit

        async def body() -> Any:
            # The stream is registered here, when the body starts, never in the handler: a client that
            # leaves before its body starts would leave a registered stream that nothing ever closes.
            try:
                stream = hub.open(identity, sub)
            except RunqError as exc:  # the last place was taken since the check
                yield sse_frame({"op": "error", "code": exc.code, "message": str(exc)})
                return
            try:
                yield sse_frame(subscribed_message(sub))
                async with aclosing(stream.messages(KEEPALIVE)) as messages:  # closed too when the client leaves
                    async for msg in messages:
                        yield sse_frame(msg)
            finally:
                hub.close(stream)

        resp = Response(body(), content_type="text/event-stream")
        resp.timeout = None  # a stream has no end
        resp.headers["Cache-Control"] = "no-cache"
        resp.headers["X-Accel-Buffering"] = "no"
        return resp

    @app.websocket("/api/ws")
    async def ws() -> None:
        sub = _subscription(websocket.args)
        stream = hub.open(_me(), sub)
        try:
            await websocket.accept()
            await websocket.send(dumps(subscribed_message(sub)))
            async with trio.open_nursery() as nursery, aclosing(stream.messages(KEEPALIVE)) as messages:
                nursery.start_soon(_ws_reader, nursery.cancel_scope)
                async for msg in messages:
                    if msg is not None:
                        await websocket.send(dumps(msg))
                nursery.cancel_scope.cancel()
        except* (trio.BusyResourceError, h11.LocalProtocolError):
            # the client broke the protocol (bytes right after its upgrade request, a bad frame), so Hypercorn
            # refuses to send or closes the socket while this task sends: the client is gone, no server error
            pass
        finally:
            hub.close(stream)

    return app


async def _ws_reader(scope: trio.CancelScope) -> None:
    """Answer pings from the WebSocket client; end the stream when it closes."""
    try:
        while True:
            text = await websocket.receive()
            if text in ("ping", '{"op":"ping"}', '{"op": "ping"}'):
                await websocket.send(dumps({"op": "pong"}))
    finally:
        scope.cancel()
