"""Circuit breakers per task type: the pure state machine and its records (limits.py composes it into the core).

Theory of operation
-------------------
A breaker watches the outcomes of one task type's attempts and stops dispatching that type while it
fails too often::

    closed --(failure rate >= threshold over the window, at least min_calls calls)--> open
    open --(cool-down over: timer kind COOLDOWN)--> half_open
    half_open --(probes probes succeeded)--> closed
    half_open --(a probe failed)--> open   (a new cool-down)
    any --(manual open)--> open (manual: no cool-down; it stays open until closed by hand)
    any --(manual close)--> closed

An *outcome* is a finished attempt of the type: ``succeeded`` counts as a success, ``failed`` (the worker's
failure or the server-side timeout) as a failure. A task lost with its worker, released by it or
cancelled while it ran is no outcome (nothing was learned about the type).

The window is ``window`` seconds, kept as ``SLOTS`` counts of ``window / SLOTS`` seconds each (calls,
failures): an outcome counts for between ``window * (SLOTS - 1) / SLOTS`` and ``window`` seconds. Memory is
``SLOTS`` small lists per breaker whatever the call rate.

While a breaker is open, tasks of its type wait in ``ready`` (held aside, limits.py): not dispatched, so no
attempt is counted. Half-open lets ``probes`` of them go; only the probes' outcomes decide (an attempt
dispatched before the breaker opened and finishing now is not a probe: ignored while open or half-open).

Rules of this file:

1. Pure: ``now`` is passed in; nothing here reads a clock, arms a timer or writes a row. The methods that
   decide return the next state (or None) and ``limits.Limits`` applies it (``_breaker_to``): the event, the
   row, the timer, the tasks brought back.
2. Every change of state goes through ``Breaker.enter``; it counts the change (``changes``, for ``/metrics``).
3. A breaker without a config (``config is None``) was opened by hand for a type that has no automatic
   rule: it never opens by itself.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...protocol.errors import RunqError
from .records import BREAKER_COLUMNS, BreakerRecord  # (the column order of a stored breaker: re-exported)

if TYPE_CHECKING:
    from .model import Task

__all__ = ["BREAKER_COLUMNS", "MIN_SECONDS", "SLOTS", "Breaker", "BreakerConfig", "BreakerRow", "BreakerState", "LimitError"]

#: how many counts make a breaker's window
SLOTS = 10

#: The shortest period, window or cool-down, in seconds (shorter ones overflow the window's slots and mean
#: nothing for tasks that take a round trip to start); the operations layer checks the same bound.
MIN_SECONDS = 0.001


class LimitError(RunqError):
    """A rate limit, concurrency cap or circuit breaker was asked for with bad settings or for a bad scope."""

    code = "bad_request"


class BreakerState(str, enum.Enum):
    """Where a circuit breaker is (its wire and stored value is the member's value)."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """When a breaker opens, and how it tries again.

    Attributes:
        threshold: the failure rate (failures / calls, in (0, 1]) over the window that opens it.
        window: seconds of outcomes the rate is taken over.
        min_calls: the fewest outcomes in the window before it may open (a first failure is not a 100% rate).
        cooldown: seconds it stays open before half-open.
        probes: how many tasks half-open lets through; that many successes close it.

    Raises:
        LimitError: a setting out of range (checked when built).
    """

    threshold: float = 0.5
    window: float = 60.0
    min_calls: int = 10
    cooldown: float = 30.0
    probes: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.threshold, (int, float)) or not 0 < self.threshold <= 1:
            raise LimitError("breaker: 'threshold' must be a failure rate in (0, 1]")
        for name in ("window", "cooldown"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not (MIN_SECONDS <= v < 10 * 365 * 86400):
                # (below a millisecond the window's slots overflow: 1e-300 s broke every later read of the breakers)
                raise LimitError(f"breaker: '{name}' must be at least {MIN_SECONDS} seconds and under ten years")
        for name, low in (("min_calls", 1), ("probes", 1)):
            v = getattr(self, name)
            if type(v) is not int or not low <= v <= 1_000_000:
                raise LimitError(f"breaker: '{name}' must be an int between {low} and 1000000")


#: A breaker as the store keeps it (``BREAKER_COLUMNS``): records.py's ``BreakerRecord``, the one definition;
#: the config fields are None for a breaker opened by hand without one (rule 3).
BreakerRow = BreakerRecord


class Breaker:
    """One task type's breaker (see the module docstring).

    Attributes:
        type: the task type it watches.
        config: its rule, or None (opened by hand only, rule 3).
        state: where it is.
        until: while open (not by hand), when the cool-down ends.
        manual: opened by hand: stays open until closed by hand.
        probes_left: while half-open, how many more probes may be dispatched.
        passed: while half-open, how many probes succeeded.
        waiting: the ready tasks of its type held aside while it refuses them (limits.py).
        changes: how many times it entered each state since start (``/metrics``).
        calls, failures: outcomes counted since start.
    """

    __slots__ = ("calls", "changes", "config", "failures", "manual", "passed", "probes_left", "slots",
                 "state", "type", "until", "waiting")

    def __init__(self, type_: str, config: BreakerConfig | None) -> None:
        self.type = type_
        self.config = config
        self.state = BreakerState.CLOSED
        self.until: float | None = None
        self.manual = False
        self.probes_left = 0
        self.passed = 0
        #: the window: [slot number, calls, failures], oldest first
        self.slots: deque[list[int]] = deque()
        self.waiting: deque[Task] = deque()
        self.changes: dict[str, int] = {s.value: 0 for s in BreakerState}
        self.calls = self.failures = 0

    def admits(self) -> bool:
        """Whether a task of its type may be dispatched now."""
        state = self.state
        return state is BreakerState.CLOSED or (state is BreakerState.HALF_OPEN and self.probes_left > 0)

    def take(self) -> bool:
        """A task of its type is dispatched (``admits`` said yes): True when it is a probe."""
        if self.state is BreakerState.HALF_OPEN:
            self.probes_left -= 1
            return True
        return False

    def outcome(self, ok: bool | None, probe: bool, now: float) -> BreakerState | None:
        """An attempt of its type ended: ``ok`` True (succeeded), False (failed) or None (lost, released,
        cancelled: no outcome). Returns the state to enter, if any."""
        state = self.state
        if state is BreakerState.HALF_OPEN:
            if not probe:
                return None  # dispatched before it opened: not a probe, not asked
            if ok is None:
                self.probes_left += 1  # the probe told nothing: another may go
                return None
            if not ok:
                return BreakerState.OPEN
            self.passed += 1
            return BreakerState.CLOSED if self.config is None or self.passed >= self.config.probes else None
        if ok is None:
            return None
        self.calls += 1
        if not ok:
            self.failures += 1
        if state is not BreakerState.CLOSED or self.config is None:
            return None
        cfg = self.config
        slot = math.floor(now * SLOTS / cfg.window)
        slots = self.slots
        while slots and slots[0][0] <= slot - SLOTS:
            slots.popleft()
        if slots and slots[-1][0] == slot:
            last = slots[-1]
            last[1] += 1
            last[2] += 0 if ok else 1
        else:
            slots.append([slot, 1, 0 if ok else 1])
        if ok:
            return None
        calls = failures = 0
        for _, c, f in slots:
            calls += c
            failures += f
        if calls >= cfg.min_calls and failures >= cfg.threshold * calls:
            return BreakerState.OPEN
        return None

    def window_counts(self, now: float) -> tuple[int, int]:
        """(calls, failures) in the window at ``now``."""
        if self.config is None:
            return 0, 0
        slot = math.floor(now * SLOTS / self.config.window)
        calls = failures = 0
        for s, c, f in self.slots:
            if s > slot - SLOTS:
                calls += c
                failures += f
        return calls, failures

    def enter(self, state: BreakerState, now: float, manual: bool = False) -> None:
        """Change state (rule 2): the window is emptied on closing, the cool-down set on opening."""
        self.state = state
        self.manual = manual
        self.changes[state.value] += 1
        self.passed = 0
        self.probes_left = 0
        self.until = None
        if state is BreakerState.OPEN:
            if not manual and self.config is not None:
                self.until = now + self.config.cooldown
        elif state is BreakerState.HALF_OPEN:
            self.probes_left = self.config.probes if self.config is not None else 1
        else:
            self.slots.clear()

    def row(self) -> BreakerRow:
        """The breaker as stored."""
        c = self.config
        if c is None:
            return BreakerRow(self.type, None, None, None, None, None, self.state.value, self.until, self.manual)
        return BreakerRow(self.type, c.threshold, c.window, c.min_calls, c.cooldown, c.probes, self.state.value,
                          self.until, self.manual)
