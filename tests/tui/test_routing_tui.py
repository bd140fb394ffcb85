"""What the dashboard shows of routing and limits (issue 11): a worker's labels (Workers screen), the limits of a
queue (Queues screen), live from a real server and offline from a database file."""

from __future__ import annotations

import random
from pathlib import Path

import anyio
import pytest
from tui_helpers import Procs

from runq import Client
from runq.app.core import Core, CoreConfig, State, Task
from runq.app.store import Batch, SQLiteStore
from runq.tui import LiveSource, OfflineSource

pytestmark = [pytest.mark.tui, pytest.mark.anyio]


async def test_live_worker_labels_and_queue_limits(procs: Procs) -> None:
    procs.start_server()
    procs.start_worker("--label", "region=eu", "--label", "gpu=1")
    source = LiveSource(procs.address)
    try:
        with anyio.fail_after(30):
            async with Client(procs.address) as c:
                await c.set_limit("queue", "default", rate="10/s", burst=5, concurrency=3)
                await c.set_limit("queue", "default", rate="2/m", key="customer")
            await source.start()
            st = source.state
            while not (st.workers and st.queue_limits("default") and len(st.queue_limits("default")) == 2):
                await anyio.sleep(0.05)
            (w,) = st.workers.values()
            assert w.labels == {"gpu": "1", "region": "eu"}
            assert [(lim["key"], lim["rate"], lim["concurrency"]) for lim in st.queue_limits("default")] == [
                ("", 10.0, 3), ("customer", 2.0, None)]
    finally:
        await source.close()


async def test_offline_queue_limits_are_read_from_the_file(tmp_path: Path) -> None:
    db = str(tmp_path / "runq.db")
    core = Core(CoreConfig(), rng=random.Random(1))
    core.set_limit(("queue", "mail"), 1000.0, rate=5, period=2, concurrency=4)
    core.set_limit(("type", "send"), 1000.0, concurrency=1)  # (a type's: not one of a queue)
    fx = core.take_effects(1000.0)
    store = SQLiteStore(db)
    try:
        store.write_now(Batch(new_rows=[Task(1, "mail", "send", b"\xc0", 0, State.READY, created_at=1000.0).new_row()],
                              limits=fx.limit_rows))
    finally:
        store.close()
    src = OfflineSource(db)
    await src.start()
    try:
        limits = src.state.queue_limits("mail")
        assert [(lim["rate"], lim["period"], lim["concurrency"]) for lim in limits] == [(5.0, 2.0, 4)]
        assert src.state.queue_limits("send") == [] and len(src.state.limits) == 2
    finally:
        await src.close()
