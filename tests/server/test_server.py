"""The trio server with a real SQLite file and real TCP sockets on 127.0.0.1."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio
from server_helpers import VirtualClock, until, writer_has_taken_all

from runq import Client, Worker
from runq.app.core import CoreConfig
from runq.app.server import ConfigError, Server, ServerConfig
from runq.protocol.errors import RemoteError
from runq.protocol.frames import Connection
from runq.protocol.values import encode_value


class RawPeer:
    """A hand-driven protocol peer (to misbehave on purpose: go silent, answer late)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = Connection()

    @classmethod
    async def connect(cls, port: int, **hello: Any) -> tuple[RawPeer, dict[str, Any]]:
        peer = cls(await trio.open_tcp_stream("127.0.0.1", port))
        await peer.send({"op": "hello", "version": 1, **hello})
        return peer, await peer.recv()

    async def send(self, msg: dict[str, Any]) -> None:
        await self.stream.send_all(self.conn.send(msg))

    async def recv(self) -> dict[str, Any]:
        while True:
            msg = self.conn.next_message()
            if msg is not None:
                return msg
            data = await self.stream.receive_some(65536)
            self.conn.receive_data(data)
            if not data:
                raise EOFError


async def start(nursery: trio.Nursery, tmp_path: Path, **cfg: Any) -> Server:
    core = CoreConfig(**cfg.pop("core", {}))
    srv = Server(ServerConfig(db=str(tmp_path / "runq.db"), port=0, core=core, **cfg))
    await nursery.start(srv.serve)
    return srv


@pytest.mark.trio
async def test_enqueue_is_acknowledged_only_after_commit(server: Server) -> None:
    with trio.fail_after(10):
        async with Client(f"127.0.0.1:{server.port}") as c:
            ids = await c.enqueue_many([{"type": "t", "payload": i} for i in range(50)])
            # a separate connection sees every acknowledged task on disk at once
            db = sqlite3.connect(server.config.db)
            (n,) = db.execute("SELECT count(*) FROM tasks WHERE id BETWEEN ? AND ?", (ids[0], ids[-1])).fetchone()
            db.close()
            assert n == 50
            # the timeline starts with `enqueued` (synthesised from the row: the core does not write it)
            events = await c.events(ids[-1])
            assert [e["kind"] for e in events] == ["enqueued"] and events[0]["state"] == "ready"


@pytest.mark.trio
async def test_wait_long_polls_until_final(server: Server, nursery: trio.Nursery,
                                           virtual_clock: VirtualClock) -> None:
    virtual_clock.follow(nursery, server)
    worker = Worker(concurrency=1)
    gate = trio.Event()

    @worker.task("gated")
    async def gated(p: Any) -> str:
        await gate.wait()
        return "done"

    nursery.start_soon(worker.run, f"127.0.0.1:{server.port}")
    with trio.fail_after(60):
        async with Client(f"127.0.0.1:{server.port}") as c:
            tid = await c.enqueue("gated")
            t0 = trio.current_time()
            with pytest.raises(TimeoutError):
                await c.wait(tid, timeout=1)
            assert trio.current_time() - t0 == pytest.approx(1)  # the whole timeout, in one long poll
            async with trio.open_nursery() as n:
                results: list[dict[str, Any]] = []

                async def waiter() -> None:
                    results.append(await c.wait(tid, timeout=30))

                n.start_soon(waiter)
                await until(server, lambda: tid in server._waiters)  # the server holds the request
                await trio.sleep(1)
                assert not results
                gate.set()
                t0 = trio.current_time()
            assert results[0]["state"] == "succeeded" and results[0]["result"] == "done"
            assert trio.current_time() - t0 < 1  # answered when the task ended, not when the timeout ran out
    worker.stop()


@pytest.mark.trio
async def test_subscribe_filters_and_progress(server: Server, nursery: trio.Nursery) -> None:
    worker = Worker(queues=["a", "b"], concurrency=2)

    @worker.task("step")
    async def step(p: Any, ctx: Any) -> int:
        ctx.progress(0.5)
        return int(p)

    nursery.start_soon(worker.run, f"127.0.0.1:{server.port}")
    with trio.fail_after(10):
        async with Client(f"127.0.0.1:{server.port}") as watcher, Client(f"127.0.0.1:{server.port}") as c:
            events = await watcher.subscribe(queues=["a"])
            ta = await c.enqueue("step", 1, queue="a")
            tb = await c.enqueue("step", 2, queue="b")
            await c.wait(tb, timeout=5)
            seen: list[dict[str, Any]] = []
            async for ev in events:
                seen.append(ev)
                if ev["kind"] == "succeeded":
                    break
            assert {e["id"] for e in seen} == {ta}
            assert [e["kind"] for e in seen] == ["enqueued", "started", "progress", "succeeded"]
            assert seen[2]["progress"] == 0.5 and seen[-1]["result"] == 1
    worker.stop()


