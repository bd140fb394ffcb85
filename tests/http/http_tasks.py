"""Handlers run by a real ``runq worker http_tasks:worker`` process in the HTTP end-to-end test."""

from __future__ import annotations

import anyio

from runq import TaskContext, Worker

worker = Worker(concurrency=2, grace=5.0)


@worker.task("square")
async def square(payload: int, ctx: TaskContext) -> int:
    ctx.progress(0.5)
    await anyio.sleep(0.05)
    return payload * payload
