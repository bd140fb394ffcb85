"""Client and SyncClient across lost connections and server restarts (docs/clients.md)."""

from __future__ import annotations

import asyncio
import random
import socket
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import trio
import trio.testing
from threaded_server import ThreadedServer

from runq import Client, ConnectionClosed, SyncClient, Unauthorized
from runq.app.core import CoreConfig
from runq.app.server import Server, ServerConfig
from runq.app.store import Batch
from runq.protocol.calls import Backoff


def drop_after_commit(srv: Server, wanted: Callable[[Batch], bool] = lambda b: bool(b.new_rows)) -> list[Batch]:
    """Close every client connection of ``srv`` right after the next commit that ``wanted``, before the
    answers it produced are queued: the acknowledgement is lost, the commit is not. Returns the batches
    dropped after (one, once it happened)."""
    dropped: list[Batch] = []
    committed = srv._committed

    def then_drop(batch: Batch, *args: Any, **kw: Any) -> None:
        if not dropped and args[-1] is None and wanted(batch):  # (args[-1]: the commit's error)
            dropped.append(batch)
            for sess in list(srv.sessions):
                if sess.role == "client":
                    sess.close()  # (what it is told from now on is not sent)
        committed(batch, *args, **kw)

    srv._committed = then_drop  # type: ignore[method-assign]
    return dropped


def count_tasks(db: str) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT count(*) FROM tasks").fetchone()[0])
    finally:
        conn.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def serve(nursery: trio.Nursery, db: str, port: int = 0) -> Server:
    srv = Server(ServerConfig(db=db, port=port, core=CoreConfig(lease_timeout=10.0)))
    await nursery.start(srv.serve)
    return srv


# ---------------------------------------------------------------------------------------------- trio
@pytest.mark.trio
async def test_a_lost_acknowledgement_is_answered_with_the_first_id(tmp_path: Path, nursery: trio.Nursery) -> None:
    srv = await serve(nursery, str(tmp_path / "runq.db"))
    dropped = drop_after_commit(srv)
    with trio.fail_after(10):
        async with Client(f"127.0.0.1:{srv.port}") as c:
            tid = await c.enqueue("t", "once")
            assert dropped and c.connections == 2  # the ack was lost; the resend was answered
            assert dropped[0].new_rows[0][0] == tid  # with the id of the task that commit wrote
            await srv.wait_committed()
            assert count_tasks(srv.config.db) == 1 and srv.core.stats.enqueued == 1
            assert (await c.get(tid))["payload"] == "once"
    srv.stopping.set()


@pytest.mark.trio
async def test_a_client_survives_a_server_restart_and_resends_what_was_in_flight(tmp_path: Path) -> None:
    db = str(tmp_path / "runq.db")
    with trio.fail_after(20):
        async with trio.open_nursery() as outer:
            first = await serve(outer, db)
            port = first.port
            assert port is not None
            async with Client(f"127.0.0.1:{port}") as c:
                before = await c.enqueue("t")
                first.stopping.set()
                while first.ready or first.sessions:
                    await trio.sleep(0.01)
                # the server is gone: these wait for the next one instead of failing
                results: dict[str, Any] = {}

                async def call(name: str, fn: Callable[[], Any]) -> None:
                    results[name] = await fn()

                async with trio.open_nursery() as calls:
                    calls.start_soon(call, "enqueue", lambda: c.enqueue("t", "during"))
                    calls.start_soon(call, "get", lambda: c.get(before))
                    await trio.sleep(0.3)
                    second = await serve(outer, db, port)
                assert results["get"]["id"] == before
                assert results["enqueue"] > before and c.connections >= 2
                assert (await c.get(results["enqueue"]))["payload"] == "during"
                second.stopping.set()


def drop_after(srv: Server, operation: str) -> None:
    """Close every client connection right after ``srv`` carried out its next ``operation`` (cancel, retry),
    before the answer is queued: the change is applied, its answer lost."""
    original = getattr(srv, operation)

    async def then_drop(*args: Any) -> Any:
        out = await original(*args)
        setattr(srv, operation, original)
        for sess in list(srv.sessions):
            if sess.role == "client":
                sess.close()
        return out

    setattr(srv, operation, then_drop)


