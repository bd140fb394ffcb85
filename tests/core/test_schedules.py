"""Periodic tasks in the core (``runq.app.core.schedules``), with a fake clock (plain floats) and no store.

Fire times are written out here from wall-clock times in their zone (``at(zone, ...)``, zoneinfo) or as UTC
figures, never computed by the code under test. A restart is played by ``Disk``: it keeps what the effects of
each step asked to write (schedule rows, task keys), as a store would after a commit, and builds a new core
from those rows alone.
"""

from __future__ import annotations

import random
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from runq.app.core import Core, CoreConfig, NewTaskRecord, Schedule, ScheduleRecord
from runq.app.core.schedules import _latest, _times, due
from runq.app.core.timers import SCHEDULE
from runq.app.errors import ScheduleError, ScheduleMissing

NY = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")
UTC = ZoneInfo("UTC")
T0 = 1_800_000_000.0  # 2027-01-15 08:00 UTC


def at(zone: ZoneInfo, y: int, mo: int, d: int, h: int, mi: int = 0, fold: int = 0) -> float:
    """A wall-clock time in ``zone`` as unix seconds (``fold=1``: the second of a time that happens twice)."""
    return datetime(y, mo, d, h, mi, fold=fold, tzinfo=zone).timestamp()


def key(name: str, fire: float) -> str:
    return f"schedule:{name}:{fire:.3f}"


class Disk:
    """What a store would hold after each step's commit: schedule rows by name, task keys by task id."""

    def __init__(self, grace: float = 60.0) -> None:
        self.grace = grace
        self.schedules: dict[str, ScheduleRecord] = {}
        self.keys: dict[int, str | None] = {}
        self.core = Core(CoreConfig(schedule_grace=grace), rng=random.Random(1))

    def step(self, now: float, commit: bool = True) -> list[str | None]:
        """Tick the core at ``now`` and take its effects; write them if ``commit``. Returns the new tasks' keys."""
        self.core.tick(now)
        fx = self.core.take_effects(now)
        new = [NewTaskRecord(*r).key for r in fx.new_rows]
        if commit:
            for name, row in fx.schedule_rows:
                if row is None:
                    self.schedules.pop(name, None)
                else:
                    self.schedules[name] = row
            for r in map(NewTaskRecord._make, fx.new_rows):
                self.keys[r.id] = r.key
        return new

    def restart(self, now: float) -> Core:
        """A new core from the stored rows alone (the tasks of earlier fire times all finished meanwhile: no live
        task holds their unique keys, so only the schedule's mark can keep them from firing again)."""
        self.core = Core(CoreConfig(schedule_grace=self.grace), rng=random.Random(1))
        self.core.recover([], [], max(self.keys, default=0) + 1, now)
        self.core.recover_schedules([self.schedules[n] for n in sorted(self.schedules)])
        return self.core

    def fired(self, name: str) -> list[str]:
        return sorted(k for k in self.keys.values() if k is not None and k.startswith(f"schedule:{name}:"))


def add(disk: Disk, now: float, **kw: Any) -> Schedule:
    kw.setdefault("type", "t")
    s = disk.core.add_schedule(Schedule(**kw), now)
    disk.step(now)
    return s


# ---------------------------------------------------------------------- when a schedule fires
def test_a_cron_schedule_fires_on_the_wall_clock_of_its_zone() -> None:
    d = Disk()
    friday_noon = at(BERLIN, 2026, 11, 27, 12)
    s = add(d, friday_noon, name="standup", cron="0 9 * * MON-FRI", tz="Europe/Berlin", queue="q", priority=3)
    monday_9 = 1_796_025_600.0  # 2026-11-30 08:00 UTC = 09:00 in Berlin (CET, UTC+1)
    assert s.next_fire == monday_9 == at(BERLIN, 2026, 11, 30, 9)
    assert d.step(monday_9 - 0.001) == [] and d.core.next_deadline() == monday_9
    assert d.step(monday_9) == [key("standup", monday_9)]
    (task,) = [t for t in d.core.tasks.values()]
    assert (task.type, task.queue, task.priority, task.state.value) == ("t", "q", 3, "ready")
    (listed,) = d.core.schedules_list()
    assert listed.next_fire == monday_9 + 86_400 and listed.last_fire == monday_9
    # each day at 09:00 until Friday, then Monday again: nothing on the weekend
    for day in range(1, 7):
        d.step(at(BERLIN, 2026, 12, day, 9))
    assert d.core.schedules_list()[0].next_fire == at(BERLIN, 2026, 12, 7, 9)
    assert d.fired("standup") == sorted([key("standup", at(BERLIN, 2026, 11, 30, 9))] + [
        key("standup", at(BERLIN, 2026, 12, day, 9)) for day in (1, 2, 3, 4)])


