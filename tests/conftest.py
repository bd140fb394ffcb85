"""Shared fixtures: a real server on 127.0.0.1 port 0 with a real SQLite file."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from runq.app.core import CoreConfig
from runq.app.server import Server, ServerConfig

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def server(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Server]:
    """A running server (trio tests only): ``server.port`` is bound on 127.0.0.1."""
    srv = Server(ServerConfig(db=str(tmp_path / "runq.db"), port=0, core=CoreConfig(lease_timeout=10.0)))
    await nursery.start(srv.serve)
    yield srv
    srv.stopping.set()


@pytest.fixture
def runq_env() -> dict[str, str]:
    """Environment for subprocesses running ``python -m runq.cli``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("RUNQ_LOG_LEVEL", "WARNING")
    return env


PYTHON = sys.executable
