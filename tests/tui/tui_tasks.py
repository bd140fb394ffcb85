"""Handlers of the dashboard tests' workers: ``runq worker tui_tasks:worker`` (cwd tests/tui)."""

from __future__ import annotations

from typing import Any

import anyio

from runq import Worker

worker = Worker(queues=["default", "other"], concurrency=4, grace=5.0)


@worker.task("noop")
async def noop(payload: Any) -> str:
    return "ok"


@worker.task("sleep")
async def sleep(payload: Any) -> float:
    """Sleep ``payload`` seconds (a task that stays running long enough to be watched or cancelled)."""
    await anyio.sleep(float(payload or 0))
    return float(payload or 0)


@worker.task("boom", retries=1)
def boom(payload: Any) -> None:
    """Always fails: retried once (quickly), then dead."""
    raise RuntimeError(f"boom {payload}")