def test_an_interval_schedule_keeps_its_cadence_when_a_tick_comes_late() -> None:
    d = Disk()
    s = add(d, T0, name="poll", every=90.0)
    assert s.next_fire == T0 + 90
    assert d.step(T0 + 90) == [key("poll", T0 + 90)]
    assert d.step(T0 + 200) == [key("poll", T0 + 180)]  # 20 s late: on time (grace 60), the cadence kept
    assert d.core.schedules_list()[0].next_fire == T0 + 270


def test_spring_forward_a_0230_job_runs_once_at_0300_as_cronsim_documents() -> None:
    # America/New_York, 2026-03-08: 02:00 EST -> 03:00 EDT; 02:30 does not exist that day
    d = Disk()
    add(d, at(NY, 2026, 3, 7, 12), name="night", cron="30 2 * * *", tz="America/New_York")
    three_edt = 1_772_953_200.0  # 2026-03-08 07:00 UTC = 03:00 EDT
    assert d.core.schedules_list()[0].next_fire == three_edt == at(NY, 2026, 3, 8, 3)
    for now in range(int(at(NY, 2026, 3, 8, 0)), int(at(NY, 2026, 3, 9, 12)), 600):
        d.step(float(now))
    # once on the 8th (at 03:00 EDT), then 02:30 EDT again on the 9th
    assert d.fired("night") == [key("night", three_edt), key("night", 1_773_037_800.0)]  # 2026-03-09 06:30 UTC


def test_fall_back_a_0130_job_runs_once_at_the_first_0130_as_cronsim_documents() -> None:
    # America/New_York, 2026-11-01: 02:00 EDT -> 01:00 EST; 01:30 happens twice (05:30 and 06:30 UTC)
    d = Disk()
    add(d, at(NY, 2026, 10, 31, 12), name="once", cron="30 1 * * *", tz="America/New_York")
    add(d, at(NY, 2026, 10, 31, 12), name="half_hourly", cron="*/30 1 * * *", tz="America/New_York")
    first, second = at(NY, 2026, 11, 1, 1, 30), at(NY, 2026, 11, 1, 1, 30, fold=1)
    assert (first, second) == (1_793_511_000.0, 1_793_514_600.0)
    for now in range(int(at(NY, 2026, 11, 1, 0)), int(at(NY, 2026, 11, 2, 12)), 300):
        d.step(float(now))
    assert d.fired("once") == [key("once", first), key("once", 1_793_601_000.0)]  # then 2026-11-02 06:30 UTC
    # a job of an hourly granularity runs in both 01:00 hours (cronsim, as Debian cron)
    assert d.fired("half_hourly") == sorted(key("half_hourly", t) for t in (
        at(NY, 2026, 11, 1, 1), first, at(NY, 2026, 11, 1, 1, fold=1), second,
        at(NY, 2026, 11, 2, 1), at(NY, 2026, 11, 2, 1, 30)))


