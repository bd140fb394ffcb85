"""The typed inputs of the operations, each with its one validation.

Rules of this file
------------------
* One record per input that is more than one id, one ``check_*`` per record (or per value): the ranges and
  rules below are the only ones; the transports only decode (TCP: a msgpack map's field types; HTTP: JSON
  bodies, paths and query strings, with their own names) into these records.
* Enqueue's ``TaskSpec`` and its validation (``check_task_spec``) live in ``runq.protocol.messages``, shared
  with the SDK; the idempotency token's is ``check_token`` here.
* Every check raises ``BadRequest`` (``bad_request``) naming the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

from ...protocol.messages import MAX_CREDIT, MAX_NAME, MAX_RUN_AT, MIN_EVERY, MISSED_POLICIES, ScheduleSpec, TaskSpec
from ...protocol.retry_policy import MAX_ERROR_TYPES, MAX_TYPE_NAME
from ..core import Schedule, State
from ..core.breakers import MIN_SECONDS  # (the shortest period, window or cool-down: the core's rule)
from ..core.requests import digest
from ..errors import ScheduleError
from .errors import BadRequest

__all__ = [
    "LISTABLE_STATES",
    "LIST_LIMIT",
    "MAX_EVERY",
    "MAX_RETRY_IN",
    "MAX_SCHEDULE_PAYLOAD",
    "MAX_WAIT",
    "MIN_EVERY",
    "STATES",
    "BreakerSettings",
    "DeadQuery",
    "Done",
    "EnqueueRequest",
    "EventsQuery",
    "Fail",
    "LimitScope",
    "LimitSettings",
    "ListQuery",
    "Progress",
    "Subscription",
    "Token",
    "WaitRequest",
    "check_breaker",
    "check_credit",
    "check_dead_query",
    "check_events_query",
    "check_fail",
    "check_limit",
    "check_list",
    "check_queue_name",
    "check_schedule",
    "check_schedule_name",
    "check_scope",
    "check_subscription",
    "check_token",
    "check_type_name",
    "check_wait",
]

#: The longest ``retry_in`` a worker may ask for (as for a spec's ``delay``: under ten years).
MAX_RETRY_IN = 10 * 365 * 86400
#: The longest a ``wait`` waits, in seconds (a longer timeout, infinity included, is cut to this).
MAX_WAIT = 300.0
#: A page of ``list`` holds 1 to this many tasks.
LIST_LIMIT = 1000
#: The task states.
STATES = frozenset(s.value for s in State)
#: The states ``list`` filters by: every state a stored task can be in. ``failed`` is not one: a failed attempt
#: moves its task on at once (to ``scheduled`` for its retry, or ``dead``), in the same commit.
LISTABLE_STATES = STATES - {State.FAILED.value}

#: an enqueue's idempotency token: (client id, seq, done_below) (docs/protocol.md 5.2)
Token = tuple[str, int, "int | None", bytes]


class EnqueueRequest(NamedTuple):
    """One enqueue request: its tasks (each checked by ``check_task_spec``) and its idempotency token."""

    specs: list[TaskSpec]
    token: Token | None = None


def check_token(client_id: str | None, seq: int | None, done_below: int | None,
                specs: list[TaskSpec]) -> Token | None:
    """An enqueue's idempotency token (client_id, seq) and done_below, checked (docs/protocol.md 5.2), with the
    digest of its tasks ``specs`` (runq.app.core.requests: a token reused with other tasks is refused).

    Raises:
        BadRequest: one of client_id and seq without the other, or a value out of range.
    """
    if client_id is None and seq is None:
        return None
    if client_id is None or seq is None:
        raise BadRequest("enqueue: give 'client_id' and 'seq' together (the idempotency token)")
    if not 0 < len(client_id) <= 100:
        raise BadRequest("enqueue: 'client_id' must be 1 to 100 chars")
    if seq < 0 or (done_below is not None and done_below < 0):
        raise BadRequest("enqueue: 'seq' and 'done_below' must be >= 0")
    return client_id, seq, done_below, digest(specs)


class WaitRequest(NamedTuple):
    """``wait``: the task, and how long to wait for it to finish (seconds)."""

    id: int
    timeout: float = 60.0


def check_wait(req: WaitRequest) -> WaitRequest:
    """``req`` with its timeout capped at ``MAX_WAIT`` (<= 0: answered at once).

    Raises:
        BadRequest: a NaN timeout.
    """
    if math.isnan(req.timeout):
        raise BadRequest("wait: 'timeout' must be a number, not NaN")
    if req.timeout > MAX_WAIT:  # (infinity included) a long poll holds a server task: the client asks again
        return req._replace(timeout=MAX_WAIT)
    return req


class ListQuery(NamedTuple):
    """``list``: a page of tasks, newest first, filtered (None: any)."""

    state: str | None = None
    queue: str | None = None
    type: str | None = None
    limit: int = 100
    cursor: int | None = None


def check_list(q: ListQuery) -> ListQuery:
    """Raises: BadRequest for a limit outside 1..LIST_LIMIT, an unknown state, or a queue or type filter no
    task could match."""
    if not 1 <= q.limit <= LIST_LIMIT:
        raise BadRequest(f"limit must be between 1 and {LIST_LIMIT}")
    if q.state is not None and q.state not in LISTABLE_STATES:
        if q.state == State.FAILED.value:
            raise BadRequest(f"no task is ever listed as {q.state!r} (a failed attempt leaves its task scheduled "
                             f"for a retry, or dead); list one of {sorted(LISTABLE_STATES)}")
        raise BadRequest(f"unknown state {q.state!r}; one of {sorted(LISTABLE_STATES)}")
    if q.queue is not None:
        check_queue_name(q.queue)
    if q.type is not None and not 0 < len(q.type) <= MAX_NAME:
        raise BadRequest(f"a task type has 1 to {MAX_NAME} characters")
    return q


def check_queue_name(name: str) -> str:
    """A queue's name, as ``check_task_spec`` accepts it in a task (pause, resume, the queue filters of list
    and subscribe; ``parse_hello`` holds a worker's queues to the same rule).

    Raises:
        BadRequest: empty or longer than ``MAX_NAME`` characters.
    """
    if not 0 < len(name) <= MAX_NAME:
        raise BadRequest(f"queue name must have 1 to {MAX_NAME} characters")
    return name


def check_subscription(sub: Subscription) -> Subscription:
    """Raises: BadRequest for a queue or type filter no task could match."""
    for q in sub.queues or ():
        check_queue_name(q)
    if sub.types and not all(0 < len(t) <= MAX_NAME for t in sub.types):
        raise BadRequest(f"a task type has 1 to {MAX_NAME} characters")
    return sub


@dataclass
class Subscription:
    """Which live events a subscriber wants (``None`` means any): the input of ``subscribe``."""

    queues: frozenset[str] | None = None
    types: frozenset[str] | None = None
    ids: frozenset[int] | None = None
    #: only the tasks of this owner (set by ``Operations.subscribe`` for a caller that sees only its own tasks,
    #: never by the caller: docs/security.md)
    owner: str | None = None

    def wants(self, queue: str, type_: str, task_id: int, owner: str | None = None) -> bool:
        return (
            (self.queues is None or queue in self.queues)
            and (self.types is None or type_ in self.types)
            and (self.ids is None or task_id in self.ids)
            and (self.owner is None or owner == self.owner)
        )


class Done(NamedTuple):
    """A worker's ``done``: results ``[id, lease, result]`` (already of those types) and more credit."""

    results: list[Any]
    credit: int = 0


