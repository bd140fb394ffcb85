"""Fixtures of the SDK tests: a real server in its own thread (``threaded_server.ThreadedServer``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from threaded_server import ThreadedServer


@pytest.fixture
def threaded_server(tmp_path: Path) -> Iterator[ThreadedServer]:
    srv = ThreadedServer(str(tmp_path / "runq.db")).start()
    yield srv
    srv.stop()
