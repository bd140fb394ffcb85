"""Typed tasks: one definition, imported by the app that enqueues and by the worker that runs it.

Theory of operation
-------------------
``@task`` turns a function into a ``TaskDef``. Its signature is the task's contract:

- the producer binds arguments with ``send_email.call(to="a@b.c")`` (checked by mypy through the
  ``ParamSpec`` of the function, and at run time against its signature) and enqueues the resulting ``Call``
  with any client: ``await client.enqueue(send_email.call(...))``, ``sync_client.enqueue(...)``, or the
  shortcut ``await send_email.enqueue(...)`` on the process's open ``Client``;
- the wire payload is a msgpack map of argument names to values, so a client in another language, the
  HTTP API and ``runq enqueue`` enqueue the same task by its type name with a JSON object;
- the worker calls the function with those arguments, and gives it the ``TaskContext`` through the
  parameter annotated ``TaskContext`` (or named ``ctx``), always by keyword, never by counting positions;
- a parameter annotated with a pydantic model or a msgspec ``Struct`` (or ``Model | None``) is validated
  when the call is bound (a dict is accepted and checked) and rebuilt on the worker; a return value of such
  a type is rebuilt by ``TaskHandle.result()``.

Rules of this file:

1. Options (queue, priority, timeout, retries, delay, key) are set on the definition and may be changed per
   enqueue. The worker's definition is what a task runs with: its timeout caps the attempt and its
   retries replace the task's (docs/tasks.md). So an enqueue may shorten a timeout the definition sets, but
   not lengthen it, and may not change retries the definition sets: such an enqueue is refused with
   ``ValueError`` instead of being silently overruled by the worker.
2. Nothing here does I/O: ``Call`` holds the encoded payload and builds the wire entry; clients send it.
"""

from __future__ import annotations

import dataclasses
import inspect
import string
import types
import typing
from collections.abc import Callable, Coroutine, Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, Protocol, TypeVar, overload

from .errors import ProtocolError, RunqError
from .limits import parse_rate
from .messages import COALESCE_RULES, ScheduleSpec, TaskSpec, check_batch, check_task_spec
from .retry_policy import RetryPolicy
from .schedules import Cron, Every, Timing, spec_of
from .values import encode_value, model_kind

if TYPE_CHECKING:
    from .client import Client
    from .worker import TaskContext

__all__ = [
    "BadArguments",
    "Batch",
    "BatchItem",
    "Call",
    "NoClient",
    "SyncTaskHandle",
    "TaskDef",
    "TaskHandle",
    "TaskOptions",
    "coalesce_entry",
    "default_client",
    "no_worker_hint",
    "schedule_specs_of",
    "task",
    "tasks_in",
]

P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


class BadArguments(ValueError):
    """A task's payload does not fit its definition's signature (or a model refused it).

    Raised by ``TaskDef.call`` in the producer and by ``TaskDef.arguments`` in the worker, where the attempt
    fails with no retry: the same payload would fail again.
    """


class NoClient(RunqError):
    """``TaskDef.enqueue`` found no open ``Client`` in this process."""

    code = "no_client"


@dataclasses.dataclass(frozen=True, slots=True)
class TaskOptions:
    """Options of a task definition; ``None`` leaves the server's default.

    Attributes:
        queue: queue name (server default ``default``).
        priority: higher runs first.
        timeout: seconds one attempt may run.
        retries: retries after a failed attempt.
        delay: seconds before each enqueued task may run.
        key: unique key: a ``str.format`` template over the arguments (``"welcome-{to}"``), or a function
            called with the task's arguments that returns the key.
        rate_limit: at most this many tasks of the type start per period, across all workers (``"10/s"``,
            ``"600/m"``, ``"5/2s"``): set as the type's limit when a worker with this definition joins
            (docs/limits.md).
        concurrency: at most this many tasks of the type run at once, across all workers (the same way).
        requires: labels a worker must have to be given each task (``{"region": "eu"}``, docs/routing.md).
        retry_policy: how its failed tasks are retried (``runq.RetryPolicy``: backoff or a list of delays,
            ``retry_on``, ``never_retry``): sent in the worker's hello as the type's policy, under a policy given
            at enqueue and over the server's default (docs/tasks.md, "Retry policies").
        requires: labels a worker must have to be given each task (``{"region": "eu"}``, docs/routing.md); sent
            in the worker's hello too, so that a task enqueued by type name without ``requires`` gets them.
        batch: the type is batched (``Batch``, docs/batching.md): the function takes a list of ``BatchItem``.
    """

    queue: str | None = None
    priority: int | None = None
    timeout: float | None = None
    retries: int | None = None
    delay: float | None = None
    key: str | Callable[..., str] | None = None
    rate_limit: str | None = None
    concurrency: int | None = None
    requires: dict[str, str] | None = None
    retry_policy: RetryPolicy | None = None
    batch: Batch | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Batch:
    """A batched task type (``@runq.task(batch=runq.Batch(max_size=50, max_wait=2.0))``, docs/batching.md).

    The server collects the ready tasks of the type, per queue, and hands a worker up to ``max_size`` of them at
    once: as soon as ``max_size`` are collected, or ``max_wait`` seconds after the first one was (with what is
    there then). The function is called once per batch with a list of ``BatchItem``.

    Attributes:
        max_size: the most tasks in one batch, 1 to 10,000.
        max_wait: seconds the first task collected waits for the batch to fill, 0 to 3,600.

    Raises:
        ValueError: out of range.
    """

    max_size: int
    max_wait: float = 1.0

    def __post_init__(self) -> None:
        try:
            check_batch(self.max_size, self.max_wait)
        except ProtocolError as exc:
            raise ValueError(str(exc)) from None