# ---------------------------------------------------------------------- managed at run time
def test_pause_stops_firing_and_resume_starts_from_now() -> None:
    d = Disk()
    add(d, T0, name="p", every=60.0)
    assert d.core.pause_schedule("p", T0 + 10).next_fire is None
    d.step(T0 + 10)
    assert d.schedules["p"].paused is True and d.schedules["p"].next_fire is None
    assert d.step(T0 + 60) == [] and d.step(T0 + 300) == []  # its entry at T0 + 60 is stale
    assert d.core.pause_schedule("p", T0 + 300).paused  # (again: nothing changes)
    resumed = d.core.resume_schedule("p", T0 + 330)
    assert (resumed.paused, resumed.next_fire) == (False, T0 + 390)  # what fell due while paused is not run
    assert d.step(T0 + 390) == [key("p", T0 + 390)]
    assert d.fired("p") == [key("p", T0 + 390)]


def test_run_now_enqueues_one_task_paused_or_not_and_moves_no_fire_time() -> None:
    d = Disk()
    add(d, T0, name="r", every=3600.0, payload=b"\x01", paused=True)
    tid = d.core.run_schedule_now("r", T0 + 5)
    new = d.step(T0 + 5)
    assert new == [None] and d.core.tasks[tid].payload == b"\x01"
    assert d.core.schedules_list()[0].next_fire is None
    d.core.resume_schedule("r", T0 + 5)
    d.core.run_schedule_now("r", T0 + 6)
    assert d.core.schedules_list()[0].next_fire == T0 + 3605


def test_remove_stops_firing_and_deletes_the_row() -> None:
    d = Disk()
    add(d, T0, name="x", every=10.0)
    d.core.remove_schedule("x", T0 + 1)
    d.step(T0 + 1)
    assert "x" not in d.schedules and d.core.schedules_list() == []
    assert d.step(T0 + 100) == []
    for op in (d.core.remove_schedule, d.core.pause_schedule, d.core.resume_schedule, d.core.run_schedule_now):
        with pytest.raises(ScheduleMissing):
            op("x", T0 + 100)


def test_declaring_again_with_the_same_timing_keeps_the_mark_and_the_pause() -> None:
    d = Disk()
    add(d, T0, name="s", every=60.0, payload=b"\x01")
    d.step(T0 + 60)
    d.core.pause_schedule("s", T0 + 70)
    # a worker connecting declares it again, with a new payload: same timing, so still paused, same history
    again = d.core.add_schedule(Schedule("s", "t", b"\x02", every=60.0), T0 + 80)
    assert (again.paused, again.last_fire, again.created_at, again.payload) == (True, T0 + 60, T0, b"\x02")
    d.core.resume_schedule("s", T0 + 90)
    d.core.add_schedule(Schedule("s", "t", b"\x02", every=60.0), T0 + 100)  # running: the mark is kept
    assert d.core.schedules_list()[0].next_fire == T0 + 150
    changed = d.core.add_schedule(Schedule("s", "t", every=30.0), T0 + 100)  # a new timing starts from now
    assert (changed.next_fire, changed.last_fire) == (T0 + 130, T0 + 60)
    assert d.step(T0 + 150) == [key("s", T0 + 130)]  # (the entry of the old timing at T0 + 150 is stale)


@pytest.mark.parametrize(("fields", "says"), [
    ({"cron": "61 * * * *"}, "bad cron"),
    ({"cron": "0 9 * * MON-FRI", "tz": "Mars/Olympus"}, "time zone"),
    ({"cron": "* * */20 * 1L"}, "never fires"),  # (the 1st or 21st and the last Monday: cronsim's example)
    ({"cron": "* * * * *", "every": 5.0}, "exactly one"),
    ({}, "exactly one"),
    ({"every": 0.0}, "'every'"),
    ({"every": float("nan")}, "'every'"),
    ({"every": 5.0, "missed": "sometimes"}, "'missed'"),
    ({"every": 5.0, "max_missed": 0}, "'max_missed'"),
    ({"every": 5.0, "name": ""}, "'name'"),
    ({"every": 5.0, "type": ""}, "'type'"),
    ({"every": 5.0, "queue": ""}, "'queue'"),
])
def test_a_bad_schedule_is_refused_and_changes_nothing(fields: dict[str, Any], says: str) -> None:
    d = Disk()
    add(d, T0, name="good", every=5.0)
    kw: dict[str, Any] = {"name": "good", "type": "t", **fields}
    with pytest.raises(ScheduleError, match=says):
        d.core.add_schedule(Schedule(**kw), T0)
    assert [s.name for s in d.core.schedules_list()] == ["good"] and d.core.schedules_list()[0].every == 5.0
    assert d.core.take_effects(T0).schedule_rows == []


