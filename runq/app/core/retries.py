"""Failed attempts: retry after an exponential backoff with jitter, or dead once the retries are spent.

Theory of operation
-------------------
An attempt fails when its worker says so (``fail``, leases.py) or when the
server-side backstop fires (leases.py). Either way ``_fail`` records the error
and takes the ``failed`` step, then, in the same call, the next one from the
transition table: ``exhaust`` (to ``dead``) when the task has had
``max_retries + 1`` attempts, else ``backoff`` (to ``scheduled``) with the delay
of ``backoff`` or the handler's own ``retry_in``; the task then waits as any
delayed task does (timers.py).

Rules of this file:

1. ``failed`` is never a resting state: the same call leaves it (docs/semantics.md).
2. ``retries=N`` means N + 1 attempts: a task is retried while ``attempt <= max_retries``.
3. The delay before retry number n is ``min(min(base * 2^(n-1), max) * U(1 - jitter, 1 + jitter), max)``:
   the cap applies after the jitter, and past 2^1023 the power is not computed.
   ``retry_in`` replaces the whole formula.
"""

from __future__ import annotations

from .model import Task
from .states import Transition
from .timers import Delays

__all__ = ["Retries"]

T = Transition


class Retries(Delays):
    """Failed attempts (see the module docstring)."""

    def _fail(self, task: Task, error: str, now: float, worker_id: str | None,
              retry_in: float | None, detail: str | None) -> None:
        """The current attempt of ``task`` (RUNNING, already out of its worker's running set) failed."""
        task.error = error
        self.stats.failed += 1
        if self.run_times is not None:
            self.run_times.append((task.queue, task.type, now - (task.started_at or now), False))
        self._move(task, T.FAIL, now, worker=worker_id, detail=detail or _first_line(error))
        if task.attempt > task.max_retries:
            self._move(task, T.EXHAUST, now, detail=f"{task.attempt} attempt{'' if task.attempt == 1 else 's'}, retries spent")
            self._finish(task, now)
            return
        delay = retry_in if retry_in is not None else self.backoff(task.attempt)
        task.run_at = now + delay
        task.worker = None
        self._move(task, T.BACKOFF, now, detail=f"in {delay:.3f}s")
        self._schedule(task)

    def backoff(self, attempt: int) -> float:
        """Seconds before retry number ``attempt``: exponential with jitter, never above ``backoff_max`` (rule 3)."""
        cfg = self.config
        # 2.0 ** 1023 is the largest power a float holds: past it the cap applies anyway
        base = min(cfg.backoff_base * 2.0 ** min(max(attempt - 1, 0), 1023), cfg.backoff_max)
        factor: float = 1 + cfg.jitter * (2 * self.rng.random() - 1)
        return min(base * factor, cfg.backoff_max)


def _first_line(text: str) -> str:
    """The line of an error that names it (a traceback's last non-empty line), at most 200 characters."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else text)[:200]
