"""Tasks of the CLI tests' worker (``runq worker cli_tasks:worker``)."""

from __future__ import annotations

from typing import Any

from runq import Worker

worker = Worker(queues=["default", "mail"])


@worker.task("echo")
async def echo(payload: Any) -> Any:
    return payload


@worker.task("boom")
def boom(payload: Any) -> None:
    raise ValueError(f"boom: {payload}")
