"""A real server (SQLite file under tmp_path, TCP and HTTP on 127.0.0.1 port 0) and an httpx client on it."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
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


@pytest.fixture
def server_config() -> dict[str, Any]:
    """Extra ``ServerConfig`` fields for the ``api`` fixture (override in a module)."""
    return {}


@pytest.fixture
async def api(nursery: trio.Nursery, tmp_path: Path, server_config: dict[str, Any]) -> AsyncIterator[Api]:
    srv = await start_api(nursery, tmp_path, **server_config)
    headers = {"Authorization": f"Bearer {srv.config.token}"} if srv.config.token else {}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{srv.http_port}", headers=headers,
                                 timeout=20) as client:
        yield Api(srv, client, nursery)
    srv.stopping.set()


def make_worker(**handlers: Callable[..., Any]) -> Worker:
    """A ``Worker`` with the given handlers (name -> function)."""
    w = Worker(concurrency=4, grace=2.0)
    for name, fn in handlers.items():
        w.register(name, fn)
    return w