class Fail(NamedTuple):
    """A worker's ``fail`` of one attempt."""

    id: int
    lease: int
    error: str
    retry_in: float | None = None
    timed_out: bool = False
    retries: int | None = None
    credit: int = 0
    #: the exception's type names, most derived first (docs/protocol.md 6.5): what ``retry_on`` and
    #: ``never_retry`` match
    error_types: tuple[str, ...] = ()


def check_credit(n: int, what: str = "credit: 'n'") -> int:
    """A worker's grant of credit (<= 0 grants nothing).

    Raises:
        BadRequest: above ``MAX_CREDIT``.
    """
    if n > MAX_CREDIT:
        raise BadRequest(f"{what} must be at most {MAX_CREDIT} (nothing was granted)")
    return n


def check_fail(f: Fail) -> Fail:
    """Raises: BadRequest for a retry_in, retries or credit out of range."""
    check_credit(f.credit, "fail: 'credit'")
    if f.retry_in is not None and not 0 <= f.retry_in < MAX_RETRY_IN:  # (NaN fails both comparisons)
        raise BadRequest("fail: 'retry_in' must be a number of seconds >= 0 and under ten years")
    if f.retries is not None and not 0 <= f.retries <= 1000:
        raise BadRequest("fail: 'retries' must be between 0 and 1000")
    if f.error_types and (len(f.error_types) > MAX_ERROR_TYPES or not all(
            type(n) is str and 0 < len(n) <= MAX_TYPE_NAME for n in f.error_types)):
        raise BadRequest(f"fail: 'error_types' must be an array of at most {MAX_ERROR_TYPES} exception type names "
                         f"of 1 to {MAX_TYPE_NAME} chars")
    return f


