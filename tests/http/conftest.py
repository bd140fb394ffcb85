"""Fixtures of the HTTP tests: ``api``, a real server with an httpx client on its HTTP API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from http_helpers import Api, start_api


@pytest.fixture
def server_config() -> dict[str, Any]:
    """Extra ``ServerConfig`` fields for the ``api`` fixture (override in a module)."""
    return {}


@pytest.fixture
async def api(nursery: trio.Nursery, tmp_path: Path, server_config: dict[str, Any]) -> AsyncIterator[Api]:
    srv = await start_api(nursery, tmp_path, **server_config)
    headers = {"Authorization": f"Bearer {srv.config.token}".encode()} if srv.config.token else {}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{srv.http_port}", headers=headers,
                                 timeout=20) as client:
        yield Api(srv, client, nursery)
    srv.stopping.set()
