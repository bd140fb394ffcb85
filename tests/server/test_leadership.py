"""The server asks its store for the leadership before it serves and while it serves (runq/app/store/base.py),
with real SQLite files and real sockets. A store that does not lead stands for a PostgreSQL store whose lease
another server holds: here a ``SQLiteStore`` whose ``leadership()`` and ``take_leadership()`` answer as the test
says (the only part that is not the real thing; tests/e2e/test_e2e_failover.py runs the real one)."""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

import httpx
import pytest
import trio

from runq import Client, Worker
from runq.app.core import State, Task
from runq.app.server import Server, ServerConfig
from runq.app.store import Batch, Leadership, Notify, NotLeader, SQLiteStore, Store
from runq.protocol.errors import ConnectionClosed


class FollowerStore(SQLiteStore):
    """A store that server B (at 10.0.0.2:7700, term 7) leads until ``lead`` is set; then this one leads (term
    8) until ``lost`` is set."""

    lead = False
    lost = False
    takes = 0

    def leadership(self) -> Leadership:
        if self.lead and not self.lost:
            return Leadership(True, 8, "this one", None, 0.01)
        if self.lead:
            return Leadership(False, 8, "another runq server (this store lost its lease: a test said so)")
        return Leadership(False, 7, "server B", "10.0.0.2:7700", 0.01)

    def take_leadership(self) -> Leadership:
        self.takes += 1
        return self.leadership()


def only_leaf(exc: BaseException) -> BaseException:
    """The one exception inside trio's nested groups."""
    while isinstance(exc, BaseExceptionGroup):
        (exc,) = exc.exceptions
    return exc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def running_task_db(path: Path) -> str:
    db = str(path / "runq.db")
    store = SQLiteStore(db)
    store.write_now(Batch(rows=[Task(1, "default", "t", b"", 0, State.RUNNING, None, 60.0, 3, 1, None, None, None,
                                     None, 1.0, 2.0, None, "w1").row()]))
    store.close()
    return db


async def wait_for(pred: object, what: str) -> None:
    with trio.fail_after(10):
        while not pred():  # type: ignore[operator]
            await trio.sleep(0.01)


@pytest.mark.trio
async def test_a_standby_serves_nothing_nor_recovers_until_it_leads_then_serves_and_steps_down_when_it_loses_it(
        tmp_path: Path) -> None:
    db = running_task_db(tmp_path)
    stores: list[FollowerStore] = []

    def follower(db: str, synchronous: str, notify: Notify) -> Store:
        stores.append(FollowerStore(db, synchronous, notify))
        return stores[-1]

    server = Server(ServerConfig(db=db, port=0, http_port=0), store_factory=follower)
    with trio.fail_after(30), pytest.raises(BaseExceptionGroup) as info:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.serve)  # (it reports its port as a standby: it listens)
            (store,) = stores
            assert server.standby and not server.ready and server.leadership is not None
            assert server.active_server() == "10.0.0.2:7700 (server B)"
            await wait_for(lambda: store.takes >= 3, "polls")  # (it keeps trying, every check_in)
            # nothing recovered: the leader's running task is still its own, and no event was written for it
            conn = sqlite3.connect(db)
            try:
                assert conn.execute("SELECT state, worker FROM tasks").fetchall() == [("running", "w1")]
                assert conn.execute("SELECT count(*) FROM events").fetchone() == (0,)
            finally:
                conn.close()
            with pytest.raises(ConnectionClosed, match=r"standby: this server is a standby; the active server is "
                                                       r"10\.0\.0\.2:7700 \(server B\)"):
                async with Client(f"127.0.0.1:{port}", retry_for=0):
                    pass
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}") as http:
                assert (await http.get("/healthz")).status_code == 200
                ready = await http.get("/readyz")
                assert ready.status_code == 503 and ready.json()["error"]["code"] == "standby"
                assert "10.0.0.2:7700" in ready.json()["error"]["message"]
                tasks = await http.get("/api/tasks")
                assert tasks.status_code == 503 and tasks.json()["error"]["code"] == "standby"

                store.lead = True  # the lease expired and this server took it: it recovers and serves
                await wait_for(lambda: server.ready, "serving")
                assert not server.standby and server.recovered == 1
                assert (await http.get("/readyz")).status_code == 200
            async with Client(f"127.0.0.1:{port}") as c:
                assert (await c.get(1))["state"] == "ready"
                assert [e["kind"] for e in await c.events(1)] == ["enqueued", "recovered"]
                tid = await c.enqueue("t")
                store.lost = True  # its lease lost (not renewed in time): it steps down, writing nothing more
                await wait_for(lambda: server.stopping.is_set(), "stepping down")
    # (the nursery re-raises what serve raised: the step-down)
    assert isinstance(only_leaf(info.value), NotLeader)
    assert server.stepped_down is not None and "lost its lease" in server.stepped_down
    assert tid == 2
    SQLiteStore(db).close()  # and the file was let go