@pytest.mark.trio
async def test_silent_worker_loses_its_lease(nursery: trio.Nursery, tmp_path: Path,
                                            virtual_clock: VirtualClock) -> None:
    srv = await start(nursery, tmp_path, core={"lease_timeout": 10.0})
    virtual_clock.follow(nursery, srv)
    with trio.fail_after(60):
        peer, welcome = await RawPeer.connect(srv.port, role="worker")
        assert welcome["op"] == "welcome" and welcome["lease_timeout"] == 10.0
        async with peer.stream, Client(f"127.0.0.1:{srv.port}") as c:
            tid = await c.enqueue("job", retries=3)
            await peer.send({"op": "credit", "n": 1})
            msg = await peer.recv()
            assert msg["op"] == "tasks" and msg["tasks"][0]["id"] == tid
            # any message renews the lease: a heartbeat 6 s later moves the expiry to 10 s after it
            await trio.sleep(6)
            await peer.send({"op": "heartbeat"})
            heard = trio.current_time()
            # go silent: exactly lease_timeout later the task is back, with an event saying why
            await until(srv, lambda: srv.task_now(tid)["state"] == "ready")  # type: ignore[index]
            assert trio.current_time() - heard == pytest.approx(10.0, abs=0.01)
            kinds = [e["kind"] for e in await c.events(tid)]
            assert kinds == ["enqueued", "started", "lost"]
            # the late result of the silent worker is refused (its connection was dropped)
            worker = Worker()

            @worker.task("job")
            async def job(p: Any) -> str:
                return "second worker"

            nursery.start_soon(worker.run, f"127.0.0.1:{srv.port}")
            task = await c.wait(tid, timeout=5)
            assert task["state"] == "succeeded" and task["attempt"] == 2 and task["result"] == "second worker"
            assert srv.core.stats.lease_expiries == 1
            worker.stop()
            # the silent worker's connection was closed after an error frame
            assert (await peer.recv())["code"] == "lease_expired"
            with pytest.raises(EOFError):
                await peer.recv()


@pytest.mark.trio
async def test_late_result_is_refused(nursery: trio.Nursery, tmp_path: Path) -> None:
    srv = await start(nursery, tmp_path)
    with trio.fail_after(10):
        peer, _ = await RawPeer.connect(srv.port, role="worker")
        async with peer.stream, Client(f"127.0.0.1:{srv.port}") as c:
            tid = await c.enqueue("job")
            await peer.send({"op": "credit", "n": 1})
            await peer.recv()
            await c.cancel(tid)
            assert (await peer.recv()) == {"op": "cancel", "id": tid, "lease": 1}
            await peer.send({"op": "done", "results": [[tid, 1, encode_value("late")]]})
            await peer.send({"op": "ping", "rid": 1})
            assert (await peer.recv())["op"] == "pong"
            task = await c.get(tid)
            assert task["state"] == "cancelled" and task["result"] is None
            assert "late_result" in [e["kind"] for e in await c.events(tid)]
            assert srv.core.stats.late_results == 1


@pytest.mark.trio
async def test_restart_recovers_running_tasks(tmp_path: Path) -> None:
    with trio.fail_after(15):
        async with trio.open_nursery() as n:
            srv = await start(n, tmp_path)
            peer, _ = await RawPeer.connect(srv.port, role="worker")
            async with peer.stream, Client(f"127.0.0.1:{srv.port}") as c:
                running = await c.enqueue("job")
                queued = await c.enqueue("job", priority=-1)
                delayed = await c.enqueue("job", delay=3600)
                await c.pause("paused-q")
                await peer.send({"op": "credit", "n": 1})
                assert (await peer.recv())["tasks"][0]["id"] == running
            srv.stopping.set()
        async with trio.open_nursery() as n:
            srv2 = await start(n, tmp_path)
            assert srv2.recovered == 1
            async with Client(f"127.0.0.1:{srv2.port}") as c:
                assert (await c.get(running))["state"] == "ready"
                assert (await c.get(queued))["state"] == "ready"
                assert (await c.get(delayed))["state"] == "scheduled"
                assert [e["kind"] for e in await c.events(running)] == ["enqueued", "started", "recovered"]
                assert next(q for q in await c.queues() if q["queue"] == "paused-q")["paused"]
                new = await c.enqueue("job")
                assert new > delayed
            srv2.stopping.set()


@pytest.mark.trio
async def test_slow_subscriber_is_dropped_not_waited_for(nursery: trio.Nursery, tmp_path: Path) -> None:
    server = await start(nursery, tmp_path, subscriber_backlog=64 * 1024)
    with trio.fail_after(20):
        peer, _ = await RawPeer.connect(server.port, role="watcher")
        await peer.stream.__aenter__()
        await peer.send({"op": "subscribe", "rid": 1})
        assert (await peer.recv())["op"] == "ok"
        # the watcher never reads again; the queue must not slow down for it
        async with Client(f"127.0.0.1:{server.port}") as c:
            for _ in range(50):
                await c.enqueue_many([{"type": "t"} for _ in range(1000)])
        sess = next(s for s in server.sessions if s.role == "watcher")
        assert sess.dropped > 0
        # when it reads again it is told how many events it missed
        kinds = set()
        with trio.move_on_after(5):
            while "dropped" not in kinds:
                kinds.add((await peer.recv()).get("kind"))
        await peer.stream.aclose()
        assert "dropped" in kinds



