"""Worker module of the benchmarks: a no-op task, and one that returns when it started."""

from __future__ import annotations

import time
from typing import Any

from runq import Worker

worker = Worker(concurrency=16)


@worker.task("noop")
async def noop(payload: Any) -> None:
    return None


@worker.task("stamp")
async def stamp(payload: Any) -> float:
    """Return time.monotonic() at start (CLOCK_MONOTONIC is system-wide on Linux)."""
    return time.monotonic()