@pytest.mark.trio
async def test_a_retry_whose_answer_was_lost_is_not_sent_twice_and_a_cancel_is(tmp_path: Path,
                                                                              nursery: trio.Nursery) -> None:
    srv = await serve(nursery, str(tmp_path / "runq.db"))
    with trio.fail_after(10):
        async with Client(f"127.0.0.1:{srv.port}") as c:
            tid = await c.enqueue("t")
            drop_after(srv, "cancel")
            cancelled = await c.cancel(tid)  # applied, answer lost, sent again: "already cancelled" is success
            assert cancelled["state"] == "cancelled" and c.connections == 2
            drop_after(srv, "retry")
            with pytest.raises(ConnectionClosed, match="may or may not have been applied"):
                await c.retry(tid)
            assert (await c.get(tid))["state"] == "ready"  # it was applied, once
            assert c.connections == 3
            assert [e["kind"] for e in await c.events(tid)] == ["enqueued", "cancelled", "retried"]
    srv.stopping.set()


def test_the_sync_client_resends_a_cancel_but_not_a_retry(threaded_server: ThreadedServer) -> None:
    srv = threaded_server.server
    with SyncClient(threaded_server.address) as c:
        tid = c.enqueue("t")
        _on_server(threaded_server, lambda: drop_after(srv, "cancel"))
        assert c.cancel(tid)["state"] == "cancelled" and c.connections == 2
        _on_server(threaded_server, lambda: drop_after(srv, "retry"))
        with pytest.raises(ConnectionClosed, match="may or may not have been applied"):
            c.retry(tid)
        assert c.get(tid)["state"] == "ready" and c.connections == 3


@pytest.mark.trio
async def test_calls_fail_after_retry_for_and_work_again_once_a_server_is_back(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    # (virtual seconds: connection refusals come at once, so the clock jumps from one backoff to the next)
    db = str(tmp_path / "runq.db")
    async with trio.open_nursery() as outer:
        first = Server(ServerConfig(db=db, port=0))
        stopped = trio.Event()

        async def run_first(task_status: trio.TaskStatus[int]) -> None:
            try:
                await first.serve(task_status=task_status)
            finally:
                stopped.set()

        port = await outer.start(run_first)
        backoff = Backoff(base=0.05, cap=2.0, rng=random.Random(7))
        async with Client(f"127.0.0.1:{port}", retry_for=30.0, backoff=backoff) as c:
            await c.ping()
            lost = trio.current_time()
            first.stopping.set()
            await stopped.wait()  # (gone for good: every connection attempt is refused at once)
            # (the virtual clock also runs while the server's threads finish: the client may have given
            # up meanwhile, so the bound is from the loss)
            with pytest.raises(ConnectionClosed, match="no server answered for 30s"):
                await c.ping()
            assert trio.current_time() - lost >= 30.0
            t0 = trio.current_time()
            with pytest.raises(ConnectionClosed):  # while down, a call fails at once
                await c.stats()
            assert trio.current_time() == t0
            second = await serve(outer, db, port)
            await trio.sleep(3)  # the client kept trying in the background, every 2 s at most
            assert (await c.stats())["enqueued"] == 0
            second.stopping.set()


# ---------------------------------------------------------------------------------------------- asyncio
def _asyncio(coro_fn: Callable[[], Any], timeout: float = 20.0) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro_fn(), timeout)

    return asyncio.run(bounded())


def _on_server(server: ThreadedServer, fn: Callable[[], Any]) -> Any:
    assert server._token is not None
    return trio.from_thread.run_sync(fn, trio_token=server._token)


def test_a_lost_acknowledgement_under_asyncio(threaded_server: ThreadedServer) -> None:
    dropped = _on_server(threaded_server, lambda: drop_after_commit(threaded_server.server))

    async def main() -> tuple[int, int]:
        async with Client(threaded_server.address) as c:
            tid = await c.enqueue("t")
            return tid, c.connections

    tid, connections = _asyncio(main)
    assert connections == 2 and dropped[0].new_rows[0][0] == tid
    assert threaded_server.server.core.stats.enqueued == 1


def test_a_lost_acknowledgement_with_the_sync_client(threaded_server: ThreadedServer) -> None:
    dropped = _on_server(threaded_server, lambda: drop_after_commit(threaded_server.server))
    with SyncClient(threaded_server.address) as c:
        ids = c.enqueue_many([{"type": "t"}, {"type": "t"}])
        assert c.connections == 2 and [r[0] for r in dropped[0].new_rows] == ids
        assert c.stats()["enqueued"] == 2


