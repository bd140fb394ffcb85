"""Every operation a client, a worker or the HTTP API can ask for: one method each, authorised once.

Theory of operation
-------------------
``Operations`` holds the running ``Server`` (the core and store wiring) and offers one method per thing a
caller can do. Each method takes the caller's ``Identity`` first and typed input (``inputs``), then:

1. ``authorize(identity, op)`` (``auth``: the one permission table),
2. the input's one validation (``inputs.check_*``, ``check_task_spec``),
3. the server's operation, and returns plain maps (``Task.as_dict()``) that each transport encodes.

Errors are ``RunqError``s with a stable code (``errors``, the core's ``TaskMissing`` / ``IllegalTransition``,
the store's ``StoreError``): the TCP frontend sends the code in an error frame, the HTTP routes map it to a
status. The transports (``runq.app.server.tcp``, ``runq.app.http.routes``) only decode, call and encode.

Rules of this file
------------------
* Nothing here reads a socket or knows a wire name: TCP's ``payload``/``state``/``attempt`` and HTTP's
  ``data``/``status``/``attempts`` are the transports' business.
* Methods ending in ``_nowait`` never await (the TCP hot paths call them for the messages of one read, in one
  write round, and flush once after the read); their async forms flush and wait for the commit themselves.
* Hot paths (enqueue, get, the worker messages) stay a few dictionary operations on top of the server's: no
  per-task objects beyond the ``TaskSpec``s.
* This module imports the server for its type only: ``runq.app.server`` imports the TCP frontend, which
  imports this layer (a test checks that the import graph has no cycle).
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from ... import __version__
from ...protocol.errors import ProtocolError
from ...protocol.messages import MAX_CREDIT, MAX_SCHEDULES, Hello, ScheduleSpec, TaskSpec
from ..auth import REFRESH_PREFIX, new_token, token_hash, verify_password
from ..auth.access import BAD_TOKEN
from ..auth.credentials import USER_NAME_RE
from ..core import TaskMissing
from ..core.limits import BreakerStatus
from ..core.records import DeadFilter
from ..store import StoreError
from ..store.principals import RefreshRecord
from .auth import Identity, authorize
from .errors import BadRequest, Forbidden, NotFound, RateLimited, Unauthenticated
from .inputs import (
    BreakerSettings,
    DeadQuery,
    Done,
    EnqueueRequest,
    EventsQuery,
    Fail,
    LimitScope,
    LimitSettings,
    ListQuery,
    Progress,
    Subscription,
    WaitRequest,
    check_breaker,
    check_credit,
    check_dead_query,
    check_events_query,
    check_fail,
    check_limit,
    check_list,
    check_queue_name,
    check_schedule,
    check_scope,
    check_subscription,
    check_type_name,
    check_wait,
)

if TYPE_CHECKING:
    from ..server.server import Answer, Server, Subscriber, Tell

__all__ = ["VERSION", "WRONG_LOGIN", "Operations"]

log = logging.getLogger("runq.server")

#: the one answer to a failed login, whatever failed (docs/security.md: nothing leaks about who exists)
WRONG_LOGIN = "wrong user name or password"

#: The server's version (``welcome``, ``stats``, the OpenAPI document).
VERSION = __version__


class Operations:
    """The operations of ``server`` (see the module docstring).

    Args:
        server: the running server.
    """

    def __init__(self, server: Server) -> None:
        self.server = server
        self._worker_seq = 0

    # ------------------------------------------------------------------ connections
    def authenticate(self, token: str | bytes | None, role: str, name: str = "") -> Identity:
        """The identity of a caller presenting ``token`` on a connection of kind ``role`` (the TCP hello role; HTTP:
        ``client``): ``auth.Authenticator`` against the shared token, the API tokens and the access tokens.

        Raises:
            Unauthenticated: ``unauthorized``.
        """
        return self.server.authenticator.authenticate(token, role, name)

    def hello(self, identity: Identity, hello: Hello, host: str, session: Any) -> dict[str, Any]:
        """A connection's ``hello`` (already authenticated into ``identity``): the ``welcome`` answer. A worker
        joins: ``session`` receives its tasks, and the answer carries its ``worker_id``.

        Raises:
            ProtocolError: ``shutting_down`` while the server stops; ``standby`` while it waits for the lease
                another server holds (or rebuilds its state after taking it).
        """
        srv = self.server
        if srv.stopping.is_set():
            raise ProtocolError("server is stopping", "shutting_down")
        if srv.standby or not srv.ready:  # (failover: docs/operations.md; a client tries its next address)
            raise ProtocolError(f"this server is a standby; the active server is {srv.active_server()}", "standby")
        cfg = srv.config
        welcome: dict[str, Any] = {
            "op": "welcome", "version": hello.version, "server": f"runq/{VERSION}",
            "max_frame": cfg.max_frame, "max_reply": cfg.max_reply, "lease_timeout": cfg.core.lease_timeout,
            "heartbeat": cfg.core.lease_timeout / 3,
        }
        if cfg.core.reclaim:  # (a worker's runs may outlive a lost connection that long: docs/operations.md)
            welcome["reclaim"] = cfg.core.reclaim
        # who the caller is and what it may ask (the dashboard hides the rest: docs/security.md)
        welcome["identity"] = {"name": identity.name, "role": identity.role, "ops": sorted(identity.ops)}
        if hello.role == "worker":
            if identity.role != "worker":
                raise Forbidden(f"a worker connection needs a worker's credential, not a{'n' if identity.role[:1] in 'aeiou' else ''} {identity.role}'s")
            if identity.queues is not None and not set(hello.queues) <= identity.queues:
                raise Forbidden(f"this worker's credential allows the queues {sorted(identity.queues)} only")
            if hello.schedules:
                self.declare_schedules(identity, hello.schedules)
            self._worker_seq += 1
            wid = f"w{self._worker_seq}-{secrets.token_hex(3)}"
            srv.workers[wid] = session
            srv.core.worker_joined(wid, srv.clock(), hello.queues, hello.concurrency, hello.name,
                                   hello.host or host, hello.pid, hello.types, hello.type_options,
                                   hello.labels)
            welcome["worker_id"] = wid
            if hello.held:  # (runs it had when its connection to this server's predecessor was lost)
                welcome["reclaimed"] = srv.core.reclaim(wid, list(hello.held), srv.clock())
        return welcome

    def declare_schedules(self, identity: Identity, specs: tuple[ScheduleSpec, ...]) -> None:
        """A worker's hello declares ``specs`` (its tasks' schedules): each is added, or declared again (the
        same timing keeps its mark and paused flag: docs/schedules.md). All are checked before any is added, so
        a bad one refuses the hello and changes nothing. Their rows commit with the next batch (the
        connection's read flushes); the welcome does not wait for it: a worker declares them at every
        connection.

        Raises:
            BadRequest: a schedule of ``specs`` cannot be kept, or there would be more than ``MAX_SCHEDULES``.
        """
        authorize(identity, "schedule_declare")
        checked = [check_schedule(spec) for spec in specs]
        core = self.server.core
        self._room_for({s.name for s in checked})
        now = self.server.clock()
        for s in checked:
            core.add_schedule(s, now)

    def _room_for(self, names: set[str]) -> None:
        have = self.server.core.schedules
        if len(have) + len(names - have.keys()) > MAX_SCHEDULES:
            raise BadRequest(f"schedule: a server keeps at most {MAX_SCHEDULES} schedules (remove some first)")

    def worker_left(self, worker_id: str, session: Any) -> None:
        """The connection of worker ``worker_id`` ended: its tasks go back to ready (not when the server
        stops: they stay running on disk and come back as 'recovered' at the next start, no attempt lost).
        Not authorised: no caller asks for it, its transport reports it."""
        srv = self.server
        if srv.workers.get(worker_id) is session:
            del srv.workers[worker_id]
            if not srv.stopping.is_set():
                srv.core.worker_left(worker_id, srv.clock(), reason="connection closed")
                srv.flush()

    # ------------------------------------------------------------------ logins (HTTP; docs/security.md)
    async def login(self, username: str, password: str, address: str) -> dict[str, Any]:
        """Check a user's password and give it an access token (a JWT, ``access_ttl``) and a refresh token
        (``refresh_ttl``, revocable). Not authorised (anyone may try): rate-limited per user name and per
        address (``LoginLimiter``); a failure is audited. An unknown user, a disabled one and a wrong password
        get the same answer in about the same time (the password is checked against a dummy hash).

        Raises:
            RateLimited: too many failures lately (nothing is checked).
            Unauthenticated: anything else.
        """
        srv = self.server
        now = srv.clock()
        name = username[:64]
        wait = srv.login_limiter.wait(name, address, now)
        if wait > 0:
            raise RateLimited(f"too many failed logins; try again in {math.ceil(wait)} s", wait)
        user = srv.principals.users.get(name) if USER_NAME_RE.match(name) else None
        ok = await trio.to_thread.run_sync(verify_password, None if user is None else user.password, password)
        if not ok or user is None or user.disabled:
            srv.login_limiter.failed(name, address, srv.clock())
            await self._audit("login_failed", f"failed login from {address}", name or "?")
            raise Unauthenticated(WRONG_LOGIN)
        srv.login_limiter.succeeded(name)
        return await self._tokens_for(user.name, user.role)

    async def _tokens_for(self, username: str, role: str) -> dict[str, Any]:
        srv = self.server
        keys = srv.authenticator.keys
        ps = srv.principal_store
        assert keys is not None and ps is not None
        now = srv.clock()
        cfg = srv.config
        refresh, rid = new_token(REFRESH_PREFIX)
        await trio.to_thread.run_sync(ps.add_refresh, RefreshRecord(rid, token_hash(refresh), username,
                                                                    now + cfg.refresh_ttl, None, now))
        return {"access_token": keys.issue(username, role, now, cfg.access_ttl), "token_type": "bearer",
                "expires_in": cfg.access_ttl, "refresh_token": refresh, "refresh_expires_in": cfg.refresh_ttl,
                "user": username, "role": role}

    async def refresh(self, refresh_token: str) -> dict[str, Any]:
        """A new access token and a new refresh token for a live refresh token, which is revoked (each refresh
        token serves once: a stolen one that is used is noticed by its owner's next refresh failing).

        Raises:
            Unauthenticated: an unknown, expired or revoked refresh token, or its user is disabled.
        """
        srv = self.server
        ps = srv.principal_store
        assert ps is not None
        h = token_hash(refresh_token[:200])
        rec = await trio.to_thread.run_sync(ps.refresh, h)
        now = srv.clock()
        user = None if rec is None else srv.principals.active_user(rec.username)
        if rec is None or rec.revoked_at is not None or rec.expires_at <= now or user is None:
            raise Unauthenticated(BAD_TOKEN)
        if not await trio.to_thread.run_sync(ps.revoke_refresh, h, now):
            raise Unauthenticated(BAD_TOKEN)  # (used by another request meanwhile)
        return await self._tokens_for(user.name, user.role)

    async def logout(self, refresh_token: str) -> None:
        """Revoke a refresh token (an unknown one too: the answer says nothing about it)."""
        srv = self.server
        ps = srv.principal_store
        assert ps is not None
        await trio.to_thread.run_sync(ps.revoke_refresh, token_hash(refresh_token[:200]), srv.clock())

    def _audit_now(self, scope: str, kind: str, detail: str, identity: Identity) -> None:
        """An operator's action, for the audit log (an event of no task with its actor, written by the next commit,
        with the change itself)."""
        srv = self.server
        srv.core.audit(srv.clock(), scope[:300], kind, detail[:500], identity.name)

    async def _audit(self, kind: str, detail: str, actor: str) -> None:
        """Append an event of no task with its actor (the audit log), outside the group commit."""
        ps = self.server.principal_store
        if ps is None:
            return
        try:
            await trio.to_thread.run_sync(ps.audit, self.server.clock(), kind, detail[:500], actor[:200])
        except StoreError as exc:
            log.warning("audit event %s not written: %s", kind, exc)

    def whoami(self, identity: Identity) -> dict[str, Any]:
        """Who the caller is and what it may do (the dashboard and the CLI hide the rest: docs/security.md)."""
        authorize(identity, "whoami")
        return {"name": identity.name, "role": identity.role, "owner": identity.owner,
                "sees_all": identity.sees_all, "queues": None if identity.queues is None else sorted(identity.queues),
                "ops": sorted(identity.ops - {"whoami"}), "expires_at": identity.expires_at}

    def ping(self, identity: Identity, worker_id: str | None = None) -> None:
        """``ping``; from a worker it also counts as a heartbeat."""
        authorize(identity, "ping")
        if worker_id is not None:
            srv = self.server
            srv.core.heartbeat(worker_id, srv.clock())

    # ------------------------------------------------------------------ enqueue
    def enqueue_nowait(self, identity: Identity, requests: list[tuple[EnqueueRequest, Any]],
                       tell: Tell) -> list[Answer]:
        """Enqueue the requests of one read with one call of the core (``Server.enqueue_nowait``); each
        request's ``tell(answer, error, ctx)`` runs once its commit is over. Specs come checked
        (``parse_task_spec`` / ``check_task_spec``); the caller flushes."""
        authorize(identity, "enqueue")
        if identity.queues is not None:  # (a request outside the credential's queues is refused alone)
            kept = []
            for r, ctx in requests:
                try:
                    _check_scope(identity, r.specs)
                except Forbidden as exc:
                    tell([], exc, ctx)
                else:
                    kept.append((r, ctx))
            requests = kept
        return self.server.enqueue_nowait([(r.specs, r.token, ctx) for r, ctx in requests], tell, identity.owner)

    async def enqueue(self, identity: Identity, specs: list[TaskSpec]) -> list[tuple[int, bool]]:
        """Enqueue ``specs`` and return ``(id, created)`` per spec once committed.

        Raises:
            BadRequest: a payload longer than ``max_frame`` (over TCP it could not have come: every frame the
                server sends must hold a task, docs/protocol.md section 1).
            ProtocolError: ``shutting_down`` while the server stops; ``standby`` while it waits for the lease
                another server holds (or rebuilds its state after taking it).
            StoreError: the commit failed; nothing was enqueued.
        """
        authorize(identity, "enqueue")
        if identity.queues is not None:
            _check_scope(identity, specs)
        limit = self.server.config.max_frame
        for spec in specs:
            if len(spec.payload) > limit:
                raise BadRequest(f"a payload of {len(spec.payload)} bytes (msgpack) is over the server's "
                                 f"max_frame of {limit}")
        if self.server.stopping.is_set():
            raise ProtocolError("the server is stopping", "shutting_down")
        return await self.server.enqueue(specs, identity.owner)

    # ------------------------------------------------------------------ tasks
    def get_nowait(self, identity: Identity, task_id: int) -> dict[str, Any] | None:
        """The task if it is in memory and the caller may see it, else None (``get`` reads the store, and says
        ``not_found`` for a task of someone else, as for no task: ids do not leak)."""
        authorize(identity, "get")
        core = self.server.core
        t = core.tasks.get(task_id) or core.finished.get(task_id)
        return None if t is None or not (identity.sees_all or t.owner == identity.owner) else t.as_dict()

    async def get(self, identity: Identity, task_id: int) -> dict[str, Any]:
        """The task, from memory or the store.

        Raises:
            TaskMissing: no such task.
        """
        authorize(identity, "get")
        return await self._visible(identity, task_id)

    async def _visible(self, identity: Identity, task_id: int) -> dict[str, Any]:
        """The task, if ``identity`` may see it (docs/security.md: a task of someone else does not exist).

        Raises:
            TaskMissing: no such task, or not one the caller may see.
        """
        task = await self.server.get_task(task_id)
        if not identity.sees(task["owner"]):
            raise TaskMissing(f"no task {task_id}")
        return task

    def wait_nowait(self, identity: Identity, req: WaitRequest) -> bool:
        """Check a ``wait`` (authorised, valid); True when its task is in memory (``wait`` may start at once),
        False when the store must say first whether it exists (``get``)."""
        authorize(identity, "wait")
        check_wait(req)
        core = self.server.core
        t = core.tasks.get(req.id) or core.finished.get(req.id)
        return t is not None and (identity.sees_all or t.owner == identity.owner)

    async def wait(self, identity: Identity, req: WaitRequest) -> dict[str, Any]:
        """The task once it is final, or after ``req.timeout`` seconds as it is then.

        Raises:
            TaskMissing: no such task.
        """
        authorize(identity, "wait")
        req = check_wait(req)
        await self._visible(identity, req.id)
        return await self.server.wait_task(req.id, req.timeout)

    async def cancel(self, identity: Identity, task_id: int) -> dict[str, Any]:
        """Cancel a queued or running task; return it.

        Raises:
            TaskMissing: no such task.
            IllegalTransition: it is already final.
        """
        authorize(identity, "cancel")
        if not identity.sees_all:
            await self._visible(identity, task_id)
        task = await self.server.cancel(task_id, identity.name)
        self._audit_now(f"task:{task_id}", "task_cancelled", f"{task['type']} in {task['queue']}", identity)
        self.server.flush()
        return task

    async def retry(self, identity: Identity, task_id: int) -> dict[str, Any]:
        """Bring a dead, cancelled or retry-waiting task back to ready now; return it.

        Raises:
            TaskMissing: no such task.
            IllegalTransition: it is not dead, cancelled or waiting to retry.
        """
        authorize(identity, "retry")
        if not identity.sees_all:
            await self._visible(identity, task_id)
        task = await self.server.retry(task_id, identity.name)
        self._audit_now(f"task:{task_id}", "task_retried", f"{task['type']} in {task['queue']}", identity)
        self.server.flush()
        return task

    async def events(self, identity: Identity, task_id: int) -> list[dict[str, Any]]:
        """The task's timeline, oldest first.

        Raises:
            TaskMissing: no such task.
        """
        authorize(identity, "events")
        if not identity.sees_all:
            await self._visible(identity, task_id)
        return await self.server.task_events(task_id)

    async def list_tasks(self, identity: Identity, query: ListQuery) -> tuple[list[dict[str, Any]], int | None]:
        """A page of tasks, newest first, and the cursor of the next page (None: the last page).

        Raises:
            BadRequest: a limit out of range or an unknown state.
        """
        authorize(identity, "list")
        q = check_list(query)
        return await self.server.list_tasks(state=q.state, queue=q.queue, type=q.type, limit=q.limit,
                                            cursor=q.cursor, owner=None if identity.sees_all else identity.owner)

    # ------------------------------------------------------------------ queues and workers
    def pause_nowait(self, identity: Identity, queue: str, paused: bool,
                     tell: Callable[[BaseException | None], None]) -> None:
        """Pause (or resume) ``queue``; ``tell(error)`` once that is committed. The caller flushes.

        Raises:
            BadRequest: a queue name no task could have.
        """
        authorize(identity, "pause" if paused else "resume")
        self._audit_now(f"queue:{check_queue_name(queue)}", "queue_paused" if paused else "queue_resumed", "",
                        identity)
        self.server.set_paused_nowait(queue, paused, tell)

    async def pause(self, identity: Identity, queue: str, paused: bool = True) -> None:
        """Pause (or resume) ``queue`` and return once that is committed.

        Raises:
            BadRequest: a queue name no task could have.
            StoreError: the commit failed.
        """
        authorize(identity, "pause" if paused else "resume")
        self._audit_now(f"queue:{check_queue_name(queue)}", "queue_paused" if paused else "queue_resumed", "",
                        identity)
        await self.server.set_paused(queue, paused)

    def drain(self, identity: Identity, worker_id: str) -> dict[str, Any]:
        """Ask a worker to finish its running tasks, hand back the rest and leave; return it.

        Raises:
            NotFound: no connected worker has that id.
        """
        authorize(identity, "drain")
        if worker_id not in self.server.core.workers:
            raise NotFound(f"no connected worker {worker_id!r}")
        self._audit_now(f"worker:{worker_id}", "worker_drained", "", identity)
        return self.server.drain_worker(worker_id)

    def queues(self, identity: Identity) -> list[dict[str, Any]]:
        """Every queue's counts (``Core.queue_stats``)."""
        authorize(identity, "queues")
        return self.server.queue_stats()

    def workers(self, identity: Identity) -> list[dict[str, Any]]:
        """The connected workers."""
        authorize(identity, "workers")
        return self.server.worker_list()

    def types(self, identity: Identity) -> list[dict[str, Any]]:
        """The task types the connected workers announced."""
        authorize(identity, "types")
        return self.server.task_types()

    def stats(self, identity: Identity) -> dict[str, Any]:
        """The server's statistics (``Server.statistics``)."""
        authorize(identity, "stats")
        return self.server.statistics()

    def subscribe(self, identity: Identity, subscriber: Subscriber | None, subscription: Subscription | None) -> None:
        """Send live events matching ``subscription`` to ``subscriber`` from now on. With no ``subscriber``,
        only check that it may (an HTTP stream subscribes once its body starts).

        Raises:
            BadRequest: a queue or type filter no task could match.
            ProtocolError: ``busy`` at the server's ``max_subscribers`` (the subscriber's filter unchanged).
        """
        authorize(identity, "subscribe")
        if subscription is not None:
            check_subscription(subscription)
            if not identity.sees_all:
                subscription.owner = identity.owner  # (only its own tasks' events: docs/security.md)
        srv = self.server
        if subscriber is None:
            srv.check_subscriber_room()
            return
        srv.subscribe(subscriber)
        if subscription is not None:
            subscriber.subscription = subscription

    # ------------------------------------------------------------------ workers' messages
    def credit(self, identity: Identity, worker_id: str, n: int) -> None:
        """The worker can take ``n`` more tasks."""
        authorize(identity, "credit")
        srv = self.server
        srv.core.credit(worker_id, check_credit(n), srv.clock())

    def heartbeat(self, identity: Identity, worker_id: str) -> None:
        """The worker is alive: its leases are extended."""
        authorize(identity, "heartbeat")
        srv = self.server
        srv.core.heartbeat(worker_id, srv.clock())

    def done(self, identity: Identity, worker_id: str, done: Done) -> None:
        """Tasks succeeded (results whose lease is stale are counted late and ignored); then more credit."""
        authorize(identity, "done")
        if done.credit > MAX_CREDIT:
            check_credit(done.credit, "done: 'credit'")
        srv = self.server
        now = srv.clock()
        core = srv.core
        core.done(worker_id, done.results, now)
        if done.credit:
            core.credit(worker_id, done.credit, now)

    def fail(self, identity: Identity, worker_id: str, fail: Fail) -> None:
        """An attempt failed (retried later or dead, as the task's retries say); then more credit.

        Raises:
            BadRequest: ``retry_in`` or ``retries`` out of range.
        """
        authorize(identity, "fail")
        f = check_fail(fail)
        srv = self.server
        now = srv.clock()
        core = srv.core
        core.fail(worker_id, f.id, f.lease, f.error, now, retry_in=f.retry_in, timed_out=f.timed_out,
                  max_retries=f.retries, error_types=f.error_types)
        if f.credit:
            core.credit(worker_id, f.credit, now)

    def progress(self, identity: Identity, worker_id: str, progress: Progress) -> None:
        """A running task's progress value."""
        authorize(identity, "progress")
        srv = self.server
        srv.core.progress(worker_id, progress.id, progress.lease, progress.value, srv.clock())

    def release(self, identity: Identity, worker_id: str, ids: list[Any]) -> None:
        """The worker hands back tasks it has not started."""
        authorize(identity, "release")
        srv = self.server
        srv.core.release(worker_id, ids, srv.clock())

    # ------------------------------------------------------------------ limits and breakers (docs/limits.md)
    async def set_limit(self, identity: Identity, settings: LimitSettings) -> dict[str, Any]:
        """Set (or replace) a scope's rate limit and/or concurrency cap; it applies at once, and this returns
        once it is committed. Returns the limit with its status (``limits``' entries).

        Raises:
            BadRequest: a bad scope or setting (nothing changed).
            StoreError: the commit failed (the limit holds, and is written again with the next commit).
        """
        authorize(identity, "set_limit")
        lim = check_limit(settings)
        srv = self.server
        s = lim.scope
        srv.core.set_limit((s.kind, s.name, s.key), srv.clock(), rate=lim.rate, period=lim.period, burst=lim.burst,
                           concurrency=lim.concurrency, actor=identity.name)
        await srv.committed_change()
        return self._limit_map((s.kind, s.name, s.key))

    async def remove_limit(self, identity: Identity, scope: LimitScope) -> bool:
        """Remove a scope's limit (its held tasks go again at once); False when it had none. Returns once
        committed.

        Raises:
            BadRequest: a bad scope.
            StoreError: the commit failed.
        """
        authorize(identity, "remove_limit")
        s = check_scope(scope)
        srv = self.server
        removed = srv.core.remove_limit((s.kind, s.name, s.key), srv.clock(), identity.name) is not None
        if removed:
            await srv.committed_change()
        return removed

    def limits(self, identity: Identity) -> list[dict[str, Any]]:
        """Every limit, by scope, with its live status per key value (``Core.limit_status``)."""
        authorize(identity, "limits")
        return [self._limit_map(tuple(lim.scope)) for lim in self.server.core.limits()]

    def _limit_map(self, scope: tuple[str, ...]) -> dict[str, Any]:
        srv = self.server
        now = srv.clock()
        lim = next(x for x in srv.core.limits() if tuple(x.scope) == scope)
        status = [{"value": b.value, "running": b.running, "waiting": b.waiting, "blocked": b.blocked,
                   "next_at": b.next_at, "admitted": b.admitted, "deferred": b.deferred}
                  for b in srv.core.limit_status(now) if tuple(b.scope) == scope]
        s = lim.scope
        return {"scope": s.kind, "name": s.name, "key": s.key, "rate": lim.rate, "period": lim.period,
                "burst": lim.burst, "concurrency": lim.concurrency, "status": status}

    async def set_breaker(self, identity: Identity, settings: BreakerSettings) -> dict[str, Any]:
        """Set (or replace) a task type's circuit breaker (its state is kept); returns it once committed.

        Raises:
            BadRequest: a bad type name or setting (nothing changed).
            StoreError: the commit failed.
        """
        authorize(identity, "set_breaker")
        b = check_breaker(settings)
        srv = self.server
        srv.core.set_breaker(b.type, srv.clock(), threshold=b.threshold, window=b.window, min_calls=b.min_calls,
                             cooldown=b.cooldown, probes=b.probes, actor=identity.name)
        await srv.committed_change()
        return self._breaker_map(b.type)

    async def remove_breaker(self, identity: Identity, type_: str) -> bool:
        """Remove a task type's breaker (its held tasks go again at once); False when it had none."""
        authorize(identity, "remove_breaker")
        srv = self.server
        removed = srv.core.remove_breaker(check_type_name(type_), srv.clock(), identity.name)
        if removed:
            await srv.committed_change()
        return removed

    async def open_breaker(self, identity: Identity, type_: str, reason: str = "") -> dict[str, Any]:
        """Open a task type's breaker by hand (a type without one gets one that opens only by hand): its tasks
        wait until ``close_breaker``. Returns it once committed."""
        authorize(identity, "open_breaker")
        srv = self.server
        srv.core.open_breaker(check_type_name(type_), srv.clock(), _reason(reason, identity), identity.name)
        await srv.committed_change()
        return self._breaker_map(type_)

    async def close_breaker(self, identity: Identity, type_: str, reason: str = "") -> dict[str, Any]:
        """Close a task type's breaker by hand: its tasks go again at once. Returns it once committed.

        Raises:
            NotFound: the type has no breaker.
        """
        authorize(identity, "close_breaker")
        srv = self.server
        if check_type_name(type_) not in srv.core.breakers:
            raise NotFound(f"task type {type_!r} has no breaker")
        srv.core.close_breaker(type_, srv.clock(), _reason(reason, identity), identity.name)
        await srv.committed_change()
        return self._breaker_map(type_)

    def breakers(self, identity: Identity) -> list[dict[str, Any]]:
        """Every breaker, by task type, with its state and counters (``Core.breaker_status``)."""
        authorize(identity, "breakers")
        return [_breaker_json(b) for b in self.server.core.breaker_status(self.server.clock())]

    def _breaker_map(self, type_: str) -> dict[str, Any]:
        srv = self.server
        return next(_breaker_json(b) for b in srv.core.breaker_status(srv.clock()) if b.type == type_)

    def why(self, identity: Identity, task_id: int) -> dict[str, Any] | None:
        """Why a live task does not run yet (``Core.why_waiting``): None when nothing holds it (it waits for its
        turn and a worker's credit, or it is not waiting: running or final).

        Raises:
            NotFound: no live or recently finished task has this id.
        """
        authorize(identity, "why")
        srv = self.server
        t = srv.core.tasks.get(task_id)
        if t is not None and not identity.sees(t.owner):
            raise NotFound(f"no live task {task_id} (a final task waits for nothing)")
        try:
            w = srv.core.why_waiting(task_id, srv.clock())
        except TaskMissing:
            raise NotFound(f"no live task {task_id} (a final task waits for nothing)") from None
        if w is None:
            return None
        s = w.scope
        return {"reason": w.reason, "scope": None if s is None else {"scope": s.kind, "name": s.name, "key": s.key},
                "value": w.value, "until": w.until, "detail": w.detail}

    async def server_events(self, identity: Identity, query: EventsQuery) -> list[dict[str, Any]]:
        """The stored events of no task (limits and breakers set, removed, opened, closed), oldest first: the
        latest ``limit``, or the first ones after event id ``since``.

        Raises:
            BadRequest: a limit or since out of range.
        """
        authorize(identity, "server_events")
        q = check_events_query(query)
        rows = await self.server.server_events(q.since, q.limit)
        return [r._asdict() for r in rows]


    # ------------------------------------------------------------------ periodic tasks (docs/schedules.md)
    async def add_schedule(self, identity: Identity, spec: ScheduleSpec) -> dict[str, Any]:
        """Add a schedule, or replace the one of its name (the same timing keeps its mark, last fire and paused
        flag); return it as kept (with ``next_fire``) once committed.

        Raises:
            BadRequest: a field out of range (``check_schedule``), or more than ``MAX_SCHEDULES``.
            ProtocolError: ``shutting_down`` while the server stops; ``standby`` while it waits for the lease
                another server holds (or rebuilds its state after taking it).
            StoreError: the commit failed.
        """
        authorize(identity, "schedule_add")
        s = check_schedule(spec)
        self._room_for({s.name})
        srv = self._running()
        kept = srv.core.add_schedule(s, srv.clock())
        self._audit_now(f"schedule:{s.name}", "schedule_added", _when(s), identity)
        await srv.committed_change()
        return kept.as_dict()

    async def remove_schedule(self, identity: Identity, name: str) -> None:
        """Remove a schedule (its tasks enqueued so far stay); return once committed.

        Raises:
            ScheduleMissing: ``not_found`` (a name no schedule could have too).
            StoreError: the commit failed.
        """
        authorize(identity, "schedule_remove")
        srv = self._running()
        srv.core.remove_schedule(name, srv.clock())
        self._audit_now(f"schedule:{name}", "schedule_removed", "", identity)
        await srv.committed_change()

    async def pause_schedule(self, identity: Identity, name: str, paused: bool = True) -> dict[str, Any]:
        """Pause (or resume: from the first fire time after now) a schedule; return it once committed.

        Raises:
            ScheduleMissing: ``not_found`` (a name no schedule could have too).
            StoreError: the commit failed.
        """
        authorize(identity, "schedule_pause" if paused else "schedule_resume")
        srv = self._running()
        core = srv.core
        s = (core.pause_schedule if paused else core.resume_schedule)(name, srv.clock())
        self._audit_now(f"schedule:{name}", "schedule_paused" if paused else "schedule_resumed", "", identity)
        await srv.committed_change()
        return s.as_dict()

    async def resume_schedule(self, identity: Identity, name: str) -> dict[str, Any]:
        """``pause_schedule(identity, name, False)``."""
        return await self.pause_schedule(identity, name, False)

    async def run_schedule_now(self, identity: Identity, name: str) -> int:
        """Enqueue the schedule's task now, once (paused or not; its fire times do not move); return the task's
        id once committed.

        Raises:
            ScheduleMissing: ``not_found`` (a name no schedule could have too).
            StoreError: the commit failed (nothing was enqueued).
        """
        authorize(identity, "schedule_run")
        srv = self._running()
        tid = srv.core.run_schedule_now(name, srv.clock())
        self._audit_now(f"schedule:{name}", "schedule_run", f"task {tid}", identity)
        await srv.committed_change()
        return tid

    def schedules(self, identity: Identity) -> list[dict[str, Any]]:
        """Every schedule by name, with its next fire time (None while paused) and last fire."""
        authorize(identity, "schedules")
        return [s.as_dict() for s in self.server.core.schedules_list()]

    # ------------------------------------------------------------------ dead letters (docs/dead-letters.md)
    async def dead_list(self, identity: Identity, query: DeadQuery) -> tuple[list[dict[str, Any]], int | None]:
        """A page of dead tasks that ``query`` lets through, newest first, and the cursor of the next page.

        Raises:
            BadRequest: a filter, limit or cursor out of range (``check_dead_query``).
        """
        authorize(identity, "dead_list")
        q = check_dead_query(query, "dead_list")
        return await self.server.dead_tasks(_dead_filter(q), q.limit, q.cursor)

    async def dead_retry(self, identity: Identity, query: DeadQuery) -> dict[str, Any]:
        """Retry at most ``query.limit`` of the dead tasks it lets through (the oldest first), each with its
        ``retried`` event, and one server event naming the caller; return ``{"ids", "skipped", "more"}`` once
        committed.

        Raises:
            BadRequest: a filter or limit out of range (a cursor is refused: a bulk action takes the oldest).
            ProtocolError: ``shutting_down`` while the server stops.
            StoreError: the commit failed.
        """
        authorize(identity, "dead_retry")
        return await self._dead_action("retry", identity, query)

    async def dead_delete(self, identity: Identity, query: DeadQuery) -> dict[str, Any]:
        """Delete at most ``query.limit`` of the dead tasks it lets through (the oldest first): each takes the
        ``deleted`` step to ``cancelled`` (its timeline kept), with one server event naming the caller; return
        ``{"ids", "skipped", "more"}`` once committed.

        Raises:
            BadRequest, ProtocolError, StoreError: as ``dead_retry``.
        """
        authorize(identity, "dead_delete")
        return await self._dead_action("delete", identity, query)

    async def _dead_action(self, action: str, identity: Identity, query: DeadQuery) -> dict[str, Any]:
        op = f"dead_{action}"
        q = check_dead_query(query, op)
        if q.cursor is not None:
            raise BadRequest(f"{op}: no 'cursor' (it takes the oldest matching tasks; call again for more)")
        srv = self._running()
        return await srv.dead_action(action, _dead_filter(q), q.limit, identity.name)

    def _running(self) -> Server:
        srv = self.server
        if srv.stopping.is_set():
            raise ProtocolError("the server is stopping", "shutting_down")
        return srv


def _dead_filter(q: DeadQuery) -> DeadFilter:
    return DeadFilter(q.queue, q.type, q.error, q.since, q.until)
def _check_scope(identity: Identity, specs: list[TaskSpec]) -> None:
    """Raise ``Forbidden`` for a spec whose queue is outside the caller's scope (a spec naming no queue counts
    as ``default``)."""
    allowed = identity.queues
    assert allowed is not None
    for spec in specs:
        if (spec.queue or "default") not in allowed:
            raise Forbidden(f"this credential may enqueue into the queues {sorted(allowed)} only, not "
                            f"{spec.queue or 'default'!r}")


def _when(s: Any) -> str:
    """A schedule's type and timing, in words (the audit log)."""
    return f"{s.type}: cron {s.cron} {s.tz}" if s.cron is not None else f"{s.type}: every {s.every:g}s"


def _reason(reason: str, identity: Identity) -> str:
    return (reason[:200] or "by request") + f" (by {identity.name})"


def _breaker_json(b: BreakerStatus) -> dict[str, Any]:
    c = b.config
    return {"type": b.type, "state": b.state, "until": b.until, "manual": b.manual,
            "threshold": None if c is None else c.threshold, "window": None if c is None else c.window,
            "min_calls": None if c is None else c.min_calls, "cooldown": None if c is None else c.cooldown,
            "probes": None if c is None else c.probes, "window_calls": b.window_calls,
            "window_failures": b.window_failures, "calls": b.calls, "failures": b.failures, "waiting": b.waiting,
            "changes": dict(b.changes)}
