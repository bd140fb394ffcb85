"""The SDKs read every frame the server may send: up to the ``max_reply`` of its welcome, past their old fixed
16 MiB (docs/protocol.md section 1; issue 10: ``runq status`` of a task at the payload limit failed).

A server with ``max_frame`` 6 MiB sends frames of up to 24 MiB + 64 KiB: a dispatch of three tasks at the
payload limit (~18 MiB) and a task whose payload, result and progress are each at the limit (~18 MiB).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from runq import Client, SyncClient, TaskContext, Worker
from runq.app.core import CoreConfig
from runq.app.server import Server, ServerConfig

MAX_FRAME = 6 << 20
BIG = MAX_FRAME - (8 << 10)  # a value whose enqueue (or done, or progress) frame fits max_frame
OLD_LIMIT = 16 << 20


@pytest.mark.trio
async def test_the_sdks_read_frames_over_16_mib_up_to_the_servers_max_reply(nursery: trio.Nursery,
                                                                              tmp_path: Path) -> None:
    srv = Server(ServerConfig(db=str(tmp_path / "runq.db"), port=0, max_frame=MAX_FRAME,
                              core=CoreConfig(lease_timeout=10.0)))
    port = await nursery.start(srv.serve)
    address = f"127.0.0.1:{port}"
    worker = Worker(concurrency=3, prefetch=0)

    @worker.task("echo")
    def echo(p: bytes, ctx: TaskContext) -> bytes:
        ctx.progress(b"p" * BIG)
        return b"r" * len(p)

    with trio.fail_after(60):
        async with Client(address) as c:
            ids = [await c.enqueue("echo", bytes([i]) * BIG) for i in range(3)]
            async with trio.open_nursery() as inner:  # the three go out in one dispatch: ~18 MiB
                inner.start_soon(worker.run, address)
                tasks = [await c.wait(i, timeout=50) for i in ids]
                worker.stop()
            assert [t["state"] for t in tasks] == ["succeeded"] * 3, [t["error"] for t in tasks]
            assert c.max_frame == c.welcome["max_reply"] == 4 * MAX_FRAME + 65536
            task = await c.get(ids[0])
            assert (len(task["payload"]), len(task["result"]), len(task["progress"])) == (BIG, BIG, BIG)
            assert sum(len(task[f]) for f in ("payload", "result", "progress")) > OLD_LIMIT

        def sync_get() -> dict[str, Any]:
            with SyncClient(address) as s:
                return s.get(ids[1])

        assert len((await trio.to_thread.run_sync(sync_get))["result"]) == BIG