@dataclasses.dataclass(frozen=True, slots=True)
class BatchItem:
    """One task of a batch, as a batched handler receives it.

    Attributes:
        id: the task's id.
        payload: its payload, decoded (any msgpack value: what ``.item(...)`` or an enqueue by name gave).
        attempt: its attempt number (1 for the first).
    """

    id: int
    payload: Any
    attempt: int


# ---------------------------------------------------------------------- argument conversion
class _Model:
    """Encode and rebuild values of one pydantic model or msgspec Struct type."""

    __slots__ = ("kind", "optional", "type")

    def __init__(self, kind: str, type_: type, optional: bool) -> None:
        self.kind = kind
        self.type = type_
        self.optional = optional

    def validate(self, value: Any) -> Any:
        """The value as an instance of the type (validating a dict or any other input)."""
        if value is None and self.optional:
            return None
        if isinstance(value, self.type):
            return value
        if self.kind == "pydantic":
            return self.type.model_validate(value)  # type: ignore[attr-defined]
        import msgspec

        return msgspec.convert(value, self.type)

    def dump(self, value: Any) -> Any:
        """The value as plain msgpack-able data, validated first."""
        value = self.validate(value)
        if value is None:
            return None
        if self.kind == "pydantic":
            return value.model_dump(mode="json")
        import msgspec

        return msgspec.to_builtins(value)


def _model_of(annotation: Any) -> _Model | None:
    """The model an annotation names (``Model`` or ``Model | None``), if it is a pydantic or msgspec one."""
    optional = False
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) != 1:
            return None
        optional, annotation = True, members[0]
    if not isinstance(annotation, type):
        return None
    kind = model_kind(annotation)
    return None if kind is None else _Model(kind, annotation, optional)


def _is_context(annotation: Any) -> bool:
    if isinstance(annotation, str):  # an annotation that could not be resolved
        return annotation.replace(" ", "").split("|")[0].rsplit(".", 1)[-1] == "TaskContext"
    from .worker import TaskContext

    if annotation is TaskContext:
        return True
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return TaskContext in typing.get_args(annotation)
    return False


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    """The function's annotations, resolved where possible (``from __future__ import annotations``)."""
    try:
        return typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - a forward reference that cannot be resolved: use the raw strings
        return dict(getattr(fn, "__annotations__", {}))


def _context_param(params: Iterable[inspect.Parameter], hints: dict[str, Any]) -> str | None:
    """The parameter that receives the ``TaskContext``: annotated so, or else named ``ctx`` (unannotated or
    ``Any``)."""
    params = list(params)
    for p in params:
        if p.name in hints and _is_context(hints[p.name]):
            return p.name
    for p in params:
        if p.name == "ctx" and hints.get(p.name, Any) in (Any, "Any") and p.kind not in (p.VAR_POSITIONAL,
                                                                                        p.VAR_KEYWORD):
            return p.name
    return None


