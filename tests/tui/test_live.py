"""The dashboard against a real server and real workers (subprocesses), driven with the pilot."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Static
from tui_helpers import Procs, free_port

from runq.protocol.client import Client
from runq.tui import LiveSource, RunqDashboard
from runq.tui.forms import ConfirmScreen, EnqueueForm, HelpScreen
from runq.tui.screens import QueuesScreen, TaskDetailScreen, TasksScreen, TimelineScreen, WorkersScreen

pytestmark = [pytest.mark.tui, pytest.mark.anyio]

SIZE = (180, 50)


async def until(pilot: Pilot[Any], pred: Callable[[], object], timeout: float = 15.0, what: str = "") -> None:
    """Let the app run until ``pred()`` holds; fail after ``timeout`` seconds."""
    try:
        with anyio.fail_after(timeout):
            while not pred():
                await pilot.pause(0.05)
    except TimeoutError:
        raise AssertionError(f"not reached in {timeout}s: {what}") from None


def table_rows(app: RunqDashboard, wid: str) -> list[list[str]]:
    table = app.screen.query_one(wid, DataTable)
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


def banner(app: RunqDashboard) -> str:
    return str(app.screen.query_one("#banner", Static).content)


async def select_row(pilot: Pilot[Any], wid: str, key: str) -> None:
    table = pilot.app.screen.query_one(wid, DataTable)
    table.move_cursor(row=table.get_row_index(key), animate=False)
    table.focus()
    await pilot.pause()


async def test_every_screen_and_action(procs: Procs) -> None:
    """Navigate the four screens, filter, open a task and watch its timeline grow, cancel, retry, pause and
    resume, enqueue from the form, drain a worker."""
    procs.start_server()
    w1 = procs.start_worker()
    w2 = procs.start_worker("--queues", "default")
    with anyio.fail_after(60):
        async with Client(procs.address) as client:
            app = RunqDashboard(LiveSource(procs.address))
            async with app.run_test(size=SIZE) as pilot:
                source = app.source
                # Queues: counts arrive from the live feed and the poller
                assert isinstance(app.screen, QueuesScreen)
                await until(pilot, lambda: source.state.connected)
                await until(pilot, lambda: banner(app) == "")
                await client.enqueue_many([{"type": "noop", "payload": i} for i in range(20)])
                await client.enqueue("boom", "x", queue="other")
                await until(pilot, lambda: any(r[0] == "default" and r[5] == "20" for r in table_rows(app, "#queues")),
                            what="20 succeeded on default")
                rows = {r[0]: r for r in table_rows(app, "#queues")}
                assert rows["default"][1] == "-"  # not paused
                await until(pilot, lambda: {r[0]: r for r in table_rows(app, "#queues")}["other"][7] == "1",
                            what="the boom task dead")

                # Workers
                await pilot.press("2")
                assert isinstance(app.screen, WorkersScreen)
                await until(pilot, lambda: len(table_rows(app, "#workers")) == 2)
                workers = {r[3]: r for r in table_rows(app, "#workers")}
                assert set(workers) == {str(w1.pid), str(w2.pid)}
                assert all(r[8] == "active" for r in workers.values())

                # Timeline: the attempts of both workers as lanes
                await pilot.press("4")
                assert isinstance(app.screen, TimelineScreen)
                await until(pilot, lambda: len(source.state.lanes.window(source.now() - 120, source.now())) >= 1)
                await pilot.pause(0.3)
                text = str(app.screen.query_one("#lanes", Static).content)
                assert any(r[0] in text for r in workers.values())
                await pilot.press("minus")
                assert app.screen.window == 60.0  # type: ignore[attr-defined]

                # Tasks: filter by state, then by queue
                await pilot.press("3")
                screen = app.screen
                assert isinstance(screen, TasksScreen)
                await until(pilot, lambda: len(table_rows(app, "#tasks")) == 21)
                for _ in range(5):  # all -> scheduled -> ready -> running -> succeeded -> dead
                    await pilot.press("s")
                assert screen.state_filter == "dead"
                await until(pilot, lambda: [r[1] for r in table_rows(app, "#tasks")] == ["dead"])
                await pilot.press("s", "s")  # cancelled, then all
                assert screen.state_filter is None
                screen.query_one("#f-queue", Input).value = "other"
                await until(pilot, lambda: len(table_rows(app, "#tasks")) == 1 and table_rows(app, "#tasks")[0][3] == "boom")
                screen.query_one("#f-queue", Input).value = ""

                # open a task and see its timeline grow: enqueued -> started -> succeeded
                tid = await client.enqueue("sleep", 1.5)
                await pilot.press("slash")
                await pilot.press(*str(tid), "enter")
                await until(pilot, lambda: [r[0] for r in table_rows(app, "#tasks")] == [str(tid)])
                await pilot.press("enter")
                assert isinstance(app.screen, TaskDetailScreen)
                await until(pilot, lambda: "started" in [r[3] for r in table_rows(app, "#events")], what="started")
                assert "succeeded" not in [r[3] for r in table_rows(app, "#events")]
                await until(pilot, lambda: [r[3] for r in table_rows(app, "#events")][-1] == "succeeded",
                            what="succeeded")
                kinds = [r[3] for r in table_rows(app, "#events")]
                assert kinds == ["enqueued", "started", "succeeded"]
                assert "running" in str(app.screen.query_one("#strip", Static).content)
                await pilot.press("escape")
                assert isinstance(app.screen, TasksScreen)

                # cancel a running task from its detail (confirmation first), then retry it
                long_id = await client.enqueue("sleep", 30)
                detail = TaskDetailScreen(long_id)
                await app.push_screen(detail)
                await until(pilot, lambda: detail.current is not None and detail.current["state"] == "running")
                await pilot.press("c")
                assert isinstance(app.screen, ConfirmScreen)
                await pilot.press("n")  # no: nothing happens (given the time a cancel would take to land)
                assert app.screen is detail
                await pilot.pause(0.5)
                assert (await client.get(long_id))["state"] == "running"
                assert "cancelled" not in [r[3] for r in table_rows(app, "#events")]
                await pilot.press("c")
                await pilot.press("y")
                await until(pilot, lambda: (detail.current or {}).get("state") == "cancelled", what="cancelled")
                # (the detail and its events table are refreshed by separate reads: wait for the event too)
                await until(pilot, lambda: "cancelled" in [r[3] for r in table_rows(app, "#events")], what="cancelled event")
                await pilot.press("r")
                await until(pilot, lambda: (detail.current or {}).get("state") in ("ready", "running"), what="retried")
                # (the detail and its events table are refreshed by separate reads: wait for the event too)
                await until(pilot, lambda: "retried" in [r[3] for r in table_rows(app, "#events")], what="retried event")
                await client.cancel(long_id)
                await pilot.press("escape")

                # retry from the task list: the dead boom task
                screen.query_one("#f-id", Input).value = ""
                screen.query_one("#f-queue", Input).value = "other"
                await until(pilot, lambda: [r[1] for r in table_rows(app, "#tasks")] == ["dead"])
                boom_id = table_rows(app, "#tasks")[0][0]
                await select_row(pilot, "#tasks", boom_id)
                await pilot.press("r")
                await until(pilot, lambda: source.state.queues["other"].dead == 2, what="boom retried, dead again")
                assert any(f"task {boom_id} retried" in str(n.message) for n in app._notifications)
                assert any(e["kind"] == "retried" for e in await client.events(int(boom_id)))

                # enqueue from the form
                await pilot.press("e")
                assert isinstance(app.screen, EnqueueForm)
                await pilot.press(*"noop")
                form = app.screen
                form.query_one("#payload", Input).value = '{"from": "form"}'
                form.query_one("#priority", Input).value = "7"
                await pilot.press("ctrl+s")
                assert isinstance(app.screen, TasksScreen)
                newest: list[dict[str, Any]] = []

                async def has_form_task() -> bool:
                    page = (await client.list_tasks(type="noop", limit=5))[0]
                    newest[:] = [t for t in page if t["payload"] == {"from": "form"}]
                    return bool(newest)

                with anyio.fail_after(10):
                    while not await has_form_task():
                        await pilot.pause(0.05)
                assert newest[0]["priority"] == 7

                # pause and resume a queue from the Queues screen
                await pilot.press("1")
                await select_row(pilot, "#queues", "default")
                await pilot.press("p")
                assert isinstance(app.screen, ConfirmScreen)
                await pilot.press("y")
                await until(pilot, lambda: {r[0]: r for r in table_rows(app, "#queues")}["default"][1] == "paused")
                assert next(q for q in await client.queues() if q["queue"] == "default")["paused"] is True
                await pilot.press("p")  # resume: no question
                await until(pilot, lambda: {r[0]: r for r in table_rows(app, "#queues")}["default"][1] == "-")
                assert next(q for q in await client.queues() if q["queue"] == "default")["paused"] is False

                # help
                await pilot.press("question_mark")
                assert isinstance(app.screen, HelpScreen)
                await pilot.press("escape")

                # drain a worker: it leaves, and the screen says so
                await pilot.press("2")
                wid = next(r[0] for r in table_rows(app, "#workers") if r[3] == str(w2.pid))
                await select_row(pilot, "#workers", wid)
                await pilot.press("d")
                assert isinstance(app.screen, ConfirmScreen)
                await pilot.press("y")
                with anyio.fail_after(15):
                    while w2.poll() is None:
                        await pilot.pause(0.05)
                await until(pilot, lambda: {r[0]: r for r in table_rows(app, "#workers")}[wid][8] == "left")
                assert {r[0]: r for r in table_rows(app, "#workers")}[wid][7].startswith("gone")


async def test_disconnected_banner_then_reconnect(procs: Procs) -> None:
    """The server goes away: a banner says so; it comes back on the same port: the dashboard follows it again."""
    procs.start_server()
    port = procs.port
    with anyio.fail_after(45):
        app = RunqDashboard(LiveSource(procs.address))
        async with app.run_test(size=SIZE) as pilot:
            source = app.source
            assert isinstance(source, LiveSource)
            await until(pilot, lambda: source.state.connected)
            await until(pilot, lambda: banner(app) == "")
            client = source.client
            assert client is not None and client.backoff is source.backoff  # one reconnect policy
            await anyio.to_thread.run_sync(procs.stop_server)
            await until(pilot, lambda: banner(app).startswith("DISCONNECTED"), what="banner")
            assert "reconnecting" in banner(app)
            await pilot.press("3")  # screens still work; requests fail politely
            await pilot.pause(0.3)
            assert "not connected" in str(app.screen.query_one("#count", Static).content)
            await anyio.to_thread.run_sync(procs.start_server, port)
            await until(pilot, lambda: source.state.connected, timeout=20, what="reconnected")
            await until(pilot, lambda: banner(app) == "")
            assert source.connects == 2
            assert source.client is client and client.connections == 2  # the SDK client reconnected by itself
            async with Client(procs.address) as client:
                tid = await client.enqueue("noop", None)
            await until(pilot, lambda: [r[0] for r in table_rows(app, "#tasks")][:1] == [str(tid)])


async def test_totals_since_the_server_started_over_tcp(procs: Procs) -> None:
    """Succeeded counts are the server's totals (its queue maps), tasks run before the dashboard came included:
    no HTTP API needed (it took `--http` before)."""
    procs.start_server()
    procs.start_worker()
    with anyio.fail_after(40):
        async with Client(procs.address) as client:
            for tid in await client.enqueue_many([{"type": "noop"} for _ in range(5)]):
                await client.wait(tid, 10)
            app = RunqDashboard(LiveSource(procs.address))
            async with app.run_test(size=SIZE) as pilot:
                await until(pilot, lambda: any(r[0] == "default" and r[5] == "5" for r in table_rows(app, "#queues")))
                assert app.source.state.totals_from_server
                # the attempts that ran before the dashboard connected are in the Gantt view
                lanes = app.source.state.lanes.window(app.source.now() - 120, app.source.now())
                assert sum(len(b) for b in lanes.values()) == 5
                assert "since the server started" in str(app.screen.query_one("#summary", Static).content)
                await client.enqueue("noop", None)
                await until(pilot, lambda: any(r[0] == "default" and r[5] == "6" for r in table_rows(app, "#queues")))


async def test_no_server_yet(procs: Procs) -> None:
    """Nothing listens: the source keeps trying (the banner says why) and closes at once when asked."""
    source = LiveSource(f"127.0.0.1:{free_port()}")
    with anyio.fail_after(10):
        await source.start()
        while "reconnecting" not in source.state.status:
            await anyio.sleep(0.05)
        assert not source.state.connected and "disconnected from" in source.state.status
        t0 = anyio.current_time()
        await source.close()
        assert anyio.current_time() - t0 < 1.0


async def test_a_standby_says_so_in_the_banner_and_given_both_addresses_the_dashboard_follows_the_active(
        procs: Procs) -> None:
    """Two servers on one PostgreSQL database (tests/pg_server.py): the second waits as a standby. The dashboard
    given only the standby says STANDBY and names the active server; given both, it shows the active one."""
    import pg_server

    db = pg_server.server().database("tui")
    servers: list[subprocess.Popen[bytes]] = []

    def serve() -> str:
        port_file = procs.tmp / f"port{len(servers)}"
        servers.append(subprocess.Popen([sys.executable, "-m", "runq.cli", "serve", "--db", db, "--port", "0",
                                         "--http-port", "0", "--port-file", str(port_file)], env=procs.env,
                                        stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 30
        while not port_file.exists():
            assert servers[-1].poll() is None and time.monotonic() < deadline, "runq serve did not start"
            time.sleep(0.02)
        return f"127.0.0.1:{port_file.read_text()}"

    try:
        active = serve()
        standby = serve()
        with anyio.fail_after(45):
            app = RunqDashboard(LiveSource(standby))
            async with app.run_test(size=SIZE) as pilot:
                await until(pilot, lambda: banner(app).startswith("STANDBY"), what="standby banner")
                assert f"the active server is {active}" in banner(app) and not app.source.state.connected
            app = RunqDashboard(LiveSource(f"{standby},{active}"))
            async with app.run_test(size=SIZE) as pilot:
                await until(pilot, lambda: app.source.state.connected, what="connected to the active server")
                await until(pilot, lambda: banner(app) == "", what="no banner")
                source = app.source
                assert isinstance(source, LiveSource) and source.client is not None
                assert source.client.address == active
    finally:
        for p in servers:
            p.kill()
            p.wait(10)
