"""Shared fixtures: a real server on 127.0.0.1 port 0 with a real SQLite file."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from runq.app.core import CoreConfig
from runq.app.server import Server, ServerConfig

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _keep_logging() -> Iterator[None]:
    """A test that runs ``runq.cli.main`` in this process configures the root logger as the command does
    (its handler writes to a captured stream that is closed after the test): put the root logger back after
    every test, so that no later test logs to a closed file or sees INFO records it did not ask for."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    for h in handlers:
        if h not in root.handlers:
            root.addHandler(h)
    root.setLevel(level)


@pytest.fixture(scope="session", autouse=True)
def _postgres_server() -> Iterator[None]:
    """Stop the throwaway PostgreSQL server (tests/pg_server.py) at the end of the session, if a test started
    it (it starts on first use)."""
    yield
    import pg_server

    pg_server.stop()


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
