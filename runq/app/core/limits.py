"""Rate limits, concurrency caps and circuit breakers: which ready tasks may be dispatched now.

Theory of operation
-------------------
A *limit* is set on a *scope*: a queue or a task type (``Scope(kind, name)``), and optionally per *key*:
``Scope(kind, name, key="customer")`` is one limit for each value of the payload field ``customer`` among
the tasks of that queue or type (a dotted path reads nested maps: ``"account.id"``), or of the ``limit_key``
given at enqueue, for a task that has one (``task_key``: it keys every per-key limit of the task). A limit has a rate
(``rate`` tasks per ``period`` seconds, with a ``burst``), a concurrency cap (at most ``concurrency`` of its
tasks running at once across all workers), or both. A scope has at most one limit: setting it again
replaces it, at once.

The state of one limit for one key value (or for the whole scope) is a ``Bucket``:

- the rate is the Generic Cell Rate Algorithm (GCRA, the virtual-scheduling form of a token bucket): the
  bucket keeps a *theoretical arrival time* ``tat``; with the interval ``T = period / rate`` and the
  tolerance ``tau = (burst - 1) * T``, a dispatch at ``now`` is allowed when ``tat <= now + tau`` and moves
  ``tat`` to ``max(tat, now) + T``. One float per bucket, no refill loop: over any stretch of time ``d`` at
  most ``burst + d / T`` tasks pass, and a task refused now may pass at ``tat - tau`` exactly;
- the cap is a count of its tasks running (taken when a task is leased, given back when that lease ends:
  the task's ``_move`` out of ``running``, whatever ends it). Only a bucket with a cap counts (a rate costs
  nothing when a task ends); a cap set on a scope, or added to a rate, counts the tasks of it already
  running at once (``_count_running``).

A *circuit breaker* per task type (breakers.py) stops dispatching the type while it fails too often.

Where the rules act (``Dispatch._admits`` calls ``_limit_admits`` only while something is configured:
``_limited``):

- a queue's own limit (no key) refuses the head *in place*: the queue is passed over for that worker in
  this round (dispatch.py rule 2) and the tasks behind the head wait with it, as they must (the whole
  queue is limited). The bucket is marked ``blocked`` and asks for a round when it may pass again;
- every other rule (a type's limit, a per-key limit, an open breaker) refuses single tasks while others
  behind them may go, so a refused head is *held aside* (``_hold``): taken out of its ready queue, still
  ``ready``, kept on the bucket's (or breaker's) ``waiting`` list in order. ``_next_for`` then looks at the
  next head of that queue. A limited key never blocks other keys' tasks of the same queue;
- held tasks come back to the front of their queues (``_let_go``) when they may pass: as many as the
  bucket admits when its refill time comes (timer kind ``REFILL``), as many as free slots when a capped task
  ends, ``probes`` of them when a breaker turns half-open (timer kind ``COOLDOWN``), all of them when a
  breaker closes or a limit is changed or removed.

What a dispatch uses up is taken in ``Dispatch._lease`` (``_limit_take``: the rate's ``tat``, a cap slot,
a half-open breaker's probe); what ``_limit_admits`` found for the task it admitted is kept for that call
(``_admitted_*``), so a dispatch looks the rules up once. A running task's capped buckets are kept in
``_holds`` (a tuple shared by all the tasks of one (queue, type): nothing is made per task); its breaker is
found by its type when it ends, and ``_probes`` says which running tasks are probes.

Everything configured is stored: every change appends its row to the effects (``limit_rows``,
``breaker_rows``: a row, or None for a removal) and an event (``limit_events``: set, removed, and every
change of a breaker's state). At start, ``recover_limits`` takes the stored rows back.

Restarts: limits and breakers (config, and state: an open breaker stays open, its cool-down ending when it
would have; one half-open at the stop opens again and probes at once) come back from their rows. The
moving parts are not stored (a row per dispatch would cost a write per task): every rate bucket restarts
*empty*, as if its whole burst was spent at the restart (so a restart never lets more through than the
rate: at most ``burst`` early, as at any moment), caps start at zero running (the tasks that ran went back
to ``ready``), and a breaker's failure window starts empty (``min_calls`` keeps a few early failures from
opening it).

Rules of this file:

1. Pure: ``now`` is passed in; nothing here reads a clock or does I/O.
2. No cost without a rule: with nothing configured, dispatch reads one flag (``_limited``); with rules,
   a dispatch costs one dict lookup of the (queue, type) rules (cached, emptied when a rule changes) and a
   comparison per bucket.
3. A task waiting for a limit or a breaker stays ``ready``: no step of the transition table, no attempt
   counted, no event; ``why_waiting`` says what holds it back.
4. A held task has exactly one holder (``_held_by``, cleared when the task joins a ready queue by
   ``_make_ready``: a retry, a loss, a release): a held-list entry whose task was cancelled, taken back or
   held elsewhere since is skipped when it comes up.
5. Each timer kind's check skips its stale entries: a ``REFILL`` entry stands while its bucket is still
   configured and waits for that very time (``wake``); a ``COOLDOWN`` entry while its breaker is open, not
   by hand, until that very time (``until``: another opening ends at another time, or at the same one,
   where either entry does the same).
"""

from __future__ import annotations

import json
import math
import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgpack

