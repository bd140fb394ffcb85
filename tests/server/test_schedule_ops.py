"""Schedules managed at run time through the operations layer and the TCP protocol (issue 11): add, list, pause,
resume, run now, remove, each answered once committed; every bad field refused with a clear error; schedules
declared in a worker's hello. A real server on a real SQLite file, the SDK's ``Client`` over TCP."""

from __future__ import annotations

import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import trio
from server_helpers import VirtualClock, until

import runq
from runq import Client, RemoteError, TaskNotFound, Worker
from runq.app.ops import BadRequest, authenticate
from runq.app.server import Server, ServerConfig
from runq.protocol.messages import Hello, ScheduleSpec

WALL = 1_800_000_000.0  # the server's wall clock at trio time 0


async def _start(nursery: trio.Nursery, db: Path, clock: Any = None) -> Server:
    srv = Server(ServerConfig(db=str(db), port=0), clock=clock)
    await nursery.start(srv.serve)
    return srv


def _rows(db: Path) -> dict[str, tuple[Any, ...]]:
    """The stored schedules, read by a connection of their own (what is committed)."""
    conn = sqlite3.connect(db)
    try:
        return {r[0]: r[1:] for r in conn.execute("SELECT name, paused, next_fire, type FROM schedules")}
    finally:
        conn.close()