def test_a_stale_schedule_entry_is_skipped() -> None:
    """Rule 3: an entry stands while its schedule exists, runs and has ``next_fire == when``."""
    d = Disk()
    add(d, T0, name="a", every=100.0)
    add(d, T0, name="b", every=100.0)
    add(d, T0, name="c", every=100.0)
    d.core.pause_schedule("a", T0 + 1)
    d.core.remove_schedule("b", T0 + 1)
    d.core.add_schedule(Schedule("c", "t", every=500.0), T0 + 1)  # replaced: its entry at T0 + 100 is stale
    entries = sorted(e for e in d.core.timers.heap if e[1] == SCHEDULE)
    assert entries == [(T0 + 100, SCHEDULE, "a"), (T0 + 100, SCHEDULE, "b"), (T0 + 100, SCHEDULE, "c"),
                       (T0 + 501, SCHEDULE, "c")]
    assert d.core.next_deadline() == T0 + 501  # the three stale ones dropped, none fired
    assert d.step(T0 + 501) == [key("c", T0 + 501)]


# ---------------------------------------------------------------------- missed windows across a restart
def down_for_an_hour(missed: str, back_after: float, every: float | None = None, max_missed: int = 3) -> list[str]:
    """A schedule firing every 10 minutes; the server is down from just after its first fire time until
    ``back_after`` seconds past it; returns the fire times (as offsets from the first) that got a task."""
    d = Disk(grace=60.0)
    t = 1_800_000_000.0  # a multiple of 600: "*/10 * * * *" fires on it
    kw: dict[str, Any] = {"every": every} if every is not None else {"cron": "*/10 * * * *", "tz": "UTC"}
    add(d, t - 600 if every is not None else t - 1, name="m", missed=missed, max_missed=max_missed, **kw)
    assert d.core.schedules_list()[0].next_fire == t
    assert d.step(t) == [key("m", t)]
    d.restart(t + back_after)  # down meanwhile; nothing but the rows survives
    d.step(t + back_after)
    return [f"+{round(float(k.rsplit(':', 1)[1]) - t)}" for k in d.fired("m")]


@pytest.mark.parametrize("every", [None, 600.0], ids=["cron", "interval"])
def test_missed_skip_runs_only_what_is_on_time(every: float | None) -> None:
    # fire times +600 .. +3000 missed, +3600 is 30 s late: on time
    assert down_for_an_hour("skip", 3630, every) == ["+0", "+3600"]
    assert down_for_an_hour("skip", 3700, every) == ["+0"]  # all missed: none runs


@pytest.mark.parametrize("every", [None, 600.0], ids=["cron", "interval"])
def test_missed_once_runs_one_task_for_all_that_were_missed(every: float | None) -> None:
    assert down_for_an_hour("once", 3700, every) == ["+0", "+3600"]  # six missed: one task, the latest
    assert down_for_an_hour("once", 3630, every) == ["+0", "+3600"]  # the on-time one stands for the missed


@pytest.mark.parametrize("every", [None, 600.0], ids=["cron", "interval"])
def test_missed_all_runs_each_up_to_the_cap_the_latest(every: float | None) -> None:
    assert down_for_an_hour("all", 3630, every) == ["+0", "+1800", "+2400", "+3000", "+3600"]
    assert down_for_an_hour("all", 3630, every, max_missed=10) == [
        "+0", "+600", "+1200", "+1800", "+2400", "+3000", "+3600"]
    assert down_for_an_hour("all", 3700, every, max_missed=2) == ["+0", "+3000", "+3600"]


