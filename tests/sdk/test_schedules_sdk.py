"""Periodic tasks from the SDK (issue 11): a schedule declared next to its task (``@runq.task(schedule=
runq.Every(1))``) is registered by a real worker process when it joins, and fires; the SyncClient manages
schedules; a bad timing fails where it is written."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

import runq
from runq import SyncClient, TaskNotFound

TASKS = '''
import runq

@runq.task(schedule=runq.Every(1, args={"n": 21}))
def beat(n: int) -> int:
    return n * 2
'''


def _until(predicate: Any, tries: int = 600) -> Any:
    for _ in range(tries):
        got = predicate()
        if got:
            return got
        threading.Event().wait(0.05)
    raise AssertionError("not reached in time")


def test_a_worker_process_declaring_every_1_gets_its_task_fired(threaded_server: Any, tmp_path: Path) -> None:
    (tmp_path / "beat_tasks.py").write_text(textwrap.dedent(TASKS))
    proc = subprocess.Popen([sys.executable, "-m", "runq.cli", "worker", "beat_tasks", "--server",
                             threaded_server.address], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        with SyncClient(threaded_server.address) as c:
            done = _until(lambda: c.list_tasks(type="beat", state="succeeded")[0])
            assert done[0]["result"] == 42 and done[0]["key"].startswith("schedule:beat:")
            (s,) = c.schedules()
            assert (s["name"], s["type"], s["every"], s["payload"], s["paused"]) == ("beat", "beat", 1.0, {"n": 21},
                                                                                     False)
            assert s["last_fire"] is not None and s["next_fire"] > s["last_fire"]
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert b"Traceback" not in err


@runq.task(schedule=runq.Cron("30 6 * * *", tz="America/New_York", missed="all", max_missed=3))
def wake(who: str = "everyone") -> str:
    return who


def test_the_sync_client_manages_schedules(threaded_server: Any) -> None:
    with SyncClient(threaded_server.address) as c:
        (declared,) = c.add_schedule(wake)  # (the definition's schedule, as a worker would declare it)
        assert (declared["name"], declared["cron"], declared["tz"], declared["missed"], declared["max_missed"],
                declared["payload"]) == ("wake", "30 6 * * *", "America/New_York", "all", 3, {})
        by_hand = c.add_schedule("nightly", "report", [1, 2], every=3600, queue="reports", retries=0)
        assert (by_hand["every"], by_hand["queue"], by_hand["retries"], by_hand["payload"]) == \
            (3600.0, "reports", 0, [1, 2])
        assert [s["name"] for s in c.schedules()] == ["nightly", "wake"]
        assert c.pause_schedule("nightly")["next_fire"] is None
        assert c.resume_schedule("nightly")["next_fire"] is not None
        tid = c.run_schedule_now("nightly")
        assert c.get(tid)["queue"] == "reports"
        c.remove_schedule("nightly")
        with pytest.raises(TaskNotFound):
            c.remove_schedule("nightly")
        assert [s["name"] for s in c.schedules()] == ["wake"]


@pytest.mark.parametrize(("make", "message"), [
    (lambda: runq.Cron("0 25 * * *"), "bad cron expression '0 25 \\* \\* \\*'"),
    (lambda: runq.Cron("0 9 * * *", tz="Berlin/Europe"), "unknown time zone 'Berlin/Europe'"),
    (lambda: runq.Every(0.5), "'seconds' must be a number of seconds >= 1"),
    (lambda: runq.Every(60, missed="later"), "'missed' must be one of skip, once, all"),
    (lambda: runq.Every(60, name="a/b"), "'name' must have 1 to 200"),
])
def test_a_bad_timing_fails_where_it_is_written(make: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_schedule_arguments_are_bound_at_definition_time() -> None:
    with pytest.raises(runq.BadArguments):
        @runq.task(schedule=runq.Every(60, args={"nope": 1}))
        def needs(n: int) -> int:
            return n
    with pytest.raises(ValueError, match="two schedules named 'x'"):
        @runq.task(schedule=[runq.Every(60, name="x"), runq.Every(120, name="x")])
        def twice() -> None:
            return None
