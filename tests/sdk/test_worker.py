"""The worker SDK against a real in-process server: event loops, task log lines, tracebacks, timeouts,
reconnection (issue 8). Processes (supervisor, SIGSTOP) are in tests/e2e."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import trio

from runq import Client, SyncClient, TaskContext, Worker
from runq.app.core import CoreConfig
from runq.app.server import Server, ServerConfig
from runq.protocol.logs import JsonFormatter, configure_logging
from runq.protocol.tracebacks import format_failure
from runq.protocol.worker import Backoff

HERE = __file__


async def run_tasks(server_port: int, worker: Worker, *tasks: tuple[str, Any], timeout: float | None = None,
                    retries: int = 0) -> list[dict[str, Any]]:
    """Run ``worker`` (trio) until every task of ``tasks`` is final; return them."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run, f"127.0.0.1:{server_port}")
        async with Client(f"127.0.0.1:{server_port}") as c:
            ids = [await c.enqueue(t, p, timeout=timeout, retries=retries) for t, p in tasks]
            out = [await c.wait(i, timeout=20) for i in ids]
        worker.stop()
    return out


# ---------------------------------------------------------------------- 1. event loops


def test_run_sync_runs_async_handlers_on_asyncio_by_default(threaded_server: Any) -> None:
    """An asyncio library in a handler works with no option: ``run_sync`` defaults to asyncio."""
    worker = Worker(concurrency=1)

    @worker.task("aio")
    async def aio(p: Any) -> str:
        await asyncio.sleep(0.001)  # under trio: RuntimeError: no running event loop
        return type(asyncio.get_running_loop()).__name__

    results: list[Any] = []

    def produce() -> None:
        try:
            with SyncClient(threaded_server.address) as c:
                results.append(c.wait(c.enqueue("aio"), timeout=15))
        finally:
            worker.stop()

    t = threading.Thread(target=produce)
    t.start()
    worker.run_sync(threaded_server.address, handle_signals=False)
    t.join(15)
    assert results[0]["state"] == "succeeded" and "EventLoop" in results[0]["result"], results


@pytest.mark.trio
@pytest.mark.parametrize(("sleep", "error"), [
    (0.001, "RuntimeError: no running event loop"),
    (0, "TypeError: trio.run received unrecognized yield message"),  # (asyncio.sleep(0) yields a bare None)
])
async def test_an_asyncio_handler_under_trio_fails_with_a_hint_naming_the_flag(server: Server, sleep: float,
                                                                               error: str) -> None:
    worker = Worker(concurrency=1)

    @worker.task("aio")
    async def aio(p: Any) -> None:
        await asyncio.sleep(sleep)

    with trio.fail_after(20):
        (task,) = await run_tasks(server.port, worker, ("aio", None))
    assert task["state"] == "dead"
    assert error in task["error"]
    assert "--backend asyncio" in task["error"] and "runs its handlers on trio" in task["error"]


def test_a_trio_handler_under_asyncio_fails_with_a_hint_naming_the_flag(threaded_server: Any) -> None:
    worker = Worker(concurrency=1)

    @worker.task("tr")
    async def tr(p: Any) -> None:
        await trio.sleep(0.001)

    @worker.task("plain")
    async def plain(p: Any) -> None:
        raise RuntimeError("my own error")

    async def main() -> list[dict[str, Any]]:
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run, threaded_server.address)
            async with Client(threaded_server.address) as c:
                out = [await c.wait(await c.enqueue(t, retries=0), timeout=15) for t in ("tr", "plain")]
            worker.stop()
        return out

    tr_task, plain_task = anyio.run(main, backend="asyncio")
    assert tr_task["state"] == "dead" and "--backend trio" in tr_task["error"], tr_task["error"]
    assert "hint" not in plain_task["error"]  # (only the other loop's errors get one)


# ---------------------------------------------------------------------- 2. one line per task


