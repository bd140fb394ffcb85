"""Task handlers of ``runq demo``: useful examples of the task kinds users asked for.

Run them yourself with ``runq worker runq.demo_tasks:worker``.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from typing import Any

import anyio

from .protocol.worker import TaskContext, Worker

__all__ = ["calculate_statistics", "flaky", "simulate_backup", "slow", "word_count", "worker"]

worker = Worker(queues=["default"], concurrency=4, grace=10.0)


@worker.task("word_count")
def word_count(payload: dict[str, Any]) -> dict[str, Any]:
    """Count words in ``payload['text']``; return the total and the five most common."""
    words = re.findall(r"[\w']+", str(payload.get("text", "")).lower())
    return {"words": len(words), "top": Counter(words).most_common(5)}


@worker.task("calculate_statistics")
def calculate_statistics(payload: dict[str, Any]) -> dict[str, Any]:
    """Mean, median, standard deviation, min and max of ``payload['numbers']``."""
    nums = [float(x) for x in payload.get("numbers", [])]
    if not nums:
        raise ValueError("calculate_statistics needs a non-empty 'numbers' list")
    return {
        "count": len(nums), "mean": statistics.fmean(nums), "median": statistics.median(nums),
        "stdev": statistics.pstdev(nums), "min": min(nums), "max": max(nums),
    }


@worker.task("simulate_backup")
async def simulate_backup(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """A long task that reports progress: 'copies' ``files`` files, ``seconds`` in all."""
    files = int(payload.get("files", 10))
    step = float(payload.get("seconds", 3.0)) / max(files, 1)
    for i in range(files):
        await anyio.sleep(step)
        ctx.progress({"done": i + 1, "of": files})
    return {"files": files, "bytes": files * 1_048_576}


@worker.task("flaky", retries=2)
def flaky(payload: dict[str, Any]) -> None:
    """Always fails: retried with backoff, then dead (the dead set's example)."""
    raise ConnectionError(f"upstream {payload.get('url', 'https://example.invalid')} unreachable")


@worker.task("slow", timeout=1.0)
async def slow(payload: dict[str, Any]) -> None:
    """Sleeps past its 1 s timeout: cancelled on the worker, counted as a failure."""
    await anyio.sleep(float(payload.get("seconds", 5.0)))
