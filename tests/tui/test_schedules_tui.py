"""The dashboard's Schedules screen (key 5) against a real server, driven with the pilot: each schedule with
its next fire time, pause/resume and run now from the keyboard (issue 11)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable
from tui_helpers import Procs

from runq.protocol.client import Client
from runq.tui import LiveSource, RunqDashboard
from runq.tui.forms import ConfirmScreen
from runq.tui.screens import QueuesScreen, SchedulesScreen

pytestmark = [pytest.mark.tui, pytest.mark.anyio]


async def until(pilot: Pilot[Any], pred: Callable[[], object], timeout: float = 15.0, what: str = "") -> None:
    try:
        with anyio.fail_after(timeout):
            while not pred():
                await pilot.pause(0.05)
    except TimeoutError:
        raise AssertionError(f"not reached in {timeout}s: {what}") from None


def rows(app: RunqDashboard) -> dict[str, list[str]]:
    table = app.screen.query_one("#schedules", DataTable)
    return {str(r[0]): [str(c) for c in r] for r in (table.get_row_at(i) for i in range(table.row_count))}


async def test_the_schedules_screen_shows_next_fire_times_and_pauses_resumes_and_runs(procs: Procs) -> None:
    procs.start_server()
    with anyio.fail_after(60):
        async with Client(procs.address) as client:
            daily = await client.add_schedule("daily", "report", {"to": "team"}, cron="0 9 * * *",
                                              tz="Europe/Berlin")
            await client.add_schedule("beat", "noop", every=3600)
            app = RunqDashboard(LiveSource(procs.address))
            async with app.run_test(size=(180, 40)) as pilot:
                assert isinstance(app.screen, QueuesScreen)
                await pilot.press("5")
                assert isinstance(app.screen, SchedulesScreen)
                await until(pilot, lambda: len(rows(app)) == 2, what="both schedules listed")
                shown = rows(app)
                assert shown["daily"][:4] == ["daily", "report", "0 9 * * * Europe/Berlin",
                                              time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(daily["next_fire"]))]
                assert shown["beat"][2] == "every 1h00m" and shown["beat"][4] in ("59m59s", "1h00m", "59m58s")
                assert shown["daily"][7] == "-"

                table = app.screen.query_one("#schedules", DataTable)
                table.move_cursor(row=table.get_row_index("daily"), animate=False)
                table.focus()
                await pilot.pause()
                await pilot.press("p")
                assert isinstance(app.screen, ConfirmScreen)
                await pilot.press("y")
                await until(pilot, lambda: rows(app)["daily"][7] == "paused", what="daily paused")
                assert rows(app)["daily"][3:5] == ["-", "-"]  # no next fire time while paused
                assert (await client.schedules())[1]["paused"] is True
                await pilot.press("p")  # (resuming asks nothing)
                await until(pilot, lambda: rows(app)["daily"][7] == "-", what="daily resumed")
                assert (await client.schedules())[1]["paused"] is False

                await pilot.press("r")
                await until(pilot, lambda: any("schedule daily ran: task" in n.message
                                               for n in app._notifications), what="run now notified")
                tasks, _ = await client.list_tasks(type="report")
                assert len(tasks) == 1 and tasks[0]["payload"] == {"to": "team"}


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_server_that_cannot_list_schedules_leaves_a_note_and_the_connection_up() -> None:
    """A server without the request (an older runq, here one that answers it oddly): the Schedules screen says
    so; the dashboard stays connected and its other polls go on."""
    from test_robustness import OddServer

    server = OddServer()
    await server.start()
    source = LiveSource(f"127.0.0.1:{server.port}")
    try:
        with anyio.fail_after(20):
            await source.start()
            source.state.schedules_wanted = True
            while not source.state.schedules_error:
                await anyio.sleep(0.02)
            assert "did not list its schedules: KeyError" in source.state.schedules_error
            assert source.state.connected and source.connects == 1 and "q" in source.state.queues
    finally:
        await source.close()
        assert server.server is not None
        server.server.close()


async def test_the_schedules_screen_reads_a_database_file_offline(procs: Procs) -> None:
    from runq.tui import OfflineSource

    procs.start_server()
    with anyio.fail_after(60):
        async with Client(procs.address) as client:
            kept = await client.add_schedule("nightly", "report", cron="0 2 * * *", tz="America/New_York")
            await client.add_schedule("beat", "noop", every=60, paused=True)
        procs.stop_server()
        app = RunqDashboard(OfflineSource(procs.db))
        async with app.run_test(size=(180, 40)) as pilot:
            await pilot.press("5")
            assert isinstance(app.screen, SchedulesScreen)
            await until(pilot, lambda: len(rows(app)) == 2, what="the stored schedules")
            shown = rows(app)
            assert shown["nightly"][2:4] == ["0 2 * * * America/New_York",
                                             time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(kept["next_fire"]))]
            assert shown["beat"][7] == "paused" and shown["beat"][3] == "-"
            await pilot.press("r")  # (read-only: no action is offered, nothing happens)
            await pilot.pause()
            assert not app._notifications