@pytest.mark.trio
async def test_a_line_per_task_and_the_traceback_of_every_failure(server: Server,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    worker = Worker(concurrency=1)

    @worker.task("ok")
    async def ok(p: Any) -> int:
        return 1

    @worker.task("boom")
    def boom(p: Any) -> None:
        raise ValueError("boom in the handler")

    caplog.set_level(logging.INFO, logger="runq.worker.task")
    with trio.fail_after(20):
        ok_task, boom_task = await run_tasks(server.port, worker, ("ok", None), ("boom", None))
    records = {r.task_id: r for r in caplog.records if r.name == "runq.worker.task"}  # type: ignore[attr-defined]
    line = records[ok_task["id"]]
    assert (line.levelno, line.task_type, line.attempt, line.outcome) == (  # type: ignore[attr-defined]
        logging.INFO, "ok", 1, "succeeded")
    assert 0 <= line.duration < 5  # type: ignore[attr-defined]
    assert line.getMessage().startswith(f"task {ok_task['id']} ok attempt 1 succeeded (")
    bad = records[boom_task["id"]]
    assert (bad.levelno, bad.outcome) == (logging.ERROR, "failed")  # type: ignore[attr-defined]
    assert "Traceback (most recent call last)" in bad.getMessage()
    assert "ValueError: boom in the handler" in bad.getMessage()
    # the JSON formatter writes the fields as keys
    out = json.loads(JsonFormatter().format(line))
    assert {k: out[k] for k in ("task_id", "task_type", "attempt", "outcome", "level", "logger")} == {
        "task_id": ok_task["id"], "task_type": "ok", "attempt": 1, "outcome": "succeeded", "level": "INFO",
        "logger": "runq.worker.task"}


def test_configure_logging_json_and_dictconfig(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging("DEBUG", "json")
        logging.getLogger("runq.worker.task").debug("hello %s", "there", extra={"task_id": 7})
        line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
        assert (line["message"], line["task_id"], line["level"]) == ("hello there", 7, "DEBUG")
        target = tmp_path / "tasks.log"
        conf = {"handlers": {"f": {"class": "logging.FileHandler", "filename": str(target),
                                   "formatter": "j"}},
                "formatters": {"j": {"()": "runq.protocol.logs.JsonFormatter"}},
                "root": {"level": "WARNING", "handlers": ["f"]}}
        (tmp_path / "log.json").write_text(json.dumps(conf))
        configure_logging(config=str(tmp_path / "log.json"))
        logging.getLogger("runq.worker").info("dropped")
        logging.getLogger("runq.worker").warning("kept")
        for h in root.handlers:
            h.flush()
        assert [json.loads(x)["message"] for x in target.read_text().splitlines()] == ["kept"]
        (tmp_path / "bad.json").write_text("{not json")
        with pytest.raises(ValueError, match="bad.json"):
            configure_logging(config=str(tmp_path / "bad.json"))
        with pytest.raises(ValueError, match="unknown log level"):
            configure_logging("LOUD")
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
            if h not in saved[0]:
                h.close()
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])


# ---------------------------------------------------------------------- 3. tracebacks from the user's code


def _users_helper(x: int) -> int:
    try:
        return {1: 2}[x]
    except KeyError as exc:
        raise LookupError(f"no entry {x}") from exc


@pytest.mark.trio
@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_a_stored_traceback_starts_at_the_users_code_and_keeps_its_causes(server: Server, kind: str) -> None:
    worker = Worker(concurrency=1)

    async def handler_async(p: Any) -> int:
        return _users_helper(p)

    def handler_sync(p: Any) -> int:
        return _users_helper(p)

    worker.register("t", handler_async if kind == "async" else handler_sync)
    with trio.fail_after(20):
        (task,) = await run_tasks(server.port, worker, ("t", 5))
    error = task["error"]
    frames = [line.strip() for line in error.splitlines() if line.strip().startswith('File "')]
    assert frames and all(HERE in f for f in frames), error  # no frame of runq, anyio, trio, asyncio...
    cause, _, effect = error.partition("The above exception was the direct cause of the following exception")
    assert "KeyError: 5" in cause and "LookupError: no entry 5" in effect
    first_frame_of_effect = next(line for line in effect.splitlines() if line.strip().startswith('File "'))
    assert f"handler_{kind}" in first_frame_of_effect  # it opens with the handler, the SDK's frames are gone


def test_format_failure_keeps_an_sdk_error_whole() -> None:
    """An exception with no frame outside the cut folders is the SDK's own: its frames stay."""
    try:
        Backoff(base=0)
    except ValueError as exc:
        assert exc.__traceback__ is not None
        text = format_failure(exc.with_traceback(exc.__traceback__.tb_next))  # (this test's frame taken off)
    assert "runq/protocol/calls.py" in text and "ValueError: Backoff" in text


# ---------------------------------------------------------------------- 4. timeouts of blocked loops


@pytest.mark.trio
async def test_a_handler_that_blocks_its_loop_past_its_timeout_is_a_timeout_that_says_so(server: Server) -> None:
    worker = Worker(concurrency=1)

    @worker.task("blocker")
    async def blocker(p: Any) -> str:
        time.sleep(0.8)  # noqa: ASYNC251 - blocks the event loop on purpose: the cancel at the deadline cannot happen
        return "done"

    @worker.task("polite")
    async def polite(p: Any) -> str:
        await trio.sleep(5)
        return "never"

    with trio.fail_after(20):
        blocked, slept = await run_tasks(server.port, worker, ("blocker", None), ("polite", None), timeout=0.2)
    assert blocked["state"] == "dead" and blocked["result"] is None, blocked  # (was: succeeded, result "done")
    assert blocked["error"].startswith("timeout: attempt ran longer than 0.2s (it returned after 0.8")
    assert "event loop was blocked for at least 0." in blocked["error"] and "blocking call in async code" in blocked["error"]
    assert slept["state"] == "dead" and "timeout: attempt ran longer than 0.2s" in slept["error"]
    assert "blocked" not in slept["error"] and "returned" not in slept["error"]