# ---------------------------------------------------------------------- definitions
class TaskDef(Generic[P, R]):
    """A task type defined by a function: ``@task`` builds it. See the module docstring.

    Attributes:
        type: the task type name on the wire (default: the function's name).
        fn: the function the worker runs.
        options: the definition's options.
        is_async: whether ``fn`` is a coroutine function (run on the worker's event loop; else in a thread).
        context_param: the parameter that receives the ``TaskContext``, or ``None``.
        takes_payload: the function takes the whole payload as its first argument (handlers registered by
            type name with ``Worker.task``/``Worker.register``), not a map of its arguments.
    """

    __slots__ = ("_all", "_models", "_reserved", "_result", "_signature", "context_param", "fn", "is_async",
                 "options", "schedule", "takes_payload", "type")

    def __init__(self, fn: Callable[..., Any], type: str | None = None, options: TaskOptions | None = None, *,
                 takes_payload: bool = False, schedule: Timing | Iterable[Timing] | None = None) -> None:
        self.fn = fn
        self.type: str = type or str(getattr(fn, "__name__", ""))
        self.options = options or TaskOptions()
        self.takes_payload = takes_payload
        self.is_async = inspect.iscoroutinefunction(fn)
        _check_options(self.type, self.options)
        try:
            try:
                signature = inspect.signature(fn, eval_str=True)  # (shown in errors: annotations unquoted)
            except Exception:  # noqa: BLE001 - an annotation that cannot be evaluated here
                signature = inspect.signature(fn)
        except (TypeError, ValueError):  # a builtin without one: it takes the payload, and no context
            signature = inspect.Signature([inspect.Parameter("payload", inspect.Parameter.POSITIONAL_ONLY)])
        hints = _hints(fn)
        params = list(signature.parameters.values())
        self.context_param = _context_param(params, hints)
        shown = [p for p in params if p.name != self.context_param]
        self._signature = signature.replace(parameters=shown, return_annotation=inspect.Signature.empty)
        self._all = params  # (the context's too: TaskDef.arguments puts it in its place)
        # names a **kwargs parameter may not take: in the payload map they would mean the parameter
        self._reserved = {p.name for p in shown if p.kind in (p.POSITIONAL_ONLY, p.VAR_POSITIONAL)}
        self._models = {p.name: m for p in shown if (m := _model_of(hints.get(p.name))) is not None}
        if isinstance(self.options.key, str) and not takes_payload:
            _check_key_template(self.type, self.options.key, shown)
        self._result = _model_of(hints.get("return"))
        self.schedule: tuple[Timing, ...] = ()
        if schedule is not None:
            self.schedule = (schedule,) if isinstance(schedule, (Cron, Every)) else tuple(schedule)
            self.schedule_specs()  # (the arguments bound now: a definition that cannot run fails at import)

    def __repr__(self) -> str:
        return f"<TaskDef {self.type}{self._signature}>"

    def schedule_specs(self) -> list[ScheduleSpec]:
        """The schedules this definition declares (``schedule=``), as the wire carries them: each named after
        the type unless it has a name, with its ``args`` bound as ``call`` binds them.

        Raises:
            BadArguments: a schedule's ``args`` do not fit the signature.
            ValueError: two schedules of one name.
            TypeError: a schedule that is not a ``Cron`` or an ``Every``.
        """
        out: dict[str, ScheduleSpec] = {}
        for t in self.schedule:
            if not isinstance(t, (Cron, Every)):
                raise TypeError(f"task {self.type}: schedule must be runq.Cron(...) or runq.Every(...), got {t!r}")
            name = t.name or self.type
            if name in out:
                raise ValueError(f"task {self.type}: two schedules named {name!r} (give each a name=)")
            bind: Any = self.call  # (the arguments are checked against the signature at run time)
            payload = encode_value(dict(t.args)) if self.takes_payload else bind(**t.args).payload
            out[name] = spec_of(t, name, self.type, payload)
        return list(out.values())

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Run the function here and now (in tests, say): no queue involved."""
        return self.fn(*args, **kwargs)

    # ------------------------------------------------------------------ producer side
    def call(self, *args: P.args, **kwargs: P.kwargs) -> Call[R]:
        """Bind arguments for an enqueue: checked against the signature, models validated, encoded.

        Raises:
            BadArguments: the arguments do not fit the signature, a model refused one, or a value cannot be
                encoded with msgpack.
        """
        if self.options.batch is not None:
            raise TypeError(f"task {self.type!r} is batched: bind one task's payload with .item(payload)")
        if self.takes_payload:
            raise TypeError(f"task {self.type!r} takes a raw payload: enqueue it by type name")
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise BadArguments(f"{self.type}{self._signature}: {self._unknown(kwargs) or exc}") from None
        arguments: dict[str, Any] = {}
        kinds = self._signature.parameters
        for name, value in bound.arguments.items():
            kind = kinds[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                clash = sorted(self._reserved & set(value))
                if clash:  # the payload is a map by name: such a key would be read as that parameter
                    raise BadArguments(f"{self.type}{self._signature}: keyword argument {clash[0]!r} has the name "
                                       "of a positional-only or *args parameter, which a task's payload (a map of "
                                       "arguments by name) cannot tell apart")
                arguments.update(value)
            elif kind is inspect.Parameter.VAR_POSITIONAL:
                arguments[name] = list(value)
            else:
                model = self._models.get(name)
                if model is not None:
                    try:
                        value = model.dump(value)
                    except Exception as exc:  # noqa: BLE001 - pydantic and msgspec raise their own classes
                        raise BadArguments(f"{self.type}: argument {name!r}: {exc}") from None
                arguments[name] = value
        try:
            payload = encode_value(arguments)
        except (TypeError, ValueError, OverflowError) as exc:
            raise BadArguments(f"{self.type}: {exc}") from None
        key = self.options.key
        if key is not None and not isinstance(key, str):
            key = key(*args, **kwargs)
        elif key is not None:
            bound.apply_defaults()
            try:
                key = key.format(**bound.arguments)
            except (KeyError, IndexError, AttributeError) as exc:
                raise BadArguments(f"{self.type}: unique key template {self.options.key!r}: {exc!r}") from None
        return Call(self, payload, key)

    def item(self, payload: Any = None) -> Call[Any]:
        """Bind one task of a batched type (docs/batching.md): its payload, any msgpack value, which the handler
        gets as ``BatchItem.payload``.

        Raises:
            TypeError: the type is not batched (bind its arguments with ``.call``).
            BadArguments: the payload cannot be encoded with msgpack.
        """
        if self.options.batch is None:
            raise TypeError(f"task {self.type!r} is not batched: bind its arguments with .call(...)")
        try:
            payload = encode_value(payload)
        except (TypeError, ValueError, OverflowError) as exc:
            raise BadArguments(f"{self.type}: {exc}") from None
        key = self.options.key
        return Call(self, payload, key if isinstance(key, str) else None)

    def with_options(self, *, queue: str | None = None, priority: int | None = None, timeout: float | None = None,
                     retries: int | None = None, delay: float | None = None,
                     key: str | Callable[..., str] | None = None,
                     requires: dict[str, str] | None = None,
                     retry_policy: RetryPolicy | None = None) -> TaskDef[P, R]:
        """A copy of this definition with some options changed (``None`` keeps the current one).

        ``retry_policy`` is the definition's: a worker that registers the copy sends it as its type's policy. A
        producer gives one task its own with ``client.enqueue(call, retry_policy=...)`` (docs/tasks.md).

        Raises:
            ValueError: ``timeout`` above, or ``retries`` other than, what this definition sets: the worker
                runs the task with its own definition (rule 1 of the module docstring), as for ``Call.entry``.
        """
        _check_against_definition(self, timeout, retries)
        changes: dict[str, Any] = {k: v for k, v in (("queue", queue), ("priority", priority), ("timeout", timeout),
                                     ("retries", retries), ("delay", delay), ("key", key),
                                     ("requires", requires), ("retry_policy", retry_policy)) if v is not None}
        return TaskDef(self.fn, self.type, dataclasses.replace(self.options, **changes),
                       takes_payload=self.takes_payload)

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, TaskHandle[R]]:
        """Enqueue on the process's open ``Client`` (see ``default_client``); await it for the handle.

        Raises:
            NoClient: no ``Client`` is open (when awaited).
            TypeError: called outside async code (at once: in sync code, where nothing would await it,
                use ``SyncClient.enqueue(task.call(...))``).
        """
        import sniffio

        try:
            sniffio.current_async_library()
        except sniffio.AsyncLibraryNotFoundError:
            raise TypeError(f"{self.type}.enqueue() is async: `await {self.type}.enqueue(...)` in async code; in sync "
                            f"code use `sync_client.enqueue({self.type}.call(...))` (runq.SyncClient)") from None
        return self._enqueue(self.call(*args, **kwargs))

    async def _enqueue(self, call: Call[R]) -> TaskHandle[R]:
        return await default_client().enqueue(call)

    def _unknown(self, kwargs: dict[str, Any]) -> str:
        """``unexpected keyword argument 'too' (did you mean 'to'?)`` for the first unknown keyword, or ``""``:
        said before anything else, since a misspelt keyword also leaves its parameter missing."""
        import difflib

        params = self._signature.parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return ""
        for name in kwargs:
            if name not in params or params[name].kind is inspect.Parameter.POSITIONAL_ONLY:
                close = difflib.get_close_matches(name, [p for p in params if p != name], n=1)
                return f"unexpected keyword argument {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
        return ""

    # ------------------------------------------------------------------ worker side
    def arguments(self, payload: Any, ctx: TaskContext | None) -> tuple[list[Any], dict[str, Any]]:
        """The positional and keyword arguments to call ``fn`` with, for a decoded payload.

        Raises:
            BadArguments: the payload is not a map that fits the signature, or a model refused a value.
        """
        if self.takes_payload:
            return [payload], ({self.context_param: ctx} if self.context_param else {})
        if payload is None:
            payload = {}
        if not isinstance(payload, dict):
            raise BadArguments(f"task {self.type!r} takes a map of argument names to values as its payload, "
                               f"got {type(payload).__name__}")
        rest = dict(payload)
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        # with a *args parameter, every parameter before it must be passed by position (the context too)
        positional = any(p.kind is p.VAR_POSITIONAL for p in self._all)
        for p in self._all:
            if p.kind is p.VAR_POSITIONAL:
                extra = rest.pop(p.name, [])
                if not isinstance(extra, list):
                    raise BadArguments(f"task {self.type!r}: argument {p.name!r} must be an array")
                args.extend(extra)
                continue
            if p.kind is p.VAR_KEYWORD:
                kwargs.update(rest)
                rest = {}
                continue
            if p.name == self.context_param:
                value = ctx
            elif p.name in rest:
                value = rest.pop(p.name)
                model = self._models.get(p.name)
                if model is not None:
                    try:
                        value = model.validate(value)
                    except Exception as exc:  # noqa: BLE001 - pydantic and msgspec raise their own classes
                        raise BadArguments(f"task {self.type!r}: argument {p.name!r}: {exc}") from None
            elif p.default is not p.empty:
                if p.kind is not p.POSITIONAL_ONLY and not (positional and p.kind is p.POSITIONAL_OR_KEYWORD):
                    continue
                value = p.default
            else:
                raise BadArguments(f"task {self.type!r}: missing argument {p.name!r}")
            if p.kind is p.POSITIONAL_ONLY or (positional and p.kind is p.POSITIONAL_OR_KEYWORD):
                args.append(value)
            else:
                kwargs[p.name] = value
        if rest:
            raise BadArguments(f"task {self.type!r}: unexpected argument(s) {', '.join(map(repr, sorted(rest)))}")
        return args, kwargs

    def result_value(self, value: Any) -> R:
        """A decoded result as the function's return type (a model is rebuilt; anything else as decoded)."""
        if self._result is not None and value is not None:
            return typing.cast(R, self._result.validate(value))
        return typing.cast(R, value)