from ...protocol.messages import TypeOptions
from .breakers import MIN_SECONDS, Breaker, BreakerConfig, BreakerRow, BreakerState, LimitError
from .model import NOT_QUEUED, CoreConfig, ReadyQueue, Task, WorkerInfo
from .records import LIMIT_COLUMNS, LimitRecord, ServerEventRecord  # (LIMIT_COLUMNS: re-exported)
from .routing import Routing
from .states import State, Transition
from .timers import COOLDOWN, REFILL

__all__ = [
    "LIMIT_COLUMNS",
    "SCOPE_KINDS",
    "BreakerStatus",
    "Bucket",
    "BucketStatus",
    "Limit",
    "LimitEvent",
    "LimitRow",
    "Limits",
    "Scope",
    "Waiting",
    "payload_key",
    "task_key",
]

READY, SCHEDULED = State.READY, State.SCHEDULED
T_SUCCEED, T_FAIL = Transition.SUCCEED, Transition.FAIL
OPEN, HALF_OPEN, CLOSED = BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED

#: the kinds of scope a limit is set on
SCOPE_KINDS = ("queue", "type")
#: Column order of a stored limit (``LimitRow``).
#: slack of the rate comparison: ``tat`` is a sum of intervals, and a refill timer set at ``tat - tau`` must
#: find the bucket open then, not one rounding error later
EPS = 1e-9
_NEVER = -math.inf
_TEN_YEARS = 10 * 365 * 86400


class Scope(NamedTuple):
    """What a limit applies to.

    Attributes:
        kind: ``"queue"`` or ``"type"``.
        name: the queue's or the task type's name.
        key: a payload field (a dotted path for nested maps): one limit per value of it; ``""`` for one limit
            over the whole scope. A task whose payload has no such field is not limited by it.
    """

    kind: str
    name: str
    key: str = ""

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}" + (f"[{self.key}]" if self.key else "")


def check_scope(scope: Any) -> Scope:
    """Return ``scope`` as a ``Scope`` (a tuple is accepted).

    Raises:
        LimitError: not a (kind, name[, key]) with a known kind and names of 1 to 200 characters.
    """
    if not isinstance(scope, tuple) or not 2 <= len(scope) <= 3:
        raise LimitError("limit: the scope must be (kind, name) or (kind, name, key)")
    s = Scope(*scope)
    if s.kind not in SCOPE_KINDS:
        raise LimitError(f"limit: scope kind must be one of {', '.join(SCOPE_KINDS)}, not {s.kind!r}")
    if not isinstance(s.name, str) or not 0 < len(s.name) <= 200:
        raise LimitError("limit: the scope's name must be a non-empty str of at most 200 chars")
    if not isinstance(s.key, str) or len(s.key) > 200:
        raise LimitError("limit: the scope's key must be a str (a payload field) of at most 200 chars")
    return s


#: A limit as the store keeps it (``LIMIT_COLUMNS``): records.py's ``LimitRecord``, the one definition.
LimitRow = LimitRecord


@dataclass(frozen=True, slots=True)
class Limit:
    """A rate limit and/or a concurrency cap on one scope.

    Attributes:
        scope: what it applies to.
        rate: at most ``rate`` tasks per ``period`` seconds (GCRA), or None.
        period: seconds.
        burst: how many may go at once after a quiet stretch (1: evenly spaced, every ``period / rate``).
        concurrency: at most this many of its tasks running at once, or None.

    Raises:
        LimitError: a setting out of range, or neither a rate nor a cap (checked when built).
    """

    scope: Scope
    rate: float | None = None
    period: float = 1.0
    burst: int = 1
    concurrency: int | None = None

    def __post_init__(self) -> None:
        if self.rate is None and self.concurrency is None:
            raise LimitError("limit: give a 'rate', a 'concurrency' cap, or both")
        if self.rate is not None and (not _number(self.rate) or not 0 < self.rate <= 1e9):
            raise LimitError("limit: 'rate' must be a number of tasks > 0 (per 'period')")
        if not _number(self.period) or not MIN_SECONDS <= self.period <= _TEN_YEARS:
            raise LimitError(f"limit: 'period' must be at least {MIN_SECONDS} seconds and under ten years")
        if type(self.burst) is not int or not 1 <= self.burst <= 1_000_000_000:
            raise LimitError("limit: 'burst' must be an int >= 1")
        if self.concurrency is not None and (type(self.concurrency) is not int
                                             or not 1 <= self.concurrency <= 1_000_000_000):
            raise LimitError("limit: 'concurrency' must be an int >= 1 (pause the queue to stop it)")

    @property
    def interval(self) -> float:
        """Seconds between two tasks at the rate (0 without a rate)."""
        return self.period / self.rate if self.rate is not None else 0.0

    def row(self) -> LimitRow:
        """The limit as stored."""
        s = self.scope
        return LimitRow(s.kind, s.name, s.key, self.rate, self.period, self.burst, self.concurrency)

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Limit:
        """A stored limit (``LIMIT_COLUMNS`` order), checked as a new one is."""
        r = LimitRow(*row)
        return cls(check_scope((r.scope, r.name, r.key or "")), r.rate, r.period, r.burst, r.concurrency)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class LimitEvent(NamedTuple):
    """A change of a limit or a breaker, for the store, the dashboard and ``/metrics``.

    Attributes:
        at: when.
        scope: ``str(Scope)`` (``"type:send_email"``, ``"queue:mail[customer]"``).
        kind: ``limit_set``, ``limit_removed``, ``breaker_set``, ``breaker_removed``, ``breaker_open``,
            ``breaker_half_open``, ``breaker_closed``.
        detail: what changed, in words.
        actor: who asked for it (the audit log: docs/security.md); None: the server itself.
    """

    at: float
    scope: str
    kind: str
    detail: str
    actor: str | None = None

    def record(self) -> ServerEventRecord:
        """The event as the store keeps it (a ``server_events`` row, numbered by the store)."""
        return ServerEventRecord(None, self.at, self.scope, self.kind, self.detail, self.actor)


