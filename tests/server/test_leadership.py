"""The server asks its store for the leadership before it serves (runq/app/store/base.py), with real SQLite
files and real sockets. A store that does not lead stands for a PostgreSQL store whose lease another server
holds: here a ``SQLiteStore`` whose ``leadership()`` answers so (the only part that is not the real thing)."""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

import pytest
import trio

from runq import Client
from runq.app.core import State, Task
from runq.app.server import Server, ServerConfig
from runq.app.store import Batch, Leadership, Notify, NotLeader, SQLiteStore, Store, StoreError


class FollowerStore(SQLiteStore):
    """A store that another server leads (term 7)."""

    def leadership(self) -> Leadership:
        return Leadership(False, 7, "server B")


def follower(db: str, synchronous: str, notify: Notify) -> Store:
    return FollowerStore(db, synchronous, notify)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.trio
async def test_a_server_whose_store_does_not_lead_does_not_serve_nor_recover(tmp_path: Path) -> None:
    db = str(tmp_path / "runq.db")
    store = SQLiteStore(db)
    store.write_now(Batch(rows=[Task(1, "default", "t", b"", 0, State.RUNNING, None, 60.0, 3, 1, None, None, None,
                                     None, 1.0, 2.0, None, "w1").row()]))
    store.close()
    port = free_port()
    server = Server(ServerConfig(db=db, port=port), store_factory=follower)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            with pytest.raises(NotLeader, match=r"led by server B \(term 7\)") as info:
                await nursery.start(server.serve)
    assert isinstance(info.value, StoreError) and info.value.code == "store_error"
    assert server.leadership == Leadership(False, 7, "server B") and not server.ready
    # nothing recovered: the leader's running task is still its own, and no event was written for it
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT state, worker FROM tasks").fetchall() == [("running", "w1")]
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (0,)
    finally:
        conn.close()
    with pytest.raises(OSError):  # nothing listens
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    SQLiteStore(db).close()  # and the file was let go


@pytest.mark.trio
async def test_a_server_on_sqlite_leads_in_term_1(tmp_path: Path) -> None:
    server = Server(ServerConfig(db=str(tmp_path / "runq.db"), port=0))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            assert server.leadership is not None and (server.leadership.is_leader, server.leadership.term) == (True, 1)
            async with Client(f"127.0.0.1:{server.port}") as c:
                assert (await c.get(await c.enqueue("t")))["state"] == "ready"
            server.stopping.set()
