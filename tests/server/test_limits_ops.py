"""Limits and breakers through the protocol (issue 11): the operations, their TCP ops and the SDK's methods,
against a real server on a real SQLite file, a raw worker peer and the async ``Client``."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio
from test_server import RawPeer, start

from runq import Client
from runq.protocol.errors import RemoteError
from runq.protocol.limits import parse_rate


async def _tasks(peer: RawPeer, n: int) -> list[int]:
    got: list[int] = []
    while len(got) < n:
        msg = await peer.recv()
        got += [t["id"] for t in msg.get("tasks", ())]
    return got


def _stored_limits(db: Path) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT scope, name, key, rate, period, burst, concurrency FROM limits").fetchall()
    finally:
        con.close()


@pytest.mark.trio
async def test_a_cap_set_by_a_client_holds_the_second_task_and_why_says_so(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            srv = await start(n, tmp_path)
            peer, _ = await RawPeer.connect(srv.port, role="worker")
            async with peer.stream, Client(f"127.0.0.1:{srv.port}") as c:
                lim = await c.set_limit("type", "send", concurrency=1)
                assert (lim["scope"], lim["name"], lim["key"], lim["concurrency"], lim["rate"]) == (
                    "type", "send", "", 1, None)
                # committed before the answer: the row is in the file, read without runq
                assert _stored_limits(tmp_path / "runq.db") == [("type", "send", "", None, 1.0, 1, 1)]
                first, second = await c.enqueue("send"), await c.enqueue("send")
                await peer.send({"op": "credit", "n": 10})
                assert await _tasks(peer, 1) == [first]
                why = await c.why(second)
                assert why is not None and why["reason"] == "concurrency_cap"
                assert why["scope"] == {"scope": "type", "name": "send", "key": ""}
                assert await c.why(first) is None  # (running: it waits for nothing)
                (listed,) = await c.limits()
                assert [(s["running"], s["waiting"]) for s in listed["status"]] == [(1, 1)]
                assert await c.remove_limit("type", "send") is True
                assert _stored_limits(tmp_path / "runq.db") == []
                assert await _tasks(peer, 1) == [second]  # (let go at once)
                assert await c.remove_limit("type", "send") is False
                # a rate written for people
                paced = await c.set_limit("queue", "mail", rate="600/m", burst=5, key="customer")
                assert (paced["rate"], paced["period"], paced["burst"], paced["key"]) == (600.0, 60.0, 5, "customer")
            srv.stopping.set()


@pytest.mark.trio
async def test_a_breaker_opened_by_a_client_holds_its_type_until_closed(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            srv = await start(n, tmp_path)
            peer, _ = await RawPeer.connect(srv.port, role="worker")
            async with peer.stream, Client(f"127.0.0.1:{srv.port}") as c:
                br = await c.open_breaker("flaky", "relay down")
                assert (br["type"], br["state"], br["manual"], br["threshold"]) == ("flaky", "open", True, None)
                held, free = await c.enqueue("flaky"), await c.enqueue("other")
                await peer.send({"op": "credit", "n": 10})
                assert await _tasks(peer, 1) == [free]
                why = await c.why(held)
                assert why is not None and why["reason"] == "breaker_open"
                assert [(b["type"], b["state"], b["waiting"]) for b in await c.breakers()] == [("flaky", "open", 1)]
                closed = await c.close_breaker("flaky")
                assert closed["state"] == "closed"
                assert await _tasks(peer, 1) == [held]
                set_ = await c.set_breaker("flaky", threshold=0.25, min_calls=4, cooldown=5)
                assert (set_["threshold"], set_["min_calls"], set_["cooldown"], set_["window"]) == (0.25, 4, 5.0, 60.0)
                events = await c.server_events()
                assert [(e["scope"], e["kind"]) for e in events] == [
                    ("type:flaky", "breaker_open"), ("type:flaky", "breaker_closed"), ("type:flaky", "breaker_set")]
                assert "relay down" in events[0]["detail"]
                later = await c.server_events(since=events[0]["id"], limit=1)
                assert [e["kind"] for e in later] == ["breaker_closed"]
                assert await c.remove_breaker("flaky") is True
                assert await c.breakers() == []
            srv.stopping.set()


BAD = [
    ({"op": "set_limit", "scope": "bucket", "name": "q", "concurrency": 1}, "scope must be 'queue' or 'type'"),
    ({"op": "set_limit", "scope": "queue", "name": "", "concurrency": 1}, "limit: a queue name has 1 to 200"),
    ({"op": "set_limit", "scope": "queue", "name": "q" * 201, "concurrency": 1}, "queue name has 1 to 200"),
    ({"op": "set_limit", "scope": "queue", "name": "q"}, "give a 'rate', a 'concurrency' cap, or both"),
    ({"op": "set_limit", "scope": "queue", "name": "q", "rate": 0}, "'rate' must be a number of tasks > 0 and at most"),
    ({"op": "set_limit", "scope": "queue", "name": "q", "rate": float("nan")}, "'rate' must be a number of tasks > 0 and at most"),
    ({"op": "set_limit", "scope": "queue", "name": "q", "rate": 1, "period": -1}, "'period' must be at least 0.001"),
    ({"op": "set_limit", "scope": "queue", "name": "q", "rate": 1, "burst": 0}, "'burst' must be an integer from 1"),
    ({"op": "set_limit", "scope": "queue", "name": "q", "concurrency": 0}, "'concurrency' must be an integer from 1"),
    ({"op": "set_limit", "scope": "queue", "name": "q", "concurrency": 1, "key": "k" * 201}, "'key' (a payload field) has at most"),
    ({"op": "set_breaker", "type": "t", "threshold": 1.5}, "'threshold' must be a failure rate, a number"),
    ({"op": "set_breaker", "type": "t", "threshold": 0}, "'threshold' must be a failure rate, a number"),
    ({"op": "set_breaker", "type": "t", "window": 0}, "'window' must be at least 0.001"),
    ({"op": "set_breaker", "type": "t", "window": 1e-300}, "'window' must be at least 0.001"),  # (overflowed)
    ({"op": "set_limit", "scope": "queue", "name": "q", "rate": 1e9, "period": 1e-300}, "'period' must be"),
    ({"op": "set_breaker", "type": "t", "cooldown": float("inf")}, "'cooldown' must be at least 0.001"),
    ({"op": "set_breaker", "type": "t", "min_calls": 0}, "'min_calls' must be an integer from 1"),
    ({"op": "set_breaker", "type": "t", "probes": 2_000_000}, "'probes' must be an integer from 1"),
    ({"op": "set_breaker", "type": ""}, "task type has 1 to 200"),
    ({"op": "open_breaker", "type": "t" * 201}, "task type has 1 to 200"),
    ({"op": "server_events", "limit": 0}, "'limit' must be between 1 and 1000"),
    ({"op": "server_events", "since": -1}, "'since' must be"),
]


@pytest.mark.trio
async def test_bad_settings_are_refused_with_the_field_named_and_change_nothing(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            srv = await start(n, tmp_path)
            async with Client(f"127.0.0.1:{srv.port}") as c:
                for msg, words in BAD:
                    with pytest.raises(RemoteError) as err:
                        await c.request(msg)
                    assert err.value.code == "bad_request" and words in str(err.value), (msg, str(err.value))
                with pytest.raises(RemoteError) as missing:
                    await c.close_breaker("nobody")
                assert missing.value.code == "not_found"
                with pytest.raises(RemoteError) as no_task:
                    await c.why(12345)
                assert no_task.value.code == "not_found"
                assert await c.limits() == [] and await c.breakers() == []  # (nothing changed)
                assert await c.server_events() == []
                await c.ping()  # (the connection stays usable)
            srv.stopping.set()


@pytest.mark.trio
async def test_a_watcher_reads_limits_but_may_not_set_them(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            srv = await start(n, tmp_path)
            peer, _ = await RawPeer.connect(srv.port, role="watcher")
            async with peer.stream:
                await peer.send({"op": "limits", "rid": 1})
                assert await peer.recv() == {"op": "limits", "rid": 1, "limits": []}
                await peer.send({"op": "set_limit", "rid": 2, "scope": "queue", "name": "q", "concurrency": 1})
                refused = await peer.recv()
                assert (refused["op"], refused["code"]) == ("error", "unknown_op")
            assert srv.core.limits() == []
            srv.stopping.set()


def test_rates_are_read_as_tasks_per_period() -> None:
    assert parse_rate("10/s") == (10.0, 1.0)
    assert parse_rate("600/m") == (600.0, 60.0)
    assert parse_rate("5/2s") == (5.0, 2.0)
    assert parse_rate("1/h") == (1.0, 3600.0)
    assert parse_rate("0.5 / min") == (0.5, 60.0)
    for bad in ("10", "10/week", "/s", "0/s", "10/0s", "ten/s"):
        with pytest.raises(ValueError, match="rate"):
            parse_rate(bad)


@pytest.mark.trio
async def test_a_change_is_answered_only_once_committed(tmp_path: Path) -> None:
    """While the disk is full the change holds in memory but is not answered; once a commit gets through,
    it is (as ``pause``: the commit policy retries the failed batch with the change in it)."""
    from runq.app.ops import LimitScope, LimitSettings, authenticate
    from runq.protocol.messages import TaskSpec

    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            srv = await start(n, tmp_path)
            store = srv.store
            assert store is not None
            await srv.wait_committed()
            (pages,) = store.conn.execute("PRAGMA page_count").fetchone()
            store.conn.execute(f"PRAGMA max_page_count = {pages}")  # the 'disk' is now full
            srv.core.enqueue([TaskSpec(type="t", payload=b"x" * 5000) for _ in range(50)], srv.clock())
            answers: list[dict[str, Any]] = []

            async def set_it() -> None:
                answers.append(await srv.ops.set_limit(authenticate(None, None, "client"),
                                                       LimitSettings(LimitScope("type", "t"), concurrency=1)))

            n.start_soon(set_it)
            while srv.stats.store_errors == 0:
                await trio.sleep(0.01)
            await srv.wait_committed()
            assert answers == [] and [lim.concurrency for lim in srv.core.limits()] == [1]  # held, not answered
            store.conn.execute("PRAGMA max_page_count = 1073741823")  # space again
            while not answers:
                await trio.sleep(0.05)
            assert answers[0]["concurrency"] == 1
            assert _stored_limits(tmp_path / "runq.db") == [("type", "t", "", None, 1.0, 1, 1)]
            srv.stopping.set()
