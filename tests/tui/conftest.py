"""Fixtures of the dashboard tests: real ``runq serve`` and ``runq worker`` subprocesses (tui_helpers.py).

The dashboard runs on asyncio: tests are marked ``@pytest.mark.anyio`` (backend asyncio, see
``anyio_backend``) or are plain sync tests (the snapshot tests run the app themselves).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tui_helpers import Procs


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.close()
