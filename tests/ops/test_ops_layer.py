"""The operations layer: one permission table consulted by every operation, one validation per input, shared
by the TCP protocol and the HTTP API (issue 9)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import trio

from runq.app.core import CoreConfig
from runq.app.ops import (
    KIND_OPS,
    NOT_MESSAGES,
    PERMISSIONS,
    BadRequest,
    BreakerSettings,
    DeadQuery,
    Done,
    EventsQuery,
    Fail,
    Identity,
    LimitScope,
    LimitSettings,
    ListQuery,
    NotPermitted,
    Progress,
    Unauthenticated,
    WaitRequest,
    allowed_ops,
    authenticate,
    authorize,
)
from runq.app.server import Server, ServerConfig
from runq.protocol.messages import CLIENT_OPS, WATCHER_OPS, WORKER_OPS, ScheduleSpec, TaskSpec
from runq.protocol.sync_client import SyncClient

#: docs/protocol.md section 5, written out: what each role may send.
DOC_CLIENT = {"enqueue", "get", "wait", "cancel", "retry", "events", "list", "pause", "resume", "queues", "workers",
              "subscribe", "ping", "stats", "drain", "types",
              "schedules", "schedule_add", "schedule_remove", "schedule_pause", "schedule_resume", "schedule_run"}
#: docs/protocol.md section 5.8, written out: the limits and breakers ops (the reads are a watcher's too).
DOC_LIMIT_READS = {"limits", "breakers", "why", "server_events"}
DOC_CLIENT |= DOC_LIMIT_READS | {"set_limit", "remove_limit", "set_breaker", "remove_breaker", "open_breaker",
                                 "close_breaker"}
DOC_WORKER = {"credit", "heartbeat", "progress", "done", "fail", "release", "ping"}
DOC_WATCHER = {"get", "wait", "events", "list", "queues", "workers", "subscribe", "ping", "stats", "types",
               "schedules"}
DOC_WATCHER |= DOC_LIMIT_READS
#: docs/protocol.md section 5.11, written out: the dead-letter ops (the listing is a watcher's too).
DOC_CLIENT |= {"dead_list", "dead_retry", "dead_delete"}
DOC_WATCHER |= {"dead_list"}


def test_each_kind_of_connection_has_the_ops_the_protocol_lists() -> None:
    # (a worker also declares schedules, in its hello, and anyone may ask who it is (HTTP /api/auth/me):
    # operations that are not messages of their own)
    assert NOT_MESSAGES == {"schedule_declare", "whoami"} and PERMISSIONS["schedule_declare"] == {"worker"}
    assert KIND_OPS["client"] - NOT_MESSAGES == DOC_CLIENT == CLIENT_OPS
    assert KIND_OPS["worker"] - NOT_MESSAGES == DOC_WORKER == WORKER_OPS
    assert KIND_OPS["watcher"] - NOT_MESSAGES == DOC_WATCHER == WATCHER_OPS
    assert allowed_ops("nobody") == frozenset()


def test_with_the_shared_token_a_client_is_an_admin_a_watcher_a_viewer_a_worker_a_worker() -> None:
    # the simplest mode (no users): each kind of connection may do what it could before users existed
    assert authenticate(None, None, "client").ops == DOC_CLIENT | {"whoami"}
    assert authenticate(None, None, "watcher").ops == DOC_WATCHER | {"whoami"}
    assert authenticate(None, None, "worker").ops == DOC_WORKER | NOT_MESSAGES


def test_authenticate_compares_the_token_and_gives_the_roles_operations() -> None:
    with pytest.raises(Unauthenticated) as err:
        authenticate("s3cret", "wrong", "client")
    assert err.value.code == "unauthorized"
    with pytest.raises(Unauthenticated):
        authenticate("s3cret", None, "client")
    ident = authenticate("s3cret", b"s3cret", "watcher", "10.0.0.1:5000")
    assert (ident.name, ident.role, ident.ops) == ("10.0.0.1:5000", "viewer", frozenset(DOC_WATCHER | {"whoami"}))
    assert ident.owner is None and ident.sees_all
    authorize(ident, "list")
    with pytest.raises(NotPermitted) as refused:
        authorize(ident, "enqueue")  # (not an op of a watcher connection at all: unknown_op, as before)
    assert refused.value.code == "unknown_op" and str(refused.value) == "unknown op 'enqueue' for a viewer"


async def _start(nursery: trio.Nursery, tmp_path: Any, **cfg: Any) -> Server:
    srv = Server(ServerConfig(db=str(tmp_path / "runq.db"), port=0, core=CoreConfig(lease_timeout=10.0), **cfg))
    await nursery.start(srv.serve)
    return srv


def _calls(ops: Any, ident: Identity, tid: int) -> dict[str, Callable[[], Any]]:
    """One call per operation of the table (and of each of its forms), made by ``ident``."""
    told: list[Any] = []
    return {
        "enqueue": lambda: ops.enqueue(ident, [TaskSpec("t")]),
        "enqueue/nowait": lambda: ops.enqueue_nowait(ident, [], lambda *a: told.append(a)),
        "get": lambda: ops.get(ident, tid),
        "get/nowait": lambda: ops.get_nowait(ident, tid),
        "wait": lambda: ops.wait(ident, WaitRequest(tid, 0.0)),
        "wait/nowait": lambda: ops.wait_nowait(ident, WaitRequest(tid, 0.0)),
        "cancel": lambda: ops.cancel(ident, tid),
        "retry": lambda: ops.retry(ident, tid),
        "events": lambda: ops.events(ident, tid),
        "list": lambda: ops.list_tasks(ident, ListQuery()),
        "pause": lambda: ops.pause(ident, "q", True),
        "pause/nowait": lambda: ops.pause_nowait(ident, "q", True, told.append),
        "resume": lambda: ops.pause(ident, "q", False),
        "resume/nowait": lambda: ops.pause_nowait(ident, "q", False, told.append),
        "drain": lambda: ops.drain(ident, "w1"),
        "queues": lambda: ops.queues(ident),
        "workers": lambda: ops.workers(ident),
        "types": lambda: ops.types(ident),
        "stats": lambda: ops.stats(ident),
        "subscribe": lambda: ops.subscribe(ident, None, None),
        "credit": lambda: ops.credit(ident, "w1", 1),
        "heartbeat": lambda: ops.heartbeat(ident, "w1"),
        "done": lambda: ops.done(ident, "w1", Done([])),
        "fail": lambda: ops.fail(ident, "w1", Fail(tid, 1, "boom")),
        "progress": lambda: ops.progress(ident, "w1", Progress(tid, 1, b"\xc0")),
        "release": lambda: ops.release(ident, "w1", [tid]),
        "ping": lambda: ops.ping(ident),
        "set_limit": lambda: ops.set_limit(ident, LimitSettings(LimitScope("queue", "q"), concurrency=1)),
        "remove_limit": lambda: ops.remove_limit(ident, LimitScope("queue", "q")),
        "limits": lambda: ops.limits(ident),
        "set_breaker": lambda: ops.set_breaker(ident, BreakerSettings("t")),
        "remove_breaker": lambda: ops.remove_breaker(ident, "t"),
        "open_breaker": lambda: ops.open_breaker(ident, "t"),
        "close_breaker": lambda: ops.close_breaker(ident, "t"),
        "breakers": lambda: ops.breakers(ident),
        "why": lambda: ops.why(ident, tid),
        "server_events": lambda: ops.server_events(ident, EventsQuery()),
        "schedule_add": lambda: ops.add_schedule(ident, ScheduleSpec("s", "t", every=60.0)),
        "schedule_remove": lambda: ops.remove_schedule(ident, "s"),
        "schedule_pause": lambda: ops.pause_schedule(ident, "s"),
        "schedule_resume": lambda: ops.resume_schedule(ident, "s"),
        "schedule_run": lambda: ops.run_schedule_now(ident, "s"),
        "schedules": lambda: ops.schedules(ident),
        "schedule_declare": lambda: ops.declare_schedules(ident, (ScheduleSpec("s", "t", every=60.0),)),
        "dead_list": lambda: ops.dead_list(ident, DeadQuery()),
        "dead_retry": lambda: ops.dead_retry(ident, DeadQuery()),
        "dead_delete": lambda: ops.dead_delete(ident, DeadQuery()),
        "whoami": lambda: ops.whoami(ident),
    }


@pytest.mark.trio
async def test_every_operation_is_authorised_against_the_table(nursery: trio.Nursery, tmp_path: Any) -> None:
    """An identity whose role holds no operation is refused by every one, before anything happens; one whose
    role holds exactly one operation may do that one (the table is what decides, not the transport)."""
    srv = await _start(nursery, tmp_path)
    ops = srv.ops
    with trio.fail_after(10):
        [(tid, _)] = await ops.enqueue(authenticate(None, None, "client"), [TaskSpec("t", queue="q")])
        nobody = Identity("nobody", "nobody", frozenset())
        calls = _calls(ops, nobody, tid)
        assert {name.split("/")[0] for name in calls} == set(PERMISSIONS)  # (every operation of the table)
        for name, call in calls.items():
            with pytest.raises(NotPermitted, match="for a nobody"):
                result = call()
                if inspect.isawaitable(result):
                    await result
            assert name  # (refused: see pytest.raises)
        # nothing happened: one task, ready, no queue paused
        assert srv.core.tasks[tid].state.value == "ready" and srv.core.queue_stats()[0]["paused"] is False
        assert srv.core.stats.enqueued == 1 and srv.core.schedules_list() == []
        assert srv.core.limits() == [] and srv.core.breakers == {}
        pauser = Identity("ops", "operator", frozenset({"pause"}))
        await ops.pause(pauser, "q")
        assert srv.core.queue_stats()[0]["paused"] is True
        with pytest.raises(NotPermitted):
            await ops.pause(pauser, "q", False)


@pytest.mark.trio
async def test_one_validation_serves_both_transports(nursery: trio.Nursery, tmp_path: Any) -> None:
    """A bad queue name for pause, a bad list limit and an unknown state are refused with the same message
    over TCP and HTTP (the TCP protocol accepted any queue name to pause before issue 9, and HTTP said
    "status must be one of [...]" where TCP said "unknown state 'nope'")."""
    srv = await _start(nursery, tmp_path, http_port=0)
    ops = srv.ops
    client = authenticate(None, None, "client")
    cases = [
        (lambda: ops.pause(client, "x" * 201), {"op": "pause", "queue": "x" * 201},
         ("post", f"/api/queues/{'x' * 201}/pause")),
        (lambda: ops.pause(client, ""), {"op": "resume", "queue": ""}, None),
        (lambda: ops.list_tasks(client, ListQuery(limit=0)), {"op": "list", "limit": 0}, None),
        (lambda: ops.list_tasks(client, ListQuery(state="nope")), {"op": "list", "state": "nope"},
         ("get", "/api/tasks?status=nope")),
    ]
    with trio.fail_after(20):
        for direct, tcp_msg, http in cases:
            with pytest.raises(BadRequest) as err:
                await direct()
            expected = str(err.value)

            def over_tcp(msg: dict[str, Any]) -> str:
                with SyncClient(f"127.0.0.1:{srv.port}") as c:
                    try:
                        c.request(msg)
                    except Exception as exc:  # noqa: BLE001 - the error frame, as the SDK raises it
                        return f"{getattr(exc, 'code', '?')}: {getattr(exc, 'message', exc)}"
                return "answered"

            assert await trio.to_thread.run_sync(over_tcp, tcp_msg) == f"bad_request: {expected}"
            if http is not None:
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{srv.http_port}") as h:
                    r = await h.request(http[0].upper(), http[1])
                assert r.status_code == 400 and r.json()["error"] == {"code": "bad_request", "message": expected}