class Waiting(NamedTuple):
    """Why a task is not running yet (``Core.why_waiting``).

    Attributes:
        reason: ``rate_limit``, ``concurrency_cap``, ``breaker_open``, ``paused``, ``no_worker`` (no connected
            worker handles its type), ``no_worker_with_labels`` (none that handles it has the labels it
            ``requires``: docs/routing.md), ``scheduled`` (its ``run_at`` is ahead), ``batch`` (collected for a
            batch of its type: batching.py).
        scope: the scope of the rule, when a rule holds it.
        value: the key's value, for a per-key limit.
        until: the earliest time it may go, when known.
        detail: the same in words, for a person.
    """

    reason: str
    scope: Scope | None
    value: str | None
    until: float | None
    detail: str


class BucketStatus(NamedTuple):
    """One limit's state for one key value (``value`` None: the whole scope), for the dashboard and metrics.

    Attributes:
        running: its tasks running now (counted while it has a cap).
        waiting: ready tasks held aside for it.
        blocked: its queue is held back by it (a queue's own limit refuses in place).
        next_at: with a rate, when its next task may go (``now`` when it may go now).
        admitted: tasks it let through since start; deferred: times it refused one.
    """

    scope: Scope
    value: str | None
    limit: Limit
    running: int
    waiting: int
    blocked: bool
    next_at: float | None
    admitted: int
    deferred: int


class BreakerStatus(NamedTuple):
    """A breaker's state and counters, for the dashboard and ``/metrics``."""

    type: str
    config: BreakerConfig | None
    state: str
    until: float | None
    manual: bool
    window_calls: int
    window_failures: int
    calls: int
    failures: int
    waiting: int
    changes: dict[str, int]


class Bucket:
    """The state of one limit for one key value (see the module docstring)."""

    __slots__ = ("admitted", "blocked", "cap", "deferred", "interval", "limit", "no", "running", "tat", "tau",
                 "value", "waiting", "wake")

    def __init__(self, no: int, limit: Limit, value: str | None, tat: float) -> None:
        self.no = no
        self.value = value
        self.tat = tat
        self.running = 0
        self.waiting: deque[Task] = deque()
        self.wake: float | None = None  # the time of its REFILL entry that stands
        self.blocked = False
        self.admitted = self.deferred = 0
        self.configure(limit)

    def configure(self, limit: Limit) -> None:
        """Take a new setting of its limit (``tat`` and the running count stay)."""
        self.limit = limit
        self.interval = limit.interval
        self.tau = (limit.burst - 1) * self.interval
        self.cap = limit.concurrency

    def admits(self, now: float) -> bool:
        """Whether one more task may go now."""
        return (self.cap is None or self.running < self.cap) and (
            not self.interval or self.tat <= now + self.tau + EPS)

    def next_at(self, now: float) -> float:
        """When the rate lets the next task go (``now`` if it does now)."""
        return max(now, self.tat - self.tau) if self.interval else now

    def available(self, now: float) -> int:
        """How many tasks it would let go now, one after the other."""
        n = self.cap - self.running if self.cap is not None else 1 << 62
        if self.interval:
            tat = max(self.tat, now)
            n = min(n, int((now + self.tau - tat) / self.interval + EPS) + 1 if tat <= now + self.tau + EPS else 0)
        return max(n, 0)

    def take(self, now: float) -> None:
        """One of its tasks is dispatched."""
        if self.interval:
            self.tat = max(now, self.tat) + self.interval
        if self.cap is not None:
            self.running += 1
        self.admitted += 1

    def idle(self, now: float) -> bool:
        """Nothing of it matters any more: a new bucket would behave the same (a per-key bucket may go)."""
        return not self.running and not self.waiting and not self.blocked and self.wake is None and self.tat <= now


class _Rules(NamedTuple):
    """The rules that apply to the tasks of one (queue, type), found once (``Limits._rules_for``)."""

    in_place: tuple[Bucket, ...]  # the queue's own limit: refuses in place
    breaker: Breaker | None
    aside: tuple[Bucket, ...]  # the type's own limit: refuses by holding aside
    fixed: tuple[Bucket, ...]  # in_place + aside
    caps: tuple[Bucket, ...]  # those of fixed with a cap (a task's ``_holds`` entry: shared, not made per task)
    keyed: tuple[Limit, ...]  # per-key limits of the queue and the type


_NO_RULES = _Rules((), None, (), (), (), ())


def payload_key(payload: bytes | None, path: str) -> str | None:
    """The value of the field ``path`` (dotted for nested maps) of a payload that is a msgpack (or JSON) map,
    as a str; None when the payload is no map, lacks the field, or holds a map or a list there."""
    if not payload:
        return None
    try:
        v: Any = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
        try:
            v = json.loads(payload)
        except ValueError:
            return None
    for part in path.split("."):
        if not isinstance(v, dict):
            return None
        v = v.get(part)
    if v is None or isinstance(v, (dict, list)):
        return None
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v)