# ---------------------------------------------------------------------------------------------- sync client
def test_the_sync_client_backs_off_with_jitter_up_to_its_cap_then_gives_up(threaded_server: ThreadedServer) -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    backoff = Backoff(base=0.05, cap=1.0, rng=random.Random(3))
    c = SyncClient(threaded_server.address, retry_for=10.0, backoff=backoff, sleep=sleep, clock=lambda: now[0])
    with c:
        c.ping()
        threaded_server.stop()
        with pytest.raises(ConnectionClosed, match="no server answered for 10s"):
            c.ping()
    ceilings = [min(1.0, 0.05 * 2**n) for n in range(len(slept))]
    assert all(ceil / 2 <= s <= ceil for s, ceil in zip(slept, ceilings, strict=True))  # jittered, capped
    assert len(set(slept)) == len(slept)  # (not in step with other clients)
    assert 10.0 <= sum(slept) <= 11.0


def test_a_session_that_worked_starts_the_delays_over() -> None:
    b = Backoff(base=0.1, cap=5.0, rng=random.Random(1))
    first = [b.next() for _ in range(4)]
    b.reset()
    assert b.next() <= 0.1 < first[-1]


def test_the_sync_client_follows_the_first_address_that_answers(threaded_server: ThreadedServer,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    dead = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("RUNQ_SERVER", f"{dead},{threaded_server.address}")
    with SyncClient() as c:
        assert c.address == threaded_server.address
        c.ping()

    async def main() -> str:
        async with Client() as ac:
            await ac.ping()
            return ac.address

    assert _asyncio(main) == threaded_server.address


def test_the_sdk_reads_runq_token_and_a_wrong_one_is_refused_at_once(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    srv = ThreadedServer(str(tmp_path / "runq.db"))
    srv.server.config.token = "s3cret"
    srv.start()
    try:
        monkeypatch.setenv("RUNQ_SERVER", srv.address)
        monkeypatch.setenv("RUNQ_TOKEN", "s3cret")
        with SyncClient() as c:
            c.ping()
        monkeypatch.setenv("RUNQ_TOKEN", "wrong")
        with pytest.raises(Unauthorized):
            SyncClient()

        async def main() -> None:
            with anyio.fail_after(5):
                async with Client():
                    pass

        with pytest.raises(Unauthorized):
            _asyncio(main)
    finally:
        srv.stop()


def test_every_address_is_named_when_none_answers() -> None:
    a, b = free_port(), free_port()
    with pytest.raises(ConnectionClosed, match=f"127.0.0.1:{a}.*127.0.0.1:{b}"):
        SyncClient(f"127.0.0.1:{a},127.0.0.1:{b}", connect_timeout=2)


def test_the_sync_client_runs_in_the_calling_thread(threaded_server: ThreadedServer) -> None:
    """No loop thread, no hop: the calls run in the caller's thread over a plain socket (the old
    SyncClient ran a Client on an asyncio loop in a thread of its own)."""
    before = {t.ident for t in threading.enumerate()}
    with SyncClient(threaded_server.address) as c:
        tid = c.enqueue("t", "here")
        assert c.status(tid)["payload"] == "here"
        assert {t.ident for t in threading.enumerate()} == before


@pytest.mark.trio
async def test_a_subscription_made_again_after_a_lost_connection_leaves_no_stream_unclosed(
        tmp_path: Path, nursery: trio.Nursery) -> None:
    """The event stream of a subscription that a lost connection ended is closed with the client (anyio warns
    of a memory stream dropped unclosed: an error in this suite), and the new subscription gets events."""
    import gc
    import warnings

    srv = await serve(nursery, str(tmp_path / "runq.db"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with trio.fail_after(10):
            async with Client(f"127.0.0.1:{srv.port}") as c:
                first = await c.subscribe()
                for sess in list(srv.sessions):
                    sess.close()  # the connection is lost: the first stream ends
                async for _ in first:  # it ends
                    pass
                second = await c.subscribe()
                tid = await c.enqueue("t", "x")
                event = await second.__anext__()
                assert (event["id"], event["kind"]) == (tid, "enqueued")
                del first, second
        gc.collect()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert not leaks, leaks
    srv.stopping.set()