class Progress(NamedTuple):
    """A worker's ``progress`` of one running task (``value``: msgpack, opaque)."""

    id: int
    lease: int
    value: bytes


# ---------------------------------------------------------------------- limits and breakers (issue 11)
#: the kinds of scope a limit is set on (``runq.app.core.limits.SCOPE_KINDS``)
SCOPE_KINDS = ("queue", "type")
#: the longest payload field path of a per-key limit
MAX_KEY = 200
#: the longest period, window or cool-down, in seconds (as for a spec's ``delay``: under ten years)
MAX_SECONDS = 10 * 365 * 86400
#: the largest rate, burst and concurrency cap
MAX_RATE = 1_000_000_000
#: the largest ``min_calls`` and ``probes`` of a breaker
MAX_CALLS = 1_000_000
#: a page of ``server_events`` holds 1 to this many events
EVENTS_LIMIT = 1000


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int_in(v: Any, lo: int, hi: int) -> bool:
    return type(v) is int and lo <= v <= hi


class LimitScope(NamedTuple):
    """What a limit applies to: ``kind`` (``queue`` or ``type``), the queue's or type's ``name``, and ``key``, a
    payload field (a dotted path) for one limit per value of it (``""``: one limit over the whole scope)."""

    kind: str
    name: str
    key: str = ""


def check_scope(s: LimitScope) -> LimitScope:
    """Raises: BadRequest for an unknown kind, a name no queue or type could have, or a key over ``MAX_KEY``."""
    if s.kind not in SCOPE_KINDS:
        raise BadRequest(f"limit: scope must be 'queue' or 'type', not {s.kind!r}")
    if not 0 < len(s.name) <= MAX_NAME:
        raise BadRequest(f"limit: a {s.kind} name has 1 to {MAX_NAME} characters")
    if len(s.key) > MAX_KEY:
        raise BadRequest(f"limit: 'key' (a payload field) has at most {MAX_KEY} characters")
    return s


class LimitSettings(NamedTuple):
    """``set_limit``: a rate (``rate`` tasks per ``period`` seconds, ``burst`` at once) and/or a concurrency cap
    on one scope."""

    scope: LimitScope
    rate: float | None = None
    period: float = 1.0
    burst: int = 1
    concurrency: int | None = None