def task_key(t: Task, path: str) -> str | None:
    """The key value of task ``t`` for a per-key limit on the payload field ``path``: its ``limit_key`` when it
    was given one at enqueue (the same for every per-key limit it is subject to: docs/limits.md), else the
    payload's field (``payload_key``)."""
    k = t.limit_key
    return k if k is not None else payload_key(t.payload, path)


class Limits(Routing):
    """Rate limits, concurrency caps and circuit breakers (see the module docstring)."""

    def __init__(self, config: CoreConfig | None = None, rng: random.Random | None = None, next_id: int = 1,
                 next_event_id: int = 1) -> None:
        super().__init__(config, rng, next_id, next_event_id)
        self._limit_of: dict[Scope, Limit] = {}
        self._scope_bucket: dict[Scope, Bucket] = {}  # limits without a key: their one bucket
        self._keyed: dict[Scope, dict[str, Bucket]] = {}  # per-key limits: a bucket per value seen
        self._buckets: dict[int, Bucket] = {}  # every bucket of a configured limit, by number (REFILL key)
        self._bucket_no = 0
        self._sweep_at = 1024
        #: limits restored at start: when their buckets were last emptied (the restart)
        self._empty_at: dict[Scope, float] = {}
        #: running tasks dispatched as a half-open breaker's probes
        self._probes: set[int] = set()
        self._rules: dict[tuple[str, str], _Rules] = {}
        #: what ``_limit_admits`` found for the task it admitted last (for ``_limit_take``): the task, its
        #: buckets, those with a cap, its breaker
        self._admitted_task: Task | None = None
        self._admitted_buckets: tuple[Bucket, ...] = ()
        self._admitted_caps: tuple[Bucket, ...] = ()
        self._admitted_breaker: Breaker | None = None

    # ------------------------------------------------------------------ limits from task definitions
    def worker_joined(
        self, worker_id: str, now: float, queues: tuple[str, ...] = ("default",), concurrency: int = 1,
        name: str | None = None, host: str | None = None, pid: int | None = None, types: tuple[str, ...] = (),
        type_options: dict[str, TypeOptions] | None = None, labels: dict[str, str] | None = None,
    ) -> WorkerInfo:
        """A worker joins (``Routing.worker_joined``); the limits its task definitions set (``rate`` and
        ``concurrency`` in hello ``type_options``) become their types' limits, replacing the one set when it
        differs (the latest worker to join with a type's definition sets it, as for its other options;
        docs/limits.md, "From task definitions"). An equal one is left alone: nothing is written."""
        w = super().worker_joined(worker_id, now, queues, concurrency, name, host, pid, types, type_options, labels)
        for type_, o in (type_options or {}).items():
            if o.rate is None and o.concurrency is None:
                continue
            scope = Scope("type", type_)
            period = o.period if o.period is not None else 1.0
            want = Limit(scope, o.rate, period, 1, o.concurrency)
            if self._limit_of.get(scope) != want:
                self.set_limit(scope, now, rate=o.rate, period=period, concurrency=o.concurrency)
        return w

    # ------------------------------------------------------------------ limits: set, remove, read
    def set_limit(self, scope: Scope | tuple[str, ...], now: float, rate: float | None = None, period: float = 1.0,
                  burst: int = 1, concurrency: int | None = None, actor: str | None = None) -> Limit:
        """Set (or replace) the limit of ``scope``; it applies at once, to the tasks already ready too (``actor``:
        who asks, for the audit log; the same in the other changes below).

        Returns:
            The limit as set.

        Raises:
            LimitError: a bad scope or setting (nothing changes).
        """
        lim = Limit(check_scope(scope), rate, period, burst, concurrency)
        self._install(lim)
        self._empty_at.pop(lim.scope, None)
        self._limit_rows.append((lim.scope, lim.row()))
        what = []
        if rate is not None:
            what.append(f"{rate:g} per {period:g}s, burst {burst}")
        if concurrency is not None:
            what.append(f"at most {concurrency} running")
        self._limit_events.append(LimitEvent(now, str(lim.scope), "limit_set", "; ".join(what), actor))
        return lim

    def remove_limit(self, scope: Scope | tuple[str, ...], now: float, actor: str | None = None) -> Limit | None:
        """Remove the limit of ``scope`` (its held tasks come back at once); return it, or None if none was set.

        Raises:
            LimitError: a bad scope.
        """
        s = check_scope(scope)
        lim = self._limit_of.pop(s, None)
        if lim is None:
            return None
        self._empty_at.pop(s, None)
        one = self._scope_bucket.pop(s, None)
        buckets = [one] if one is not None else list(self._keyed.pop(s, {}).values())
        for b in buckets:
            del self._buckets[b.no]
            b.wake = None
            self._let_go(b, len(b.waiting))
        self._changed()
        self._limit_rows.append((s, None))
        self._limit_events.append(LimitEvent(now, str(s), "limit_removed", "", actor))
        return lim

    def limits(self) -> list[Limit]:
        """The configured limits, by scope."""
        return [self._limit_of[s] for s in sorted(self._limit_of)]

    def limit_status(self, now: float) -> list[BucketStatus]:
        """Every limit's state: per scope, its one bucket or one per key value in use."""
        out = []
        for s in sorted(self._limit_of):
            one = self._scope_bucket.get(s)
            buckets = [one] if one is not None else [self._keyed[s][v] for v in sorted(self._keyed.get(s, {}))]
            for b in buckets:
                out.append(BucketStatus(s, b.value, b.limit, b.running, len(b.waiting), b.blocked,
                                        b.next_at(now) if b.interval else None, b.admitted, b.deferred))
        return out

    # ------------------------------------------------------------------ breakers: set, remove, open, close, read
    def set_breaker(self, type_: str, now: float, threshold: float = 0.5, window: float = 60.0, min_calls: int = 10,
                    cooldown: float = 30.0, probes: int = 1, actor: str | None = None) -> Breaker:
        """Set (or replace) the circuit breaker of task type ``type_``; its state is kept.

        Raises:
            LimitError: a bad type name or setting (nothing changes).
        """
        check_scope(("type", type_))
        cfg = BreakerConfig(threshold, window, min_calls, cooldown, probes)
        br = self.breakers.get(type_)
        if br is None:
            br = self.breakers[type_] = Breaker(type_, cfg)
        else:
            br.config = cfg
            if br.state is HALF_OPEN:  # the new number of probes, less those that passed or still run
                out = sum(1 for tid in self._probes if (t := self.tasks.get(tid)) is not None and t.type == type_)
                br.probes_left = max(0, cfg.probes - br.passed - out)
                self._let_go(br, br.probes_left)
        self._changed()
        self._breaker_rows.append((type_, br.row()))
        self._limit_events.append(LimitEvent(
            now, str(Scope("type", type_)), "breaker_set",
            f"open at {threshold:g} failure rate over {window:g}s (at least {min_calls} calls), "
            f"cool-down {cooldown:g}s, {probes} probe(s)", actor))
        return br

    def audit(self, now: float, scope: str, kind: str, detail: str, actor: str | None) -> None:
        """Record an operator's action that is no limit's or breaker's change (a queue paused, a worker drained, a
        schedule changed, a task cancelled or retried, a bulk retry or delete of dead tasks): an event of no
        task with its actor, written with the next commit (the audit log: docs/security.md; the same commit as
        the tasks it changed)."""
        self._limit_events.append(LimitEvent(now, scope, kind, detail, actor))

    def remove_breaker(self, type_: str, now: float, actor: str | None = None) -> bool:
        """Remove the breaker of ``type_`` (its held tasks come back at once); False if it had none."""
        br = self.breakers.pop(type_, None)
        if br is None:
            return False
        self._let_go(br, len(br.waiting))
        self._changed()
        self._breaker_rows.append((type_, None))
        self._limit_events.append(LimitEvent(now, str(Scope("type", type_)), "breaker_removed", "", actor))
        return True

    def open_breaker(self, type_: str, now: float, reason: str = "by request", actor: str | None = None) -> Breaker:
        """Open the breaker of ``type_`` by hand: it stays open until ``close_breaker`` (no cool-down). A type
        without a breaker gets one that only opens by hand.

        Raises:
            LimitError: a bad type name.
        """
        check_scope(("type", type_))
        br = self.breakers.get(type_)
        if br is None:
            br = self.breakers[type_] = Breaker(type_, None)
            self._changed()
        self._breaker_to(br, OPEN, now, reason, manual=True, actor=actor)
        return br

    def close_breaker(self, type_: str, now: float, reason: str = "by request", actor: str | None = None) -> Breaker:
        """Close the breaker of ``type_`` by hand: its tasks go again at once.

        Raises:
            LimitError: ``type_`` has no breaker.
        """
        br = self.breakers.get(type_)
        if br is None:
            raise LimitError(f"breaker: task type {type_!r} has no breaker")
        self._breaker_to(br, CLOSED, now, reason, actor=actor)
        return br

    def breaker_status(self, now: float) -> list[BreakerStatus]:
        """Every breaker's state and counters, by task type."""
        out = []
        for t in sorted(self.breakers):
            br = self.breakers[t]
            calls, failures = br.window_counts(now)
            out.append(BreakerStatus(t, br.config, br.state.value, br.until, br.manual, calls, failures, br.calls,
                                     br.failures, len(br.waiting), dict(br.changes)))
        return out

    # ------------------------------------------------------------------ restart
    def recover_limits(self, limits: Iterable[tuple[Any, ...]], breakers: Iterable[tuple[Any, ...]], now: float) -> None:
        """Take back the stored limits (``LIMIT_COLUMNS`` rows) and breakers (``BREAKER_COLUMNS`` rows) at
        start: what comes back and what starts afresh is in the module docstring (Restarts).

        Raises:
            LimitError: a stored row out of range.
        """
        for row in limits:
            lim = Limit.from_row(row)
            self._install(lim)
            self._empty_at[lim.scope] = now
            one = self._scope_bucket.get(lim.scope)
            if one is not None:
                one.tat = now + lim.burst * lim.interval
        for row in breakers:
            r = BreakerRow(*row)
            check_scope(("type", r.type))
            cfg = None if r.threshold is None else BreakerConfig(
                r.threshold, r.window if r.window is not None else 60.0,
                r.min_calls if r.min_calls is not None else 10, r.cooldown if r.cooldown is not None else 30.0,
                r.probes if r.probes is not None else 1)
            br = self.breakers[r.type] = Breaker(r.type, cfg)
            if r.state == CLOSED.value:
                continue
            if r.manual or cfg is None:
                br.enter(OPEN, now, manual=True)
                continue
            br.enter(OPEN, now)  # (a half-open one too: its probes were lost with the stop)
            br.until = r.until if r.state == OPEN.value and r.until is not None else now
            self.timers.arm((br.until, COOLDOWN, br.type))
        self._changed()

    def restore_limits(self, limits: Iterable[tuple[tuple[str, ...], Any]], breakers: Iterable[tuple[str, Any]],
                       events: Iterable[ServerEventRecord]) -> None:
        """Put back the limit and breaker writes of a batch that failed to commit, for the next one to retry
        (runq/app/core/commits.py): each limit scope and breaker type it wrote is written again as it is
        NOW (its record, or a removal: never an older record, which a later batch may have replaced), and
        its events go back before the ones made since, in their order.
        """
        for key, _ in limits:
            s = Scope(*key)
            lim = self._limit_of.get(s)
            self._limit_rows.append((s, lim.row() if lim is not None else None))
        for type_, _ in breakers:
            br = self.breakers.get(type_)
            self._breaker_rows.append((type_, br.row() if br is not None else None))
        self._limit_events[:0] = [LimitEvent(e.at, e.scope, e.kind, e.detail, e.actor) for e in events]

    def stored_limits(self) -> tuple[list[LimitRow], list[BreakerRow]]:
        """Every limit and breaker as stored rows (to write them all again, as after a failed commit)."""
        return ([self._limit_of[s].row() for s in sorted(self._limit_of)],
                [self.breakers[t].row() for t in sorted(self.breakers)])

    # ------------------------------------------------------------------ why a task waits
    def _waiting_reason(self, t: Task, now: float) -> Waiting | None:
        """Why the live task ``t`` does not run (see ``Core.why_waiting``)."""
        if t.state is SCHEDULED:
            return Waiting("scheduled", None, None, t.run_at, f"scheduled to run at {t.run_at}")
        if t.state is not READY:
            return None
        holder = self._held_by.get(t.id)
        if holder is not None and t.queued == NOT_QUEUED:
            return self._reason(holder, t, now)
        q = self.queues.get(t.queue)
        if q is not None and q.paused:
            return Waiting("paused", Scope("queue", t.queue), None, None, f"queue {t.queue!r} is paused")
        if t.queued == NOT_QUEUED and t.requires is not None and not self._fitted(t.queue, t):
            need = ", ".join(f"{k}={v}" for k, v in json.loads(t.requires).items())
            return Waiting("no_worker_with_labels", Scope("queue", t.queue), None, None,
                           f"no connected worker of queue {t.queue!r} that handles task type {t.type!r} has the "
                           f"labels it requires: {need}")
        if t.queued == NOT_QUEUED:
            return Waiting("no_worker", Scope("type", t.type), None, None,
                           f"no connected worker of queue {t.queue!r} handles task type {t.type!r}")
        if not self._limited:
            return None
        r = self._rules.get((t.queue, t.type)) or self._rules_for(t.queue, t.type)
        for b in r.in_place:
            if not b.admits(now):
                return self._reason(b, t, now)
        if r.breaker is not None and not r.breaker.admits():
            return self._reason(r.breaker, t, now)
        for b in r.aside:
            if not b.admits(now):
                return self._reason(b, t, now)
        for lim in r.keyed:
            v = task_key(t, lim.scope.key)
            b2 = self._keyed.get(lim.scope, {}).get(v) if v is not None else None
            if b2 is not None and not b2.admits(now):
                return self._reason(b2, t, now)
        return None

    def _reason(self, holder: Bucket | Breaker, t: Task, now: float) -> Waiting:
        if isinstance(holder, Breaker):
            state = "open" if holder.state is OPEN else f"{holder.state.value}, its probes taken"
            until = holder.until if holder.state is OPEN else None
            by = " (by hand)" if holder.manual else (f" until {until:.3f}" if until is not None else "")
            return Waiting("breaker_open", Scope("type", holder.type), None, until,
                           f"circuit breaker of task type {holder.type!r} is {state}{by}")
        lim = holder.limit
        scope = lim.scope
        of = f"{scope}" + (f"={holder.value}" if holder.value is not None else "")
        if holder.cap is not None and holder.running >= holder.cap:
            return Waiting("concurrency_cap", scope, holder.value, None,
                           f"concurrency cap of {of}: {holder.running} of {holder.cap} running")
        at = holder.next_at(now)
        return Waiting("rate_limit", scope, holder.value, at,
                       f"rate limit of {of}: {lim.rate:g} per {lim.period:g}s, burst {lim.burst}; next at {at:.3f}")

    # ------------------------------------------------------------------ dispatch's side
    def _limit_admits(self, q: ReadyQueue, t: Task, now: float) -> bool:
        """The limits' clause of ``Dispatch._admits``: may ``t``, the head of ``q``, go now? A refusal by a
        rule that holds single tasks holds ``t`` aside (it is no longer the head)."""
        r = self._rules.get((t.queue, t.type))
        if r is None:
            r = self._rules_for(t.queue, t.type)
        if r is _NO_RULES:
            return True
        in_place, br, aside, buckets, caps, keyed = r
        if keyed and len(self._buckets) >= self._sweep_at:
            self._sweep(now)
        for b in in_place:  # (Bucket.admits, inline: this runs once per dispatch)
            cap = b.cap
            if (cap is not None and b.running >= cap) or (b.interval and b.tat > now + b.tau + EPS):
                b.deferred += 1
                b.blocked = True
                self._wake(b, now)
                return False
        if br is not None and not br.admits():
            self._hold(q, t, br)
            return False
        for b in aside:
            cap = b.cap
            if (cap is not None and b.running >= cap) or (b.interval and b.tat > now + b.tau + EPS):
                self._refuse(q, t, b, now)
                return False
        if keyed:
            found = list(buckets)
            for lim in keyed:
                v = task_key(t, lim.scope.key)
                if v is None:
                    continue
                b = self._keyed_bucket(lim, v, now)
                if not b.admits(now):
                    self._refuse(q, t, b, now)
                    return False
                found.append(b)
            buckets = tuple(found)
            caps = tuple(b for b in found if b.cap is not None)
        self._admitted_task = t
        self._admitted_buckets = buckets
        self._admitted_caps = caps
        self._admitted_breaker = br
        return True

    def _limit_take(self, t: Task, now: float) -> None:
        """``t`` is being leased (``Dispatch._lease``): take what it uses up from the rules that let it go."""
        if self._admitted_task is t:
            buckets, caps, br = self._admitted_buckets, self._admitted_caps, self._admitted_breaker
        else:  # (another head was admitted after it: find its rules again)
            r = self._rules.get((t.queue, t.type)) or self._rules_for(t.queue, t.type)
            found = list(r.fixed)
            for lim in r.keyed:
                v = task_key(t, lim.scope.key)
                if v is not None:
                    found.append(self._keyed_bucket(lim, v, now))
            buckets, caps, br = tuple(found), tuple(b for b in found if b.cap is not None), r.breaker
        self._admitted_task = None
        for b in buckets:  # (Bucket.take, inline)
            if b.interval:
                tat = b.tat
                b.tat = (tat if tat > now else now) + b.interval  # noqa: FURB136 - a comparison, not a call
            b.admitted += 1
        if caps:
            for b in caps:
                b.running += 1
            self._holds[t.id] = caps
        if br is not None and br.take():
            self._probes.add(t.id)

    def _run_ended(self, task: Task, tr: Transition, now: float) -> None:
        """``task`` left ``running`` by ``tr`` (called by ``_move``): its cap slots are free, its breaker
        learns the outcome."""
        caps = self._holds.pop(task.id, ()) if self._holds else ()
        for b in caps:
            b.running -= 1
            if b.cap is None:  # (its cap was removed since)
                continue
            if b.waiting:
                n = b.available(now)
                if n:
                    self._let_go(b, n)
                else:
                    self._wake(b, now)
            if b.blocked:
                b.blocked = False
                self._pump_needed = True
        probe = False
        if self._probes and task.id in self._probes:
            self._probes.discard(task.id)
            probe = True
        br = self.breakers.get(task.type) if self.breakers else None
        if br is not None:
            ok = True if tr is T_SUCCEED else False if tr is T_FAIL else None
            nxt = br.outcome(ok, probe, now)
            if nxt is not None:
                if nxt is OPEN and br.state is HALF_OPEN:
                    why = f"probe task {task.id} failed"
                elif nxt is OPEN:
                    calls, failures = br.window_counts(now)
                    why = f"{failures} of {calls} attempts failed in the window"
                else:
                    why = f"{br.passed} probe(s) succeeded"
                self._breaker_to(br, nxt, now, why)

    # ------------------------------------------------------------------ holding and bringing back
    def _refuse(self, q: ReadyQueue, t: Task, b: Bucket, now: float) -> None:
        b.deferred += 1
        self._hold(q, t, b)
        self._wake(b, now)

    def _hold(self, q: ReadyQueue, t: Task, holder: Bucket | Breaker) -> None:
        """Take ``t``, the head of ``q``, out of the ready order and keep it on ``holder``'s list (still ready)."""
        q.take(t)
        holder.waiting.append(t)
        self._held_by[t.id] = holder

    def _let_go(self, holder: Bucket | Breaker, n: int) -> int:
        """Put back at the front of their queues, in their order, up to ``n`` tasks ``holder`` held (rule 4)."""
        d, held_by, tasks = holder.waiting, self._held_by, self.tasks
        back: list[Task] = []
        while d and len(back) < n:
            t = d.popleft()
            if held_by.get(t.id) is not holder:
                continue
            del held_by[t.id]
            if t.state is READY and t.queued == NOT_QUEUED and tasks.get(t.id) is t:
                back.append(t)
        for t in reversed(back):
            self._queue(t.queue).push(t, front=True)
        if back:
            self._pump_needed = True
        return len(back)

    def _wake(self, b: Bucket, now: float) -> None:
        """Arm ``b``'s refill entry for when its rate lets a task go, unless it stands already (rule 5)."""
        if not b.interval or b.tat <= now + b.tau + EPS:
            return  # (held for its cap: a task ending wakes it)
        when = b.tat - b.tau
        if b.wake != when:
            b.wake = when
            self.timers.arm((when, REFILL, b.no))

    def _refill_check(self, entry: tuple[Any, ...]) -> float | None:
        """A ``REFILL`` entry stands while its bucket is configured and waits for that time (rule 5)."""
        when, _, no = entry
        b = self._buckets.get(no)
        return when if b is not None and b.wake == when else None

    def _refilled(self, entry: tuple[Any, ...], now: float) -> None:
        """A bucket's rate lets tasks go again: bring back as many as it admits, ask for a round."""
        b = self._buckets[entry[2]]
        b.wake = None
        if b.blocked:
            b.blocked = False
            self._pump_needed = True
        if b.waiting:
            n = b.available(now)
            self._let_go(b, n)
            if b.waiting and b.interval:  # the rest: when the next token comes, if those go now
                when = max(b.tat, now) + n * b.interval - b.tau
                b.wake = when
                self.timers.arm((when, REFILL, b.no))

    # ------------------------------------------------------------------ breakers' changes
    def _breaker_to(self, br: Breaker, state: BreakerState, now: float, reason: str, manual: bool = False,
                    actor: str | None = None) -> None:
        """Apply a breaker's change of state: the event, the row, the cool-down timer, the tasks back."""
        old = br.state
        br.enter(state, now, manual)
        if state is OPEN:
            if br.until is not None:
                self.timers.arm((br.until, COOLDOWN, br.type))
        elif state is HALF_OPEN:
            self._let_go(br, br.probes_left)
            self._pump_needed = True
        else:
            self._let_go(br, len(br.waiting))
            self._pump_needed = True
        self._breaker_rows.append((br.type, br.row()))
        hand = " (by hand)" if manual else ""
        self._limit_events.append(LimitEvent(now, str(Scope("type", br.type)), f"breaker_{state.value}",
                                             f"{old.value} -> {state.value}{hand}: {reason}", actor))
        self._log("warning" if state is OPEN else "info",
                  f"circuit breaker of task type {br.type!r}: {old.value} -> {state.value}{hand}: {reason}")

    def _cooldown_check(self, entry: tuple[Any, ...]) -> float | None:
        """A ``COOLDOWN`` entry stands while its breaker is in that same automatic opening (rule 5)."""
        when, _, type_ = entry
        br = self.breakers.get(type_)
        ok = br is not None and br.state is OPEN and not br.manual and br.until == when
        return when if ok else None

    def _cooled(self, entry: tuple[Any, ...], now: float) -> None:
        """The cool-down is over: half-open, a few probes may go."""
        self._breaker_to(self.breakers[entry[2]], HALF_OPEN, now, "cool-down over")

    # ------------------------------------------------------------------ the rules' index
    def _install(self, lim: Limit) -> None:
        """Configure ``lim`` (new or replacing its scope's): buckets updated in place, held tasks back; a new
        scope counts the tasks of it already running (a cap set now holds at once)."""
        s = lim.scope
        old = self._limit_of.get(s)
        self._limit_of[s] = lim
        if not s.key:
            b = self._scope_bucket.get(s)
            if b is None:
                b = self._scope_bucket[s] = self._new_bucket(lim, None, _NEVER)
            buckets = [b]
        else:
            buckets = list(self._keyed.setdefault(s, {}).values())
        for b in buckets:
            b.configure(lim)
            b.wake = None
            if b.blocked:
                b.blocked = False
            self._let_go(b, len(b.waiting))
        if lim.concurrency is not None and (old is None or old.concurrency is None):
            self._count_running(lim)
        self._changed()

    def _count_running(self, lim: Limit) -> None:
        """Count in ``lim``'s buckets the tasks of its scope that run now and are not counted yet (dispatched
        before it had a cap)."""
        s, holds = lim.scope, self._holds
        for w in self.workers.values():
            for t in w.running.values():
                if (t.queue if s.kind == "queue" else t.type) != s.name:
                    continue
                if s.key:
                    v = task_key(t, s.key)
                    if v is None:
                        continue
                    b = self._keyed_bucket(lim, v, _NEVER)
                else:
                    b = self._scope_bucket[s]
                h = holds.get(t.id, ())
                if b not in h:
                    b.running += 1
                    holds[t.id] = (*h, b)

    def _new_bucket(self, lim: Limit, value: str | None, tat: float) -> Bucket:
        self._bucket_no += 1
        b = self._buckets[self._bucket_no] = Bucket(self._bucket_no, lim, value, tat)
        return b

    def _keyed_bucket(self, lim: Limit, value: str, now: float) -> Bucket:
        d = self._keyed[lim.scope]
        b = d.get(value)
        if b is None:
            empty = self._empty_at.get(lim.scope)
            b = d[value] = self._new_bucket(lim, value, _NEVER if empty is None else empty + lim.burst * lim.interval)
        return b

    def _sweep(self, now: float) -> None:
        """Forget the per-key buckets that a new one would replace exactly (memory stays bounded by the keys
        in use, not by every key ever seen)."""
        for d in self._keyed.values():
            for v in [v for v, b in d.items() if b.idle(now)]:
                del self._buckets[d.pop(v).no]
        self._sweep_at = max(1024, 2 * len(self._buckets))

    def _changed(self) -> None:
        """A rule changed: the (queue, type) index is found again, a round looks at the queues again."""
        self._rules.clear()
        self._admitted_task = None
        self._limited = bool(self._limit_of or self.breakers)
        self._pump_needed = True

    def _rules_for(self, queue: str, type_: str) -> _Rules:
        """The rules of the tasks of (``queue``, ``type_``), found and kept until a rule changes."""
        qb = self._scope_bucket.get(Scope("queue", queue))
        tb = self._scope_bucket.get(Scope("type", type_))
        br = self.breakers.get(type_)
        keyed = tuple(lim for s, lim in sorted(self._limit_of.items())
                      if s.key and ((s.kind == "queue" and s.name == queue) or (s.kind == "type" and s.name == type_)))
        in_place = (qb,) if qb is not None else ()
        aside = (tb,) if tb is not None else ()
        fixed = in_place + aside
        caps = tuple(b for b in fixed if b.cap is not None)
        r = _Rules(in_place, br, aside, fixed, caps, keyed) if (qb or tb or br or keyed) else _NO_RULES
        self._rules[(queue, type_)] = r
        return r
