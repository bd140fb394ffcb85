"""``runq tui --db FILE``: the dashboard over a database file a real server wrote, read-only."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import anyio
import pytest
from test_live import SIZE, banner, table_rows, until
from test_robustness import make_db
from textual.widgets._footer import FooterKey
from tui_helpers import Procs, free_port

from runq.protocol.client import Client
from runq.tui import LiveSource, OfflineError, OfflineSource, ReadOnly, RunqDashboard
from runq.tui.screens import QueuesScreen, TaskDetailScreen, TasksScreen, TimelineScreen, WorkersScreen

pytestmark = [pytest.mark.tui, pytest.mark.anyio]


def digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


async def test_offline_view_of_a_database_written_by_a_server(procs: Procs) -> None:
    procs.start_server()
    worker = procs.start_worker()
    with anyio.fail_after(40):
        async with Client(procs.address) as client:
            ids = await client.enqueue_many([{"type": "noop", "payload": i} for i in range(12)])
            slow = await client.enqueue("sleep", 0.3, queue="other")
            for tid in [*ids, slow]:
                await client.wait(tid, 10)
            cancelled = await client.enqueue("sleep", 30, delay=60)
            await client.cancel(cancelled)
            later = await client.enqueue("noop", None, delay=3600)
            await client.pause("other")
            wid = next(w["id"] for w in await client.workers() if w["pid"] == worker.pid)
        await anyio.to_thread.run_sync(procs.stop_server)
    before = digest(procs.db)
    assert not os.path.exists(procs.db + "-wal") or os.path.getsize(procs.db + "-wal") == 0

    with anyio.fail_after(40):
        app = RunqDashboard(OfflineSource(procs.db))
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: banner(app).startswith("OFFLINE"))
            assert "read-only" in banner(app)
            await until(pilot, lambda: len(table_rows(app, "#queues")) == 2)
            rows = {r[0]: r for r in table_rows(app, "#queues")}
            # queue, paused, ready, scheduled, running, succeeded, failed, dead
            assert rows["default"][2:8] == ["0", "1", "0", "12", "0", "0"]
            assert rows["other"][1] == "paused" and rows["other"][5] == "1"

            # actions are not offered: their keys do nothing, nothing is asked
            await pilot.press("p")
            await pilot.pause(0.2)
            assert isinstance(app.screen, QueuesScreen) and not app._notifications

            await pilot.press("2")
            assert isinstance(app.screen, WorkersScreen)
            assert [r[0] for r in table_rows(app, "#workers")] == [wid]
            assert table_rows(app, "#workers")[0][8] == "seen"

            await pilot.press("4")
            assert isinstance(app.screen, TimelineScreen)
            await pilot.pause(0.3)
            assert wid in str(app.screen.query_one("#lanes").content)  # type: ignore[attr-defined]

            await pilot.press("3")
            assert isinstance(app.screen, TasksScreen)
            await until(pilot, lambda: len(table_rows(app, "#tasks")) == 15)
            await pilot.press(*"s" * 6)  # scheduled, ready, running, succeeded, dead, cancelled
            assert app.screen.state_filter == "cancelled"
            await until(pilot, lambda: [r[0] for r in table_rows(app, "#tasks")] == [str(cancelled)])
            await pilot.press("enter")
            assert isinstance(app.screen, TaskDetailScreen)
            await until(pilot, lambda: len(table_rows(app, "#events")) == 2)
            assert [r[3] for r in table_rows(app, "#events")] == ["scheduled", "cancelled"]
            await pilot.press("escape")
            await pilot.press("s")  # all
            screen = app.screen
            assert isinstance(screen, TasksScreen)
            screen.query_one("#f-id").value = str(slow)  # type: ignore[attr-defined]
            await until(pilot, lambda: [r[0] for r in table_rows(app, "#tasks")] == [str(slow)])
            await app.push_screen(TaskDetailScreen(slow))
            await until(pilot, lambda: [r[3] for r in table_rows(app, "#events")] == ["enqueued", "started", "succeeded"])
            assert [r[6] for r in table_rows(app, "#events")][1] == wid
            strip = str(app.screen.query_one("#strip").content)  # type: ignore[attr-defined]
            assert "running" in strip and "waiting" in strip
            assert later in [t["id"] for t in (await app.source.list_tasks(state="scheduled"))[0]]

    assert digest(procs.db) == before  # read-only: the file was not touched


async def test_offline_refuses_a_missing_or_foreign_file(tmp_path: Path) -> None:
    with pytest.raises(OfflineError):
        await OfflineSource(str(tmp_path / "nope.db")).start()
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(OfflineError):
        await OfflineSource(str(junk)).start()


async def test_offline_while_a_server_writes(procs: Procs) -> None:
    """A file in use by a running server opens read-only too, and the view follows its new rows."""
    procs.start_server()
    with anyio.fail_after(30):
        async with Client(procs.address) as client:
            await client.enqueue("noop", 1)
            source = OfflineSource(procs.db)
            await source.start()
            try:
                assert source.state.queues["default"].ready == 1
                await client.enqueue_many([{"type": "noop"} for _ in range(4)])
                await source.refresh()
                assert source.state.queues["default"].ready == 5
            finally:
                await source.close()


WRITES = {"toggle_pause", "enqueue", "cancel_task", "retry_task", "drain"}


def offered(app: RunqDashboard) -> set[str]:
    """The actions of the screen in view: its active bindings, checked against what its footer shows."""
    actions = {b.binding.action for b in app.screen.active_bindings.values()}
    footer = {k.action for k in app.screen.query(FooterKey)}
    assert footer <= actions, footer - actions
    return footer


async def offered_per_screen(app: RunqDashboard, pilot: Any, tid: int) -> dict[str, set[str]]:
    out = {}
    for key, name in (("1", "queues"), ("2", "workers"), ("3", "tasks")):
        await pilot.press(key)
        await until(pilot, lambda: app.screen.query(FooterKey), what=f"footer of {name}")
        out[name] = offered(app)
    await app.push_screen(TaskDetailScreen(tid))
    await until(pilot, lambda: app.screen.query(FooterKey), what="footer of the detail")
    out["detail"] = offered(app)
    return out


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_offline_offers_no_actions_live_does(tmp_path: Path) -> None:
    """``runq tui --db FILE`` neither shows nor runs pause/resume, enqueue, cancel, retry or drain (it would
    only refuse them); a live dashboard shows them on the same screens."""
    db = make_db(tmp_path / "file.db")
    with anyio.fail_after(30):
        app = RunqDashboard(OfflineSource(db))
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: banner(app).startswith("OFFLINE"))
            shown = await offered_per_screen(app, pilot, 3)
            assert all(actions for actions in shown.values())  # the footer shows the rest
            assert {n: a & WRITES for n, a in shown.items()} == {n: set() for n in shown}
            await pilot.press("r", "c")  # keys of hidden actions: nothing is asked, nothing refused
            await pilot.pause(0.2)
            assert isinstance(app.screen, TaskDetailScreen) and not app._notifications
            with pytest.raises(ReadOnly):  # the source still refuses, should anything call it
                await app.source.retry(3)

        live = RunqDashboard(LiveSource(f"127.0.0.1:{free_port()}"))  # no server: live all the same
        async with live.run_test(size=SIZE) as pilot:
            shown = await offered_per_screen(live, pilot, 3)
            assert {n: a & WRITES for n, a in shown.items()} == {
                "queues": {"toggle_pause", "enqueue"}, "workers": {"drain"},
                "tasks": {"cancel_task", "retry_task", "enqueue"}, "detail": {"cancel_task", "retry_task"}}