@pytest.mark.trio
async def test_subscribers_beyond_the_limit_are_told_busy(nursery: trio.Nursery, tmp_path: Path) -> None:
    """Each subscriber may hold a backlog of events: the server serves max_subscribers of them, refuses one
    more with 'busy' (that connection stays usable), and takes it once a place is free."""
    server = await start(nursery, tmp_path, max_subscribers=2)
    addr = f"127.0.0.1:{server.port}"
    with trio.fail_after(20):
        async with Client(addr) as b, Client(addr) as c:
            async with Client(addr) as a:
                await a.subscribe()
                await b.subscribe(queues=["q"])
                with pytest.raises(RemoteError) as info:
                    await c.subscribe()
                assert info.value.code == "busy" and "max_subscribers" in info.value.message
                assert len(server.subscribers) == 2
                await b.subscribe(queues=["other"])  # a subscriber may always change its filters
                events_b = await b.subscribe(queues=["q"])
                tid = await c.enqueue("t", 1, queue="q")  # the refused connection still works
                async for ev in events_b:
                    assert ev["id"] == tid
                    break
            while len(server.subscribers) > 1:  # a has left
                await trio.sleep(0.01)
            await c.subscribe()
            assert len(server.subscribers) == 2


def test_non_loopback_requires_a_token(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="requires authentication: set a shared token"):
        Server(ServerConfig(db=str(tmp_path / "x.db"), host="0.0.0.0"))
    Server(ServerConfig(db=str(tmp_path / "x.db"), host="0.0.0.0", token="s3cret"))  # allowed, not started


@pytest.mark.trio
async def test_full_database_is_reported_and_nothing_acknowledged_is_lost(server: Server) -> None:
    store = server.store
    assert store is not None
    with trio.fail_after(15):
        async with Client(f"127.0.0.1:{server.port}") as c:
            kept = await c.enqueue("t", "before")
            await server.wait_committed()
            (pages,) = store.conn.execute("PRAGMA page_count").fetchone()
            store.conn.execute(f"PRAGMA max_page_count = {pages}")  # the 'disk' is now full
            from runq import RemoteError

            with pytest.raises(RemoteError) as exc_info:
                await c.enqueue_many([{"type": "t", "payload": "x" * 5000} for _ in range(50)])
            assert exc_info.value.code == "store_error" and "full" in exc_info.value.message
            assert server.stats.store_errors >= 1
            refused_ids = range(kept + 1, kept + 51)
            assert all(i not in server.core.tasks for i in refused_ids)
            store.conn.execute("PRAGMA max_page_count = 1073741823")  # space again
            after = await c.enqueue("t", "after")
            await c.cancel(kept)
            await server.wait_committed()
            assert (await c.get(kept))["state"] == "cancelled"
            assert (await c.get(after))["payload"] == "after"
    db = sqlite3.connect(server.config.db)
    (n,) = db.execute("SELECT count(*) FROM tasks").fetchone()
    db.close()
    assert n == 2


@pytest.mark.trio
async def test_retention_prunes_finished_tasks(nursery: trio.Nursery, tmp_path: Path) -> None:
    srv = await start(nursery, tmp_path, retention=3600.0)
    with trio.fail_after(10):
        async with Client(f"127.0.0.1:{srv.port}") as c:
            done = await c.enqueue("t")
            await c.cancel(done)
            live = await c.enqueue("t")
            srv.prune()  # retention not reached: nothing goes
            await srv.wait_committed()
            assert (await c.get(done))["state"] == "cancelled"
            srv.prune(before=srv.clock() + 1)  # as if the retention had passed
            await srv.wait_committed()
            with pytest.raises(Exception, match="not_found"):
                await c.get(done)
            assert await c.events(live) and (await c.get(live))["state"] == "ready"


