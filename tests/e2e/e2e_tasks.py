"""Handlers for the end-to-end tests; each run is logged to $RUNQ_E2E_LOG.

A log line is ``<what> <task id> <pid> <time.monotonic()> <extra>``; short O_APPEND writes are atomic, so
several worker processes can share the file.
"""

from __future__ import annotations

import os
import time
from typing import Any

import anyio

from runq import TaskContext, Worker

worker = Worker(concurrency=4, grace=10.0)


def log(what: str, ctx: TaskContext, extra: str = "") -> None:
    path = os.environ.get("RUNQ_E2E_LOG")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{what} {ctx.id} {os.getpid()} {time.monotonic():.6f} {extra}\n".encode())
        finally:
            os.close(fd)


@worker.task("noop")
async def noop(payload: Any, ctx: TaskContext) -> Any:
    log("run", ctx)
    return payload


@worker.task("sleep")
async def sleep(payload: Any, ctx: TaskContext) -> Any:
    log("start", ctx, str(ctx.attempt))
    try:
        await anyio.sleep(float(payload.get("s", 0.5)))
    except BaseException:
        log("cancelled", ctx)
        raise
    log("end", ctx)
    return payload.get("tag")


@worker.task("fail_until")
def fail_until(payload: Any, ctx: TaskContext) -> str:
    log("start", ctx, str(ctx.attempt))
    if not os.path.exists(payload["marker"]):
        raise RuntimeError(f"marker {payload['marker']} absent")
    return "passed"