def check_limit(lim: LimitSettings) -> LimitSettings:
    """Raises: BadRequest for a bad scope, neither a rate nor a cap, or a setting out of range (rate in (0, 1e9],
    period from ``MIN_SECONDS`` to ten years, burst and concurrency 1 to 1e9)."""
    check_scope(lim.scope)
    if lim.rate is None and lim.concurrency is None:
        raise BadRequest("limit: give a 'rate', a 'concurrency' cap, or both")
    if lim.rate is not None and not (_num(lim.rate) and 0 < lim.rate <= MAX_RATE):
        raise BadRequest(f"limit: 'rate' must be a number of tasks > 0 and at most {MAX_RATE} (per 'period')")
    if not (_num(lim.period) and MIN_SECONDS <= lim.period < MAX_SECONDS):
        raise BadRequest(f"limit: 'period' must be at least {MIN_SECONDS} seconds and under ten years")
    if not _int_in(lim.burst, 1, MAX_RATE):
        raise BadRequest(f"limit: 'burst' must be an integer from 1 to {MAX_RATE}")
    if lim.concurrency is not None and not _int_in(lim.concurrency, 1, MAX_RATE):
        raise BadRequest(f"limit: 'concurrency' must be an integer from 1 to {MAX_RATE} (pause the queue to stop it)")
    return lim


def check_type_name(name: str, what: str = "breaker") -> str:
    """A task type's name (a breaker's, ``why``'s).

    Raises:
        BadRequest: empty or longer than ``MAX_NAME`` characters.
    """
    if not 0 < len(name) <= MAX_NAME:
        raise BadRequest(f"{what}: a task type has 1 to {MAX_NAME} characters")
    return name


class BreakerSettings(NamedTuple):
    """``set_breaker``: when the breaker of task type ``type`` opens (failure rate ``threshold`` over ``window``
    seconds, at least ``min_calls`` outcomes) and how it tries again (``cooldown`` seconds, ``probes``)."""

    type: str
    threshold: float = 0.5
    window: float = 60.0
    min_calls: int = 10
    cooldown: float = 30.0
    probes: int = 1


def check_breaker(b: BreakerSettings) -> BreakerSettings:
    """Raises: BadRequest for a bad type name, a threshold outside (0, 1], a window or cool-down outside
    ``MIN_SECONDS`` to ten years, or min_calls / probes outside 1 to ``MAX_CALLS``."""
    check_type_name(b.type)
    if not (_num(b.threshold) and 0 < b.threshold <= 1):
        raise BadRequest("breaker: 'threshold' must be a failure rate, a number in (0, 1]")
    for name, v in (("window", b.window), ("cooldown", b.cooldown)):
        if not (_num(v) and MIN_SECONDS <= v < MAX_SECONDS):
            raise BadRequest(f"breaker: '{name}' must be at least {MIN_SECONDS} seconds and under ten years")
    for name, n in (("min_calls", b.min_calls), ("probes", b.probes)):
        if not _int_in(n, 1, MAX_CALLS):
            raise BadRequest(f"breaker: '{name}' must be an integer from 1 to {MAX_CALLS}")
    return b


class EventsQuery(NamedTuple):
    """``server_events``: the latest ``limit`` events, or (``since``: an event id) the first ones after it."""

    since: int | None = None
    limit: int = 100


def check_events_query(q: EventsQuery) -> EventsQuery:
    """Raises: BadRequest for a limit outside 1..EVENTS_LIMIT or a negative ``since``."""
    if not 1 <= q.limit <= EVENTS_LIMIT:
        raise BadRequest(f"server_events: 'limit' must be between 1 and {EVENTS_LIMIT}")
    if q.since is not None and q.since < 0:
        raise BadRequest("server_events: 'since' must be an event id >= 0")
    return q


#: The longest ``every``: ten years (as a task's ``delay``).
MAX_EVERY = 10 * 365 * 86400.0
#: A schedule's payload is kept in memory and sent in every ``schedules`` answer: at most this many bytes
#: (``MAX_SCHEDULES`` of them fit in one frame).
MAX_SCHEDULE_PAYLOAD = 8192


def check_schedule_name(name: str) -> str:
    """A schedule's name: 1 to ``MAX_NAME`` printable characters, no ``/`` (it is a path segment of the HTTP
    API: ``/api/schedules/{name}``).

    Raises:
        BadRequest: naming the rule.
    """
    if not 0 < len(name) <= MAX_NAME or not name.isprintable() or "/" in name:
        raise BadRequest(f"schedule: 'name' must have 1 to {MAX_NAME} printable characters, no '/'")
    return name


