"""Periodic tasks: schedules (a cron expression in an IANA time zone, or a fixed interval), their fire times, the
missed-window policy, and the timer kind that enqueues a task per fire time.

Theory of operation
-------------------
A ``Schedule`` names a task to enqueue (type, payload, queue, priority, timeout, retries) and when: ``cron``
(five fields, or six with seconds first, as cronsim reads them) in the zone ``tz``, or ``every`` seconds.
Fire times are unix seconds. ``next_after(s, t)`` is the first fire time strictly after ``t``: for cron,
cronsim (docs/schedules.md says why that library) evaluates the expression on the wall clock of ``tz``
(``zoneinfo``), with Debian cron's handling of daylight-saving days, which cronsim documents and follows:

- spring forward (America/New_York, 2026-03-08, 02:00 -> 03:00): a job at 02:30, a time that does not
  exist that day, runs at 03:00, once;
- fall back (2026-11-01, 02:00 -> 01:00): a job at 01:30, a time that happens twice, runs once, at the
  first 01:30 (EDT); jobs of an hourly or finer granularity (``*/30 1 * * *``) run in both hours.

For ``every``, the fire times are ``next_fire + k * every``: the cadence set when the schedule was added.

The dedup rule: ``next_fire`` is a mark that only moves forward. Every fire time before it has been handled:
its task enqueued, or skipped by the missed policy. A firing enqueues its tasks and moves the mark past their
fire times in the same core step, so the task rows and the schedule's row are in the same effects, the same
``Batch`` and the same transaction: after a restart the stored mark says exactly which fire times have their
task (a commit that fails writes neither, and both are retried together: commits.py). The tasks carry the
unique key ``schedule:<name>:<fire time>`` as well, which shows where a task came from; it is not what makes a
firing exactly-once (a unique key only holds while its task is live).

Missed windows: when the schedule's timer comes up at ``now`` (at once after a restart, when the server was
down over fire times), the due fire times (from ``next_fire`` up to ``now``) are split by
``CoreConfig.schedule_grace``: those later than ``now - grace`` are on time and each gets its task; the older
ones were missed, and the schedule's ``missed`` policy says what they get:

- ``skip``: nothing;
- ``once``: one task for all of them, at the latest missed fire time, unless an on-time task runs anyway;
- ``all``: a task each, the latest ``max_missed`` of them (older ones are skipped, and logged).

Rules of this file:

1. Pure: ``now`` is passed in; nothing reads a clock (cronsim is given the time to start from).
2. A fire time gets at most one task: the mark ``next_fire`` moves past it in the step that enqueues it, and
   is stored in that step's commit (``test_exactly_one_task_per_fire_time_across_restarts``).
3. The timer kind ``SCHEDULE``: an entry ``(when, SCHEDULE, name)`` stands while that schedule exists, is not
   paused and has ``next_fire == when`` (``test_a_stale_schedule_entry_is_skipped``). Pausing, removing or
   replacing a schedule leaves its old entry to be skipped by that check.
4. Tasks are enqueued through ``Core.enqueue``, the one way in: the transition table's step and its event.
5. Declaring a schedule again with the same timing (``add_schedule``, as a worker does at every connection)
   keeps its mark, its last fire and its paused flag: a restart or a reconnection never fires again, and never
   resumes what an operator paused. A new timing starts from ``now``.
6. Paused, a schedule has no ``next_fire``; resumed, it starts from ``now`` (what fell due while it was paused
   is not run).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from ...protocol.errors import ProtocolError
from ...protocol.messages import TaskSpec, check_task_spec
from ..errors import ScheduleError, ScheduleMissing
from .records import ScheduleRecord
from .timers import SCHEDULE, Delays

__all__ = ["MISSED_POLICIES", "Firing", "Schedule", "Schedules", "due", "next_after"]

#: what the fire times missed while the server was down get (see the module docstring)
MISSED_POLICIES = ("skip", "once", "all")
#: the most on-time fire times one firing enqueues (a six-field cron of every second with a long grace)
_MAX_ON_TIME = 10_000
#: the highest ``max_missed``
MAX_MISSED_CAP = 10_000
_VALIDATE_AT = datetime(2000, 1, 1)  # (cronsim parses in its constructor: a fixed start, no clock read)


@dataclass(slots=True)
class Schedule:
    """A periodic task (see the module docstring). Build one by name and ``check()`` it; the core does.

    Attributes:
        name: the schedule's name, unique (1 to 200 characters).
        type: the task type to enqueue.
        payload: the tasks' payload (msgpack, as ``TaskSpec.payload``).
        queue, priority, timeout, retries: as in ``TaskSpec`` (None: the type's workers' choice, else the
            default).
        cron: a cron expression (five fields, or six with seconds first), evaluated in ``tz``.
        tz: an IANA time zone name (``Europe/Berlin``); only for ``cron``.
        every: seconds between fire times (instead of ``cron``).
        missed: ``skip``, ``once`` or ``all``: what fire times missed while the server was down get.
        max_missed: with ``all``, at most this many of them get a task (the latest).
        paused: whether it fires.
        next_fire: the next fire time not handled yet (the dedup mark); None while paused.
        last_fire: the latest fire time that enqueued a task.
        created_at: when it was first added.
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
    next_fire: float | None = None
    last_fire: float | None = None
    created_at: float = 0.0

    def check(self) -> Schedule:
        """Return the schedule if it can be kept.

        Raises:
            ScheduleError: the field at fault is named.
        """
        if not isinstance(self.name, str) or not 0 < len(self.name) <= 200:
            raise ScheduleError("schedule: 'name' must be a non-empty str of at most 200 chars")
        if (self.cron is None) == (self.every is None):
            raise ScheduleError(f"schedule {self.name!r}: give exactly one of 'cron' and 'every'")
        if self.every is not None:
            if (isinstance(self.every, bool) or not isinstance(self.every, (int, float)) or not math.isfinite(self.every)
                    or self.every <= 0):
                raise ScheduleError(f"schedule {self.name!r}: 'every' must be a positive number of seconds")
        else:
            _cron(self)  # (raises for a bad expression or zone)
            if next_after(self, _VALIDATE_AT.timestamp()) is None:
                raise ScheduleError(f"schedule {self.name!r}: cron {self.cron!r} never fires")
        if self.missed not in MISSED_POLICIES:
            raise ScheduleError(f"schedule {self.name!r}: 'missed' must be one of {', '.join(MISSED_POLICIES)}")
        if isinstance(self.max_missed, bool) or not isinstance(self.max_missed, int) or \
                not 1 <= self.max_missed <= MAX_MISSED_CAP:
            raise ScheduleError(f"schedule {self.name!r}: 'max_missed' must be an int from 1 to {MAX_MISSED_CAP}")
        try:
            check_task_spec(self.spec(None))
        except ProtocolError as exc:
            raise ScheduleError(f"schedule {self.name!r}: {exc}") from exc
        return self

    def spec(self, fire: float | None) -> TaskSpec:
        """The task to enqueue for fire time ``fire`` (None: a run asked by hand, without a unique key)."""
        key = None if fire is None else f"schedule:{self.name}:{fire:.3f}"
        return TaskSpec(self.type, self.payload, self.queue, self.priority, None, None, self.timeout, self.retries,
                        key)

    def same_timing(self, other: Schedule) -> bool:
        """Whether ``other`` fires at the same times (rule 5)."""
        return (self.cron, self.tz if self.cron is not None else None, self.every) == \
            (other.cron, other.tz if other.cron is not None else None, other.every)

    def record(self) -> ScheduleRecord:
        """The row to store."""
        return ScheduleRecord(self.name, self.type, self.payload, self.queue, self.priority, self.timeout,
                              self.retries, self.cron, self.tz, self.every, self.missed, self.max_missed,
                              self.paused, self.next_fire, self.last_fire, self.created_at)

    @classmethod
    def from_record(cls, rec: ScheduleRecord) -> Schedule:
        """The schedule of a stored row."""
        return cls(rec.name, rec.type, rec.payload, rec.queue, rec.priority, rec.timeout, rec.retries, rec.cron,
                   rec.tz, rec.every, rec.missed, rec.max_missed, bool(rec.paused), rec.next_fire, rec.last_fire,
                   rec.created_at)

    def as_dict(self) -> dict[str, Any]:
        """The schedule as the protocol and the HTTP API will send it (the record's fields by name)."""
        return self.record()._asdict()


