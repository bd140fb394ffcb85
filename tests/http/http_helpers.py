"""Helpers of the HTTP tests: a real server (SQLite file, TCP and HTTP on 127.0.0.1 port 0) and workers."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from runq import Worker
from runq.app.core import CoreConfig
from runq.app.server import Server, ServerConfig

TOKEN = "s3cret-token"

#: Leaving an httpx stream before its end leaves httpcore's inner body generators suspended; trio's
#: async-generator finalizer then warns about them (an httpx/httpcore matter, not runq's). runq's own
#: generators (create_app's SSE body, EventStream.messages) stay checked.
IGNORE_HTTPX_STREAM_GENERATORS = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <async_generator object (?!create_app|EventStream):"
    "pytest.PytestUnraisableExceptionWarning")


@dataclass
class Api:
    """A running server and a client of its HTTP API."""

    server: Server
    client: httpx.AsyncClient
    nursery: trio.Nursery

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.http_port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    async def start_worker(self, worker: Worker) -> Worker:
        """Run ``worker`` (the SDK, in this trio loop) until the test ends; return once it joined."""
        self.nursery.start_soon(functools.partial(worker.run, self.address, token=self.server.config.token))
        with trio.fail_after(10):
            while worker.worker_id is None or worker.worker_id not in self.server.core.workers:
                await trio.sleep(0.01)
        return worker


async def start_api(nursery: trio.Nursery, tmp_path: Path, **config: Any) -> Server:
    cfg = ServerConfig(db=str(tmp_path / "runq.db"), port=0, http_port=0,
                       core=CoreConfig(lease_timeout=10.0, backoff_base=0.05), **config)
    srv = Server(cfg)
    await nursery.start(srv.serve)
    return srv


def make_worker(**handlers: Callable[..., Any]) -> Worker:
    """A ``Worker`` with the given handlers (name -> function)."""
    w = Worker(concurrency=4, grace=2.0)
    for name, fn in handlers.items():
        w.register(name, fn)
    return w