@pytest.mark.trio
async def test_serve_raises_not_leader_when_it_steps_down(tmp_path: Path) -> None:
    db = running_task_db(tmp_path)

    def leader_then_lost(db: str, synchronous: str, notify: Notify) -> Store:
        s = FollowerStore(db, synchronous, notify)
        s.lead = True
        return s

    server = Server(ServerConfig(db=db, port=0), store_factory=leader_then_lost)
    with trio.fail_after(30), pytest.raises(BaseExceptionGroup) as info:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.serve)
            async with Client(f"127.0.0.1:{port}") as c:
                assert (await c.get(1))["state"] == "ready"
            assert isinstance(server.store, FollowerStore)
            server.store.lost = True
    leaf = only_leaf(info.value)
    assert isinstance(leaf, NotLeader) and "stepped down without writing: another runq server" in str(leaf)
    assert server.stepped_down is not None and not server.ready


@pytest.mark.trio
async def test_clients_and_workers_given_a_standby_first_go_on_to_the_active_server(tmp_path: Path) -> None:
    standby = Server(ServerConfig(db=running_task_db(tmp_path), port=0),
                     store_factory=lambda db, sync, notify: FollowerStore(db, sync, notify))
    (tmp_path / "b").mkdir()
    active = Server(ServerConfig(db=str(tmp_path / "b" / "runq.db"), port=0))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            s_port = await nursery.start(standby.serve)
            a_port = await nursery.start(active.serve)
            both = f"127.0.0.1:{s_port},127.0.0.1:{a_port}"
            async with Client(both) as c:
                assert c.address == f"127.0.0.1:{a_port}"
                tid = await c.enqueue("double", 21)
                worker = Worker()
                worker.register("double", lambda x: x * 2)
                nursery.start_soon(worker.run, both)
                assert (await c.wait(tid, timeout=20))["result"] == 42
                assert worker.sessions == 1 and [w["pid"] for w in await c.workers()] == [worker_pid()]
                worker.stop()
            standby.stopping.set()
            active.stopping.set()
    assert standby.standby and not standby.ready


def worker_pid() -> int:
    import os

    return os.getpid()


@pytest.mark.trio
async def test_a_server_on_sqlite_leads_in_term_1(tmp_path: Path) -> None:
    server = Server(ServerConfig(db=str(tmp_path / "runq.db"), port=0))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            assert server.leadership is not None and (server.leadership.is_leader, server.leadership.term) == (True, 1)
            assert not server.standby and server.stepped_down is None
            async with Client(f"127.0.0.1:{server.port}") as c:
                assert (await c.get(await c.enqueue("t")))["state"] == "ready"
            server.stopping.set()


def test_a_lease_out_of_bounds_or_a_bad_advertised_address_is_a_clear_config_error(tmp_path: Path) -> None:
    from runq.app.errors import ConfigError

    with pytest.raises(ConfigError, match="lease must be between 1 and 3600 seconds, not 0.2"):
        Server(ServerConfig(db=str(tmp_path / "x.db"), lease=0.2))
    with pytest.raises(ConfigError, match="advertise: bad server address 'http://a:1'"):
        Server(ServerConfig(db=str(tmp_path / "x.db"), advertise="http://a:1"))