def _cron(s: Schedule) -> tuple[str, ZoneInfo]:
    try:
        zone = ZoneInfo(s.tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise ScheduleError(f"schedule {s.name!r}: unknown time zone {s.tz!r}") from exc
    assert s.cron is not None
    try:
        CronSim(s.cron, _VALIDATE_AT.replace(tzinfo=zone))
    except (CronSimError, TypeError, ValueError) as exc:
        raise ScheduleError(f"schedule {s.name!r}: bad cron expression {s.cron!r}: {exc}") from exc
    return s.cron, zone


def next_after(s: Schedule, t: float) -> float | None:
    """The first fire time of ``s`` strictly after ``t`` (None: a cron that never fires again).

    With ``every``, the fire times are ``s.next_fire + k * every`` (k of any sign: the cadence runs through
    the mark), or ``t + every`` when the schedule has no mark yet (just added, or resumed).
    """
    if s.every is not None:
        anchor = s.next_fire
        if anchor is None:
            return t + s.every
        k = math.floor((t - anchor) / s.every) + 1
        while anchor + k * s.every <= t:  # (rounding)
            k += 1
        return anchor + k * s.every
    assert s.cron is not None
    zone = ZoneInfo(s.tz)
    try:
        return next(CronSim(s.cron, datetime.fromtimestamp(t, zone))).timestamp()
    except StopIteration:  # (cronsim looks 50 years ahead)
        return None


def _times(s: Schedule, first: float, end: float, limit: int) -> list[float]:
    """Fire times from ``first`` (a fire time) up to ``end`` included, at most ``limit`` of them."""
    out: list[float] = []
    if s.every is not None:  # (by multiplication from the mark, as ``next_after``: the same floats)
        anchor = s.next_fire if s.next_fire is not None else first
        k = round((first - anchor) / s.every)
        while len(out) < limit and (at := anchor + k * s.every) <= end:
            out.append(at)
            k += 1
        return out
    t: float | None = first
    while t is not None and t <= end and len(out) < limit:
        out.append(t)
        t = next_after(s, t)
    return out


def _latest(s: Schedule, first: float, end: float, k: int) -> list[float]:
    """The latest ``k`` fire times from ``first`` (a fire time) up to ``end`` included, in order.

    Without walking every fire time since ``first`` (a schedule of every minute, down for a month): with
    ``every``, arithmetic; with cron, the fire times after ``end - window`` (cronsim's next fire time after any
    instant is the one the whole sequence has there), the window growing until it holds ``k`` of them or
    reaches back to ``first``.
    """
    if s.every is not None:
        n = math.floor((end - first) / s.every) + 1
        while n > 0 and first + (n - 1) * s.every > end:  # (rounding)
            n -= 1
        return [first + i * s.every for i in range(max(0, n - k), n)]
    second = next_after(s, first)
    window = max(1.0, ((second if second is not None else end) - first)) * (k + 1)
    while True:
        start = end - window
        if start <= first:
            found: deque[float] = deque(maxlen=k)
            found.extend(_times(s, first, end, 1 << 62))
            return list(found)
        nxt = next_after(s, start)
        found = deque(_times(s, nxt, end, 1 << 62) if nxt is not None else (), maxlen=k)
        if len(found) == k:
            return list(found)
        window *= 4


@dataclass(frozen=True, slots=True)
class Firing:
    """What a schedule does when its timer comes up (``due``).

    Attributes:
        times: the fire times that get a task, in order.
        next_fire: the new mark: the first fire time after ``now`` (None: it never fires again).
        missed_from, missed_to: the first and last missed fire time (older than ``now - grace``), or None.
        skipped: whether some missed fire times get no task (the policy, or the cap of ``all``).
    """

    times: list[float]
    next_fire: float | None
    missed_from: float | None = None
    missed_to: float | None = None
    skipped: bool = False


def due(s: Schedule, now: float, grace: float) -> Firing:
    """Which fire times of ``s`` get a task at ``now``, and the next mark (the missed policy: module docstring).

    ``s.next_fire`` must be set and due (``<= now``).
    """
    first = s.next_fire
    assert first is not None and first <= now
    nxt = next_after(s, now)
    on_time_from = now - grace
    if first > on_time_from:  # nothing missed: every due fire time is on time
        return Firing(_times(s, first, now, _MAX_ON_TIME), nxt)
    after = next_after(s, on_time_from)
    on_time = _times(s, after, now, _MAX_ON_TIME) if after is not None else []
    last_missed = _latest(s, first, on_time_from, 1)[-1]
    if s.missed == "skip":
        return Firing(on_time, nxt, first, last_missed, True)
    if s.missed == "once":
        return Firing(on_time or [last_missed], nxt, first, last_missed, bool(on_time) or first != last_missed)
    missed = _latest(s, first, on_time_from, s.max_missed)
    return Firing(missed + on_time, nxt, first, last_missed, missed[0] != first)


class Schedules(Delays):
    """The core's schedules (see the module docstring): add, remove, pause, resume, run now, list, fire."""

    def enqueue(self, specs: list[TaskSpec], now: float) -> list[tuple[int, bool]]:
        """``Core.enqueue`` (queue.py): the one way a task is made (rule 4)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ operations
    def add_schedule(self, schedule: Schedule, now: float) -> Schedule:
        """Add ``schedule``, or replace the one of its name (rule 5: the same timing keeps its mark, last fire
        and paused flag; its ``paused`` given as True pauses it).

        Returns:
            The schedule as kept (a copy: change it through these methods only).

        Raises:
            ScheduleError: it cannot be kept (nothing changed).
        """
        s = replace(schedule, next_fire=None, last_fire=None).check()
        old = self.schedules.get(s.name)
        if old is not None and old.same_timing(s):
            s.next_fire, s.last_fire, s.created_at = old.next_fire, old.last_fire, old.created_at
            s.paused = s.paused or old.paused
            if s.paused:
                s.next_fire = None
        else:
            s.created_at = old.created_at if old is not None else now
            s.last_fire = old.last_fire if old is not None else None
            if not s.paused:
                s.next_fire = next_after(s, now)
        self._keep(s)
        self._log("info", f"schedule {s.name!r} {'replaced' if old is not None else 'added'}: next fire "
                          f"{s.next_fire}")
        return replace(s)

    def remove_schedule(self, name: str, now: float) -> None:
        """Remove a schedule (its tasks enqueued so far stay).

        Raises:
            ScheduleMissing: no schedule of that name.
        """
        self._get_schedule(name)
        del self.schedules[name]
        self._schedule_rows[name] = None

    def pause_schedule(self, name: str, now: float) -> Schedule:
        """Stop firing (rule 6). Pausing a paused schedule changes nothing.

        Raises:
            ScheduleMissing: no schedule of that name.
        """
        s = self._get_schedule(name)
        if not s.paused:
            s.paused, s.next_fire = True, None
            self._keep(s)
        return replace(s)

    def resume_schedule(self, name: str, now: float) -> Schedule:
        """Fire again, from the first fire time after ``now`` (rule 6). Resuming a running schedule changes
        nothing.

        Raises:
            ScheduleMissing: no schedule of that name.
        """
        s = self._get_schedule(name)
        if s.paused:
            s.paused, s.next_fire = False, next_after(s, now)
            self._keep(s)
        return replace(s)

    def run_schedule_now(self, name: str, now: float) -> int:
        """Enqueue the schedule's task now, once, paused or not, without moving its fire times; return its id.

        Raises:
            ScheduleMissing: no schedule of that name.
        """
        s = self._get_schedule(name)
        ((tid, _),) = self.enqueue([s.spec(None)], now)
        return tid

    def schedules_list(self) -> list[Schedule]:
        """Every schedule, by name, with its next fire time (copies)."""
        return [replace(s) for _, s in sorted(self.schedules.items())]

    def recover_schedules(self, rows: list[ScheduleRecord]) -> None:
        """Take the stored schedules back at a restart; the timer of each comes up at its mark, at once when
        that is past (the missed policy is applied then: ``due``)."""
        for rec in rows:
            s = Schedule.from_record(rec)
            self.schedules[s.name] = s
            if s.next_fire is not None and not s.paused:
                self.timers.arm((s.next_fire, SCHEDULE, s.name))

    # ------------------------------------------------------------------ inside
    def _get_schedule(self, name: str) -> Schedule:
        s = self.schedules.get(name)
        if s is None:
            raise ScheduleMissing(f"no schedule {name!r}")
        return s

    def _keep(self, s: Schedule) -> None:
        """``s`` is the schedule of its name now: its row to write, its timer armed."""
        self.schedules[s.name] = s
        self._schedule_rows[s.name] = s
        if s.next_fire is not None and not s.paused:
            self.timers.arm((s.next_fire, SCHEDULE, s.name))

    def _schedule_check(self, entry: tuple[Any, ...]) -> float | None:
        """A ``SCHEDULE`` entry stands while its schedule exists, runs, and is due at that very time (rule 3)."""
        when, _, name = entry
        s = self.schedules.get(name)
        return when if s is not None and not s.paused and s.next_fire == when else None

    def _schedule_fired(self, entry: tuple[Any, ...], now: float) -> None:
        """Enqueue the due fire times' tasks and move the mark past them, in one step (rules 2 and 4)."""
        s = self.schedules[entry[2]]
        firing = due(s, now, self.config.schedule_grace)
        if firing.times:
            self.enqueue([s.spec(t) for t in firing.times], now)
            s.last_fire = firing.times[-1]
        if firing.missed_from is not None:
            self._log("warning", f"schedule {s.name!r} missed its fire times from {firing.missed_from:.3f} to "
                                 f"{firing.missed_to:.3f} (policy {s.missed}): {len(firing.times)} task(s) enqueued"
                                 + (", the others skipped" if firing.skipped else ""))
        s.next_fire = firing.next_fire
        self._keep(s)

    def restore_schedules(self, names: list[str]) -> None:
        """Write these schedules' rows again with the next commit (a commit that carried them failed)."""
        for name in names:
            self._schedule_rows[name] = self.schedules.get(name)