# ---------------------------------------------------------------------- 6. reconnection


def test_backoff_doubles_to_its_cap_and_starts_again_after_a_reset() -> None:
    b = Backoff(base=0.1, cap=0.8)
    steps = [b.next() for _ in range(6)]
    for got, step in zip(steps, [0.1, 0.2, 0.4, 0.8, 0.8, 0.8], strict=True):
        assert 0.5 * step <= got < 1.5 * step
    b.reset()
    assert b.next() < 0.15


@pytest.mark.trio
async def test_a_worker_rejoins_at_once_after_a_session_that_worked(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Outage 1 grows the backoff to its cap; the session after it works; outage 2 starts from the first
    step again. Small injected steps (10 ms up to 320 ms) keep it short."""
    caplog.set_level(logging.WARNING, logger="runq.worker")
    db = str(tmp_path / "runq.db")

    def retries() -> list[float]:
        return [float(r.getMessage().rsplit("retrying in ", 1)[1].rstrip("s")) for r in caplog.records
                if "retrying in" in r.getMessage()]

    async def until(pred: Callable[[], bool]) -> None:
        while not pred():
            await trio.sleep(0.005)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            first = Server(ServerConfig(db=db, port=0))
            port = await nursery.start(first.serve)
            worker = Worker()
            nursery.start_soon(lambda: worker.run(f"127.0.0.1:{port}", backoff=Backoff(base=0.01, cap=0.32)))
            await until(lambda: worker.sessions == 1 and worker.connected)
            first.stopping.set()
            await until(lambda: len(retries()) >= 7)  # 0.01 .. 0.32: the cap
            assert retries()[-1] >= 0.16
            second = Server(ServerConfig(db=db, port=port))
            await nursery.start(second.serve)
            await until(lambda: worker.sessions == 2 and worker.connected)
            seen = len(retries())
            second.stopping.set()
            await until(lambda: len(retries()) > seen)
            assert retries()[seen] < 0.015, retries()  # the first step (was: the cap, 0.16-0.48)
            worker.stop()


@pytest.mark.trio
async def test_several_servers_are_tried_in_order(server: Server) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # nothing listens there once closed
    worker = Worker()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: worker.run(f"127.0.0.1:{dead}, 127.0.0.1:{server.port}"))
            while not worker.connected:
                await trio.sleep(0.005)
            assert worker.sessions == 1  # joined the second at the first attempt, no backoff
            worker.stop()


# ---------------------------------------------------------------------- 7. leases after a silence


@pytest.mark.trio
async def test_a_prefetched_task_waits_for_a_pong_after_a_long_silence(tmp_path: Path) -> None:
    """A worker whose loop was blocked past the lease timeout (here by a handler) asks the server before
    starting the next task: the server has taken the leases back, closed the connection, and the
    prefetched task runs only on the worker's next session, under a new lease."""
    srv = Server(ServerConfig(db=str(tmp_path / "runq.db"), port=0, core=CoreConfig(lease_timeout=0.6)))
    worker = Worker(concurrency=1, prefetch=1)
    starts: list[tuple[int, int]] = []

    @worker.task("block")
    async def block(p: Any, ctx: TaskContext) -> None:
        starts.append((ctx.id, ctx.lease))
        if ctx.attempt == 1:
            time.sleep(1.0)  # noqa: ASYNC251 - the whole loop stops: no heartbeat, the server expires the leases

    @worker.task("next")
    async def next_(p: Any, ctx: TaskContext) -> None:
        starts.append((ctx.id, ctx.lease))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(srv.serve)
            async with Client(f"127.0.0.1:{port}") as c:
                a = await c.enqueue("block", retries=3)
                b = await c.enqueue("next", retries=3)
                nursery.start_soon(worker.run, f"127.0.0.1:{port}")
                done_b = await c.wait(b, timeout=20)
                await c.wait(a, timeout=20)
            worker.stop()
            srv.stopping.set()
    assert done_b["state"] == "succeeded" and done_b["attempt"] == 2
    assert [tid for tid, _ in starts].count(b) == 1, starts  # (was: started under its expired lease, then again)
