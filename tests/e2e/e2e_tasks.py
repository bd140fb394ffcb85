"""Handlers of the end-to-end tests, run by real ``runq worker e2e_tasks:worker`` processes.

Every run is logged to the file named by ``$RUNQ_E2E_LOG``, one line per step::

    <what> <task id> <attempt> <pid> <time.monotonic()> <time.time()>

``what`` is ``run`` (a one-step handler), or ``start`` then ``end`` / ``cancelled`` /
``error``. Each line is one ``write`` on an ``O_APPEND`` descriptor, so lines from
several worker processes never interleave, and ``time.monotonic()`` is one clock for
every process of the machine: the tests compare times across processes.
"""

from __future__ import annotations

import os
import time
from typing import Any

import anyio

import runq
from runq import Batch, BatchItem, RetryPolicy, TaskContext, Worker

worker = Worker(concurrency=4, grace=10.0)


def log(what: str, ctx: TaskContext) -> None:
    """Append one line about ``ctx``'s task to the run log (a no-op without ``$RUNQ_E2E_LOG``)."""
    path = os.environ.get("RUNQ_E2E_LOG")
    if not path:
        return
    line = f"{what} {ctx.id} {ctx.attempt} {os.getpid()} {time.monotonic():.6f} {time.time():.6f}\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@worker.task("compute")
async def compute(payload: int, ctx: TaskContext) -> int:
    """A no-op with a result that depends on the payload."""
    log("run", ctx)
    return payload * 2 + 1


@worker.task("sleep")
async def sleep(payload: dict[str, Any], ctx: TaskContext) -> Any:
    """Sleep ``payload['s']`` seconds, return ``payload['tag']``; log when it is cut short."""
    log("start", ctx)
    try:
        await anyio.sleep(float(payload.get("s", 0.5)))
    except BaseException:
        log("cancelled", ctx)
        raise
    log("end", ctx)
    return payload.get("tag")


@worker.task("fail_until")
def fail_until(payload: dict[str, Any], ctx: TaskContext) -> str:
    """A plain function (run in a thread) that fails while the marker file is absent."""
    log("start", ctx)
    if not os.path.exists(payload["marker"]):
        log("error", ctx)
        raise RuntimeError(f"marker {payload['marker']} absent")
    log("end", ctx)
    return "passed"


@worker.task("loop_name")
async def loop_name(payload: Any, ctx: TaskContext) -> str:
    """An asyncio call (fails under ``--backend trio``); returns the running loop's class name."""
    import asyncio

    log("run", ctx)
    await asyncio.sleep(0.001)
    return type(asyncio.get_running_loop()).__name__


class Permanent(ValueError):
    """A failure that retrying cannot fix (the ``picky`` type's ``never_retry``)."""


class Flaky(ConnectionError):
    """A failure that may pass next time (the ``picky`` type's ``retry_on``)."""


#: delays of the ``picky`` type's retries (docs/tasks.md, "Retry policies")
PICKY_DELAYS = (0.6, 1.2)


@worker.task("picky", retries=5, retry_policy=RetryPolicy(delays=PICKY_DELAYS, retry_on=[Flaky],
                                                          never_retry=[Permanent]))
async def picky(payload: str, ctx: TaskContext) -> str:
    """Raise what ``payload`` names: ``permanent`` (never retried), ``flaky`` (retried on the declared delays),
    ``other`` (a KeyError, in neither list: not retried); or succeed on attempt ``payload`` (``"3"``)."""
    log("run", ctx)
    if payload == "permanent":
        raise Permanent("this input can never work")
    if payload == "flaky":
        raise Flaky("the service did not answer")
    if payload == "other":
        raise KeyError("missing")
    if ctx.attempt < int(payload):
        raise Flaky(f"not yet (attempt {ctx.attempt})")
    return "ok"
@runq.task(type="batch_sum", batch=Batch(max_size=5, max_wait=0.3))
async def batch_sum(items: list[BatchItem]) -> list[Any]:
    """A batched handler (docs/batching.md): one ``batched`` line per task of the call, all with the call's one
    ``time.monotonic()`` (the test groups them into calls by it). A task whose payload asks to ``hold`` on its
    first attempt keeps the call waiting (the test kills the worker meanwhile)."""
    path = os.environ.get("RUNQ_E2E_LOG")
    mono, wall = time.monotonic(), time.time()
    if path:
        lines = "".join(f"batched {i.id} {i.attempt} {os.getpid()} {mono:.6f} {wall:.6f}\n" for i in items)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, lines.encode())
        finally:
            os.close(fd)
    if any(isinstance(i.payload, dict) and i.payload.get("hold") and i.attempt == 1 for i in items):
        await anyio.sleep(3600)
    return [(i.payload["n"] if isinstance(i.payload, dict) else i.payload) * 2 for i in items]


worker.register(batch_sum)
