"""The runq messages: names, fields and validation.

Theory of operation
-------------------
Every frame carries one msgpack map; its ``op`` key names the message. This
module is the single place that knows which fields each message has and what
type they must be. Decoded maps are validated here into frozen records
(``TaskSpec``, ``Hello``) or checked in place (hot-path worker messages, which
stay plain maps for speed), raising ``ProtocolError("bad_message")`` that names
the message and the field.

Payloads, results and progress values are application data: the SDK encodes
them with msgpack into a ``bin`` field, so the server stores and forwards them
without decoding (a client in another language may put any msgpack value in).
docs/protocol.md is the normative description of every message below.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .errors import ProtocolError
from .retry_policy import check_retry_policy, policy_text

__all__ = [
    "CLIENT_OPS",
    "COALESCE_RULES",
    "MAX_BATCH_SIZE",
    "MAX_BATCH_WAIT",
    "MAX_CREDIT",
    "MAX_LABELS",
    "MAX_NAME",
    "MAX_RUN_AT",
    "MAX_SCHEDULES",
    "MIN_EVERY",
    "MISSED_POLICIES",
    "PROTOCOL_VERSION",
    "ROLES",
    "SUPPORTED_VERSIONS",
    "WATCHER_OPS",
    "WORKER_OPS",
    "Hello",
    "ScheduleSpec",
    "TaskSpec",
    "TypeOptions",
    "check_batch",
    "check_request",
    "check_task_spec",
    "choose_version",
    "is_int",
    "optional",
    "parse_hello",
    "parse_schedule",
    "parse_task_spec",
    "require",
]

PROTOCOL_VERSION = 1
#: The most task types a worker may announce in its hello, and their total length in characters: every
#: ``workers`` answer and worker event carries them, so a few workers must not fill a frame.
MAX_TYPES = 1000
MAX_TYPES_CHARS = 32_768
SUPPORTED_VERSIONS = (1,)
ROLES = ("client", "worker", "watcher")

#: ops a client may send (requests; each may carry ``rid``).
CLIENT_OPS = frozenset(
    {
        "enqueue", "get", "wait", "cancel", "retry", "events", "list",
        "pause", "resume", "queues", "workers", "subscribe", "ping", "stats", "drain", "types",
        # periodic tasks (docs/protocol.md 5.10)
        "schedules", "schedule_add", "schedule_remove", "schedule_pause", "schedule_resume", "schedule_run",
    }
)
#: ops a worker may send.
WORKER_OPS = frozenset({"credit", "heartbeat", "progress", "done", "fail", "release", "ping"})
#: a watcher is a read-only client.
WATCHER_OPS = frozenset({"get", "wait", "events", "list", "queues", "workers", "subscribe", "ping", "stats",
                         "types", "schedules"})
#: the ops of rate limits, concurrency caps and circuit breakers (docs/limits.md, docs/protocol.md 5.4): a client's,
#: and the reads a watcher's too.
LIMIT_READ_OPS = frozenset({"limits", "breakers", "why", "server_events"})
LIMIT_OPS = LIMIT_READ_OPS | frozenset({"set_limit", "remove_limit", "set_breaker", "remove_breaker", "open_breaker",
                                        "close_breaker"})
CLIENT_OPS = CLIENT_OPS | LIMIT_OPS
WATCHER_OPS = WATCHER_OPS | LIMIT_READ_OPS
#: the dead-letter ops (docs/dead-letters.md, docs/protocol.md 5.11): a client's; listing a watcher's too.
DEAD_OPS = frozenset({"dead_list", "dead_retry", "dead_delete"})
CLIENT_OPS = CLIENT_OPS | DEAD_OPS
WATCHER_OPS = WATCHER_OPS | {"dead_list"}

#: Queue names and task types have 1 to MAX_NAME characters, wherever they are given (docs/protocol.md 5.1).
MAX_NAME = 200
#: The most credit a worker may grant in one message (``credit``'s ``n``, ``done``/``fail``'s ``credit``), and the
#: most it may hold: grants beyond are capped there, so that a worker's credit fits any 64-bit reader.
MAX_CREDIT = 1_000_000_000
#: ``run_at`` must lie strictly between -MAX_RUN_AT and MAX_RUN_AT (about year 5138): NaN and infinities too
#: are refused (docs/protocol.md section 5.1).
MAX_RUN_AT = 1e11

#: The most schedules a server keeps, and a worker's hello may declare (a ``schedules`` answer holds them all).
MAX_SCHEDULES = 1000
#: The shortest ``every`` of a schedule, in seconds (a finer cadence is a loop, not a schedule: each fire time
#: is a task, a commit and a stored mark).
MIN_EVERY = 1.0
#: What the fire times a schedule missed while the server was down get (docs/schedules.md).
MISSED_POLICIES = ("skip", "once", "all")

_MISSING = object()
#: Integers on the wire must fit in a signed 64-bit integer (docs/protocol.md section 0).
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def require(msg: dict[str, Any], field: str, kind: type | tuple[type, ...]) -> Any:
    """Return ``msg[field]``, raising ``ProtocolError`` if absent or of the wrong type."""
    value = msg.get(field, _MISSING)
    if value is _MISSING:
        raise ProtocolError(f"{msg.get('op')}: missing field {field!r}")
    if not _is(value, kind):
        raise ProtocolError(f"{msg.get('op')}: field {field!r} must be {_name(kind)}, got {_got(value)}")
    return value


def optional(msg: dict[str, Any], field: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
    """Return ``msg[field]`` or ``default`` when absent or nil; type-checked like ``require``."""
    value = msg.get(field)
    if value is None:
        return default
    if not _is(value, kind):
        raise ProtocolError(f"{msg.get('op')}: field {field!r} must be {_name(kind)}, got {_got(value)}")
    return value


def _got(value: Any) -> str:
    if type(value) is int and not _INT64_MIN <= value <= _INT64_MAX:
        return "an int beyond 64 bits"
    return type(value).__name__


def _is(value: Any, kind: type | tuple[type, ...]) -> bool:
    kinds = _tuple(kind)
    if isinstance(value, bool) and bool not in kinds:
        return False
    if type(value) is int and not _INT64_MIN <= value <= _INT64_MAX:
        return False  # section 0: integers must fit in 64 bits (SQLite could not store a larger one)
    return isinstance(value, kinds)


def is_int(value: Any) -> bool:
    """True for an int that fits in a signed 64-bit integer; never for a bool."""
    return type(value) is int and _INT64_MIN <= value <= _INT64_MAX


def _tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _name(kind: type | tuple[type, ...]) -> str:
    return " or ".join(k.__name__ for k in _tuple(kind))


_NUM = (int, float)


@dataclass(frozen=True, slots=True)
class Hello:
    """The first frame of every connection, validated."""

    version: int
    role: str
    token: str | None = None
    name: str | None = None
    host: str | None = None
    pid: int | None = None
    queues: tuple[str, ...] = ("default",)
    concurrency: int = 1
    types: tuple[str, ...] = ()
    type_options: dict[str, TypeOptions] = field(default_factory=dict)
    schedules: tuple[ScheduleSpec, ...] = ()
    #: what the worker offers for routing (docs/routing.md): a task that ``requires`` labels goes only to a
    #: worker whose labels include every one of them
    labels: dict[str, str] = field(default_factory=dict)
    #: runs of an earlier session of this worker it still has (running, or their report not sent), for a server
    #: that recovered them to take back: ``(task id, attempt, lease, earlier worker id)`` (docs/operations.md)
    held: tuple[tuple[int, int, int, str], ...] = ()


#: At most this many entries in a worker's hello ``held``.
MAX_HELD = 100_000
#: At most this many labels on a worker (hello ``labels``) or required by a task (``requires``).
MAX_LABELS = 32
#: A label's name and its value: 1 to 64 chars of ASCII letters, digits and ``_ . - : /``.
_LABEL_RE = re.compile(r"[A-Za-z0-9_.:/-]{1,64}")


def check_labels(raw: Any, where: str, code: str = "bad_message") -> dict[str, str]:
    """Validate a map of labels (hello ``labels``, a task's ``requires``): at most ``MAX_LABELS`` pairs, each
    name and value 1 to 64 chars of ASCII letters, digits and ``_ . - : /``. Returns it sorted by name.

    Raises:
        ProtocolError: naming ``where``.
    """
    if (type(raw) is not dict or len(raw) > MAX_LABELS
            or not all(type(k) is str and type(v) is str and _LABEL_RE.fullmatch(k) and _LABEL_RE.fullmatch(v)
                       for k, v in raw.items())):
        raise ProtocolError(f"{where} must be a map of at most {MAX_LABELS} labels, name -> value, each 1 to 64 "
                            "chars of ASCII letters, digits and _ . - : /", code)
    return dict(sorted(raw.items()))


class TypeOptions(NamedTuple):
    """What a worker's definition of a task type sets (hello ``type_options``): a task enqueued by that type's
    name without these fields gets them (``None``: not set, the server's default applies)."""

    queue: str | None = None
    priority: int | None = None
    timeout: float | None = None
    retries: int | None = None
    #: the definition's limit on its type (docs/limits.md, "From task definitions"): ``rate`` tasks per
    #: ``period`` seconds and/or at most ``concurrency`` running; set as the type's limit when the worker joins
    rate: float | None = None
    period: float | None = None
    concurrency: int | None = None
    #: the definition's retry policy (docs/tasks.md, "Retry policies"), as stored (``policy_text``): the layer
    #: between a task's own and the server's default
    retry_policy: str | None = None
    #: labels a worker must have to be given a task of the type enqueued by name without ``requires``
    #: (docs/routing.md); None: none
    requires: dict[str, str] | None = None
    #: the type is batched (docs/batching.md): dispatch hands a worker up to ``batch_size`` ready tasks of it at
    #: once, collected for at most ``batch_wait`` seconds; None: not batched
    batch_size: int | None = None
    batch_wait: float | None = None


def choose_version(offered: list[int]) -> int | None:
    """Return the highest version both sides speak, or ``None``."""
    common = set(offered) & set(SUPPORTED_VERSIONS)
    return max(common) if common else None


def parse_hello(msg: dict[str, Any]) -> Hello:
    """Validate a ``hello`` map.

    Raises:
        ProtocolError: ``hello_required`` if the op is not hello, ``bad_message``
            for a bad field, ``version`` when no version is in common.
    """
    if msg.get("op") != "hello":
        raise ProtocolError(f"first frame must be hello, got {msg.get('op')!r}", "hello_required")
    versions = msg.get("versions")
    if versions is None:
        versions = [require(msg, "version", int)]
    if not isinstance(versions, list) or not all(is_int(v) for v in versions):
        raise ProtocolError("hello: 'versions' must be a list of int")
    version = choose_version(versions)
    if version is None:
        raise ProtocolError(f"no common protocol version: server speaks {list(SUPPORTED_VERSIONS)}", "version")
    role = require(msg, "role", str)
    if role not in ROLES:
        raise ProtocolError(f"hello: role must be one of {ROLES}, got {role!r}")
    queues = optional(msg, "queues", list, ["default"])
    if not queues or not all(isinstance(q, str) and 0 < len(q) <= MAX_NAME for q in queues):
        raise ProtocolError(f"hello: 'queues' must be a non-empty list of queue names (str of 1 to {MAX_NAME} chars)")
    concurrency = optional(msg, "concurrency", int, 1)
    if concurrency < 1:
        raise ProtocolError("hello: 'concurrency' must be >= 1")
    types = optional(msg, "types", list, [])
    if (len(types) > MAX_TYPES or not all(isinstance(t, str) and 0 < len(t) <= 200 for t in types)
            or sum(map(len, types)) > MAX_TYPES_CHARS):
        raise ProtocolError(f"hello: 'types' must be a list of at most {MAX_TYPES} task types (non-empty str of at "
                            f"most 200 chars, {MAX_TYPES_CHARS} chars in all)")
    type_options = _type_options(optional(msg, "type_options", dict, {}))
    schedules = optional(msg, "schedules", list, [])
    if len(schedules) > MAX_SCHEDULES:
        raise ProtocolError(f"hello: 'schedules' may declare at most {MAX_SCHEDULES} schedules")
    return Hello(
        version=version,
        role=role,
        token=optional(msg, "token", str),
        name=optional(msg, "name", str),
        host=optional(msg, "host", str),
        pid=optional(msg, "pid", int),
        queues=tuple(queues),
        concurrency=concurrency,
        types=tuple(dict.fromkeys(types)),
        type_options=type_options,
        schedules=tuple(parse_schedule(d, "hello") for d in schedules),
        labels=check_labels(msg["labels"], "hello: 'labels'") if msg.get("labels") is not None else {},
        held=_held(optional(msg, "held", list, [])),
    )


def _held(raw: list[Any]) -> tuple[tuple[int, int, int, str], ...]:
    """Validate hello ``held``: ``[[task id, attempt, lease, worker id], ...]``."""
    if len(raw) > MAX_HELD:
        raise ProtocolError(f"hello: 'held' may name at most {MAX_HELD} tasks")
    out = []
    for item in raw:
        if not (isinstance(item, list) and len(item) == 4 and all(type(v) is int for v in item[:3])
                and isinstance(item[3], str) and 0 < len(item[3]) <= MAX_NAME):
            raise ProtocolError("hello: each entry of 'held' must be [task id, attempt, lease, worker id] (three ints "
                                f"and a str of 1 to {MAX_NAME} chars), got {_got(item)}")
        out.append((item[0], item[1], item[2], item[3]))
    return tuple(out)


def _type_options(raw: dict[Any, Any]) -> dict[str, TypeOptions]:
    """Validate hello ``type_options``: ``{type: {queue?, priority?, timeout?, retries?, rate?, period?,
    concurrency?, retry_policy?}}`` (a ``retry_policy`` is kept as ``policy_text``).

    Raises:
        ProtocolError: ``bad_message``, naming what is wrong.
    """
    if len(raw) > MAX_TYPES:
        raise ProtocolError(f"hello: 'type_options' may describe at most {MAX_TYPES} task types")
    out: dict[str, TypeOptions] = {}
    for type_, o in raw.items():
        if not (isinstance(type_, str) and 0 < len(type_) <= 200) or type(o) is not dict:
            raise ProtocolError("hello: 'type_options' must map task types (non-empty str of at most 200 chars) "
                                "to maps")
        o = {**o, "op": "hello"}  # (for the messages of require/optional)
        opts = TypeOptions(queue=optional(o, "queue", str), priority=optional(o, "priority", int),
                           timeout=_float(optional(o, "timeout", _NUM)), retries=optional(o, "retries", int))
        try:
            check_task_spec(TaskSpec(type_, queue=opts.queue, priority=opts.priority, timeout=opts.timeout,
                                     retries=opts.retries))
            opts = _type_limit(o, opts)
            if o.get("retry_policy") is not None:
                rp = check_retry_policy(o["retry_policy"], "'retry_policy'", "bad_message")
                opts = opts._replace(retry_policy=None if rp is None else policy_text(rp))
            opts = _type_batch(o, opts)
        except ProtocolError as exc:
            raise ProtocolError(f"hello: 'type_options' of {type_!r}: {exc}") from None
        out[type_] = opts
    return out


#: the range of a definition's limit (as the ``set_limit`` operation's: runq.app.ops.inputs)
_MAX_LIMIT = 1_000_000_000
_MIN_PERIOD, _MAX_PERIOD = 0.001, 10 * 365 * 86400


def _type_limit(o: dict[str, Any], opts: TypeOptions) -> TypeOptions:
    """The ``rate``, ``period`` and ``concurrency`` of a type's options, checked (``bad_message``)."""
    rate = _float(optional(o, "rate", _NUM))
    period = _float(optional(o, "period", _NUM))
    concurrency = optional(o, "concurrency", int)
    if rate is not None and not (0 < rate <= _MAX_LIMIT):  # (NaN fails it)
        raise ProtocolError(f"'rate' must be a number of tasks > 0 and at most {_MAX_LIMIT}")
    if period is not None and (rate is None or not (_MIN_PERIOD <= period < _MAX_PERIOD)):
        raise ProtocolError(f"'period' needs a 'rate' and must be from {_MIN_PERIOD} seconds to under ten years")
    if concurrency is not None and not 1 <= concurrency <= _MAX_LIMIT:
        raise ProtocolError(f"'concurrency' must be between 1 and {_MAX_LIMIT}")
    if rate is None and concurrency is None:
        return opts
    return opts._replace(rate=rate, period=period if period is not None or rate is None else 1.0,
                         concurrency=concurrency)


#: A batch's ``max_size`` (hello ``type_options`` ``batch``, docs/batching.md): 1 .. 10,000 tasks.
MAX_BATCH_SIZE = 10_000
#: A batch's ``max_wait``: 0 .. 1 hour.
MAX_BATCH_WAIT = 3600.0


def check_batch(max_size: Any, max_wait: Any, code: str = "bad_message") -> tuple[int, float]:
    """Validate a batch declaration: ``max_size`` an int 1..``MAX_BATCH_SIZE``, ``max_wait`` seconds 0..1 hour.

    Raises:
        ProtocolError: with ``code``, naming the field.
    """
    if not is_int(max_size) or not 1 <= max_size <= MAX_BATCH_SIZE:
        raise ProtocolError(f"batch 'max_size' must be an int from 1 to {MAX_BATCH_SIZE}", code)
    if type(max_wait) not in (int, float) or not 0 <= max_wait <= MAX_BATCH_WAIT:  # (NaN fails it)
        raise ProtocolError(f"batch 'max_wait' must be a number of seconds from 0 to {MAX_BATCH_WAIT:g}", code)
    return int(max_size), float(max_wait)


def _type_batch(o: dict[str, Any], opts: TypeOptions) -> TypeOptions:
    """The ``requires`` and ``batch`` of a type's options, checked (``bad_message``)."""
    requires = o.get("requires")
    if requires is not None:
        opts = opts._replace(requires=check_labels(requires, "'requires'") or None)
    batch = o.get("batch")
    if batch is not None:
        if type(batch) is not dict:
            raise ProtocolError("'batch' must be a map with 'max_size' and 'max_wait'")
        size, wait = check_batch(batch.get("max_size"), batch.get("max_wait", 0.0))
        opts = opts._replace(batch_size=size, batch_wait=wait)
    return opts


#: The rules of a coalesce key (task spec ``coalesce``, docs/tasks.md "Coalescing"): what a later enqueue with
#: the key of a waiting task does to it. ``replace``: the newest payload wins; ``keep``: the first one stays.
COALESCE_RULES = ("replace", "keep")


class TaskSpec(NamedTuple):
    """A validated request to enqueue one task (``parse_task_spec`` builds it from the wire and checks it).

    A named tuple rather than a frozen dataclass: it is built once per enqueued task, and a frozen dataclass's
    ``__init__`` (one ``object.__setattr__`` per field) was ~10% of the server's CPU in
    ``python -m bench.throughput --only enqueue_batch``. Code that builds one by hand should pass it through
    ``check_task_spec``.

    Attributes:
        type: handler name.
        payload: msgpack-encoded argument value (opaque to the server).
        queue: queue name; None for the queue its type's workers announced (``TypeOptions``), else ``default``.
        priority: higher runs first; FIFO within one priority; None as for ``queue`` (else 0).
        delay: seconds from now before the task may run (exclusive with run_at).
        run_at: unix time before which the task may not run.
        timeout: seconds a run may take; None as for ``queue`` (else the server default).
        retries: how many retries after the first failed attempt; None as for ``queue`` (else the default).
        key: unique key; while a non-final task holds it, enqueue returns that task.
        requires: labels a worker must have to be given it (docs/routing.md); None or empty: any worker.
        retry_policy: this task's retry policy (a ``check_retry_policy`` map: backoff, ``retry_on``,
            ``never_retry``), over its type's and the server's (docs/tasks.md); None: theirs.
        coalesce_key: while a task enqueued with this key waits (ready or scheduled), an enqueue with it merges
            into that task (docs/tasks.md, "Coalescing"): its id is returned, nothing is created.
        coalesce: how it merges: ``replace`` (the default: the newest payload wins) or ``keep`` (the first stays).
        limit_key: the key value of the per-key limits the task is subject to (docs/limits.md), instead of the
            payload field the limit names.
    """

    type: str
    payload: bytes = b"\xc0"
    queue: str | None = None
    priority: int | None = None
    delay: float | None = None
    run_at: float | None = None
    timeout: float | None = None
    retries: int | None = None
    key: str | None = None
    requires: dict[str, str] | None = None
    retry_policy: dict[str, Any] | None = None
    coalesce_key: str | None = None
    coalesce: str | None = None
    limit_key: str | None = None


def check_task_spec(spec: TaskSpec) -> TaskSpec:
    """Return ``spec`` if every field is within its limits.

    Raises:
        ProtocolError: ``bad_request``, naming the field.
    """
    if not spec.type or len(spec.type) > 200:
        raise ProtocolError("task: 'type' must be a non-empty str of at most 200 chars", "bad_request")
    if spec.queue is not None and not 0 < len(spec.queue) <= MAX_NAME:
        raise ProtocolError("task: 'queue' must be a non-empty str of at most 200 chars", "bad_request")
    if spec.priority is not None and not -(2**31) <= spec.priority < 2**31:
        raise ProtocolError("task: 'priority' must fit in 32 bits", "bad_request")
    if spec.delay is not None and spec.run_at is not None:
        raise ProtocolError("task: give 'delay' or 'run_at', not both", "bad_request")
    if spec.run_at is not None and not -MAX_RUN_AT < spec.run_at < MAX_RUN_AT:  # (NaN fails both; past means now)
        raise ProtocolError("task: 'run_at' must be a unix time in seconds, finite and strictly between -1e11 and "
                            "1e11", "bad_request")
    if spec.delay is not None and not 0 <= spec.delay < 10 * 365 * 86400:
        raise ProtocolError("task: 'delay' must be >= 0 seconds and under ten years", "bad_request")
    if spec.timeout is not None and not 0 < spec.timeout <= 7 * 86400:
        raise ProtocolError("task: 'timeout' must be > 0 and at most 7 days", "bad_request")
    if spec.retries is not None and not 0 <= spec.retries <= 1000:
        raise ProtocolError("task: 'retries' must be between 0 and 1000", "bad_request")
    if spec.key is not None and not 0 < len(spec.key) <= 1000:
        raise ProtocolError("task: 'key' must be a non-empty str of at most 1000 chars", "bad_request")
    if spec.retry_policy is not None:
        spec = spec._replace(retry_policy=check_retry_policy(spec.retry_policy))
    if spec.coalesce_key is not None and not 0 < len(spec.coalesce_key) <= 1000:
        raise ProtocolError("task: 'coalesce_key' must be a non-empty str of at most 1000 chars", "bad_request")
    if spec.coalesce is not None and (spec.coalesce not in COALESCE_RULES or spec.coalesce_key is None):
        raise ProtocolError(f"task: 'coalesce' must be one of {', '.join(COALESCE_RULES)}, with a 'coalesce_key'",
                            "bad_request")
    if spec.limit_key is not None and not 0 < len(spec.limit_key) <= MAX_NAME:
        raise ProtocolError(f"task: 'limit_key' must be a non-empty str of at most {MAX_NAME} chars", "bad_request")
    if spec.requires is not None:
        return spec._replace(requires=check_labels(spec.requires, "task: 'requires'", "bad_request") or None)
    return spec


def parse_task_spec(d: Any) -> TaskSpec:
    """Validate one entry of an ``enqueue`` message's ``tasks`` list."""
    if type(d) is not dict:
        raise ProtocolError("enqueue: each task must be a map")
    payload = d.get("payload", b"\xc0")
    if type(payload) is not bytes:
        if payload is not None:
            raise ProtocolError("enqueue: 'payload' must be bin (the msgpack encoding of the value)")
        payload = b"\xc0"  # (nil and absent are the same: the default, section 0)
    type_ = d.get("type")
    n = len(d)
    if type(type_) is str and 0 < len(type_) <= 200 and (n == 1 or (n == 2 and "payload" in d)):
        return TaskSpec(type_, payload)  # fast path: a type and a payload, nothing else to check
    d.setdefault("op", "enqueue")
    return check_task_spec(TaskSpec(
        type=require(d, "type", str),
        payload=payload,
        queue=optional(d, "queue", str),
        priority=optional(d, "priority", int),
        delay=_float(optional(d, "delay", _NUM)),
        run_at=_float(optional(d, "run_at", _NUM)),
        timeout=_float(optional(d, "timeout", _NUM)),
        retries=optional(d, "retries", int),
        key=optional(d, "key", str),
        requires=optional(d, "requires", dict),
        retry_policy=optional(d, "retry_policy", dict),
        coalesce_key=optional(d, "coalesce_key", str),
        coalesce=optional(d, "coalesce", str),
        limit_key=optional(d, "limit_key", str),
    ))


def _float(v: float | None) -> float | None:
    return None if v is None else float(v)


class ScheduleSpec(NamedTuple):
    """A periodic task as the wire carries it (``schedule_add``, a worker's hello ``schedules``; docs/protocol.md
    5.10): the fields' types are checked here (``parse_schedule``), their values by the server (the operations
    layer's ``check_schedule``: a bad cron expression, zone or range is ``bad_request``).

    Attributes:
        name: the schedule's name (declaring it again replaces that schedule).
        type, payload, queue, priority, timeout, retries: the task each fire time enqueues, as in ``TaskSpec``.
        cron: a cron expression (five fields, or six with seconds first), on the wall clock of ``tz``.
        tz: an IANA time zone name.
        every: seconds between fire times, instead of ``cron``.
        missed: ``skip``, ``once`` or ``all`` (``MISSED_POLICIES``).
        max_missed: with ``all``, at most this many missed fire times get a task.
        paused: add it paused.
    """

    name: str
    type: str
    payload: bytes = b"\xc0"
    queue: str | None = None
    priority: int | None = None
    timeout: float | None = None
    retries: int | None = None
    cron: str | None = None
    tz: str = "UTC"
    every: float | None = None
    missed: str = "skip"
    max_missed: int = 10
    paused: bool = False

    def entry(self) -> dict[str, Any]:
        """The wire map (fields left at their default are left out)."""
        out: dict[str, Any] = {"name": self.name, "type": self.type}
        for k, default in (("payload", b"\xc0"), ("queue", None), ("priority", None), ("timeout", None),
                           ("retries", None), ("cron", None), ("tz", "UTC"), ("every", None), ("missed", "skip"),
                           ("max_missed", 10), ("paused", False)):
            v = getattr(self, k)
            if v != default or type(v) is not type(default):
                out[k] = v
        return out


def parse_schedule(d: Any, op: str = "schedule_add") -> ScheduleSpec:
    """The fields of one schedule map, type-checked (values are the server's to check).

    Raises:
        ProtocolError: ``bad_message``, naming the field.
    """
    if type(d) is not dict:
        raise ProtocolError(f"{op}: a schedule must be a map")
    d = {**d, "op": op}
    payload = d.get("payload", b"\xc0")
    if payload is None:
        payload = b"\xc0"
    if type(payload) is not bytes:
        raise ProtocolError(f"{op}: 'payload' must be bin (the msgpack encoding of the value)")
    return ScheduleSpec(
        name=require(d, "name", str), type=require(d, "type", str), payload=payload,
        queue=optional(d, "queue", str), priority=optional(d, "priority", int),
        timeout=_float(optional(d, "timeout", _NUM)), retries=optional(d, "retries", int),
        cron=optional(d, "cron", str), tz=optional(d, "tz", str, "UTC"), every=_float(optional(d, "every", _NUM)),
        missed=optional(d, "missed", str, "skip"), max_missed=optional(d, "max_missed", int, 10),
        paused=optional(d, "paused", bool, False))


# ---------------------------------------------------------------------- the client's side
_Kind = type | tuple[type, ...]
#: The fields of each client request whose type the server checks (docs/protocol.md section 5), and whether
#: each is required: ``(name, type, required)``. A field of a wrong type is ``bad_message``, which closes the
#: connection, so a client checks them before it sends (``check_request``).
REQUEST_FIELDS: dict[str, tuple[tuple[str, _Kind, bool], ...]] = {
    "enqueue": (("tasks", list, True), ("client_id", str, False), ("seq", int, False), ("done_below", int, False)),
    "get": (("id", int, True),),
    "wait": (("id", int, True), ("timeout", _NUM, False)),
    "cancel": (("id", int, True),),
    "retry": (("id", int, True),),
    "events": (("id", int, True),),
    "list": (("state", str, False), ("queue", str, False), ("type", str, False), ("limit", int, False),
             ("cursor", int, False)),
    "pause": (("queue", str, True),),
    "resume": (("queue", str, True),),
    "drain": (("worker", str, True),),
    "subscribe": (("queues", list, False), ("types", list, False), ("ids", list, False)),
    "schedule_add": (("schedule", dict, True),),
    "schedule_remove": (("name", str, True),),
    "schedule_pause": (("name", str, True),),
    "schedule_resume": (("name", str, True),),
    "schedule_run": (("name", str, True),),
}
#: the limits and breakers ops (5.4), as above
REQUEST_FIELDS.update({
    "set_limit": (("scope", str, True), ("name", str, True), ("key", str, False), ("rate", _NUM, False),
                  ("period", _NUM, False), ("burst", int, False), ("concurrency", int, False)),
    "remove_limit": (("scope", str, True), ("name", str, True), ("key", str, False)),
    "set_breaker": (("type", str, True), ("threshold", _NUM, False), ("window", _NUM, False),
                    ("min_calls", int, False), ("cooldown", _NUM, False), ("probes", int, False)),
    "remove_breaker": (("type", str, True),),
    "open_breaker": (("type", str, True), ("reason", str, False)),
    "close_breaker": (("type", str, True), ("reason", str, False)),
    "why": (("id", int, True),),
    "server_events": (("since", int, False), ("limit", int, False)),
})
#: the dead-letter ops (5.11): the filter of each, as above
_DEAD_FILTER: tuple[tuple[str, _Kind, bool], ...] = (
    ("queue", str, False), ("type", str, False), ("error", str, False), ("since", _NUM, False),
    ("until", _NUM, False), ("limit", int, False))
REQUEST_FIELDS.update({
    "dead_list": (*_DEAD_FILTER, ("cursor", int, False)),
    "dead_retry": _DEAD_FILTER,
    "dead_delete": _DEAD_FILTER,
})
#: The fields of a task spec (5.1), as ``REQUEST_FIELDS`` (``payload`` is bin when present: never nil).
TASK_FIELDS: tuple[tuple[str, _Kind, bool], ...] = (
    ("type", str, True), ("queue", str, False), ("priority", int, False), ("delay", _NUM, False),
    ("run_at", _NUM, False), ("timeout", _NUM, False), ("retries", int, False), ("key", str, False),
    ("requires", dict, False), ("retry_policy", dict, False), ("coalesce_key", str, False), ("coalesce", str, False),
    ("limit_key", str, False))
_FILTER_ITEMS: dict[str, type] = {"queues": str, "types": str, "ids": int}
#: the fields of a task with nothing but a type and a payload (``check_request``'s fast path)
_PLAIN_TASK = frozenset({"type", "payload"})


def check_request(msg: dict[str, Any]) -> None:
    """Check the types of a client request's fields before it is sent, as the server will (docs/protocol.md
    section 5): a wrong type would be answered ``bad_message`` and close the connection, under every request
    in flight on it. Values out of range are left to the server (``bad_request``: an answer to that request
    alone). An op this table does not know is not checked (the server answers it).

    Raises:
        TypeError: a field has the wrong type, or a required one is missing; the text names the field.
    """
    op = msg["op"]
    fields = REQUEST_FIELDS.get(op)
    if fields is None:
        return
    for name, kind, required in fields:
        _check_field(op, msg, name, kind, required)
    if op == "enqueue":
        for d in msg["tasks"]:
            if (type(d) is dict and d.keys() <= _PLAIN_TASK and type(d.get("type")) is str
                    and type(d.get("payload", b"")) is bytes):
                continue  # (the usual task, a type and a payload: one look; a batch of 1,000 was ~13% slower)
            if type(d) is not dict:
                raise TypeError(f"enqueue: each task must be a map, got {_got(d)}")
            if "payload" in d and type(d["payload"]) is not bytes:
                raise TypeError("enqueue: 'payload' must be bin (the msgpack encoding of the value)")
            for name, kind, required in TASK_FIELDS:
                _check_field(op, d, name, kind, required)
    elif op == "schedule_add":
        try:
            parse_schedule(msg["schedule"])
        except ProtocolError as exc:
            raise TypeError(str(exc)) from None
    elif op == "subscribe":
        for name, item in _FILTER_ITEMS.items():
            values = msg.get(name)
            if values is not None and not all(_is(v, item) for v in values):
                raise TypeError(f"subscribe: {name!r} must be an array of {item.__name__}")


def _check_field(op: str, msg: dict[str, Any], name: str, kind: _Kind, required: bool) -> None:
    value = msg.get(name)
    if value is None:
        if required:
            raise TypeError(f"{op}: missing field {name!r}")
    elif not _is(value, kind):
        raise TypeError(f"{op}: field {name!r} must be {_name(kind)}, got {_got(value)}")
