"""Limits and circuit breakers are stored (issue 11): a real server on a real SQLite file, restarted on it.

No protocol operation sets a limit yet: the tests set them through the core's API (``server.core.set_limit``
and the rest), then ``server.flush()`` hands the core's effects to the store as every operation's does.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio
from test_server import RawPeer, start

from runq import Client
from runq.app.errors import StoreError
from runq.app.server import Server
from runq.protocol.messages import TaskSpec


def _server_events(server: Server) -> list[tuple[str, str, str | None]]:
    store = server.store
    assert store is not None
    return [(e.scope, e.kind, e.actor) for e in store.server_events()]


@pytest.mark.trio
async def test_limits_and_breakers_survive_a_restart_and_are_enforced(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            srv = await start(n, tmp_path)
            now = srv.clock()
            srv.core.set_limit(("type", "send"), now, concurrency=1)
            srv.core.set_limit(("type", "paced"), now, rate=1, period=3600)
            srv.core.set_limit(("type", "gone"), now, concurrency=5)
            srv.core.remove_limit(("type", "gone"), now)
            srv.core.set_breaker("flaky", now, threshold=0.5, min_calls=4, cooldown=60)
            srv.core.open_breaker("flaky", now, "the mail relay is down")
            srv.flush()
            await srv.wait_committed()
            srv.stopping.set()
        db = sqlite3.connect(tmp_path / "runq.db")
        try:  # what the file holds, read without runq
            assert db.execute("SELECT scope, name, key, rate, period, burst, concurrency FROM limits "
                              "ORDER BY name").fetchall() == [("type", "paced", "", 1.0, 3600.0, 1, None),
                                                              ("type", "send", "", None, 1.0, 1, 1)]
            assert db.execute("SELECT type, threshold, min_calls, cooldown, state, manual FROM breakers"
                              ).fetchall() == [("flaky", 0.5, 4, 60.0, "open", 1)]
            assert db.execute("SELECT scope, kind FROM server_events ORDER BY id").fetchall() == [
                ("type:send", "limit_set"), ("type:paced", "limit_set"), ("type:gone", "limit_set"),
                ("type:gone", "limit_removed"), ("type:flaky", "breaker_set"), ("type:flaky", "breaker_open")]
        finally:
            db.close()

        async with trio.open_nursery() as n:
            srv2 = await start(n, tmp_path)
            assert [(lim.scope.name, lim.rate, lim.concurrency) for lim in srv2.core.limits()] == [
                ("paced", 1, None), ("send", None, 1)]
            (flaky,) = srv2.core.breaker_status(srv2.clock())
            assert (flaky.type, flaky.state, flaky.manual) == ("flaky", "open", True)
            assert [kind for _, kind, _ in _server_events(srv2)][-1] == "breaker_open"
            peer, _ = await RawPeer.connect(srv2.port, role="worker")
            async with peer.stream, Client(f"127.0.0.1:{srv2.port}") as c:
                send1, send2 = await c.enqueue("send"), await c.enqueue("send")
                stopped = await c.enqueue("flaky")
                paced = await c.enqueue("paced")
                free = await c.enqueue("free")
                await peer.send({"op": "credit", "n": 10})
                got: list[int] = []
                while len(got) < 2:
                    msg = await peer.recv()
                    got += [t["id"] for t in msg.get("tasks", ())]
                # the cap of 1 lets one `send` run; the breaker opened by hand still holds `flaky`; the rate's
                # bucket restarted empty (docs/limits.md, Restarts): `paced` waits for its hour
                assert sorted(got) == [send1, free]
                now = srv2.clock()
                why = {tid: w.reason if (w := srv2.core.why_waiting(tid, now)) is not None else None
                       for tid in (send2, stopped, paced)}
                assert why == {send2: "concurrency_cap", stopped: "breaker_open", paced: "rate_limit"}
                assert [(await c.get(tid))["state"] for tid in (send2, stopped, paced)] == ["ready"] * 3
            srv2.stopping.set()


@pytest.mark.trio
async def test_limits_of_a_failed_commit_are_written_by_the_next_one(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            srv = await start(n, tmp_path)
            store = srv.store
            assert store is not None
            await srv.wait_committed()
            (pages,) = store.conn.execute("PRAGMA page_count").fetchone()
            store.conn.execute(f"PRAGMA max_page_count = {pages}")  # the 'disk' is now full
            now = srv.clock()
            # the same batch holds 250 KB of tasks: it cannot fit
            srv.core.enqueue([TaskSpec(type="t", payload=b"x" * 5000) for _ in range(50)], now)
            srv.core.set_limit(("queue", "default"), now, concurrency=2)
            srv.core.open_breaker("flaky", now, "by hand")
            srv.flush()
            await srv.wait_committed()
            assert srv.stats.store_errors >= 1  # (the timer's flush may have tried again, and failed too)
            assert await trio.to_thread.run_sync(store.load_limits) == ([], [])
            store.conn.execute("PRAGMA max_page_count = 1073741823")  # space again
            await srv.wait_committed()  # (a retry handed over before: its writes are put back if it failed)
            srv.flush()  # (the server's own retry would do it in half a second)
            await srv.wait_committed()
            limits, breakers = await trio.to_thread.run_sync(store.load_limits)
            assert [(r.scope, r.name, r.concurrency) for r in limits] == [("queue", "default", 2)]
            assert [(r.type, r.state, r.manual) for r in breakers] == [("flaky", "open", True)]
            assert [kind for _, kind, _ in _server_events(srv)] == ["limit_set", "breaker_open"]
            srv.stopping.set()


@pytest.mark.trio
async def test_a_stored_limit_the_core_refuses_stops_the_start_with_its_reason(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            srv = await start(n, tmp_path)
            srv.core.set_limit(("queue", "mail"), srv.clock(), rate=5)
            srv.flush()
            await srv.wait_committed()
            srv.stopping.set()
        db = sqlite3.connect(tmp_path / "runq.db")
        with db:  # edited by hand: a rate below zero
            db.execute("UPDATE limits SET rate = -1 WHERE name = 'mail'")
        db.close()
        async with trio.open_nursery() as n:
            with pytest.raises(StoreError, match="stored limit or breaker is not valid: limit: 'rate' must be"):
                await start(n, tmp_path)
        db = sqlite3.connect(tmp_path / "runq.db")
        try:  # nothing was changed: the row is there for the operator to fix
            assert db.execute("SELECT name, rate FROM limits").fetchall() == [("mail", -1.0)]
        finally:
            db.close()