def check_schedule(spec: ScheduleSpec) -> Schedule:
    """The core's ``Schedule`` for ``spec``, every field checked: the name (``check_schedule_name``), exactly one
    of ``cron`` (parsed by cronsim, in ``tz``: an IANA zone) and ``every`` (``MIN_EVERY`` to ``MAX_EVERY``),
    ``missed`` one of ``MISSED_POLICIES``, ``max_missed`` in range, the task's type, queue, priority, timeout and
    retries as an enqueue's (``check_task_spec``), a payload of at most ``MAX_SCHEDULE_PAYLOAD`` bytes.

    Raises:
        BadRequest: naming the field (the core's ``ScheduleError`` text for the cron, zone and task fields).
    """
    check_schedule_name(spec.name)
    if spec.every is not None and not MIN_EVERY <= spec.every <= MAX_EVERY:  # (NaN fails both)
        raise BadRequest(f"schedule {spec.name!r}: 'every' must be from {MIN_EVERY:g} to {MAX_EVERY:g} seconds")
    if spec.missed not in MISSED_POLICIES:
        raise BadRequest(f"schedule {spec.name!r}: 'missed' must be one of {', '.join(MISSED_POLICIES)}")
    if len(spec.payload) > MAX_SCHEDULE_PAYLOAD:
        raise BadRequest(f"schedule {spec.name!r}: 'payload' must be at most {MAX_SCHEDULE_PAYLOAD} bytes")
    s = Schedule(spec.name, spec.type, spec.payload, spec.queue, spec.priority, spec.timeout, spec.retries,
                 spec.cron, spec.tz, spec.every, spec.missed, spec.max_missed, spec.paused)
    try:
        return s.check()
    except ScheduleError as exc:  # (cronsim's message, the zone, both or neither timing, the task's fields)
        raise BadRequest(str(exc)) from exc


# ---------------------------------------------------------------------- dead letters (docs/dead-letters.md)
#: a dead-letter call reads or changes at most this many tasks (a page; a bulk action's bound)
DEAD_LIMIT = 1000
#: the longest error text a filter looks for
MAX_ERROR_FILTER = 1000


class DeadQuery(NamedTuple):
    """``dead_list``, ``dead_retry``, ``dead_delete``: which dead tasks (each filter None for any: ``queue``,
    ``type``, ``error`` text, dead ``since`` / ``until`` unix times), at most ``limit`` of them, and for a listing
    the ``cursor`` of the previous page."""

    queue: str | None = None
    type: str | None = None
    error: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int = 100
    cursor: int | None = None


def check_dead_query(q: DeadQuery, op: str = "dead") -> DeadQuery:
    """Raises: BadRequest for a limit outside 1..DEAD_LIMIT, a queue or type name no task could have, an empty or
    over-long error text, a since or until that is not a finite time (as a task's ``run_at``), or a negative
    cursor."""
    if type(q.limit) is not int or not 1 <= q.limit <= DEAD_LIMIT:
        raise BadRequest(f"{op}: 'limit' must be an integer from 1 to {DEAD_LIMIT}")
    if q.queue is not None:
        check_queue_name(q.queue)
    if q.type is not None:
        check_type_name(q.type, op)
    if q.error is not None and not 0 < len(q.error) <= MAX_ERROR_FILTER:
        raise BadRequest(f"{op}: 'error' (text the error contains) must have 1 to {MAX_ERROR_FILTER} characters")
    for name in ("since", "until"):
        v = getattr(q, name)
        if v is not None and not (_num(v) and -MAX_RUN_AT < v < MAX_RUN_AT):
            raise BadRequest(f"{op}: '{name}' must be a unix time in seconds, finite, strictly between -1e11 and 1e11")
    if q.cursor is not None and q.cursor < 0:
        raise BadRequest(f"{op}: 'cursor' must be a task id >= 0")
    return q