@pytest.mark.trio
async def test_add_list_pause_resume_run_remove_each_committed_before_its_answer(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    db = tmp_path / "runq.db"
    srv = await _start(nursery, db)
    with trio.fail_after(30):
        async with Client(f"127.0.0.1:{srv.port}") as c:
            before = srv.clock()
            s = await c.add_schedule("standup", "report", {"kind": "daily"}, cron="0 9 * * MON-FRI",
                                     tz="Europe/Berlin", missed="once")
            # the next fire time: a weekday, 09:00 on Berlin's wall clock, within the next four days
            at = datetime.fromtimestamp(s["next_fire"], ZoneInfo("Europe/Berlin"))
            assert (at.hour, at.minute, at.second) == (9, 0, 0) and at.weekday() < 5
            assert before < s["next_fire"] < before + 4 * 86400
            assert (s["name"], s["type"], s["payload"], s["missed"], s["paused"]) == \
                ("standup", "report", {"kind": "daily"}, "once", False)
            assert _rows(db) == {"standup": (0, s["next_fire"], "report")}  # committed before the answer

            every = await c.add_schedule("beat", "tick", every=90)
            assert every["next_fire"] == pytest.approx(srv.clock() + 90, abs=5)
            listed = await c.schedules()
            assert [x["name"] for x in listed] == ["beat", "standup"]
            assert listed[1]["next_fire"] == s["next_fire"] and listed[1]["payload"] == {"kind": "daily"}

            paused = await c.pause_schedule("standup")
            assert paused["paused"] is True and paused["next_fire"] is None
            assert _rows(db)["standup"][:2] == (1, None)
            resumed = await c.resume_schedule("standup")
            assert resumed["paused"] is False and resumed["next_fire"] == s["next_fire"]
            assert _rows(db)["standup"][:2] == (0, s["next_fire"])

            tid = await c.run_schedule_now("standup")
            task = await c.get(tid)
            assert (task["type"], task["payload"], task["state"]) == ("report", {"kind": "daily"}, "ready")
            assert (await c.schedules())[1]["next_fire"] == s["next_fire"]  # (run now moves no fire time)

            await c.remove_schedule("standup")
            assert set(_rows(db)) == {"beat"}
            assert [x["name"] for x in await c.schedules()] == ["beat"]
            for call in (c.remove_schedule, c.pause_schedule, c.resume_schedule, c.run_schedule_now):
                with pytest.raises(TaskNotFound, match="no schedule 'standup'"):
                    await call("standup")
            assert (await c.get(tid))["id"] == tid  # (its task stays)


BAD: list[tuple[dict[str, Any], str]] = [
    ({"cron": "61 * * * *"}, "schedule 'x': bad cron expression '61 * * * *'"),
    ({"cron": "* * */20 * 1L"}, "never fires"),
    ({"cron": "0 9 * * *", "tz": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
    ({"every": 0.5}, "'every' must be from 1 to"),
    ({"every": 0}, "'every' must be from 1 to"),
    ({"every": float("nan")}, "'every' must be from 1 to"),
    ({}, "give exactly one of 'cron' and 'every'"),
    ({"every": 5, "cron": "* * * * *"}, "give exactly one of 'cron' and 'every'"),
    ({"every": 5, "missed": "never"}, "'missed' must be one of skip, once, all"),
    ({"every": 5, "missed": "all", "max_missed": 0}, "'max_missed' must be an int from 1 to 10000"),
    ({"every": 5, "max_missed": 10_001}, "'max_missed' must be an int from 1 to 10000"),
    ({"every": 5, "queue": ""}, "task: 'queue' must be a non-empty str"),
    ({"every": 5, "type": "t" * 201}, "task: 'type' must be a non-empty str"),
    ({"every": 5, "retries": 1001}, "task: 'retries' must be between 0 and 1000"),
    ({"every": 5, "payload": "x" * 9000}, "'payload' must be at most 8192 bytes"),
    ({"every": 5, "name": "a/b"}, "'name' must have 1 to 200 printable characters, no '/'"),
    ({"every": 5, "name": ""}, "'name' must have 1 to 200 printable characters"),
]


@pytest.mark.trio
async def test_each_bad_field_is_refused_with_a_clear_error_and_changes_nothing(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    db = tmp_path / "runq.db"
    srv = await _start(nursery, db)
    with trio.fail_after(30):
        async with Client(f"127.0.0.1:{srv.port}") as c:
            kept = await c.add_schedule("x", "t", every=60)
            for fields, message in BAD:
                kw: dict[str, Any] = {"name": "x", "type": "t"} | fields
                name, type_ = kw.pop("name"), kw.pop("type")
                payload = kw.pop("payload", None)
                with pytest.raises(RemoteError) as err:
                    await c.add_schedule(name, type_, payload, **kw)
                assert err.value.code == "bad_request" and message in err.value.message, (fields, err.value)
            assert await c.schedules() == [kept]  # nothing changed, the connection still serves
            assert set(_rows(db)) == {"x"}
            with pytest.raises(TaskNotFound, match="no schedule 'a/b'"):  # (no schedule could have that name)
                await c.pause_schedule("a/b")


@pytest.mark.trio
async def test_a_schedule_fires_on_the_virtual_clock_and_stops_while_paused(
        nursery: trio.Nursery, tmp_path: Path, virtual_clock: VirtualClock) -> None:
    srv = await _start(nursery, tmp_path / "runq.db", clock=lambda: WALL + trio.current_time())
    virtual_clock.follow(nursery, srv)
    with trio.fail_after(1000):  # (virtual seconds)
        async with Client(f"127.0.0.1:{srv.port}") as c:
            added = await c.add_schedule("beat", "tick", every=60)
            await until(srv, lambda: srv.core.stats.enqueued >= 3)
            s = (await c.schedules())[0]
            assert s["last_fire"] == pytest.approx(added["next_fire"] + 120)
            assert s["next_fire"] == pytest.approx(added["next_fire"] + 180)
            await c.pause_schedule("beat")
            n = srv.core.stats.enqueued
            await trio.sleep(300)
            assert srv.core.stats.enqueued == n  # paused: five fire times passed, none fired
            resumed = await c.resume_schedule("beat")
            assert resumed["next_fire"] == pytest.approx(srv.clock() + 60, abs=1)


@runq.task(schedule=runq.Every(30, args={"n": 3}))
def ticker(n: int) -> int:
    return n


@runq.task(schedule=[runq.Cron("0 9 * * MON-FRI", tz="Europe/Berlin", name="morning"),
                     runq.Cron("0 17 * * MON-FRI", tz="Europe/Berlin", name="evening", args={"to": "ops"})])
def report(to: str = "all") -> str:
    return to


@pytest.mark.trio
async def test_a_workers_hello_declares_its_tasks_schedules_and_again_keeps_the_mark(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    srv = await _start(nursery, tmp_path / "runq.db")
    with trio.fail_after(30):
        for life in range(2):
            w = Worker()
            w.include([ticker, report])
            async with trio.open_nursery() as n:
                n.start_soon(w.run, f"127.0.0.1:{srv.port}")
                await until(srv, lambda: len(srv.core.workers) == 1, poll=0.01)
                names = {s.name: s for s in srv.core.schedules_list()}
                assert set(names) == {"ticker", "morning", "evening"}
                if life == 0:
                    first = {k: v.next_fire for k, v in names.items()}
                    async with Client(f"127.0.0.1:{srv.port}") as c:
                        await c.pause_schedule("morning")
                else:  # declared again: the same marks, and what an operator paused stays paused
                    assert names["ticker"].next_fire == first["ticker"]
                    assert names["evening"].next_fire == first["evening"]
                    assert names["morning"].paused is True
                w.stop()
            await until(srv, lambda: not srv.core.workers, poll=0.01)
        spec = {s.name: s for s in srv.core.schedules_list()}
        assert (spec["ticker"].every, spec["evening"].cron, spec["evening"].tz) == (30.0, "0 17 * * MON-FRI",
                                                                                    "Europe/Berlin")
        assert runq.protocol.values.decode_value(spec["evening"].payload) == {"to": "ops"}
        assert runq.protocol.values.decode_value(spec["ticker"].payload) == {"n": 3}


@pytest.mark.trio
async def test_a_hello_with_a_bad_schedule_is_refused_and_adds_nothing(nursery: trio.Nursery, tmp_path: Path) -> None:
    srv = await _start(nursery, tmp_path / "runq.db")
    ident = authenticate(None, None, "worker")
    hello = Hello(1, "worker", schedules=(ScheduleSpec("good", "t", every=5.0),
                                          ScheduleSpec("bad", "t", cron="0 25 * * *")))
    with pytest.raises(BadRequest, match="bad cron expression"):
        srv.ops.hello(ident, hello, "127.0.0.1", None)
    assert srv.core.schedules_list() == [] and not srv.core.workers  # (all checked before any is added)


@pytest.mark.trio
async def test_a_server_keeps_at_most_1000_schedules(nursery: trio.Nursery, tmp_path: Path) -> None:
    """A ``schedules`` answer holds them all in one frame: the 1,001st name is refused; replacing one is not."""
    from runq.app.core import Schedule
    from runq.protocol.messages import MAX_SCHEDULES

    assert MAX_SCHEDULES == 1000
    srv = await _start(nursery, tmp_path / "runq.db")
    ident = authenticate(None, None, "client")
    now = srv.clock()
    for i in range(999):
        srv.core.add_schedule(Schedule(f"s{i}", "t", every=60.0), now)
    with trio.fail_after(20):
        await srv.ops.add_schedule(ident, ScheduleSpec("last", "t", every=60.0))
        with pytest.raises(BadRequest, match="at most 1000 schedules"):
            await srv.ops.add_schedule(ident, ScheduleSpec("one more", "t", every=60.0))
        kept = await srv.ops.add_schedule(ident, ScheduleSpec("s0", "t", every=120.0))  # (a replacement)
        assert kept["every"] == 120.0 and len(srv.core.schedules) == 1000
        with pytest.raises(BadRequest, match="at most 1000 schedules"):
            srv.ops.hello(authenticate(None, None, "worker"),
                          Hello(1, "worker", schedules=(ScheduleSpec("new", "t", every=5.0),)), "127.0.0.1", None)
