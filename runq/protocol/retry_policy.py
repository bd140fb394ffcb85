"""Retry policies: how long a failed task waits before its next attempt, and which failures are retried at all.

Theory of operation
-------------------
A ``RetryPolicy`` says three things, each optional (docs/tasks.md, "Retry policies"):

- the backoff: a fixed list of ``delays`` (the n-th retry waits ``delays[n-1]``, the last one repeated), or an
  exponential one from ``base`` doubling per retry, capped at ``max``, times a uniform factor in
  ``[1 - jitter, 1 + jitter]``;
- ``retry_on``: the exception types that are retried; any other failure goes dead at once (empty: any);
- ``never_retry``: the exception types that go dead at once, whatever else is set.

A policy is set on a task definition (``@runq.task(retry_policy=...)``: sent in the worker's hello as its
type's option) and per enqueue (the task spec's ``retry_policy``, stored with the task); the server has its
default backoff (``runq serve --backoff-base ...``). The server decides, not the worker (docs/tasks.md says
why): this module is the wire form both sides share, and the one check of it (``check_retry_policy``);
``runq.app.core.retries`` holds the rule.

Exception types travel as names: a worker reports the failing exception's classes, most derived first, as
``module.QualName`` (``error_types``, ``error_type_names``). A name in a policy matches a reported one when
it is equal to it or to its end after a dot (``"ConnectionError"``, ``"builtins.ConnectionError"`` and
``"myapp.errors.Flaky"`` all work), so a base class matches its subclasses (the whole chain is reported).

Rules of this file:

1. Pure: no I/O; never imports ``runq.app``.
2. ``check_retry_policy`` is the one check of a policy's wire map, for every way one arrives (task spec, hello
   type options, the SDK before it sends).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from .errors import ProtocolError

__all__ = [
    "MAX_DELAYS",
    "MAX_ERROR_TYPES",
    "MAX_TYPE_NAME",
    "POLICY_FIELDS",
    "RetryPolicy",
    "check_retry_policy",
    "error_type_names",
    "matches",
    "policy_from_text",
    "policy_text",
]

#: at most this many entries in ``delays``
MAX_DELAYS = 100
#: at most this many names in ``retry_on``, ``never_retry``, and a ``fail``'s ``error_types``
MAX_ERROR_TYPES = 64
#: an exception type's name has 1 to this many characters
MAX_TYPE_NAME = 300
#: the longest delay, base or max: under ten years (as a task's ``delay``)
_MAX_SECONDS = 10 * 365 * 86400
#: the fields of a policy's wire map
POLICY_FIELDS = ("delays", "base", "max", "jitter", "retry_on", "never_retry")


def _seconds(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v < _MAX_SECONDS


def _names(v: Any, where: str, code: str) -> list[str]:
    if (type(v) is not list or len(v) > MAX_ERROR_TYPES
            or not all(type(n) is str and 0 < len(n) <= MAX_TYPE_NAME for n in v)):
        raise ProtocolError(f"{where} must be an array of at most {MAX_ERROR_TYPES} exception type names (str of 1 "
                            f"to {MAX_TYPE_NAME} chars)", code)
    return list(dict.fromkeys(v))


def check_retry_policy(raw: Any, where: str = "task: 'retry_policy'", code: str = "bad_request") -> dict[str, Any] | None:
    """A retry policy's wire map, checked and normalised (numbers as floats, names without repeats); None for an
    empty map (no policy).

    A map with any of ``delays`` (an array of 1 to ``MAX_DELAYS`` seconds, each >= 0 and under ten years), ``base``
    (seconds >= 0), ``max`` (seconds > 0, not below ``base`` when both are given), ``jitter`` (0 to 1),
    ``retry_on`` and ``never_retry`` (arrays of exception type names); ``delays`` and the others of the backoff
    exclude each other.

    Raises:
        ProtocolError: ``code``, naming ``where`` and the field.
    """
    if type(raw) is not dict:
        raise ProtocolError(f"{where} must be a map", code)
    unknown = set(raw) - set(POLICY_FIELDS)
    if unknown:
        raise ProtocolError(f"{where}: unknown field(s) {sorted(map(str, unknown))[:5]}; known: "
                            f"{', '.join(POLICY_FIELDS)}", code)
    out: dict[str, Any] = {}
    delays = raw.get("delays")
    if delays is not None:
        if type(delays) is not list or not 0 < len(delays) <= MAX_DELAYS or not all(map(_seconds, delays)):
            raise ProtocolError(f"{where}: 'delays' must be an array of 1 to {MAX_DELAYS} numbers of seconds, each "
                                ">= 0 and under ten years", code)
        out["delays"] = [float(d) for d in delays]
    for name in ("base", "max", "jitter"):
        v = raw.get(name)
        if v is None:
            continue
        if delays is not None:
            raise ProtocolError(f"{where}: give 'delays' or the exponential backoff ('base', 'max', 'jitter'), "
                                "not both", code)
        if not _seconds(v) or (name == "jitter" and v > 1) or (name == "max" and v == 0):
            rule = "a number from 0 to 1" if name == "jitter" else (
                "a number of seconds > 0 and under ten years" if name == "max" else
                "a number of seconds >= 0 and under ten years")
            raise ProtocolError(f"{where}: '{name}' must be {rule}", code)
        out[name] = float(v)
    if "base" in out and "max" in out and out["max"] < out["base"]:
        raise ProtocolError(f"{where}: 'max' must not be below 'base'", code)
    for name in ("retry_on", "never_retry"):
        v = raw.get(name)
        if v is not None:
            out[name] = _names(v, f"{where}: '{name}'", code)
    return out or None


def policy_text(policy: Mapping[str, Any]) -> str:
    """A checked policy map as stored with a task or kept for a type: compact JSON, sorted by field."""
    return json.dumps(policy, sort_keys=True, separators=(",", ":"))


def _type_name(t: str | type[BaseException]) -> str:
    if isinstance(t, str):
        return t
    if isinstance(t, type) and issubclass(t, BaseException):
        return f"{t.__module__}.{t.__qualname__}"
    raise TypeError(f"an exception type or its name, not {t!r}")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """A retry policy (see the module docstring). ``None`` leaves a field to the next layer: a definition's
    policy for an enqueue's, the server's default for a definition's.

    Attributes:
        delays: seconds before each retry, in order (the last one repeats); excludes base, max, jitter.
        base: seconds before the first retry, doubling per retry.
        max: the cap of a backoff delay, seconds.
        jitter: the backoff is multiplied by a uniform factor in [1 - jitter, 1 + jitter] (0 to 1).
        retry_on: exception types (classes or names) that are retried; any other failure goes dead at once.
        never_retry: exception types that go dead at once.

    Raises:
        ValueError: a field out of range (checked when built, by the wire's own check).
    """

    delays: tuple[float, ...] | None = None
    base: float | None = None
    max: float | None = None
    jitter: float | None = None
    retry_on: tuple[str | type[BaseException], ...] | None = None
    never_retry: tuple[str | type[BaseException], ...] | None = None

    def __post_init__(self) -> None:
        for name in ("delays", "retry_on", "never_retry"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, tuple):
                if isinstance(v, (str, bytes, type)) or not isinstance(v, Iterable):
                    v = (v,)
                object.__setattr__(self, name, tuple(v))
        try:
            self.wire()
        except ProtocolError as exc:
            raise ValueError(str(exc).replace("retry_policy: ", "RetryPolicy: ", 1)) from None

    def wire(self) -> dict[str, Any]:
        """The wire map (the fields set), checked.

        Raises:
            ProtocolError: ``bad_request``, a field out of range.
            TypeError: ``retry_on`` or ``never_retry`` holds something that is neither an exception class nor a str.
        """
        raw: dict[str, Any] = {}
        if self.delays is not None:
            raw["delays"] = list(self.delays)
        for name in ("base", "max", "jitter"):
            v = getattr(self, name)
            if v is not None:
                raw[name] = v
        for name in ("retry_on", "never_retry"):
            v = getattr(self, name)
            if v is not None:
                raw[name] = [_type_name(t) for t in v]
        return check_retry_policy(raw, "retry_policy") or {}

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> RetryPolicy:
        """A policy from a checked wire map (``check_retry_policy``)."""
        delays, ron, nev = d.get("delays"), d.get("retry_on"), d.get("never_retry")
        return cls(None if delays is None else tuple(delays), d.get("base"), d.get("max"), d.get("jitter"),
                   None if ron is None else tuple(ron), None if nev is None else tuple(nev))


@lru_cache(maxsize=1024)
def policy_from_text(text: str) -> RetryPolicy:
    """A stored policy (``policy_text``) as a ``RetryPolicy`` (cached: many tasks share one text)."""
    return RetryPolicy.from_wire(json.loads(text))


def error_type_names(exc: BaseException) -> list[str]:
    """The names a worker reports for the exception that failed an attempt (``fail``'s ``error_types``): its class
    and every base class, most derived first, as ``module.QualName``, ``object`` left out; at most
    ``MAX_ERROR_TYPES``."""
    return [_type_name(c) for c in type(exc).__mro__ if c is not object][:MAX_ERROR_TYPES]


def matches(patterns: Iterable[str | type[BaseException]], names: Iterable[str]) -> str | None:
    """The first reported name that a pattern (a name, or an exception class: its ``module.QualName``) matches
    (equal, or equal to its end after a dot), or None."""
    pats = tuple(map(_type_name, patterns))
    for n in names:
        for p in pats:
            if n == p or (n.endswith(p) and n[-len(p) - 1:-len(p)] == "."):
                return n
    return None
