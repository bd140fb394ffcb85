"""The task detail says why a ready task waits (issue 11: the ``why`` op), against a real server and worker."""

from __future__ import annotations

import anyio
import pytest
from test_live import SIZE, until
from textual.widgets import Static
from tui_helpers import Procs

from runq.protocol.client import Client
from runq.tui import LiveSource, RunqDashboard
from runq.tui.screens import TaskDetailScreen

pytestmark = [pytest.mark.tui, pytest.mark.anyio]


async def test_the_task_detail_says_what_holds_a_ready_task(procs: Procs) -> None:
    procs.start_server()
    procs.start_worker()
    with anyio.fail_after(60):
        async with Client(procs.address) as client:
            await client.open_breaker("noop", "maintenance")
            tid = await client.enqueue("noop", None)
            app = RunqDashboard(LiveSource(procs.address))
            async with app.run_test(size=SIZE) as pilot:
                detail = TaskDetailScreen(tid)
                await app.push_screen(detail)

                def summary() -> str:
                    return str(app.screen.query_one("#summary", Static).content)

                await until(pilot, lambda: "waiting: breaker_open" in summary(), what="the why line")
                assert (detail.current or {}).get("state") == "ready"
                await client.close_breaker("noop")
                await until(pilot, lambda: (detail.current or {}).get("state") == "succeeded", what="ran")
                assert "waiting:" not in summary()