def _check_options(type_: str, o: TaskOptions) -> None:
    try:
        check_task_spec(TaskSpec(type=type_, queue="default" if o.queue is None else o.queue,
                                 priority=o.priority or 0, delay=o.delay,
                                 timeout=o.timeout, retries=o.retries,
                                 key=o.key if isinstance(o.key, str) else None, requires=o.requires))
    except ProtocolError as exc:
        raise ValueError(f"task {type_!r}: {exc}") from None
    if o.key is not None and not isinstance(o.key, str) and not callable(o.key):
        raise ValueError(f"task {type_!r}: key must be a str template or a function")
    if o.rate_limit is not None:
        try:
            parse_rate(o.rate_limit)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"task {type_!r}: {exc}") from None
    if o.concurrency is not None and (type(o.concurrency) is not int or not 1 <= o.concurrency <= 1_000_000_000):
        raise ValueError(f"task {type_!r}: concurrency must be an int from 1 to 1000000000")
    if o.retry_policy is not None and not isinstance(o.retry_policy, RetryPolicy):
        raise ValueError(f"task {type_!r}: retry_policy must be a runq.RetryPolicy, not {o.retry_policy!r}")
    if o.batch is not None and not isinstance(o.batch, Batch):
        raise ValueError(f"task {type_!r}: batch must be a runq.Batch(max_size=..., max_wait=...)")