def test_a_long_outage_does_not_walk_every_fire_time() -> None:
    """A schedule of every minute, down for a year: the latest ``max_missed`` are found from the end."""
    s = Schedule("m", "t", cron="* * * * *", missed="all", max_missed=2).check()
    s.next_fire = T0 + 60  # (T0 is a whole minute)
    now = T0 + 365 * 86_400 + 90
    firing = due(s, now, 60.0)
    # missed: up to now - 60 (the latest two: now - 150, now - 90); on time: now - 30; next: now + 30
    assert firing.times == [now - 150, now - 90, now - 30] and firing.next_fire == now + 30
    assert firing.skipped and firing.missed_from == T0 + 60


@pytest.mark.parametrize("cron", ["*/7 * * * *", "0 9 * * MON-FRI", "15 2 * * *", "*/30 1 * * *"])
def test_the_latest_missed_fire_times_match_a_walk_through_all_of_them(cron: str) -> None:
    s = Schedule("w", "t", cron=cron, tz="America/New_York").check()
    first = at(NY, 2026, 2, 20, 0)
    s.next_fire = first = _times(s, first, first + 86_400 * 7, 1)[0] if cron.startswith("0 9") else first
    end = at(NY, 2026, 3, 20, 0)
    everything = _times(s, first, end, 1 << 30)
    for k in (1, 3, 25):
        assert _latest(s, first, end, k) == everything[-k:]


def test_exactly_one_task_per_fire_time_across_restarts() -> None:
    """Every second a fire time; the server restarts every few seconds, some steps' commits lost in the crash.
    Each fire time gets exactly one task, whatever was lost (rule 2)."""
    rng = random.Random(7)
    d = Disk(grace=3600.0)  # (everything on time: no missed policy in the way)
    add(d, T0, name="s", every=1.0, missed="all")
    now = T0
    for _ in range(60):
        now += rng.choice([0.5, 1.0, 1.0, 2.5])
        if rng.random() < 0.2:
            d.step(now, commit=rng.random() < 0.5)  # a step whose commit may be lost...
            d.restart(now)  # ...and the crash
        else:
            d.step(now)
    d.step(now)
    expected = [key("s", T0 + i) for i in range(1, int(now - T0) + 1)]
    got = [k for k in d.keys.values() if k is not None]
    assert sorted(got) == sorted(expected) and len(got) == len(set(got))


def test_a_failed_commit_writes_the_firing_and_its_mark_again_together() -> None:
    d = Disk()
    add(d, T0, name="f", every=10.0)
    d.core.tick(T0 + 10)
    fx = d.core.take_effects(T0 + 10)
    assert [NewTaskRecord(*r).key for r in fx.new_rows] == [key("f", T0 + 10)]
    assert [(n, r.next_fire if r else None) for n, r in fx.schedule_rows] == [("f", T0 + 20)]

    class Batch:
        rows, new_rows, events, queue_ops, requests = fx.rows, fx.new_rows, fx.events, fx.queue_ops, []
        schedule_rows = fx.schedule_rows
        limits, breakers, server_events = fx.limit_rows, fx.breaker_rows, []

    plan = d.core.settle_commit(Batch(), [], [], OSError("disk full"), 1, 1, T0 + 10)
    assert plan.retry
    again = d.core.take_effects(T0 + 11)
    assert [r.key for r in again.rows] + [NewTaskRecord(*r).key for r in again.new_rows] == [key("f", T0 + 10)]
    assert [(n, r.next_fire if r else None) for n, r in again.schedule_rows] == [("f", T0 + 20)]


def test_schedules_list_is_by_name_and_a_copy() -> None:
    d = Disk()
    add(d, T0, name="b", every=10.0)
    add(d, T0, name="a", cron="0 * * * *", tz="UTC")
    listed = d.core.schedules_list()
    assert [(s.name, s.next_fire) for s in listed] == [("a", 1_800_003_600.0), ("b", T0 + 10)]
    listed[1].next_fire = 0.0
    assert d.core.schedules_list()[1].next_fire == T0 + 10
    assert listed[0].as_dict()["cron"] == "0 * * * *" and UTC is not None
