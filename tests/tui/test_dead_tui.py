"""The dashboard's Dead letters screen (key 6) against a real server and worker, driven with the pilot: the
filter narrows the dead tasks shown, and R retries (D deletes) every dead task that matches (issue 11)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Input
from tui_helpers import Procs

from runq.protocol.client import Client
from runq.tui import LiveSource, RunqDashboard
from runq.tui.forms import ConfirmScreen
from runq.tui.screens import DeadScreen
from runq.tui.screens.dead import parse_ago

pytestmark = [pytest.mark.tui, pytest.mark.anyio]


async def until(pilot: Pilot[Any], pred: Callable[[], object], timeout: float = 20.0, what: str = "") -> None:
    try:
        with anyio.fail_after(timeout):
            while not pred():
                await pilot.pause(0.05)
    except TimeoutError:
        raise AssertionError(f"not reached in {timeout}s: {what}") from None


def shown(app: RunqDashboard) -> list[int]:
    table = app.screen.query_one("#dead", DataTable)
    return [int(table.get_row_at(i)[0]) for i in range(table.row_count)]


async def dead(client: Client, queue: str, n: int) -> list[int]:
    ids = [await client.enqueue("boom", i, queue=queue, retries=0) for i in range(n)]
    for tid in ids:
        assert (await client.wait(tid, timeout=20))["state"] == "dead"
    return ids


async def test_the_dead_letters_screen_filters_and_retries_and_deletes_in_bulk(procs: Procs) -> None:
    procs.start_server()
    procs.start_worker()
    with anyio.fail_after(90):
        async with Client(procs.address) as client:
            while not await client.workers():
                await anyio.sleep(0.05)
            mine = await dead(client, "default", 2)
            other = await dead(client, "other", 1)
            app = RunqDashboard(LiveSource(procs.address))
            async with app.run_test(size=(180, 40)) as pilot:
                await pilot.press("6")
                assert isinstance(app.screen, DeadScreen)
                await until(pilot, lambda: shown(app) == [other[0], *mine[::-1]], what="every dead task")
                table = app.screen.query_one("#dead", DataTable)
                assert str(table.get_row_at(0)[5]) == "RuntimeError: boom 0"

                # the filter: queue "default" (typed), then an error text that matches one of them
                await pilot.press("slash")
                assert app.screen.focused is app.screen.query_one("#d-queue", Input)
                await pilot.press(*"default", "enter")
                await until(pilot, lambda: shown(app) == mine[::-1], what="only the default queue")
                app.screen.query_one("#d-error", Input).value = "BOOM 1"
                await until(pilot, lambda: shown(app) == [mine[1]], what="only boom 1")
                app.screen.query_one("#d-error", Input).value = ""
                await until(pilot, lambda: shown(app) == mine[::-1], what="the error filter cleared")

                # R: retry every dead task the filter selects, after asking
                await pilot.press("R")
                assert isinstance(app.screen, ConfirmScreen)
                await pilot.press("y")
                await until(pilot, lambda: any("2 dead task(s) retried" in n.message for n in app._notifications),
                            what="retried notified")
                for tid in mine:
                    kinds = [e["kind"] for e in await client.events(tid)]
                    assert "retried" in kinds, kinds
                    assert (await client.wait(tid, timeout=20))["state"] == "dead"  # (it fails again)
                assert (await client.get(other[0]))["state"] == "dead"  # not selected: untouched
                events = [e for e in await client.server_events() if e["kind"] == "dead_retried"]
                assert [e["scope"] for e in events] == ["dead[queue=default]"]

                # D: delete them (asks first; 'n' changes nothing)
                await pilot.press("D")
                assert isinstance(app.screen, ConfirmScreen)
                await pilot.press("n")
                assert (await client.get(mine[0]))["state"] == "dead"
                await pilot.press("D")
                await pilot.press("y")
                await until(pilot, lambda: shown(app) == [], what="the deleted ones gone from the screen")
                assert [(await client.get(t))["state"] for t in mine] == ["cancelled", "cancelled"]
                assert (await client.get(other[0]))["state"] == "dead"


async def test_the_task_detail_shows_a_tasks_own_retry_policy(procs: Procs) -> None:
    from textual.widgets import Static

    from runq import RetryPolicy
    from runq.tui.screens import TaskDetailScreen

    procs.start_server()
    with anyio.fail_after(60):
        async with Client(procs.address) as client:
            tid = await client.enqueue("noop", delay=3600, retry_policy=RetryPolicy(delays=(5, 30)))
            app = RunqDashboard(LiveSource(procs.address))
            async with app.run_test(size=(180, 40)) as pilot:
                await app.push_screen(TaskDetailScreen(tid))

                def summary() -> str:
                    found = app.screen.query("#summary")
                    return str(found.first(Static).render()) if found else ""

                await until(pilot, lambda: "retry policy" in summary(), what="the detail's summary")
                assert 'retry policy {"delays":[5.0,30.0]}' in summary()


def test_dead_within_is_read_as_a_duration() -> None:
    assert [parse_ago(t) for t in ("30m", "2h", "7d", "90s", "45", "", "soon")] == [
        1800.0, 7200.0, 604800.0, 90.0, 45.0, None, None]


async def test_the_dead_letters_screen_reads_a_database_file_offline(procs: Procs) -> None:
    from runq.tui import OfflineSource

    procs.start_server()
    procs.start_worker()
    with anyio.fail_after(90):
        async with Client(procs.address) as client:
            while not await client.workers():
                await anyio.sleep(0.05)
            ids = await dead(client, "other", 2)
        procs.stop_server()
        app = RunqDashboard(OfflineSource(procs.db))
        async with app.run_test(size=(180, 40)) as pilot:
            await pilot.press("6")
            assert isinstance(app.screen, DeadScreen)
            await until(pilot, lambda: shown(app) == ids[::-1], what="the file's dead tasks")
            app.screen.query_one("#d-error", Input).value = "boom 1"
            await until(pilot, lambda: shown(app) == [ids[1]], what="filtered by error text")
            await pilot.press("R")  # (read-only: not offered, nothing happens)
            await pilot.pause()
            assert isinstance(app.screen, DeadScreen)
