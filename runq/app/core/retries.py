"""Failed attempts: retry after a delay chosen by the task's retry policy, or dead.

Theory of operation
-------------------
An attempt fails when its worker says so (``fail``, leases.py) or when the
server-side backstop fires (leases.py). Either way ``_fail`` records the error
and takes the ``failed`` step, then, in the same call, the next one from the
transition table: ``exhaust`` (to ``dead``) or ``backoff`` (to ``scheduled``)
with a delay; the task then waits as any delayed task does (timers.py).
Which one, and the delay, is ``decide``'s answer: a pure function of the
policies, the attempt, the failure's exception types and a random number.

A retry policy (runq.protocol.retry_policy, docs/tasks.md "Retry policies") comes
in three layers, the first that sets a part wins, part by part:

1. the task's own (``retry_policy`` given at enqueue, stored with the task);
2. its type's (the worker definition's, hello ``type_options``);
3. the server's default (``CoreConfig``: ``backoff_base``, ``backoff_max``,
   ``jitter``; no ``retry_on``, no ``never_retry``).

The parts: the backoff (a layer that sets any of ``delays``, ``base``, ``max``,
``jitter`` decides it; its unset ``base``/``max``/``jitter`` are the server's),
``retry_on`` and ``never_retry`` (each from the first layer that sets it).

Rules of this file:

1. ``failed`` is never a resting state: the same call leaves it (docs/semantics.md).
2. ``retries=N`` means N + 1 attempts: a task is retried while ``attempt <= max_retries``.
3. A failure whose exception types (the worker's ``error_types``; a timeout is
   ``builtins.TimeoutError``) match ``never_retry`` goes dead at once; so does
   one that matches none of a non-empty ``retry_on``. A failure that names no
   type matches nothing. A handler's own ``retry_in`` (``raise Retry(delay)``)
   is a retry it asked for: neither list applies, and it replaces the delay.
4. With ``delays``, retry number n waits ``delays[min(n, len) - 1]``, exactly.
   Else ``min(min(base * 2^(n-1), max) * U(1 - jitter, 1 + jitter), max)``: the
   cap applies after the jitter, and past 2^1023 the power is not computed.
5. Pure: ``decide`` reads no clock and no global randomness (``rand`` is passed in).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from ...protocol.retry_policy import RetryPolicy, matches, policy_from_text
from .model import Task
from .states import Transition
from .timers import Delays

__all__ = ["TIMEOUT_TYPE", "Decision", "Retries", "decide"]

#: the exception type a timed-out attempt counts as (worker-side timeout and server backstop alike)
TIMEOUT_TYPE = "builtins.TimeoutError"


class Decision(NamedTuple):
    """What a failed attempt leads to: a retry after ``delay`` seconds, or dead (``delay`` None); ``detail`` says
    why, for the event."""

    delay: float | None
    detail: str


def decide(layers: Sequence[RetryPolicy | None], default: tuple[float, float, float], attempt: int, max_retries: int,
           error_types: Sequence[str], retry_in: float | None, rand: Callable[[], float]) -> Decision:
    """The rule of a failed attempt (the module docstring's rules 2 to 4).

    Args:
        layers: the task's own policy, then its type's (None: not set), the first setting a part wins.
        default: the server's (base, max, jitter).
        attempt: the attempt that failed (1 for the first).
        max_retries: the task's retries.
        error_types: the failure's exception type names, most derived first (empty: none named).
        retry_in: the handler asked for a retry after this many seconds.
        rand: a uniform random number in [0, 1) (drawn only for a jittered backoff).
    """
    if retry_in is None:
        never = next((p.never_retry for p in layers if p is not None and p.never_retry is not None), None)
        if never:
            hit = matches(never, error_types)
            if hit is not None:
                return Decision(None, f"{hit} is in never_retry ({_attempts(attempt)})")
        only = next((p.retry_on for p in layers if p is not None and p.retry_on is not None), None)
        if only and matches(only, error_types) is None:
            named = error_types[0] if error_types else "a failure naming no exception type"
            return Decision(None, f"{named} is not in retry_on ({_attempts(attempt)})")
    if attempt > max_retries:
        return Decision(None, f"{_attempts(attempt)}, retries spent")
    if retry_in is not None:
        return Decision(retry_in, f"in {retry_in:.3f}s")
    shape = next((p for p in layers if p is not None and (
        p.delays is not None or p.base is not None or p.max is not None or p.jitter is not None)), None)
    if shape is not None and shape.delays:
        delay = float(shape.delays[min(attempt, len(shape.delays)) - 1])
        return Decision(delay, f"in {delay:.3f}s")
    base, cap, jitter = default
    if shape is not None:
        base = shape.base if shape.base is not None else base
        cap = shape.max if shape.max is not None else cap
        jitter = shape.jitter if shape.jitter is not None else jitter
    # 2.0 ** 1023 is the largest power a float holds: past it the cap applies anyway
    d = min(base * 2.0 ** min(max(attempt - 1, 0), 1023), cap)
    if jitter:
        d *= 1 + jitter * (2 * rand() - 1)
    delay = min(d, cap)
    return Decision(delay, f"in {delay:.3f}s")


def _attempts(n: int) -> str:
    return f"{n} attempt{'' if n == 1 else 's'}"

T = Transition


class Retries(Delays):
    """Failed attempts (see the module docstring)."""

    def _fail(self, task: Task, error: str, now: float, worker_id: str | None,
              retry_in: float | None, detail: str | None, error_types: Sequence[str] = ()) -> None:
        """The current attempt of ``task`` (RUNNING, already out of its worker's running set) failed;
        ``error_types``: its exception's type names, most derived first (rule 3)."""
        task.error = error
        self.stats.failed += 1
        if self.run_times is not None:
            self.run_times.append((task.queue, task.type, now - (task.started_at or now), False))
        self._move(task, T.FAIL, now, worker=worker_id, detail=detail or _first_line(error))
        d = decide(self.policies(task), self._default_backoff(), task.attempt, task.max_retries, error_types,
                   retry_in, self.rng.random)
        if d.delay is None:
            self._move(task, T.EXHAUST, now, detail=d.detail)
            self._finish(task, now)
            return
        task.run_at = now + d.delay
        task.worker = None
        self._move(task, T.BACKOFF, now, detail=d.detail)
        self._schedule(task)

    def policies(self, task: Task) -> tuple[RetryPolicy | None, RetryPolicy | None]:
        """The layers of ``task``'s retry policy above the server's: its own, its type's (the module docstring)."""
        own = policy_from_text(task.retry_policy) if task.retry_policy is not None else None
        o = self.type_options.get(task.type) if self.type_options else None
        typed = policy_from_text(o.retry_policy) if o is not None and o.retry_policy is not None else None
        return own, typed

    def _default_backoff(self) -> tuple[float, float, float]:
        cfg = self.config
        return cfg.backoff_base, cfg.backoff_max, cfg.jitter

    def backoff(self, attempt: int, task: Task | None = None) -> float:
        """Seconds before retry number ``attempt`` of ``task`` (by its policy's backoff; the server's without a
        task), never above the cap (rule 4)."""
        layers = self.policies(task) if task is not None else (None, None)
        delay = decide(layers, self._default_backoff(), attempt, attempt, (), None, self.rng.random).delay
        assert delay is not None
        return delay


def _first_line(text: str) -> str:
    """The line of an error that names it (a traceback's last non-empty line), at most 200 characters."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else text)[:200]