@pytest.mark.trio
async def test_drain_stops_a_worker_gracefully(server: Server, nursery: trio.Nursery,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from runq import cli
    from runq.protocol.errors import TaskNotFound

    worker = Worker(concurrency=1, prefetch=1)
    gate = trio.Event()
    started = trio.Event()

    @worker.task("gated")
    async def gated(p: Any) -> str:
        started.set()
        await gate.wait()
        return "done"

    stopped = trio.Event()

    async def run_worker() -> None:
        await worker.run(f"127.0.0.1:{server.port}")
        stopped.set()

    nursery.start_soon(run_worker)
    with trio.fail_after(10):
        async with Client(f"127.0.0.1:{server.port}") as c:
            running = await c.enqueue("gated", 1)
            buffered = await c.enqueue("gated", 2)  # leased ahead (prefetch) but not started
            await started.wait()
            (w,) = await c.workers()
            assert w["state"] == "active" and sorted(w["running"]) == [running, buffered]
            answer = await c.drain(w["id"])
            assert answer["id"] == w["id"] and answer["state"] == "draining"
            later = await c.enqueue("gated", 3)
            # the worker hands back the task it had not started, and is given nothing more
            while (await c.get(buffered))["state"] != "ready":
                await trio.sleep(0.01)
            (w,) = await c.workers()
            assert w["state"] == "draining" and w["running"] == [running]
            gate.set()
            assert (await c.wait(running, timeout=5))["state"] == "succeeded"
            await stopped.wait()  # worker.run returned: the worker left on its own
            while await c.workers():
                await trio.sleep(0.01)
            for tid in (buffered, later):
                t = await c.get(tid)
                assert t["state"] == "ready" and t["attempt"] == 0
            assert [e["kind"] for e in await c.events(buffered)] == ["enqueued", "started", "released"]
            # an unknown worker: not_found, and the connection stays usable
            with pytest.raises(TaskNotFound) as exc_info:
                await c.drain(w["id"])
            assert exc_info.value.code == "not_found" and w["id"] in exc_info.value.message
            await c.ping()
            # `runq drain WORKER_ID` (the CLI's blocking client, in a thread)
            w2 = Worker(concurrency=1)
            nursery.start_soon(w2.run, f"127.0.0.1:{server.port}")
            while not await c.workers():
                await trio.sleep(0.01)
            (info,) = await c.workers()
            args = ["drain", info["id"], "--server", f"127.0.0.1:{server.port}"]
            assert await trio.to_thread.run_sync(cli.main, args) == 0
            assert capsys.readouterr().out == f"worker {info['id']} draining (0 task(s) running)\n"
            while await c.workers():
                await trio.sleep(0.01)


@pytest.mark.trio
async def test_a_watcher_may_not_drain(server: Server) -> None:
    with trio.fail_after(10):
        peer, welcome = await RawPeer.connect(server.port, role="watcher")
        assert welcome["op"] == "welcome"
        await peer.send({"op": "drain", "worker": "w1", "rid": 1})
        err = await peer.recv()
        await peer.stream.aclose()
        assert err["op"] == "error" and err["code"] == "unknown_op"


@pytest.mark.trio
async def test_the_worker_tells_a_timeout_from_a_cancel_and_from_a_handlers_own_timeout_error(
        server: Server, nursery: trio.Nursery, virtual_clock: VirtualClock) -> None:
    # (virtual time: the sync handler's thread sleeps for real, and the clock reaches its timeout meanwhile)
    virtual_clock.follow(nursery, server)
    worker = Worker(concurrency=4)
    started = trio.Event()

    @worker.task("nap")
    async def nap(p: Any) -> str:
        started.set()
        await trio.sleep(p)
        return "woke"

    @worker.task("sync_nap")
    def sync_nap(p: Any) -> str:
        import time

        time.sleep(p)
        return "woke"

    @worker.task("own_timeout")
    async def own_timeout(p: Any) -> None:
        raise TimeoutError("the handler's own deadline")

    nursery.start_soon(worker.run, f"127.0.0.1:{server.port}")
    with trio.fail_after(60):
        async with Client(f"127.0.0.1:{server.port}") as c:
            timed = await c.enqueue("nap", 30, timeout=0.2, retries=0)
            sync_timed = await c.enqueue("sync_nap", 1.0, timeout=0.2, retries=0)
            own = await c.enqueue("own_timeout", retries=0)
            for tid in (timed, sync_timed):
                task = await c.wait(tid, timeout=10)
                assert task["state"] == "dead" and task["error"].startswith("timeout: attempt ran longer than 0.2")
                assert [e["detail"] for e in await c.events(tid) if e["kind"] == "failed"] == ["timeout"]
            task = await c.wait(own, timeout=10)
            assert task["state"] == "dead" and "TimeoutError: the handler's own deadline" in task["error"]
            assert [e["detail"] for e in await c.events(own) if e["kind"] == "failed"] != ["timeout"]
            started = trio.Event()
            cancelled = await c.enqueue("nap", 30, timeout=60)
            await started.wait()
            await c.cancel(cancelled)
            task = await c.wait(cancelled, timeout=10)
            assert task["state"] == "cancelled" and task["error"] is None
            assert await c.result(await c.enqueue("nap", 0.01, timeout=5), timeout=10) == "woke"
    worker.stop()


@pytest.mark.trio
async def test_a_task_that_left_memory_is_read_after_its_last_change_is_written(nursery: trio.Nursery,
                                                                                 tmp_path: Path) -> None:
    srv = await start(nursery, tmp_path, core={"finished_cache": 1})
    address = f"127.0.0.1:{srv.port}"
    worker = Worker(concurrency=2)
    gate = trio.Event()

    @worker.task("gated")
    async def gated(p: Any) -> Any:
        await gate.wait()
        return p

    nursery.start_soon(worker.run, address)
    with trio.fail_after(10):
        async with Client(address) as c:
            a, b = await c.enqueue("gated", 1), await c.enqueue("gated", 2)
            while {(await c.get(t))["state"] for t in (a, b)} != {"running"}:
                await trio.sleep(0.01)
            lock = sqlite3.connect(srv.config.db, isolation_level=None)
            lock.execute("BEGIN IMMEDIATE")  # the writer waits (busy timeout) until this commits
            gate.set()
            while srv.core.stats.succeeded < 2:
                await trio.sleep(0.01)
            # the one that finished first left the finished-task cache (size 1) before its row was written
            (gone,) = [t for t in (a, b) if t not in srv.core.tasks and t not in srv.core.finished]

            got: list[dict[str, Any]] = []

            async def get() -> None:
                got.append(await c.get(gone))

            try:
                async with trio.open_nursery() as n:
                    n.start_soon(get)
                    while srv._commit_seen is None and not got:  # the get waits for the write, held by the lock
                        await trio.sleep(0.001)
                    assert not got, got
                    lock.execute("COMMIT")
            finally:
                lock.close()  # (with the transaction still open: a rollback)
            (task,) = got
            assert task["state"] == "succeeded" and task["result"] == (1 if gone == a else 2)
    worker.stop()


@pytest.mark.trio
async def test_the_replies_to_the_requests_of_one_read_leave_in_one_write_and_its_acks_in_one_after_its_commit(
        server: Server) -> None:
    with trio.fail_after(10):
        peer, _ = await RawPeer.connect(server.port, role="client")
        async with peer.stream:
            (sess,) = server.sessions
            before = sess.writes
            pings = [{"op": "ping", "rid": i} for i in range(20)]
            enqueues = [{"op": "enqueue", "rid": 100 + i, "tasks": [{"type": "t"}]} for i in range(20)]
            await peer.stream.send_all(peer.conn.send_many(pings + enqueues))  # (one write of ~1.5 KB: one read)
            replies = [await peer.recv() for _ in range(40)]
            assert sorted(r["rid"] for r in replies) == list(range(20)) + list(range(100, 120))
            assert [r["ids"] for r in replies if r["op"] == "enqueued"] == [[i] for i in range(1, 21)]
            # the pongs at once (nothing answered at once waits for a commit), the acks after the commit, which
            # the read made itself (no other connection had input)
            assert sess.writes - before == 2


@pytest.mark.trio
async def test_connections_with_input_in_the_same_round_share_one_commit(server: Server) -> None:
    """A read commits at once only when no other connection has input waiting (flush_read): enqueues that
    arrive together on many connections still make one group commit."""
    with trio.fail_after(10):
        peers = [(await RawPeer.connect(server.port, role="client"))[0] for _ in range(20)]
        await server.wait_committed()
        assert server.store is not None
        commits = server.store.stats.commits
        for i, peer in enumerate(peers):  # all written before the server's loop runs again (no await between)
            os.write(peer.stream.socket.fileno(), peer.conn.send({"op": "enqueue", "rid": i, "tasks": [{"type": "t"}]}))
        replies = [await peer.recv() for peer in peers]
        assert sorted(r["ids"][0] for r in replies) == list(range(1, 21))
        assert server.store.stats.commits - commits == 1
        for peer in peers:
            await peer.stream.aclose()


@pytest.mark.trio
async def test_wait_committed_waits_for_the_commits_so_far_not_for_the_load_to_stop(server: Server) -> None:
    """Under a load that never pauses (four clients enqueueing, and a prune handed over each time a commit is
    reported: a batch is always on its way), ``wait_committed`` returns once the batches handed over before
    it have committed (a read after it sees them), with later ones still to come."""
    stop = trio.Event()

    async def steady_load() -> None:
        async with Client(f"127.0.0.1:{server.port}") as c:
            while not stop.is_set():
                await c.enqueue_many([{"type": "t"}] * 50)

    def one_more(batch: Any, error: BaseException | None) -> None:
        if not stop.is_set():
            server.prune(before=0.0)  # (deletes nothing: one more commit)

    with trio.fail_after(10):
        async with trio.open_nursery() as loads:
            for _ in range(4):
                loads.start_soon(steady_load)
            while server.core.stats.enqueued < 2000:
                await trio.sleep(0.01)
            server.commit_listeners.append(one_more)
            server.prune(before=0.0)
            db = sqlite3.connect(server.config.db)
            for _ in range(20):
                tid = max(server.core.tasks)
                await server.cancel(tid)  # (it hands over a batch with the cancel, and returns before its commit)
                with trio.fail_after(2):
                    await server.wait_committed()
                # (no await since: as wait_committed left it) the cancel is on disk, and a later batch is on its way
                assert db.execute("SELECT state FROM tasks WHERE id = ?", (tid,)).fetchone() == ("cancelled",)
                assert server._committed_count < server._submitted
            db.close()
            stop.set()
        server.commit_listeners.remove(one_more)


@pytest.mark.trio
async def test_an_enqueue_whose_task_started_before_its_failed_commit_is_not_refused(
        server: Server, nursery: trio.Nursery, virtual_clock: VirtualClock) -> None:
    """A task handed to a worker in the same flush as its enqueue cannot be forgotten when the commit
    fails: the client must not hear 'nothing was enqueued' (it would enqueue again: two runs). The answer
    waits for the write to be retried instead, and is the task's id."""
    virtual_clock.follow(nursery, server)
    store = server.store
    assert store is not None
    with trio.fail_after(60):
        peer, _ = await RawPeer.connect(server.port, role="worker")
        async with peer.stream, Client(f"127.0.0.1:{server.port}") as c:
            await c.enqueue("t", "before")
            await peer.send({"op": "credit", "n": 2})
            assert (await peer.recv())["op"] == "tasks"
            await server.wait_committed()
            (pages,) = store.conn.execute("PRAGMA page_count").fetchone()
            store.conn.execute(f"PRAGMA max_page_count = {pages}")  # the 'disk' is now full
            answers: list[Any] = []

            async def enqueue() -> None:
                try:
                    answers.append(await c.enqueue("t", "x" * 200_000))
                except Exception as exc:  # noqa: BLE001 - the answer under test
                    answers.append(exc)

            async with trio.open_nursery() as n:
                n.start_soon(enqueue)
                msg = await peer.recv()  # the task was dispatched at once, before its commit failed
                assert msg["op"] == "tasks"
                tid = msg["tasks"][0]["id"]
                # the commit failed, and so did its retry 0.5 s later (the disk is still full): no answer yet, no
                # refusal
                with trio.fail_after(2):
                    await until(server, lambda: server.stats.store_errors >= 2)
                assert answers == [], answers
                store.conn.execute("PRAGMA max_page_count = 1073741823")  # space again
            assert answers == [tid]
            await peer.send({"op": "done", "results": [[tid, msg["tasks"][0]["lease"], encode_value(1)]]})
            assert (await c.wait(tid, timeout=5))["state"] == "succeeded"



@pytest.mark.trio
async def test_a_unique_key_answer_naming_a_task_whose_commit_failed_gets_a_new_task(server: Server) -> None:
    """Enqueue A creates a task with key k; its commit fails (no room for its 200 KB payload) and the task is
    forgotten. Enqueue B (key k, and one more task) came in before that failure was known: it was answered
    'k is that task' and waited for a later commit. B must not be acknowledged with an id that names no
    task (its work would never run), nor refused (its other task was stored: a retry would add a
    duplicate): its key spec is enqueued again, and B gets the new task."""
    store = server.store
    assert store is not None
    with trio.fail_after(15):
        async with Client(f"127.0.0.1:{server.port}") as a, Client(f"127.0.0.1:{server.port}") as b:
            await a.enqueue("t", "before")
            await server.wait_committed()
            other = sqlite3.connect(server.config.db, isolation_level=None)
            other.execute("CREATE TABLE junk (x BLOB)")  # free pages for small writes, not for 200 KB
            other.execute("INSERT INTO junk VALUES (zeroblob(40000))")
            other.execute("DROP TABLE junk")
            (pages,) = store.conn.execute("PRAGMA page_count").fetchone()
            store.conn.execute(f"PRAGMA max_page_count = {pages}")
            other.execute("BEGIN IMMEDIATE")  # the writer waits for this lock with A's batch in hand
            answers: dict[str, Any] = {}

            async def enqueue(name: str, client: Client, tasks: list[dict[str, Any]]) -> None:
                try:
                    answers[name] = await client.enqueue_many(tasks)
                except Exception as exc:  # noqa: BLE001 - the answer under test
                    answers[name] = exc

            async with trio.open_nursery() as n:
                n.start_soon(enqueue, "A", a, [{"type": "t", "payload": "x" * 200_000, "key": "k"}])
                while not any(t.key == "k" for t in server.core.tasks.values()):
                    await trio.sleep(0.001)
                (x,) = [t.id for t in server.core.tasks.values() if t.key == "k"]
                while not writer_has_taken_all(server):  # A's batch, and it waits for the lock
                    await trio.sleep(0.001)
                n.start_soon(enqueue, "B", b, [{"type": "t", "payload": "y", "key": "k"},
                                               {"type": "t", "payload": "other work"}])
                while server._submitted < server._committed_count + 2:  # B's flush is queued behind A's
                    await trio.sleep(0.001)
                other.execute("ROLLBACK")
                other.close()
            assert isinstance(answers["A"], RemoteError) and answers["A"].code == "store_error", answers
            key_task, other_task = answers["B"]
            assert key_task != x and server.stats.store_errors == 1, answers
            assert (await b.get(key_task))["payload"] == "y" and (await b.get(other_task))["payload"] == "other work"
            assert await b.enqueue("t", "z", key="k") == key_task  # k now names the new task
            await server.wait_committed()
            db = sqlite3.connect(server.config.db)
            assert db.execute("SELECT id FROM tasks WHERE key = 'k'").fetchall() == [(key_task,)]
            assert db.execute("SELECT count(*) FROM tasks WHERE id = ?", (x,)).fetchone() == (0,)
            db.close()


@pytest.mark.trio
async def test_a_timeline_keeps_its_order_when_a_failed_commit_is_retried_after_a_later_one(server: Server) -> None:
    """Batch N (a task's 'succeeded', with a large result) fails for want of space while batch N+1 (a late
    duplicate result for that task: a small 'late_result' event) was already queued behind it and commits.
    N's writes are retried afterwards: the timeline must still read succeeded, then late_result (the core
    numbers events as they happen; before, rows were numbered by SQLite in commit order)."""
    store = server.store
    assert store is not None
    with trio.fail_after(15):
        peer, _ = await RawPeer.connect(server.port, role="worker")
        async with peer.stream, Client(f"127.0.0.1:{server.port}") as c:
            tid = await c.enqueue("t", None)
            await peer.send({"op": "credit", "n": 1})
            task = (await peer.recv())["tasks"][0]
            await server.wait_committed()
            # a few free pages for small writes, none to spare for a 200 KB result
            other = sqlite3.connect(server.config.db, isolation_level=None)
            other.execute("CREATE TABLE junk (x BLOB)")
            other.execute("INSERT INTO junk VALUES (zeroblob(40000))")
            other.execute("DROP TABLE junk")
            (pages,) = store.conn.execute("PRAGMA page_count").fetchone()
            store.conn.execute(f"PRAGMA max_page_count = {pages}")
            other.execute("BEGIN IMMEDIATE")  # the writer waits for this lock with batch N in hand
            committed = server._committed_count
            await peer.send({"op": "done", "results": [[tid, task["lease"], encode_value("r" * 200_000)]]})
            while server._submitted < committed + 1 or not writer_has_taken_all(server):  # batch N
                await trio.sleep(0.001)
            await peer.send({"op": "done", "results": [[tid, task["lease"], encode_value("again")]]})
            while server._submitted < committed + 2:  # batch N+1 is queued behind it
                await trio.sleep(0.001)
            other.execute("ROLLBACK")
            other.close()
            while server._committed_count < committed + 2:
                await trio.sleep(0.01)
            assert server.stats.store_errors == 1  # N failed, N+1 did not
            commits = store.stats.commits
            store.conn.execute("PRAGMA max_page_count = 1073741823")  # space again
            with trio.fail_after(2):  # the retry, 0.5 s after the failure
                await until(server, lambda: store.stats.commits > commits, poll=0.05)
            assert server.stats.store_errors == 1
            assert [e["kind"] for e in await c.events(tid)] == ["enqueued", "started", "succeeded", "late_result"]
    db = sqlite3.connect(server.config.db)
    assert db.execute("SELECT state FROM tasks WHERE id = ?", (tid,)).fetchone() == ("succeeded",)
    db.close()


@pytest.mark.trio
async def test_a_server_cancel_seen_after_the_deadline_is_not_reported_as_a_timeout(
        server: Server, nursery: trio.Nursery, virtual_clock: VirtualClock) -> None:
    """A handler that defers cancellation (a shielded section) past its deadline, after the server
    cancelled it: the worker must not report a timeout failure for a task it was told is cancelled
    (the server would refuse it and log a late result in the task's timeline)."""
    import anyio.lowlevel

    virtual_clock.follow(nursery, server)
    worker = Worker(concurrency=1)
    started = trio.Event()
    ended = trio.Event()

    @worker.task("stubborn", timeout=0.3)
    async def stubborn(p: Any) -> str:
        started.set()
        with anyio.CancelScope(shield=True):
            await anyio.sleep(0.6)
        ended.set()
        await anyio.lowlevel.checkpoint()
        return "finished anyway"

    nursery.start_soon(worker.run, f"127.0.0.1:{server.port}")
    with trio.fail_after(60):
        async with Client(f"127.0.0.1:{server.port}") as c:
            tid = await c.enqueue("stubborn", retries=0, timeout=60)
            await started.wait()
            t0 = trio.current_time()
            await c.cancel(tid)
            await ended.wait()
            assert trio.current_time() - t0 >= 0.6  # past the handler's deadline (0.3 s)
            # (the virtual clock moves only when every task waits: after this, the worker's report, if it
            # made one, has reached the server)
            await trio.sleep(1)
            assert (worker.failed, server.core.stats.late_results) == (0, 0)
            assert "late_result" not in [e["kind"] for e in await c.events(tid)]
    worker.stop()


@pytest.mark.trio
async def test_a_failed_commit_of_tasks_that_already_left_memory_is_retried_all_the_same(
        nursery: trio.Nursery, tmp_path: Path, virtual_clock: VirtualClock) -> None:
    """Under load, tasks finish and leave the finished-task cache before their commit is known to have
    failed: their final rows must still be written by the retry (else the store keeps them running, and
    the next start runs them again)."""
    srv = await start(nursery, tmp_path, core={"finished_cache": 2})
    virtual_clock.follow(nursery, srv)
    store = srv.store
    assert store is not None
    with trio.fail_after(60):
        peer, _ = await RawPeer.connect(srv.port, role="worker")
        async with peer.stream, Client(f"127.0.0.1:{srv.port}") as c:
            ids = await c.enqueue_many([{"type": "t"} for _ in range(6)])
            await peer.send({"op": "credit", "n": 6})
            leases = {t["id"]: t["lease"] for t in (await peer.recv())["tasks"]}
            assert sorted(leases) == ids
            await srv.wait_committed()
            (pages,) = store.conn.execute("PRAGMA page_count").fetchone()
            store.conn.execute(f"PRAGMA max_page_count = {pages}")  # the 'disk' is now full
            await peer.send({"op": "done", "results": [[tid, leases[tid], encode_value("r" * 20_000)] for tid in ids]})
            await until(srv, lambda: srv.stats.store_errors)
            commits = store.stats.commits
            store.conn.execute("PRAGMA max_page_count = 1073741823")  # space again
            with trio.fail_after(2):  # the retry, 0.5 s after the failure (not a later flush: a lease expiry's)
                await until(srv, lambda: store.stats.commits > commits)
            assert srv.stats.store_errors == 1
    db = sqlite3.connect(srv.config.db)
    states = dict(db.execute("SELECT id, state FROM tasks").fetchall())
    db.close()
    assert states == dict.fromkeys(ids, "succeeded")


@pytest.mark.trio
async def test_sync_handlers_run_as_many_at_once_as_the_concurrency_beyond_anyios_default_40_threads(
        server: Server, nursery: trio.Nursery) -> None:
    """Each sync handler runs in a thread: with concurrency 50, all 50 run at once (anyio's default thread
    limiter holds 40; the others waited for a thread while their timeout ran, and timed out unrun). A barrier
    of 50 is passed only by 50 handlers running at once: no timing margin (with 40 threads it breaks)."""
    import threading

    worker = Worker(concurrency=50, prefetch=0)
    all_running = threading.Barrier(50, timeout=5)  # (only passed by 50 handlers running at once)

    @worker.task("block")
    def block(p: Any) -> str:
        all_running.wait()
        return "ok"

    nursery.start_soon(worker.run, f"127.0.0.1:{server.port}")
    with trio.fail_after(15):
        async with Client(f"127.0.0.1:{server.port}") as c:
            ids = await c.enqueue_many([{"type": "block", "timeout": 10, "retries": 0} for _ in range(50)])
            tasks = [await c.wait(tid, timeout=10) for tid in ids]
            assert [t["state"] for t in tasks] == ["succeeded"] * 50, [t["error"] for t in tasks if t["error"]][:1]
    worker.stop()


@pytest.mark.trio
async def test_a_retry_delay_the_protocol_refuses_fails_the_attempt_instead_of_leaving_it_running(
        server: Server, nursery: trio.Nursery) -> None:
    """Retry(-1) or Retry(nan) made the worker send a 'fail' the server refuses (bad_request): the task
    stayed running until the server's backstop (its timeout + the lease timeout)."""
    from runq import Retry

    worker = Worker(concurrency=2)

    @worker.task("odd_retry")
    async def odd_retry(p: Any) -> None:
        raise Retry(float(p))

    with pytest.raises(ValueError, match="retries"):
        worker.register("too_many", odd_retry, retries=5000)
    nursery.start_soon(worker.run, f"127.0.0.1:{server.port}")
    with trio.fail_after(10):
        async with Client(f"127.0.0.1:{server.port}") as c:
            for delay in ("-1", "nan", "1e12"):
                tid = await c.enqueue("odd_retry", delay, retries=0, timeout=60)
                task = await c.wait(tid, timeout=5)
                assert task["state"] == "dead" and "ValueError" in task["error"], task
            assert server.stats.protocol_errors == 0
    worker.stop()


@pytest.mark.trio
async def test_a_sync_handler_that_outlives_its_timeout_does_not_keep_the_next_task_from_running(
        server: Server, nursery: trio.Nursery) -> None:
    """A thread cannot be cancelled: past its timeout it is abandoned and keeps running; the runner goes on
    with the next task in another thread."""
    import time

    worker = Worker(concurrency=1, prefetch=0)

    @worker.task("stuck")
    def stuck(p: Any) -> None:
        time.sleep(1.5)

    @worker.task("quick")
    def quick(p: Any) -> str:
        return "ran"

    nursery.start_soon(worker.run, f"127.0.0.1:{server.port}")
    with trio.fail_after(15):
        async with Client(f"127.0.0.1:{server.port}") as c:
            first = await c.enqueue("stuck", timeout=0.2, retries=0)
            second = await c.enqueue("quick", timeout=0.5, retries=0)
            assert (await c.wait(first, timeout=5))["state"] == "dead"
            task = await c.wait(second, timeout=1)
            assert task["state"] == "succeeded", task["error"]
    worker.stop()


@pytest.mark.trio
async def test_a_prefetched_task_is_not_timed_out_by_the_server_while_it_waits_for_a_runner(
        nursery: trio.Nursery, tmp_path: Path, virtual_clock: VirtualClock) -> None:
    """Concurrency 1 with one task prefetched: the second task waits 0.5 s for the runner, then runs 0.5 s of
    its 0.6 s timeout; the server's backstop (0.6 + 0.3 s) counts from when the first one ended."""
    srv = await start(nursery, tmp_path, core={"lease_timeout": 0.3})
    virtual_clock.follow(nursery, srv)
    worker = Worker(concurrency=1, prefetch=1)

    @worker.task("half_second")
    async def half_second(p: Any) -> str:
        await trio.sleep(0.5)
        return "done"

    nursery.start_soon(worker.run, f"127.0.0.1:{srv.port}")
    with trio.fail_after(60):
        async with Client(f"127.0.0.1:{srv.port}") as c:
            await until(srv, lambda: srv.core.workers)
            t0 = trio.current_time()
            ids = await c.enqueue_many([{"type": "half_second", "timeout": 0.6, "retries": 0} for _ in range(2)])
            tasks = [await c.wait(tid, timeout=5) for tid in ids]
            assert [t["state"] for t in tasks] == ["succeeded", "succeeded"], [t["error"] for t in tasks]
            assert trio.current_time() - t0 == pytest.approx(1.0)  # one after the other, both dispatched at once
            assert srv.core.stats.late_results == 0
    worker.stop()


@pytest.mark.trio
async def test_results_too_large_for_a_frame_fail_clearly_and_big_ones_are_split(nursery: trio.Nursery,
                                                                                  tmp_path: Path) -> None:
    srv = await start(nursery, tmp_path, max_frame=64 * 1024)
    address = f"127.0.0.1:{srv.port}"
    worker = Worker(concurrency=8)
    gate = trio.Event()

    @worker.task("blob")
    async def blob(n: int) -> bytes:
        await gate.wait()  # all finish together: their results go back in the same flush
        return b"x" * n

    nursery.start_soon(worker.run, address)
    with trio.fail_after(15):
        async with Client(address) as c:
            huge = await c.enqueue("blob", 100 * 1024, retries=0)
            # six results of 40 KiB: together far above the 64 KiB frame limit, each one under it
            big = [await c.enqueue("blob", 40 * 1024) for _ in range(6)]
            while [(await c.get(t))["state"] for t in [huge, *big]] != ["running"] * 7:
                await trio.sleep(0.01)
            gate.set()
            task = await c.wait(huge, timeout=10)
            assert task["state"] == "dead" and task["error"].startswith("result too large: ")
            for tid in big:
                task = await c.wait(tid, timeout=10)
                assert task["state"] == "succeeded" and task["attempt"] == 1 and len(task["result"]) == 40 * 1024
            assert srv.stats.protocol_errors == 0
    worker.stop()
