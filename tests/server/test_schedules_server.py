"""Schedules on a real server: a real SQLite file, a real worker over TCP, trio's virtual clock, a restart."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio
from server_helpers import VirtualClock, until

from runq import Worker
from runq.app.core import Schedule
from runq.app.server import Server, ServerConfig

WALL = 1_800_000_000.0  # the servers' wall clock at trio time 0 (one clock across the restart)


async def one_life(nursery: trio.Nursery, virtual_clock: VirtualClock, db: Path, runs: int,
                   add: Schedule | None = None) -> Server:
    """Start a server on ``db`` (and a worker of ``tick`` tasks), add ``add``, run until ``runs`` tasks more
    succeeded, stop both."""
    srv = Server(ServerConfig(db=str(db), port=0), clock=lambda: WALL + trio.current_time())
    async with trio.open_nursery() as life:
        await life.start(srv.serve)
        virtual_clock.follow(nursery, srv)
        if add is not None:
            srv.core.add_schedule(add, srv.clock())
            srv.flush()
        worker = Worker()

        @worker.task("tick")
        async def tick(p: Any) -> None:
            return None

        life.start_soon(worker.run, f"127.0.0.1:{srv.port}")
        await until(srv, lambda: srv.core.stats.succeeded >= runs)
        worker.stop()
        await until(srv, lambda: not srv.core.workers)
        srv.stopping.set()
    return srv


@pytest.mark.trio
async def test_a_schedule_of_every_second_fires_each_time_once_across_a_restart(
        nursery: trio.Nursery, tmp_path: Path, virtual_clock: VirtualClock) -> None:
    db = tmp_path / "runq.db"
    with trio.fail_after(120):
        first = await one_life(nursery, virtual_clock, db, 5, Schedule("tick", "tick", every=1.0, missed="all"))
        added = first.core.schedules_list()[0].created_at
        await trio.sleep(3.5)  # down: fire times pass (on time still: within the 60 s grace, so each runs)
        await one_life(nursery, virtual_clock, db, 8)
    conn = sqlite3.connect(db)
    keys = [k for (k,) in conn.execute("SELECT key FROM tasks WHERE key LIKE 'schedule:tick:%' ORDER BY id")]
    states = {s for (s,) in conn.execute("SELECT state FROM tasks")}
    (next_fire, last_fire) = conn.execute("SELECT next_fire, last_fire FROM schedules WHERE name = 'tick'").fetchone()
    conn.close()
    fires = [float(k.rsplit(":", 1)[1]) for k in keys]
    # one task per fire time, none twice, none left out (those of the downtime too), every one run
    assert len(fires) == len(set(fires)) >= 13
    assert fires == [pytest.approx(added + i, abs=1e-3) for i in range(1, len(fires) + 1)]
    assert states == {"succeeded"}
    assert last_fire == pytest.approx(fires[-1], abs=1e-3) and next_fire == pytest.approx(fires[-1] + 1, abs=1e-3)