def _check_key_template(type_: str, template: str, params: list[inspect.Parameter]) -> None:
    """A unique-key template may only name the task's parameters (checked when the task is defined)."""
    names = {p.name for p in params}
    for _, field, _, _ in string.Formatter().parse(template):
        if field is None:
            continue
        name = field.split(".", 1)[0].split("[", 1)[0]
        if not name or name.isdigit() or name not in names:
            raise ValueError(f"task {type_!r}: the unique key template {template!r} names {field!r}, which is not a "
                             f"parameter (it has: {', '.join(sorted(names)) or 'none'})")


def _check_against_definition(task: TaskDef[Any, Any], timeout: float | None, retries: int | None) -> None:
    o = task.options
    if timeout is not None and o.timeout is not None and timeout > o.timeout:
        raise ValueError(f"{task.type}: the definition's timeout ({o.timeout:g}s) caps every attempt on the worker; "
                         f"an enqueue may shorten it, not raise it to {timeout:g}s")
    if retries is not None and o.retries is not None and retries != o.retries:
        raise ValueError(f"{task.type}: the definition sets retries={o.retries}, which the worker applies; define "
                         f"the task without retries to choose them per enqueue")


class Call(Generic[R]):
    """A task definition with its arguments bound and encoded: what a client enqueues.

    Attributes:
        task: the definition.
        payload: the msgpack-encoded map of arguments.
        key: the unique key computed from the definition's ``key`` option, if any.
    """

    __slots__ = ("key", "payload", "task")

    def __init__(self, task: TaskDef[Any, R], payload: bytes, key: str | None) -> None:
        self.task = task
        self.payload = payload
        self.key = key

    def __repr__(self) -> str:
        return f"<Call {self.task.type} {len(self.payload)} bytes>"

    def entry(self, *, queue: str | None = None, priority: int | None = None, delay: float | None = None,
              run_at: float | datetime | None = None, timeout: float | None = None, retries: int | None = None,
              key: str | None = None, requires: dict[str, str] | None = None,
              retry_policy: RetryPolicy | None = None, coalesce_key: str | None = None,
              coalesce: str | None = None, limit_key: str | None = None) -> dict[str, Any]:
        """The wire entry of an ``enqueue`` request: the definition's options, changed by these. The definition's
        ``retry_policy`` is not sent (its workers send it as the type's); ``retry_policy`` here is this task's own,
        over the type's.

        Raises:
            ValueError: ``timeout`` above, or ``retries`` other than, what the definition sets (the worker
                would run the task with the definition's: rule 1 of the module docstring).
        """
        o = self.task.options
        _check_against_definition(self.task, timeout, retries)
        entry: dict[str, Any] = {"type": self.task.type, "payload": self.payload}
        for name, value, default in (("queue", queue, o.queue), ("priority", priority, o.priority),
                                     ("timeout", timeout, o.timeout), ("retries", retries, o.retries),
                                     ("key", key, self.key)):
            chosen = value if value is not None else default
            if chosen is not None:
                entry[name] = float(chosen) if name == "timeout" else chosen
        req = requires if requires is not None else o.requires
        if req is not None:
            entry["requires"] = dict(req)
        if retry_policy is not None:
            entry["retry_policy"] = retry_policy.wire()
        coalesce_entry(entry, coalesce_key, coalesce, limit_key)
        if run_at is not None:
            entry["run_at"] = run_at.timestamp() if isinstance(run_at, datetime) else float(run_at)
        elif delay is not None or o.delay is not None:
            entry["delay"] = float(delay if delay is not None else o.delay)  # type: ignore[arg-type]
        return entry


