"""A schedule change is answered once it is committed: when the commit that carries it fails, the answer waits
for the retried commit (as pause's: test_spec_gaps), so an answered change is on disk (issue 11)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio
from test_spec_gaps import Peer, start


@pytest.mark.trio
async def test_a_schedule_add_whose_commit_fails_is_answered_by_the_retried_commit(nursery: trio.Nursery,
                                                                                   tmp_path: Path) -> None:
    srv = await start(nursery, tmp_path)
    store = srv.store
    assert store is not None
    with trio.fail_after(20):
        peer, _ = await Peer.connect(srv.port)
        async with peer.stream:
            assert (await peer.call({"op": "enqueue", "rid": 0, "tasks": [{"type": "t"}]}))["op"] == "enqueued"
            await srv.wait_committed()
            (pages,) = store.conn.execute("PRAGMA page_count").fetchone()
            store.conn.execute(f"PRAGMA max_page_count = {pages}")  # the 'disk' is now full
            big = {"op": "enqueue", "rid": 1, "tasks": [{"type": "t", "payload": b"\xc4" * 300_000}]}
            add = {"op": "schedule_add", "rid": 2, "schedule": {"name": "s", "type": "t", "every": 60}}
            await peer.stream.send_all(peer.conn.send_many([big, add]))  # (one read: one batch, one commit)
            first = await peer.recv()
            assert (first["rid"], first["op"], first["code"]) == (1, "error", "store_error")
            second = await peer.recv()
            assert (second["rid"], second["op"], second["schedule"]["name"]) == (2, "schedule", "s")
            db = sqlite3.connect(srv.config.db)  # answered: so on disk
            assert db.execute("SELECT name, every FROM schedules").fetchall() == [("s", 60.0)]
            db.close()
            store.conn.execute("PRAGMA max_page_count = 1073741823")
