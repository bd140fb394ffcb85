"""Periodic tasks in the SDK: ``Cron`` and ``Every``, the timings a task definition declares next to its task.

Theory of operation
-------------------
``@runq.task(schedule=runq.Cron("0 9 * * MON-FRI", tz="Europe/Berlin"))`` or ``schedule=runq.Every(60)``
declares a schedule named after the task type (``name=`` to choose another), enqueuing the task with the
arguments ``args={...}`` (default: none) at each fire time. A worker that runs the task sends its schedules in
its ``hello`` (``schedules``, docs/protocol.md 5.10) and the server adds them when the worker joins; declaring
again with the same timing keeps the schedule's mark and paused flag (docs/schedules.md). A client registers
them with ``client.add_schedule(task)``, or adds any schedule by hand with ``client.add_schedule(name, type,
cron=...)``.

Rules of this file:

1. A timing is checked when it is built, with the server's rules (cronsim parses the expression, ``zoneinfo``
   finds the zone, ``every`` from ``MIN_EVERY`` seconds): a bad one fails at import time, not at a worker's
   connection. The server checks again (it trusts no client).
2. Nothing here does I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from .messages import MAX_NAME, MIN_EVERY, MISSED_POLICIES, ScheduleSpec

__all__ = ["Cron", "Every", "Timing", "check_timing"]


@dataclass(frozen=True, slots=True)
class Cron:
    """Fire at the times of a cron expression on the wall clock of an IANA time zone.

    Attributes:
        expr: five fields (minute hour day month weekday), or six with seconds first; cronsim's syntax.
        tz: the zone (``Europe/Berlin``); daylight-saving days as Debian cron handles them.
        args: the task's arguments (a typed task's keyword arguments; default none).
        name: the schedule's name (default: the task type).
        missed: ``skip``, ``once`` or ``all``: what fire times missed while the server was down get.
        max_missed: with ``all``, at most this many of them.
    """

    expr: str
    tz: str = "UTC"
    args: Mapping[str, Any] = field(default_factory=dict)
    name: str | None = None
    missed: str = "skip"
    max_missed: int = 10

    def __post_init__(self) -> None:
        check_timing(self)


@dataclass(frozen=True, slots=True)
class Every:
    """Fire every ``seconds`` seconds of real time (from when the schedule is first added).

    Attributes:
        seconds: the interval, at least ``MIN_EVERY``.
        args, name, missed, max_missed: as ``Cron``'s.
    """

    seconds: float
    args: Mapping[str, Any] = field(default_factory=dict)
    name: str | None = None
    missed: str = "skip"
    max_missed: int = 10

    def __post_init__(self) -> None:
        check_timing(self)


Timing = Cron | Every


def check_timing(t: Timing) -> None:
    """Check a timing with the server's rules (rule 1).

    Raises:
        ValueError: naming the field and the reason.
    """
    if isinstance(t, Cron):
        try:
            zone = ZoneInfo(t.tz)
        except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
            raise ValueError(f"Cron: unknown time zone {t.tz!r}") from exc
        try:
            CronSim(t.expr, datetime(2000, 1, 1, tzinfo=zone))
        except (CronSimError, TypeError, ValueError) as exc:
            raise ValueError(f"Cron: bad cron expression {t.expr!r}: {exc}") from exc
    elif (isinstance(t.seconds, bool) or not isinstance(t.seconds, (int, float)) or not math.isfinite(t.seconds)
          or t.seconds < MIN_EVERY):
        raise ValueError(f"Every: 'seconds' must be a number of seconds >= {MIN_EVERY:g}, got {t.seconds!r}")
    if t.missed not in MISSED_POLICIES:
        raise ValueError(f"{type(t).__name__}: 'missed' must be one of {', '.join(MISSED_POLICIES)}")
    if t.name is not None and not (0 < len(t.name) <= MAX_NAME and t.name.isprintable() and "/" not in t.name):
        raise ValueError(f"{type(t).__name__}: 'name' must have 1 to {MAX_NAME} printable characters, no '/'")
    if not isinstance(t.args, Mapping):
        raise TypeError(f"{type(t).__name__}: 'args' must be a map of the task's arguments")


def spec_of(t: Timing, name: str, type: str, payload: bytes) -> ScheduleSpec:
    """The wire form of timing ``t`` for the task ``type`` with ``payload`` (the task's encoded arguments)."""
    if isinstance(t, Cron):
        return ScheduleSpec(name, type, payload, cron=t.expr, tz=t.tz, missed=t.missed, max_missed=t.max_missed)
    return ScheduleSpec(name, type, payload, every=float(t.seconds), missed=t.missed, max_missed=t.max_missed)