def coalesce_entry(entry: dict[str, Any], coalesce_key: str | None, coalesce: str | None,
                    limit_key: str | None) -> None:
    """Add an enqueue's ``coalesce_key``, ``coalesce`` and ``limit_key`` to its wire entry (docs/tasks.md,
    docs/limits.md).

    Raises:
        ValueError: ``coalesce`` is not ``replace`` or ``keep``, or is given without a ``coalesce_key``.
    """
    if coalesce is not None:
        if coalesce not in COALESCE_RULES or coalesce_key is None:
            raise ValueError(f"coalesce must be one of {', '.join(COALESCE_RULES)}, and given with a coalesce_key")
        entry["coalesce"] = coalesce
    if coalesce_key is not None:
        entry["coalesce_key"] = coalesce_key
    if limit_key is not None:
        entry["limit_key"] = limit_key


# ---------------------------------------------------------------------- a wait that timed out
def no_worker_hint(task: Mapping[str, Any], workers: Iterable[Mapping[str, Any]]) -> str:
    """Why a ``ready`` task may not have been taken, from the connected workers (``Client.workers()``);
    ``""`` when one of them takes it, or when the task is not ready (it runs, or waits for its time).

    A worker takes a task of its queues, of the types it announced, or of any type if it announced none
    (docs/protocol.md, 8.6); a draining worker takes nothing new. The ``types`` op is not enough: it lists
    announced types only, so it cannot see the workers that take any type.
    """
    if task.get("state") != "ready":
        return ""
    queue, type_ = task.get("queue"), task.get("type")
    serving = [w for w in workers if w.get("state") == "active" and queue in (w.get("queues") or ())]
    if not serving:
        return f"no connected worker serves queue {queue!r}"
    if any(not w.get("types") or type_ in w["types"] for w in serving):
        return ""
    return f"no connected worker of queue {queue!r} handles type {type_!r}"


def wait_timeout_message(task: Mapping[str, Any], timeout: float | None, hint: str) -> str:
    """The message of the ``TimeoutError`` of a wait (``hint``: ``no_worker_hint``'s)."""
    return f"task {task['id']} is still {task['state']} after {timeout}s" + (f": {hint}" if hint else "")


# ---------------------------------------------------------------------- handles
class TaskHandle(Generic[R]):
    """An enqueued task, on an async ``Client``: its id, and its result typed as the function returns it.

    ``int(handle)`` is the task id.
    """

    __slots__ = ("client", "id", "task")

    def __init__(self, client: Client, id: int, task: TaskDef[Any, R]) -> None:
        self.client = client
        self.id = id
        self.task = task

    def __repr__(self) -> str:
        return f"<TaskHandle {self.task.type} {self.id}>"

    def __int__(self) -> int:
        return self.id

    __index__ = __int__

    async def result(self, timeout: float | None = None) -> R:
        """Wait for the task and return its result.

        Raises:
            TaskFailed: it ended dead or cancelled.
            TimeoutError: ``timeout`` seconds passed first (the message says so when no connected worker
                serves the task's queue or handles its type).
        """
        return self.task.result_value(await self.client.result(self.id, timeout))

    async def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait until the task is final (or ``timeout``); return it as a map."""
        return await self.client.wait(self.id, timeout)

    async def status(self) -> dict[str, Any]:
        """The task as a map, now."""
        return await self.client.get(self.id)

    async def cancel(self) -> dict[str, Any]:
        """Cancel the task."""
        return await self.client.cancel(self.id)


class SyncTaskHandle(Generic[R]):
    """An enqueued task, on a ``SyncClient``: ``TaskHandle`` with blocking methods."""

    __slots__ = ("client", "id", "task")

    def __init__(self, client: Any, id: int, task: TaskDef[Any, R]) -> None:
        self.client = client
        self.id = id
        self.task = task

    def __repr__(self) -> str:
        return f"<SyncTaskHandle {self.task.type} {self.id}>"

    def __int__(self) -> int:
        return self.id

    __index__ = __int__

    def result(self, timeout: float | None = None) -> R:
        """Wait for the task and return its result (see ``TaskHandle.result``)."""
        return self.task.result_value(self.client.result(self.id, timeout))

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        return dict(self.client.wait(self.id, timeout))

    def status(self) -> dict[str, Any]:
        return dict(self.client.get(self.id))

    def cancel(self) -> dict[str, Any]:
        return dict(self.client.cancel(self.id))


# ---------------------------------------------------------------------- the process's client
_open_clients: list[Client] = []


def client_opened(client: Client) -> None:
    """Called by ``Client`` once connected: the latest open client serves ``TaskDef.enqueue``."""
    _open_clients.append(client)


def client_closed(client: Client) -> None:
    """Called by ``Client`` when it closes."""
    if client in _open_clients:
        _open_clients.remove(client)


def default_client() -> Client:
    """The ``Client`` that ``TaskDef.enqueue`` uses: the most recently opened one still open.

    Raises:
        NoClient: none is open.
    """
    clients = [c for c in _open_clients if c.role == "client"]  # (a watcher may not enqueue)
    if not clients:
        raise NoClient("no runq Client is open in this process: open one when the app starts "
                       "(`async with runq.Client() as client:`), or enqueue with `await client.enqueue(task.call(...))`")
    return clients[-1]


# ---------------------------------------------------------------------- the decorator
class _Decorator(Protocol):
    @overload
    def __call__(self, fn: Callable[Concatenate[TaskContext, P], Coroutine[Any, Any, R]], /) -> TaskDef[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> TaskDef[P, R]: ...
    @overload
    def __call__(self, fn: Callable[Concatenate[TaskContext, P], R], /) -> TaskDef[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> TaskDef[P, R]: ...


@overload
def task(fn: Callable[Concatenate[TaskContext, P], Coroutine[Any, Any, R]], /) -> TaskDef[P, R]: ...
@overload
def task(fn: Callable[P, Coroutine[Any, Any, R]], /) -> TaskDef[P, R]: ...
@overload
def task(fn: Callable[Concatenate[TaskContext, P], R], /) -> TaskDef[P, R]: ...
@overload
def task(fn: Callable[P, R], /) -> TaskDef[P, R]: ...
@overload
def task(*, type: str | None = None, queue: str | None = None, priority: int | None = None,
         timeout: float | None = None, retries: int | None = None, delay: float | None = None,
         key: str | Callable[..., str] | None = None, rate_limit: str | None = None,
         concurrency: int | None = None, schedule: Timing | Iterable[Timing] | None = None,
         requires: dict[str, str] | None = None, retry_policy: RetryPolicy | None = None,
         batch: Batch | None = None) -> _Decorator: ...


def task(fn: Callable[..., Any] | None = None, /, *, type: str | None = None, queue: str | None = None,
         priority: int | None = None, timeout: float | None = None, retries: int | None = None,
         delay: float | None = None, key: str | Callable[..., str] | None = None, rate_limit: str | None = None,
         concurrency: int | None = None, schedule: Timing | Iterable[Timing] | None = None,
         requires: dict[str, str] | None = None, retry_policy: RetryPolicy | None = None,
         batch: Batch | None = None) -> Any:
    """Define a task type from a function (``@task`` or ``@task(queue=..., retries=...)``).

    Args:
        type: the task type name (default: the function's name).
        queue, priority, timeout, retries, delay, key: the definition's options (see ``TaskOptions``).
        rate_limit, concurrency: the type's limit across all workers (``rate_limit="10/s"``, ``concurrency=3``),
            set on the server when a worker with this definition joins (docs/limits.md).
        schedule: ``runq.Cron(...)`` or ``runq.Every(...)`` (or several): periodic runs of the task,
            registered when a worker that runs it connects (docs/schedules.md).
        requires: labels a worker must have to be given each task (``{"region": "eu"}``, docs/routing.md).
        retry_policy: how failed tasks of the type are retried (``runq.RetryPolicy``, docs/tasks.md).
        batch: ``runq.Batch(max_size=..., max_wait=...)``: the type is batched (docs/batching.md); the function
            takes one argument, a list of ``BatchItem``, and returns None (every task succeeded) or a list of
            one result per item (an exception instance in it fails that task); bind a task with ``.item(...)``.

    Returns:
        A ``TaskDef``: ``.call(...)`` binds arguments for ``client.enqueue``, ``await .enqueue(...)``
        enqueues on the open client, and a ``Worker`` given it runs the function.

    Raises:
        ValueError: an option is out of range.
    """
    options = TaskOptions(queue=queue, priority=priority, timeout=timeout, retries=retries, delay=delay, key=key,
                          rate_limit=rate_limit, concurrency=concurrency,
                          requires=dict(requires) if requires is not None else None, retry_policy=retry_policy,
                          batch=batch)

    def deco(f: Callable[..., Any]) -> TaskDef[Any, Any]:
        if isinstance(f, TaskDef):
            raise TypeError(f"{f.type} is a task already")
        return TaskDef(f, type, options, schedule=schedule)

    return deco if fn is None else deco(fn)


def tasks_in(namespace: Any) -> list[TaskDef[Any, Any]]:
    """The task definitions a module (or any object with attributes) holds, in definition order."""
    seen: dict[int, TaskDef[Any, Any]] = {}
    for value in vars(namespace).values():
        if isinstance(value, TaskDef):
            seen.setdefault(id(value), value)
    return list(seen.values())



def schedule_specs_of(source: Any) -> list[ScheduleSpec]:
    """The schedules declared by ``source``: a ``TaskDef``, an iterable of them, or a module (every definition
    it holds), as ``client.add_schedule(source)`` registers them."""
    if isinstance(source, TaskDef):
        return source.schedule_specs()
    defs = list(source) if isinstance(source, Iterable) and not isinstance(source, (str, bytes)) else tasks_in(source)
    return [spec for d in defs for spec in schedule_specs_of(d)]


def schedule_spec(name: str, type: str, payload: Any = None, *, cron: str | None = None, tz: str = "UTC",
                  every: float | None = None, missed: str = "skip", max_missed: int = 10, queue: str | None = None,
                  priority: int | None = None, timeout: float | None = None, retries: int | None = None,
                  paused: bool = False) -> ScheduleSpec:
    """The wire form of a schedule added by hand (``client.add_schedule(name, type, ...)``); the server checks
    the values."""
    return ScheduleSpec(name, type, encode_value(payload), queue, priority,
                        None if timeout is None else float(timeout), retries, cron, tz,
                        None if every is None else float(every), missed, max_missed, paused)
